"""Publish pacing (sans-I/O): a runner holds tokens longer while a streamer reports that they reach it late, and
the streamer's side, what it reports when."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from tests.helpers import STOPPED_TOKENS
from tokenrelay.runner.batcher import DeltaBatcher
from tokenrelay.runner.pace import MAX_STREAMERS, PublishPace
from tokenrelay.runtime.natsdirect import DirectClient
from tokenrelay.streamer.flush import FlushClock, LagReporter
from tokenrelay.streamer.hub import Hub
from tokenrelay.streamer.metrics import StreamerMetrics
from tokenrelay.streamer.reader import Reader
from tokenrelay.testing.http import create_stream, metric, post
from tokenrelay.testing.procs import System, nats_server, system
from tokenrelay.testing.sse import Stream, read_stream
from tokenrelay.wire import codec, subjects
from tokenrelay.wire.messages import (
    LAG_REPORT_INTERVAL_S,
    LAG_REPORT_TTL_S,
    FinishReason,
    StreamDelta,
    StreamEnd,
    StreamerLag,
    StreamStart,
)

BASE_S = 0.005
MAX_S = 0.100
T0 = 1000.0
WAIT_S = 30.0


# The runner's pace


def test_with_no_report_the_interval_is_the_configured_one() -> None:
    pace = PublishPace(BASE_S, max_interval_s=MAX_S)
    assert pace.adapts and pace.interval_s == BASE_S


def test_a_late_streamer_sets_the_interval_to_its_lateness_up_to_the_maximum() -> None:
    pace = PublishPace(BASE_S, max_interval_s=MAX_S)
    pace.report("streamer-a", 0.040, T0)
    assert pace.interval_s == 0.040
    pace.report("streamer-a", 3.0, T0 + 0.25)
    assert pace.interval_s == MAX_S


def test_the_latest_streamer_sets_the_pace_and_an_on_time_report_withdraws_its_own() -> None:
    pace = PublishPace(BASE_S, max_interval_s=MAX_S)
    pace.report("streamer-a", 0.030, T0)
    pace.report("streamer-b", 0.060, T0)
    assert pace.interval_s == 0.060
    pace.report("streamer-b", 0.0, T0 + 0.25)
    assert pace.interval_s == 0.030
    pace.report("streamer-a", 0.0, T0 + 0.25)
    assert pace.interval_s == BASE_S


def test_a_lateness_below_the_configured_interval_changes_nothing() -> None:
    pace = PublishPace(BASE_S, max_interval_s=MAX_S)
    pace.report("streamer-a", 0.001, T0)
    assert pace.interval_s == BASE_S


def test_a_streamer_that_stopped_reporting_no_longer_counts() -> None:
    pace = PublishPace(BASE_S, max_interval_s=MAX_S)
    pace.report("streamer-a", 0.080, T0)
    pace.expire(T0 + LAG_REPORT_TTL_S)
    assert pace.interval_s == 0.080  # still within its time
    pace.expire(T0 + LAG_REPORT_TTL_S + 0.01)
    assert pace.interval_s == BASE_S


def test_reports_from_more_streamers_than_the_bound_are_ignored_until_some_expire() -> None:
    pace = PublishPace(BASE_S, max_interval_s=MAX_S)
    for i in range(MAX_STREAMERS):
        pace.report(f"streamer-{i}", 0.020, T0)
    pace.report("one-too-many", 0.090, T0)
    assert pace.interval_s == 0.020
    pace.report("streamer-0", 0.030, T0)  # one already remembered still counts
    assert pace.interval_s == 0.030
    pace.expire(T0 + LAG_REPORT_TTL_S + 0.01)
    pace.report("one-too-many", 0.090, T0 + LAG_REPORT_TTL_S + 0.01)
    assert pace.interval_s == 0.090


def test_without_a_maximum_above_the_base_the_interval_is_fixed() -> None:
    pace = PublishPace(BASE_S)
    pace.report("streamer-a", 1.0, T0)
    assert not pace.adapts and pace.interval_s == BASE_S
    with pytest.raises(ValueError, match="max_interval_s"):
        PublishPace(BASE_S, max_interval_s=BASE_S / 2)


def test_a_batcher_holds_tokens_for_the_pace_of_the_moment() -> None:
    pace = PublishPace(BASE_S, max_interval_s=MAX_S)
    batcher = DeltaBatcher(pace)
    assert batcher.add("a", T0)  # the first token of a quiet stream goes at once, whatever the pace
    batcher.take(T0)
    pace.report("streamer-a", 0.050, T0)
    assert not batcher.add("b", T0 + 0.010)  # due at T0 + 50 ms now, not T0 + 5 ms
    assert batcher.deadline() == pytest.approx(T0 + 0.050)
    pace.report("streamer-a", 0.0, T0 + 0.020)
    assert batcher.deadline() == pytest.approx(T0 + BASE_S)


# The streamer's reports


def test_an_on_time_streamer_reports_nothing() -> None:
    flush = FlushClock(0.010, max_interval_s=0.100)
    reporter = LagReporter(flush)
    for _ in range(100):
        flush.observe_lag(0.002)
    assert reporter.next() is None


def test_a_late_streamer_reports_its_lateness_each_time_then_zero_once_when_on_time_again() -> None:
    flush = FlushClock(0.010, max_interval_s=0.100)
    reporter = LagReporter(flush)
    for _ in range(500):
        flush.observe_lag(0.5)
    first = reporter.next()
    assert first is not None and first == pytest.approx(flush.lag_s) and first > 0.010
    flush.observe_lag(0.5)
    assert reporter.next() == pytest.approx(flush.lag_s)
    for _ in range(1000):
        flush.observe_lag(0.001)
    assert reporter.next() == 0.0
    flush.observe_lag(0.001)
    assert reporter.next() is None


def test_a_streamer_with_no_live_event_since_its_last_report_is_on_time() -> None:
    # Its running average keeps the lateness of its last events, but it is behind on nothing.
    flush = FlushClock(0.010, max_interval_s=0.100)
    reporter = LagReporter(flush)
    for _ in range(500):
        flush.observe_lag(0.5)
    assert reporter.next() is not None
    assert reporter.next() == 0.0
    assert reporter.next() is None


def test_a_streamer_with_a_fixed_flush_interval_still_reports_its_lateness() -> None:
    flush = FlushClock(0.010)
    reporter = LagReporter(flush)
    for _ in range(500):
        flush.observe_lag(0.5)
    assert flush.interval_s == 0.010
    assert reporter.next() == pytest.approx(flush.lag_s)


# On a real nats-server, with real processes

TOKENS_PER_S = 50  # a token every 20 ms: a pace of 80 ms holds about four per message
PACE_S = 0.080


@pytest.fixture(scope="module")
def sut() -> Iterator[System]:
    # A NATS of its own: the lag reports this module sends reach only its runner.
    runner = ["--synthetic-tokens-per-s", str(TOKENS_PER_S), "--synthetic-ttft-ms", "0"]
    runner += ["--synthetic-length-tokens", "100000"]
    with nats_server() as own, system(own.url, runner_args=runner) as running:
        yield running


@contextlib.asynccontextmanager
async def connected(sut: System) -> AsyncIterator[NATS]:
    nc = NATS()
    await nc.connect(sut.nats_url)
    try:
        yield nc
    finally:
        await nc.close()


async def _wait_for(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not await condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def test_a_runner_told_a_streamer_is_late_publishes_each_stream_in_fewer_messages_then_goes_back(
    sut: System,
) -> None:
    runner_url = sut.runners[0].url
    interval = "tokenrelay_runner_publish_interval_seconds"
    assert await metric(runner_url, interval) == pytest.approx(0.005)
    async with connected(sut) as nc:
        created = await create_stream(sut.gateway_url, "paced", max_tokens=STOPPED_TOKENS)
        deltas: list[StreamDelta] = []

        async def collect(msg: Msg) -> None:
            event = codec.decode_event(msg.data)
            if isinstance(event, StreamDelta):
                deltas.append(event)

        sub = await nc.subscribe(subjects.events(created["id"]), cb=collect)
        report = codec.encode(StreamerLag(streamer_id="streamer-test", lag_s=PACE_S))

        async def paced() -> bool:
            await nc.publish(subjects.STREAMER_LAG, report)
            return await metric(runner_url, interval) == pytest.approx(PACE_S)

        await _wait_for(paced, "the runner took up the reported lateness")
        deltas.clear()
        while sum(d.count for d in deltas) < 40:  # ~0.8 s of tokens, reported late all along
            await nc.publish(subjects.STREAMER_LAG, report)
            await asyncio.sleep(LAG_REPORT_INTERVAL_S / 2)
        paced_deltas = list(deltas)
        await nc.publish(subjects.STREAMER_LAG, codec.encode(StreamerLag(streamer_id="streamer-test", lag_s=0.0)))
        await _wait_for(
            lambda: _equals(metric(runner_url, interval), 0.005), "an on-time report brought the interval back"
        )
        await sub.unsubscribe()
        status, _ = await post(created["stop_url"])
        assert status == 200
    tokens, messages = sum(d.count for d in paced_deltas), len(paced_deltas)
    print(f"\npaced at {PACE_S * 1000:.0f} ms: {tokens} tokens in {messages} messages")
    assert tokens / messages >= 2  # about 4; one per message unpaced
    held = [d.held_s for d in paced_deltas if d.count > 1]
    assert sum(held) / len(held) > 0.010  # each says how long it was held (about the pace): streamers leave it out


async def _equals(value: Awaitable[float], expected: float) -> bool:
    return await value == pytest.approx(expected)


async def test_a_streamer_that_gets_tokens_late_reports_it_and_reports_zero_once_it_no_longer_does(
    sut: System,
) -> None:
    async with connected(sut) as nc:
        reports: list[StreamerLag] = []

        async def heard(msg: Msg) -> None:
            reports.append(codec.decode_as(msg.data, StreamerLag))

        await nc.subscribe(subjects.STREAMER_LAG, cb=heard)
        # This test plays the runner of a stream the streamer sees start, and reads it there.
        stream_id, epoch = subjects.new_stream_id(), "ep-late"
        events = subjects.events(stream_id)
        start = StreamStart(stream_id=stream_id, epoch=epoch, model="m", created=0, runner_id="r", ts=time.time())
        reader = await _reader_once_seen(sut, nc, events, start)
        seq = 0
        while not any(r.lag_s > 0.5 for r in reports):  # every token a second old
            seq += 1
            late = StreamDelta(seq=seq, text="x", index=seq, count=1, ts=time.time() - 1.0)
            await nc.publish(events, codec.encode(late))
            await asyncio.sleep(0.01)
            assert seq < WAIT_S * 100, f"no lateness reported: {reports}"
        late_reports = len(reports)
        await _wait_for(lambda: _true(reports[-1].lag_s == 0.0), "no zero report once tokens stopped coming late")
        assert all(r.lag_s > 0 for r in reports[:late_reports])
        end = StreamEnd(seq=seq + 1, finish_reason=FinishReason.LENGTH, tokens=seq, ttft_ms=0.0)
        await nc.publish(events, codec.encode(end))
        stream = await reader
    assert stream.text == "x" * seq


async def _true(value: bool) -> bool:
    return value


async def _reader_once_seen(sut: System, nc: NATS, events: str, start: StreamStart) -> asyncio.Task[Stream]:
    """A reader of a stream that has no record, only the start this test publishes: the streamer knows it once it
    has read that start, which a loaded machine may not have done when the GET arrives (it answers 404); the start
    is published again (a reader drops the copy by seq) until a reader is open."""
    url = f"{sut.streamer_url}/v1/streams/{start.stream_id}/events"
    for _ in range(int(WAIT_S) * 10):
        await nc.publish(events, codec.encode(start))
        await nc.flush()
        reader = asyncio.create_task(read_stream(url))
        while not reader.done():
            if await metric(sut.streamer_url, "tokenrelay_streamer_readers_open") >= 1:
                return reader
            await asyncio.sleep(0.02)
        assert reader.result().status == 404, reader.result()
    raise AssertionError("the streamer never served the stream it saw start")


async def test_what_a_runner_held_back_on_purpose_is_no_lateness_of_the_streamers(sut: System) -> None:
    flush = FlushClock(0.010, max_interval_s=0.100)
    live, publisher = DirectClient(), NATS()
    await live.connect(sut.nats_url)
    await publisher.connect(sut.nats_url)
    hub = Hub(live, heartbeat_s=15.0, metrics=StreamerMetrics(), flush=flush)
    await hub.start()
    try:
        stream_id = subjects.new_stream_id()
        reader = Reader(stream_id, epoch="ep1", resume=None, max_buffered_bytes=1 << 20, now=0.0)
        await hub.attach(reader)
        start = StreamStart(stream_id=stream_id, epoch="ep1", model="m", created=0, runner_id="r", ts=time.time())
        await publisher.publish(subjects.events(stream_id), codec.encode(start))
        for seq in range(1, 201):
            # Made a second ago, held by its runner until just now: on time here.
            held = StreamDelta(seq=seq, text="x", index=seq, count=1, ts=time.time() - 1.0, held_s=1.0)
            await publisher.publish(subjects.events(stream_id), codec.encode(held))
        await _wait_for(lambda: _true(reader.live_events == 201), "the deltas arrived")
        assert flush.lag_s < 0.5  # it would be a second had the holding counted
    finally:
        await hub.shutdown("shutting_down", "test over")
        await publisher.close()
        await live.close()
