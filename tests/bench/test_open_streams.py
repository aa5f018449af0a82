"""``bench.open_streams`` at tiny scale: two streamers on one port, two load generator processes; every reader
opens, stays open and gets a token, and the JSON has its shape.

No timing or memory bound is asserted (a CI machine's figures mean nothing); the full-scale numbers come
from ``python -m bench.open_streams`` (see its docstring).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from bench.open_streams import main, parse_args
from bench.open_streams_loadgen import addresses_of, lag_summary, merge_reports
from bench.open_streams_reader import HttpEventStream, error_source
from bench.open_streams_report import streamer_summary

READERS = 240
PER_STREAM = 4


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    argv = ["--readers", str(READERS), "--readers-per-stream", str(PER_STREAM), "--streamers", "2"]
    argv += ["--loadgen-processes", "2", "--source-addresses", "3", "--ramp-per-s", "400", "--hold-s", "2"]
    argv += ["--settle-s", "0.5", "--sample-s", "0.5", "--tokens-per-s", "5", "--runs", "1"]
    return asyncio.run(main(argv))


def test_every_reader_opens_and_stays_open_in_both_phases(result: dict[str, Any]) -> None:
    run = result["runs"][0]
    for phase in ("forwarder", "tokenrelay"):
        r = run[phase]
        assert r["readers_requested"] == READERS
        assert r["readers_opened"] == READERS, r["errors"]
        assert r["readers_open_at_end"] == READERS
        assert r["readers_open_gauge_min"] == READERS
        assert r["errors"] == {}
        assert r["errors_by_source"] == {}
        assert r["closed_early"] == 0
        assert r["ended_early"] == 0
        assert r["readers_at_rss_max"] == READERS
        assert r["terminal_events"] == {}  # no stream ended while it was held
        assert isinstance(r["rss_per_reader_bytes"], float)
        assert r["hold_s"] >= 2
        assert [s["t"] for s in r["samples"]] == sorted(s["t"] for s in r["samples"])


def test_every_tokenrelay_reader_gets_a_token_while_held_and_no_idle_baseline_reader_does(
    result: dict[str, Any],
) -> None:
    run = result["runs"][0]
    ours = run["tokenrelay"]
    assert ours["readers_with_token_held"] == READERS
    assert ours["token_pct"] == 100
    assert ours["lag_ms"]["n"] == ours["deltas_held"] > 0
    assert run["forwarder"]["readers_with_token_held"] == 0
    assert run["forwarder"]["deltas_held"] == 0
    assert isinstance(run["rss_per_reader_ratio"], float)


def test_the_readers_share_the_streamers_and_their_rss_growth_is_summed(result: dict[str, Any]) -> None:
    ours = result["runs"][0]["tokenrelay"]
    streamers = ours["streamers"]
    assert set(streamers) == {"streamer-0", "streamer-1"}
    assert sum(s["readers_at_rss_peak"] for s in streamers.values()) == READERS
    assert all(s["readers_open_min"] > 0 for s in streamers.values())  # the kernel spread them over both
    assert ours["rss_growth_bytes"] == sum(s["rss_growth_bytes"] for s in streamers.values())
    assert ours["rss_per_reader_bytes"] == ours["rss_growth_bytes"] / READERS
    assert ours["streams"] == READERS // PER_STREAM
    assert {"streamer-0", "streamer-1", "gateway", "nats", "runner-0"} <= set(ours["process_cpu_s_held"])
    assert len(ours["loadgen_rss_bytes"]) == 2


def test_the_largest_runner_heartbeat_is_measured_on_the_bench_nats(result: dict[str, Any]) -> None:
    beat = result["runs"][0]["tokenrelay"]["heartbeat"]
    assert beat["count"] > 0
    assert beat["max_bytes"] > 0
    assert beat["listed_streams"] <= READERS // PER_STREAM
    assert result["runs"][0]["forwarder"]["heartbeat"]["count"] == 0


def test_the_json_holds_the_medians_and_the_fd_check(result: dict[str, Any]) -> None:
    assert result["fd_check"]["fits"] is True
    assert result["fd_check"]["needed_per_loadgen"] > READERS // 2
    medians = result["medians"]
    assert {"forwarder", "tokenrelay", "rss_per_reader_ratio"} <= set(medians)
    assert medians["tokenrelay"]["readers_opened"] == READERS
    assert medians["tokenrelay"]["heartbeat_max_bytes"] > 0
    assert set(medians["tokenrelay"]["lag_ms"]) == {"p50", "p95", "p99", "max", "n"}


def test_the_gateway_keeps_its_own_unread_grace_unless_one_is_given() -> None:
    assert parse_args([]).unread_grace_s is None
    assert parse_args(["--unread-grace-s", "0"]).unread_grace_s == 0


def test_errors_are_put_down_to_the_gateway_the_streamers_or_the_load_generator() -> None:
    assert error_source("create_http_503") == "gateway"
    assert error_source("create_timeout") == "gateway"
    assert error_source("loadgen_fd_limit") == "loadgen"
    assert error_source("eaddrnotavail") == "loadgen"
    assert error_source("events_http_503") == "streamer"
    assert error_source("closed_before_start") == "streamer"
    assert error_source("timeout") == "streamer"


def test_the_load_generators_share_the_source_addresses_without_overlap_when_there_are_enough() -> None:
    shares = [addresses_of(i, 2, 5) for i in range(2)]
    assert shares == [["127.0.0.1", "127.0.0.3", "127.0.0.5"], ["127.0.0.2", "127.0.0.4"]]
    assert [addresses_of(i, 3, 2) for i in range(3)] == [["127.0.0.1"], ["127.0.0.2"], ["127.0.0.1"]]


def test_a_streamers_rss_growth_is_its_highest_sample_less_its_rss_before_with_the_readers_it_counted_then() -> None:
    def sample(t: float, rss: float | None, readers: float | None, cpu: float) -> dict[str, Any]:
        return {"t": t, "streamers": {"streamer-0": {"rss_bytes": rss, "cpu_s": cpu, "readers_open": readers}}}

    before: dict[str, dict[str, float | None]] = {"streamer-0": {"rss_bytes": 100.0, "cpu_s": 1.0, "readers_open": 0.0}}
    samples = [sample(0, 900, 10, 2.0), sample(1, 1100, 12, 2.5), sample(2, None, None, 3.0), sample(3, 1000, 9, 4.0)]
    summary = streamer_summary("streamer-0", before, samples)
    assert summary["rss_peak_bytes"] == 1100
    assert summary["rss_growth_bytes"] == 1000
    assert summary["readers_at_rss_peak"] == 12
    assert summary["readers_open_min"] == 9
    assert summary["cpu_s_held"] == 2.0


def _report(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "handed": 0, "opened": 0, "open_now": 0, "with_token_held": 0, "closed_early": 0, "ended_early": 0,
        "deltas_held": 0, "errors": {}, "terminal_events": {}, "error_examples": {}, "lag_buckets": [],
        "lag_max_ms": None, "cpu_s_held": 0.0, "rss_bytes": 1,
    }  # fmt: skip
    return base | fields


def test_load_generator_reports_merge_into_summed_counts_and_lag_over_every_bucket() -> None:
    merged = merge_reports(
        [
            _report(opened=3, with_token_held=2, errors={"timeout": 1}, lag_buckets=[[1.0, 90]], lag_max_ms=1.2),
            _report(opened=4, with_token_held=4, errors={"timeout": 2, "emfile": 1}, lag_buckets=[[50.0, 10]],
                    lag_max_ms=70.0),
        ]
    )  # fmt: skip
    assert merged["opened"] == 7
    assert merged["with_token_held"] == 6
    assert merged["errors"] == {"timeout": 3, "emfile": 1}
    assert merged["lag_ms"] == {"p50": 1.0, "p95": 50.0, "p99": 50.0, "max": 70.0, "n": 100}


def test_lag_of_no_token_has_no_percentiles() -> None:
    assert lag_summary([], None) == {"p50": None, "p95": None, "p99": None, "max": None, "n": 0}


def test_the_reader_parser_decodes_a_chunked_sse_body_split_anywhere() -> None:
    events = b"event: start\ndata: {}\n\n" + b"".join(
        b'event: delta\nid: e:%d\ndata: {"text":"\xc3\xa9\xf0\x9f\x91\x8b","index":%d}\n\n' % (i, i)
        for i in range(1, 40)
    )
    pieces = [events[i : i + 37] for i in range(0, len(events), 37)]
    body = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    rng = random.Random(7)
    for _ in range(50):
        parser, got, at = HttpEventStream(), [], 0
        while at < len(raw):
            step = rng.randint(1, 60)
            got += parser.feed(raw[at : at + step])
            at += step
        assert parser.status == 200
        assert parser.ended
        assert [e.event for e in got] == ["start"] + ["delta"] * 39
        assert got[-1].data == '{"text":"é👋","index":39}'
