"""``bench.moves`` at tiny scale (one pair of rounds, three streams): the killed runner's streams move and end whole,
and the report has the baseline and the killed round with their token gaps and moves.

No timing is asserted; the figures come from ``python -m bench.moves`` (see its docstring).
"""

from __future__ import annotations

from bench.moves import main


def test_a_killed_runner_s_streams_move_and_end_whole_and_the_report_has_both_rounds() -> None:
    argv = ["--rounds", "1", "--streams", "3", "--max-tokens", "80", "--tokens-per-s", "40"]
    result = main([*argv, "--kill-after-s", "1", "--runner-stale-after-s", "0.5"])
    baseline, killed = result["rounds"]
    assert (baseline["killed"], killed["killed"]) == (False, True)
    for r in (baseline, killed):
        assert (r["whole"], r["streams"], r["errors"]) == (3, 3, [])
    assert baseline["moves"]["moved"] == 0 and killed["moves"]["moved"] >= 1
    assert set(result["summary"]) == {"baseline", "runner killed"}
