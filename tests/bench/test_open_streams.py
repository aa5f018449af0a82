"""``bench.open_streams`` at tiny scale: every reader opens and stays open, the JSON has its shape.

No timing or memory bound is asserted (a CI machine's figures mean nothing); the full-scale numbers come
from ``python -m bench.open_streams`` (see its docstring).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from bench.open_streams import HttpEventStream, main

READERS = 50


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    argv = ["--readers", str(READERS), "--ramp-per-s", "200", "--hold-s", "2", "--settle-s", "0.5"]
    argv += ["--sample-s", "0.5", "--tokens-per-s", "5", "--runs", "1"]
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
        assert r["closed_early"] == 0
        assert r["ended_early"] == 0
        assert r["readers_at_rss_max"] == READERS
        assert r["terminal_events"] == {}  # no stream ended while it was held
        assert isinstance(r["rss_before_bytes"], float) and r["rss_before_bytes"] > 0
        assert r["rss_full_bytes"] >= r["rss_before_bytes"]
        assert isinstance(r["rss_per_reader_bytes"], float)
        assert r["hold_s"] >= 2
        assert [s["t"] for s in r["samples"]] == sorted(s["t"] for s in r["samples"])


def test_tokenrelay_readers_get_tokens_while_held_and_the_idle_baseline_none(result: dict[str, Any]) -> None:
    run = result["runs"][0]
    assert run["tokenrelay"]["deltas_held"] > 0
    assert run["tokenrelay"]["lag_ms"]["n"] == run["tokenrelay"]["deltas_held"]
    assert set(run["tokenrelay"]["lag_ms"]) == {"p50", "p95", "p99", "max", "n"}
    assert run["forwarder"]["deltas_held"] == 0
    assert {"streamer", "gateway", "nats", "runner-0"} <= set(run["tokenrelay"]["process_cpu_s_held"])
    assert isinstance(run["rss_per_reader_ratio"], float)


def test_the_json_holds_the_medians_and_the_fd_check(result: dict[str, Any]) -> None:
    assert result["fd_check"]["fits"] is True
    assert result["fd_check"]["needed_per_process"] > READERS
    medians = result["medians"]
    assert {"forwarder", "tokenrelay", "rss_per_reader_ratio"} <= set(medians)
    assert medians["tokenrelay"]["readers_opened"] == READERS
    assert set(medians["tokenrelay"]["lag_ms"]) == {"p50", "p95", "p99", "max", "n"}


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
