"""The benchmark baselines speak the subset of tokenrelay's native API that the load generator uses.

Each runs as real processes (the forwarder's two, in either of its modes, on the session's real
nats-server) and is read with the tests' own SSE client.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Iterator

import nats
import pytest
from nats.aio.msg import Msg

from bench.baselines.common import forwarder, naive_relay
from bench.baselines.forwarder import STOP_PREFIX, STREAM_SUBJECTS
from tests.helpers import eventually_true
from tokenrelay.runtime.natsio import barrier
from tokenrelay.testing.http import create_stream, metric, post, wait_for_metric
from tokenrelay.testing.procs import NatsServer
from tokenrelay.testing.sse import read_stream
from tokenrelay.testing.synthetic import expected_text

TOKENS_PER_S = 200.0
"""Fast enough that a finished stream takes a fraction of a second."""
LONG_STREAM_TOKENS = 100_000
READERS_OPEN = "tokenrelay_streamer_readers_open"


@pytest.fixture(scope="module", params=["forwarder", "forwarder_post", "naive_relay"])
def baseline(request: pytest.FixtureRequest, nats: NatsServer) -> Iterator[str]:
    """The base URL of one baseline, started for this module."""
    if request.param.startswith("forwarder"):
        start_at = "post" if request.param == "forwarder_post" else "get"
        with forwarder(nats.url, tokens_per_s=TOKENS_PER_S, start_at=start_at) as url:
            yield url
    else:
        with naive_relay(tokens_per_s=TOKENS_PER_S) as url:
            yield url


async def wait_for_readers_open(url: str, at_most: float, *, timeout_s: float = 30) -> None:
    """Poll the gauge until it falls to ``at_most``."""
    deadline = time.monotonic() + timeout_s
    while await metric(url, READERS_OPEN) > at_most:
        assert time.monotonic() < deadline, f"{READERS_OPEN} stayed above {at_most}"
        await asyncio.sleep(0.02)


class PublishedFrames:
    """The frames the forwarder's publisher has published on NATS, by stream id: what it generated, read or not."""

    def __init__(self) -> None:
        self._frames: dict[str, list[bytes]] = collections.defaultdict(list)

    def on_frame(self, subject: str, data: bytes) -> None:
        self._frames[subject.rpartition(".")[2]].append(data)

    def deltas(self, stream_id: str) -> int:
        """Tokens published for the stream so far."""
        return sum(frame.startswith(b"event: delta\n") for frame in self._frames[stream_id])

    def ended(self, stream_id: str) -> bool:
        """Whether the stream's ``stop`` frame was published."""
        return any(frame.startswith(STOP_PREFIX) for frame in self._frames[stream_id])


@contextlib.asynccontextmanager
async def published_frames(nats_url: str) -> AsyncIterator[PublishedFrames]:
    """Watch every stream's frames on NATS from before the stream is created (its first frame may come at once)."""
    frames = PublishedFrames()

    async def on_msg(msg: Msg) -> None:
        frames.on_frame(msg.subject, msg.data)

    nc = await nats.connect(nats_url, name="baseline-frames")
    try:
        await nc.subscribe(STREAM_SUBJECTS, cb=on_msg)
        await barrier(nc)
        yield frames
    finally:
        await nc.close()


async def test_baseline_creates_a_stream_with_an_absolute_events_url_on_itself(baseline: str) -> None:
    created = await create_stream(baseline, "hello", max_tokens=5)

    assert len(created["id"]) == 32
    assert created["events_url"] == f"{baseline}/v1/streams/{created['id']}/events"


async def test_baseline_streams_start_then_consecutive_deltas_then_stop_at_max_tokens(baseline: str) -> None:
    before = time.time()
    created = await create_stream(baseline, "baseline spec", max_tokens=30)

    stream = await read_stream(created["events_url"])

    assert stream.status == 200
    assert stream.headers["Content-Type"].startswith("text/event-stream")
    assert stream.headers["Cache-Control"] == "no-cache"
    start, *deltas, stop = stream.events
    assert (start.event, start.id) == ("start", "e:0")
    assert start.json()["stream_id"] == created["id"]
    assert {"model", "created"} <= start.json().keys()
    assert [d.event for d in deltas] == ["delta"] * 30
    assert [d.json()["index"] for d in deltas] == list(range(1, 31))
    assert [d.id for d in deltas] == [f"e:{i}" for i in range(1, 31)]
    stamps = [d.json()["ts"] for d in deltas]
    assert stamps == sorted(stamps)
    assert before <= stamps[0] <= stamps[-1] <= time.time()
    assert stream.text == expected_text("baseline spec", 30, length_tokens=30)
    assert stop.event == "stop"
    assert stop.json()["finish_reason"] == "length"
    assert stop.json()["tokens"] == 30
    assert stop.json()["ttft_ms"] >= 0


async def test_baseline_stop_ends_a_long_stream_with_cancelled(baseline: str) -> None:
    created = await create_stream(baseline, "stop me", max_tokens=LONG_STREAM_TOKENS)
    reader = asyncio.create_task(read_stream(created["events_url"]))
    await wait_for_metric(baseline, READERS_OPEN, 1)

    status, stopped = await post(f"{baseline}/v1/streams/{created['id']}/stop")
    stream = await reader

    assert status == 200
    assert stopped["id"] == created["id"]
    assert stopped["finish_reason"] == "cancelled"
    assert stream.terminal.event == "stop"
    assert stream.terminal.json()["finish_reason"] == "cancelled"
    assert stream.terminal.json()["tokens"] == stopped["tokens"] == len(stream.of("delta"))
    assert stopped["tokens"] < LONG_STREAM_TOKENS


@pytest.mark.parametrize("baseline", ["forwarder", "naive_relay"], indirect=True)
async def test_a_baseline_that_starts_at_the_get_stops_a_stream_nobody_read_with_no_tokens(baseline: str) -> None:
    created = await create_stream(baseline, "never read", max_tokens=5)

    status, stopped = await post(f"{baseline}/v1/streams/{created['id']}/stop")

    assert (status, stopped) == (200, {"id": created["id"], "finish_reason": "cancelled", "tokens": 0})


@pytest.mark.parametrize("baseline", ["forwarder_post"], indirect=True)
async def test_the_forwarder_started_at_the_post_generates_before_any_reader_and_stops_it_there(
    baseline: str, nats: NatsServer
) -> None:
    async with published_frames(nats.url) as published:
        created = await create_stream(baseline, "never read", max_tokens=LONG_STREAM_TOKENS)
        await eventually_true(lambda: published.deltas(created["id"]) >= 10, what="10 tokens generated, none read")

    status, stopped = await post(f"{baseline}/v1/streams/{created['id']}/stop")
    after = await read_stream(created["events_url"])

    assert status == 200
    assert stopped["finish_reason"] == "cancelled"
    assert 0 < stopped["tokens"] < LONG_STREAM_TOKENS
    assert after.status == 404


@pytest.mark.parametrize("baseline", ["forwarder_post"], indirect=True)
async def test_the_forwarder_started_at_the_post_answers_a_stop_after_the_end_with_how_it_ended(
    baseline: str, nats: NatsServer
) -> None:
    async with published_frames(nats.url) as published:
        created = await create_stream(baseline, "ended unread", max_tokens=3)
        await eventually_true(lambda: published.ended(created["id"]), what="the unread stream's stop frame")

    status, stopped = await post(f"{baseline}/v1/streams/{created['id']}/stop")

    assert (status, stopped) == (200, {"id": created["id"], "finish_reason": "length", "tokens": 3})


@pytest.mark.parametrize("baseline", ["forwarder_post"], indirect=True)
async def test_the_forwarder_started_at_the_post_gives_a_late_reader_every_token_in_order(
    baseline: str, nats: NatsServer
) -> None:
    async with published_frames(nats.url) as published:
        created = await create_stream(baseline, "late reader", max_tokens=40)
        # Some of them published before the GET: the reader gets those held, then the rest as they come.
        await eventually_true(lambda: published.deltas(created["id"]) >= 10, what="10 tokens published unread")

    stream = await read_stream(created["events_url"])

    start, *deltas, stop = stream.events
    assert start.event == "start"
    assert [d.json()["index"] for d in deltas] == list(range(1, 41))
    assert stream.text == expected_text("late reader", 40, length_tokens=40)
    assert (stop.event, stop.json()["tokens"]) == ("stop", 40)


async def test_baseline_metrics_count_an_open_reader_and_show_process_memory_and_cpu(baseline: str) -> None:
    created = await create_stream(baseline, "watch me", max_tokens=LONG_STREAM_TOKENS)
    reader = asyncio.create_task(read_stream(created["events_url"]))

    assert await wait_for_metric(baseline, READERS_OPEN, 1) == 1
    assert await metric(baseline, "process_resident_memory_bytes") > 0
    assert await metric(baseline, "process_cpu_seconds_total") > 0

    await post(f"{baseline}/v1/streams/{created['id']}/stop")
    await reader
    await wait_for_readers_open(baseline, 0)


async def test_baseline_answers_unknown_streams_and_bad_bodies_with_tokenrelay_errors(baseline: str) -> None:
    missing = await read_stream(f"{baseline}/v1/streams/{'0' * 32}/events")
    stop_status, stop_body = await post(f"{baseline}/v1/streams/{'0' * 32}/stop")
    bad_status, bad_body = await post(f"{baseline}/v1/streams", {"prompt": "x", "max_tokens": 0})

    assert missing.status == 404
    assert (stop_status, stop_body["error"]["code"]) == (404, "not_found")
    assert (bad_status, bad_body["error"]["code"]) == (400, "bad_request")


async def test_baseline_serves_a_stream_to_its_first_reader_only(baseline: str) -> None:
    created = await create_stream(baseline, "once", max_tokens=3)

    first = await read_stream(created["events_url"])
    second = await read_stream(created["events_url"])

    assert first.terminal.json()["tokens"] == 3
    assert second.status == 404
