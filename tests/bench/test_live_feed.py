"""``bench.live_feed`` at tiny scale: both clients take every message and the JSON has its shape (no timing is
asserted; the figures come from ``python -m bench.live_feed``)."""

from __future__ import annotations

from bench.live_feed import CLIENTS, main


def test_each_client_takes_every_message_of_each_run_and_reports_cpu_per_message() -> None:
    result = main(["--runs", "2", "--messages", "2000", "--streams", "10"])
    assert set(result["us_per_message"]) == set(CLIENTS)
    for values in result["us_per_message"].values():
        assert len(values) == 2
        assert all(value > 0 for value in values)
