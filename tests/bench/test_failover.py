"""``bench.failover`` at tiny scale (one node killed, one round, three streams): every stream still ends whole, the
admission window and token gaps are reported per round and by what the lost node led, beside the baseline, and the
JSON has its shape.

No timing is asserted; the figures come from ``python -m bench.failover`` (see its docstring).
"""

from __future__ import annotations

from bench.failover import main


def test_a_killed_node_costs_no_stream_and_the_report_has_each_node_and_the_baseline() -> None:
    argv = ["--rounds", "1", "--nodes", "1", "--streams", "3", "--max-tokens", "80", "--tokens-per-s", "40"]
    result = main([*argv, "--kill-after-s", "1", "--settle-s", "0.5"])
    rounds = result["rounds"]
    assert [r["node"] for r in rounds] == ["none (baseline)", "n1"]
    for r in rounds:
        assert (r["whole"], r["streams"], r["errors"]) == (3, 3, [])
        assert r["window_s"] >= 0 and r["max_gap_s"] >= 0
    assert rounds[0]["refused"] == 0 and rounds[0]["led"] == []
    kinds = result["by_kind"]
    assert "no node lost (baseline)" in kinds and len(kinds) == 2
    assert sum(row["rounds"] for row in kinds.values()) == 2
