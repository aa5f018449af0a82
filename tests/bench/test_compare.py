"""``bench.compare`` drives tokenrelay and its baselines with the same load and reports ratios against the forwarder.

The end-to-end test runs every target at a tiny scale on the session's nats-server and checks the
summary's shape and sanity, never its timings; the others feed the summary code made-up results.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import nats

from bench.baselines.forwarder import STORED_FRAMES_STREAM
from bench.compare import ROWS, TARGETS, CompareOptions, Load, compare, format_table, peak_readers, summarize
from tokenrelay.testing.procs import NatsServer

TINY = {
    # 50 tokens a stream, so each relay process spends several of the kernel's 10 ms CPU ticks.
    "active": Load(streams=10, concurrency=10, ramp_per_s=0, max_tokens=50, tokens_per_s=200),
    "first-token": Load(streams=10, concurrency=2, ramp_per_s=0, max_tokens=5, tokens_per_s=200),
}


def test_compare_delivers_every_token_of_every_target_and_reports_finite_ratios(nats: NatsServer) -> None:
    summary = compare(CompareOptions(loads=TINY, runs=1, sample_interval_s=0.2), broker=nats, progress=None)

    assert summary.keys() == {"options", "rounds", "figures", "rows"}
    [measured] = summary["rounds"]
    [figures] = summary["figures"]
    for scenario, load in TINY.items():
        assert list(measured[scenario]) == list(TARGETS)
        for target in TARGETS:
            report = measured[scenario][target]["loadtest"]
            assert report["streams"]["completed"] == load.streams
            assert report["tokens"]["delivered"] == load.expected_tokens
            assert report["tokens"]["lost"] == report["tokens"]["duplicated"] == 0
            assert report["errors"] == {}
            assert figures[scenario][target]["missing"] == 0
    assert [(row["scenario"], row["label"]) for row in summary["rows"]] == [
        (scenario, row.label) for scenario in TINY for row in ROWS[scenario]
    ]
    for row in summary["rows"]:
        assert row["values"].keys() == set(TARGETS)
        if row["ratio_of"] is not None:
            own = {"forwarder"} if row["ratio_of"] != row["key"] else set()  # its TTFT over its lag: a ratio too
            assert row["ratios"].keys() == {"tokenrelay", "naive", "forwarder-post", "forwarder-stored"} | own
            assert all(math.isfinite(r) and r > 0 for r in row["ratios"].values()), row
        if row["target"]:
            assert isinstance(row["met"], bool), row
        if row["key"] in ("lost_duplicated", "missing"):
            assert row["values"] == dict.fromkeys(TARGETS, 0), row
    assert len(format_table(summary).splitlines()) == 1 + len(summary["rows"])
    # forwarder-stored kept every frame it published (each stream's start and stop are the forwarder's own)
    stored_tokens = sum(load.expected_tokens for load in TINY.values())
    assert asyncio.run(_stored_frames(nats.url)) >= stored_tokens


async def _stored_frames(url: str) -> int:
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().stream_info(STORED_FRAMES_STREAM)
        await nc.jetstream().delete_stream(STORED_FRAMES_STREAM)
        return int(info.state.messages)
    finally:
        await nc.close()


def fake(target: str, *, lag_p99: float, relay_cpu_s: float, delivered: int = 1000) -> dict[str, Any]:
    """One measurement as :func:`bench.compare.measure` returns it, with only the figures these tests need."""
    latency = {"p50": 1.0, "p95": 2.0, "p99": lag_p99, "max": lag_p99, "n": delivered}
    relay = "streamer" if target == "tokenrelay" else "naive" if target == "naive" else "forwarder"
    return {
        "target": target,
        "processes": {relay: "http://relay"},
        "relay": relay,
        "nats_cpu_s": None if target == "naive" else 0.1,
        "loadgen_cpu_s": 0.5,
        "loadtest": {
            "config": {"max_tokens": [{"value": 10, "weight": 1}]},
            "duration_s": 1.0,
            "streams": {"started": 100, "completed": 100},
            "errors": {},
            "tokens": {"delivered": delivered, "lost": 0, "duplicated": 0},
            "token_lag_ms": latency,
            "ttft_ms": latency,
            "instances": {"http://relay": {"cpu_s": relay_cpu_s}},
        },
    }


def test_compare_ratios_divide_by_the_forwarder_of_the_same_round_then_take_the_median() -> None:
    options = CompareOptions(loads={"active": TINY["active"]}, runs=3)
    rounds = [
        {"active": {t: fake(t, lag_p99=lag[t], relay_cpu_s=0.01) for t in TARGETS}}
        for lag in (
            {"tokenrelay": 10.0, "forwarder": 5.0, "naive": 1.0, "forwarder-post": 5.0, "forwarder-stored": 5.0},  # 2x
            {
                "tokenrelay": 40.0,
                "forwarder": 10.0,
                "naive": 1.0,
                "forwarder-post": 10.0,
                "forwarder-stored": 20.0,
            },  # 4x
            {"tokenrelay": 3.0, "forwarder": 1.0, "naive": 1.0, "forwarder-post": 1.0, "forwarder-stored": 1.0},  # 3x
        )
    ]

    rows = {row["key"]: row for row in summarize(options, rounds)["rows"]}

    assert rows["lag_p99"]["values"] == {
        "tokenrelay": 10.0, "forwarder": 5.0, "naive": 1.0, "forwarder-post": 5.0, "forwarder-stored": 5.0
    }  # fmt: skip
    assert rows["lag_p99"]["ratios"]["forwarder-stored"] == 1.0  # 1, 2, 1
    assert rows["lag_p99"]["ratios"]["tokenrelay"] == 3.0  # not 10 / 5
    assert rows["lag_p99"]["met"] is True
    assert rows["relay_cpu_us_per_token"]["values"]["tokenrelay"] == 10.0
    assert set(rows["relay_cpu_us_per_token"]["ratios"].values()) == {1.0}
    assert "forwarder" not in rows["lag_p99"]["ratios"]  # a figure over itself
    assert rows["missing"]["values"] == dict.fromkeys(TARGETS, 0.0)
    assert math.isnan(rows["nats_cpu_us_per_token"]["values"]["naive"])


def test_the_first_token_row_divides_every_ttft_by_the_forwarder_token_lag_its_own_included() -> None:
    options = CompareOptions(loads={"first-token": TINY["first-token"]}, runs=1)
    rounds = [{"first-token": {t: fake(t, lag_p99=1.0, relay_cpu_s=0.01) for t in TARGETS}}]
    ttfts = {"tokenrelay": 4.0, "forwarder": 5.0, "naive": 2.0, "forwarder-post": 3.0, "forwarder-stored": 5.0}
    for target, ttft_p50 in ttfts.items():
        report = rounds[0]["first-token"][target]["loadtest"]
        report["ttft_ms"] = {**report["ttft_ms"], "p50": ttft_p50}
    forwarder = rounds[0]["first-token"]["forwarder"]["loadtest"]
    forwarder["token_lag_ms"] = {**forwarder["token_lag_ms"], "p50": 0.5}

    row = {row["key"]: row for row in summarize(options, rounds)["rows"]}["ttft_p50"]

    assert row["ratios"] == {
        "tokenrelay": 8.0, "forwarder": 10.0, "naive": 4.0, "forwarder-post": 6.0, "forwarder-stored": 10.0
    }  # fmt: skip
    assert row["met"] is False
    assert "forwarder-post ÷ fwd" in format_table(summarize(options, rounds)).splitlines()[0]


def test_compare_without_the_forwarder_has_no_ratios_and_no_verdict() -> None:
    options = CompareOptions(loads={"active": TINY["active"]}, targets=("tokenrelay", "naive"))
    rounds = [{"active": {t: fake(t, lag_p99=5.0, relay_cpu_s=0.01) for t in ("tokenrelay", "naive")}}]

    rows = {row["key"]: row for row in summarize(options, rounds)["rows"]}

    assert rows["lag_p99"]["ratios"] == {}
    assert rows["lag_p99"]["met"] is None
    assert rows["lost_duplicated"]["met"] is True
    assert "-" in format_table(summarize(options, rounds))


def test_the_peak_of_open_streams_sums_the_relay_processes_at_each_sample_and_ignores_the_others() -> None:
    raw = fake("tokenrelay", lag_p99=1.0, relay_cpu_s=0.01)
    raw["processes"] = {"streamer-1": "http://s1", "streamer-2": "http://s2", "runner": "http://r"}
    raw["relay"] = ["streamer-1", "streamer-2"]
    raw["loadtest"]["samples"] = [
        {"t": 1.0, "url": "http://s1", "readers_open": 300.0},
        {"t": 1.0, "url": "http://s2", "readers_open": 200.0},
        {"t": 1.0, "url": "http://r", "readers_open": 9000.0},  # not a relay process
        {"t": 2.0, "url": "http://s1", "readers_open": 450.0},  # each one's own peak is at a different time
        {"t": 2.0, "url": "http://s2", "readers_open": 10.0},
        {"t": 3.0, "url": "http://s1", "readers_open": None},
    ]

    assert peak_readers(raw) == 500.0
    assert math.isnan(peak_readers(fake("forwarder", lag_p99=1.0, relay_cpu_s=0.01)))  # nothing sampled
