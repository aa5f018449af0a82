"""``bench.failover`` at tiny scale (one node killed, one round, three streams): every stream still ends whole, the
admission window and token gaps are reported per node beside the baseline, and the JSON has its shape.

No timing is asserted; the figures come from ``python -m bench.failover`` (see its docstring).
"""

from __future__ import annotations

from bench.failover import main


def test_a_killed_node_costs_no_stream_and_the_report_has_each_node_and_the_baseline() -> None:
    argv = ["--rounds", "1", "--nodes", "1", "--streams", "3", "--max-tokens", "80", "--tokens-per-s", "40"]
    result = main([*argv, "--kill-after-s", "1", "--settle-s", "0.5"])
    by_node = result["by_node"]
    assert set(by_node) == {"none (baseline)", "n1"}
    for row in by_node.values():
        assert (row["whole"], row["streams"], row["errors"]) == (3, 3, [])
        assert row["admission_window_s"] >= 0 and row["max_token_gap_s"] >= 0
    assert by_node["none (baseline)"]["refused"] == 0
