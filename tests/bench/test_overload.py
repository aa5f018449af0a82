"""``bench.overload`` at tiny scale (C = 2 + 2, offered 4 then 8): refusals are 503 ``overloaded`` with
``Retry-After``, no process dies, no token is lost or repeated, and the JSON has its shape.

No timing is asserted; the full-scale figures come from ``python -m bench.overload`` (see its docstring).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bench.overload import FLOOR_LATENCIES, LATENCIES, main

CAPACITY = 4


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    argv = ["--max-concurrency", "2", "--max-queued-streams", "2", "--duration-s", "3", "--drain-s", "20"]
    argv += ["--tokens", "10", "--tokens-per-s", "20", "--ttft-ms", "10", "--runs", "1", "--floor-duration-s", "1.5"]
    return asyncio.run(main(argv))


def test_twice_the_capacity_is_refused_with_503_overloaded_and_retry_after(result: dict[str, Any]) -> None:
    two = result["runs"][0]["2x"]
    assert two["capacity"] == CAPACITY
    assert two["users"] == 2 * CAPACITY
    assert two["rejected"] > 0
    assert two["rejected_overloaded"] == two["rejected"]
    assert two["rejected_with_retry_after"] == two["rejected"]
    assert set(two["retry_after_values"]) == {"1"}
    assert two["rejected_ms"]["n"] == two["rejected"]
    assert two["rejected_burst_ms"]["n"] + two["rejected_later_ms"]["n"] == two["rejected"]
    assert two["other_responses"] == {}


@pytest.mark.parametrize("phase", ["1x", "2x"])
def test_accepted_streams_complete_whole_and_every_process_survives(result: dict[str, Any], phase: str) -> None:
    r = result["runs"][0][phase]
    assert r["all_alive"], r["exited"]
    assert r["exited"] == {}
    assert sum(r["tracebacks_logged"].values()) == 0, r["tracebacks_logged"]
    assert r["cut_off_after_drain"] is False
    assert r["accepted"] > 0
    assert r["completed"] == r["accepted"], r["stream_errors"]
    assert r["stream_errors"] == {}
    assert r["tokens"]["lost"] == 0
    assert r["tokens"]["duplicated"] == 0
    assert r["tokens"]["delivered"] == 10 * r["completed"]
    assert r["offered"] == r["accepted"] + r["rejected"]
    assert r["ttft_ms"]["n"] == r["completed"]
    assert r["token_lag_ms"]["n"] > 0
    assert {"gateway", "streamer-0", "runner-0", "nats"} == set(r["pids"])


def test_the_json_holds_the_medians_of_each_phase(result: dict[str, Any]) -> None:
    medians = result["medians"]
    assert set(medians) == {"1x", "2x", "floor"}
    for key in ("1x", "2x"):
        phase = medians[key]
        for name in LATENCIES:
            assert set(phase[name]) == {"p50", "p95", "p99", "max", "n"}
        assert phase["rejected_not_overloaded"] == 0
        assert phase["rejected_without_retry_after"] == 0
        assert phase["all_alive"] is True


def test_admission_never_holds_more_than_the_capacity(result: dict[str, Any]) -> None:
    two = result["runs"][0]["2x"]
    assert two["gateway_queued_max"] <= 2
    assert two["admitted_max"] <= CAPACITY


def test_the_floor_is_the_largest_factors_users_against_a_server_that_refuses_them_all(result: dict[str, Any]) -> None:
    floor = result["runs"][0]["floor"]
    assert (floor["factor"], floor["users"]) == (2.0, 2 * CAPACITY)
    assert floor["rejected"] == floor["offered"] > 0
    assert floor["rejected_ms"]["n"] == floor["rejected"]
    assert floor["rejected_burst_ms"]["n"] == 2 * CAPACITY  # each user's first POST, all at once
    assert set(result["medians"]["floor"]) == {*FLOOR_LATENCIES, "users", "factor"}
