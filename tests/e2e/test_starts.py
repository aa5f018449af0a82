"""Spec of what a streamer remembers of streams it saw starting: their epochs while they run, bounded in count and age.

A native reader of such a stream is served without reading the stream's record; any other reader reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import orjson
import pytest

from tokenrelay.runtime.config import LiveSubscription
from tokenrelay.runtime.natsdirect import DirectClient
from tokenrelay.streamer.hub import Hub
from tokenrelay.streamer.metrics import StreamerMetrics
from tokenrelay.streamer.reader import Reader
from tokenrelay.streamer.reader_state import ReaderState
from tokenrelay.streamer.starts import START_PREFIX, TERMINAL_PREFIXES, Kept, RecentStarts
from tokenrelay.testing.http import create_stream, metric, wait_finished
from tokenrelay.testing.procs import NatsServer, System, system
from tokenrelay.testing.sse import read_stream
from tokenrelay.testing.synthetic import expected_text
from tokenrelay.wire import codec, subjects
from tokenrelay.wire.messages import (
    CancelReason,
    FinishReason,
    StreamDelta,
    StreamEnd,
    StreamError,
    StreamEvent,
    StreamStart,
)

WAIT_S = 10.0
LOOKUPS = "tokenrelay_streamer_reader_lookups_total"


def start(stream_id: str, epoch: str = "e1") -> StreamStart:
    return StreamStart(stream_id=stream_id, epoch=epoch, model="m", created=0, runner_id="r", ts=0.0)


# --- the sans-I/O memory --------------------------------------------------------------------------


def test_a_stream_seen_starting_is_known_by_its_epoch() -> None:
    starts = RecentStarts()
    starts.started("s1", "e1", b"start", now=0.0)
    assert starts.epoch("s1", now=1.0) == "e1"
    assert starts.epoch("s2", now=1.0) is None


def test_a_stream_seen_ending_is_forgotten_with_its_events() -> None:
    starts = RecentStarts()
    starts.started("s1", "e1", b"start", now=0.0)
    starts.published("s1", b"delta")
    starts.ended("s1")
    assert starts.epoch("s1", now=0.0) is None
    assert starts.take_events("s1", "e1") is None
    assert starts.total_bytes == 0
    starts.ended("never-seen")  # harmless


def test_a_stream_seen_starting_stays_seen_after_its_end_within_the_ttl_and_one_never_seen_is_not() -> None:
    starts = RecentStarts(ttl_s=10.0)
    starts.started("s1", "e1", b"start", now=0.0)
    assert starts.seen("s1", now=1.0)
    starts.ended("s1")
    assert starts.seen("s1", now=1.0)
    assert starts.epoch("s1", now=1.0) is None  # its reader reads the record for how it ended
    assert not starts.seen("s1", now=11.0)
    assert not starts.seen("never", now=1.0)


def test_a_stream_started_again_is_known_by_its_new_epoch_and_starts_its_events_over() -> None:
    starts = RecentStarts()
    starts.started("s1", "e1", b"start-1", now=0.0)
    starts.published("s1", b"delta-1")
    starts.started("s1", "e2", b"start-2", now=1.0)
    assert starts.epoch("s1", now=1.0) == "e2"
    assert starts.take_events("s1", "e1") is None  # a reader of the old epoch gets nothing from here
    assert starts.take_events("s1", "e2") == Kept([b"start-2"], whole=True)
    assert len(starts) == 1


def test_past_its_ttl_a_stream_is_read_from_its_record_and_dropped_with_the_next_start() -> None:
    starts = RecentStarts(ttl_s=10.0)
    starts.started("old", "e1", b"start", now=0.0)
    assert starts.epoch("old", now=10.0) == "e1"
    assert starts.epoch("old", now=10.5) is None
    starts.started("new", "e2", None, now=10.5)
    assert len(starts) == 1
    assert starts.total_bytes == 0


def test_beyond_max_streams_the_oldest_start_is_forgotten() -> None:
    starts = RecentStarts(max_streams=2)
    for i in range(3):
        starts.started(f"s{i}", "e", b"start", now=float(i))
    assert starts.epoch("s0", now=3.0) is None
    assert starts.epoch("s1", now=3.0) == "e"
    assert starts.epoch("s2", now=3.0) == "e"
    assert len(starts) == 2
    assert starts.total_bytes == 2 * len(b"start")


def test_the_first_reader_takes_the_events_in_publish_order_and_later_readers_get_none() -> None:
    starts = RecentStarts()
    starts.started("s1", "e1", b"start", now=0.0)
    starts.published("s1", b"d1")
    starts.published("s1", b"d2")
    assert starts.take_events("s1", "e1") == Kept([b"start", b"d1", b"d2"], whole=True)
    assert starts.take_events("s1", "e1") is None
    assert starts.epoch("s1", now=0.0) == "e1"  # still known: later readers skip the record read
    assert starts.total_bytes == 0
    starts.published("s1", b"d3")  # after the take, nothing is kept
    assert starts.total_bytes == 0


def test_events_kept_before_an_outage_of_the_live_connection_are_not_whole_and_later_ones_are() -> None:
    starts = RecentStarts()
    starts.started("before", "e1", b"start-1", now=0.0)
    starts.published("before", b"d1")
    starts.lost_connection()
    starts.published("before", b"d3")  # d2 may have been published while the connection was down
    starts.started("after", "e2", b"start-2", now=1.0)
    assert starts.take_events("before", "e1") == Kept([b"start-1", b"d1", b"d3"], whole=False)
    assert starts.take_events("after", "e2") == Kept([b"start-2"], whole=True)


def test_a_stream_over_its_byte_bound_keeps_only_its_epoch() -> None:
    starts = RecentStarts(max_stream_bytes=10)
    starts.started("s1", "e1", b"start", now=0.0)
    starts.published("s1", b"12345")
    starts.published("s1", b"x")  # 11 bytes: a partial prefix is no head start
    assert starts.take_events("s1", "e1") is None
    assert starts.epoch("s1", now=0.0) == "e1"
    assert starts.total_bytes == 0


def test_past_the_total_byte_bound_new_streams_keep_only_their_epochs() -> None:
    starts = RecentStarts(max_total_bytes=12)
    starts.started("s1", "e1", b"start-1", now=0.0)
    starts.started("s2", "e2", b"start-2", now=0.0)
    assert starts.take_events("s2", "e2") is None
    assert starts.epoch("s2", now=0.0) == "e2"
    assert starts.take_events("s1", "e1") == Kept([b"start-1"], whole=True)


def test_a_start_seen_with_a_reader_already_here_keeps_no_events() -> None:
    starts = RecentStarts()
    starts.started("s1", "e1", None, now=0.0)
    starts.published("s1", b"delta")
    assert starts.take_events("s1", "e1") is None
    assert starts.epoch("s1", now=0.0) == "e1"


@pytest.mark.parametrize(
    ("bounds", "message"),
    [
        ({"max_streams": 0}, "max_streams must be > 0"),
        ({"ttl_s": 0.0}, "ttl_s must be > 0"),
        ({"max_stream_bytes": -1}, "max_stream_bytes must be >= 0"),
        ({"max_total_bytes": -1}, "max_total_bytes must be >= 0"),
    ],
)
def test_bounds_must_be_positive(bounds: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RecentStarts(**bounds)  # type: ignore[arg-type]


def test_the_byte_prefixes_match_what_the_codec_writes() -> None:
    assert codec.encode(start("s1")).startswith(START_PREFIX)
    end = StreamEnd(
        seq=2, finish_reason=FinishReason.CANCELLED, tokens=1, ttft_ms=1.0, cancel_reason=CancelReason.CLIENT
    )
    error = StreamError(seq=2, code="engine_error", message="boom", tokens=1)
    assert all(codec.encode(event).startswith(TERMINAL_PREFIXES) for event in (end, error))
    delta = codec.encode(StreamDelta(seq=1, text="x", index=1, count=1, ts=0.0))
    assert not delta.startswith(START_PREFIX) and not delta.startswith(TERMINAL_PREFIXES)


# --- the hub, on a real nats-server ---------------------------------------------------------------


async def _until(condition: object, what: str) -> None:
    assert callable(condition)
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def hub_of(
    nats: NatsServer, mode: LiveSubscription = LiveSubscription.SHARED
) -> AsyncIterator[tuple[Hub, DirectClient, DirectClient]]:
    """A hub, its own live connection, and a connection to publish events with."""
    live = DirectClient()
    await live.connect(nats.url, name=f"starts-hub-{mode}")
    publisher = DirectClient()
    await publisher.connect(nats.url)
    hub = Hub(live, heartbeat_s=15.0, metrics=StreamerMetrics(), live_subscription=mode)
    await hub.start()
    try:
        yield hub, live, publisher
    finally:
        await hub.shutdown("shutting_down", "test over")
        await publisher.close()
        await live.close()


@pytest.mark.parametrize("mode", list(LiveSubscription))
async def test_the_hub_remembers_streams_that_start_unread_until_they_end_in_shared_mode_only(
    nats: NatsServer, mode: LiveSubscription
) -> None:
    async with hub_of(nats, mode) as (hub, _, publisher):
        if mode is LiveSubscription.PER_STREAM:
            assert hub.starts is None  # it sees only the streams read here
            return
        assert hub.starts is not None
        starts = hub.starts
        stream_id = subjects.new_stream_id()
        await publisher.publish(subjects.events(stream_id), codec.encode(start(stream_id, "ep7")))
        await _until(lambda: starts.epoch(stream_id, hub.clock()) == "ep7", "the start was remembered")
        delta = StreamDelta(seq=1, text="x", index=1, count=1, ts=time.time())
        end = StreamEnd(seq=2, finish_reason=FinishReason.LENGTH, tokens=1, ttft_ms=1.0)
        await publisher.publish(subjects.events(stream_id), codec.encode(delta))
        await publisher.publish(subjects.events(stream_id), codec.encode(end))
        await _until(lambda: starts.epoch(stream_id, hub.clock()) is None, "the end made it forget the stream")


async def test_a_streams_first_reader_gets_the_events_seen_before_it_came_as_it_joins_and_the_rest_live(
    nats: NatsServer,
) -> None:
    async with hub_of(nats) as (hub, _, publisher):
        assert hub.starts is not None
        starts = hub.starts
        stream_id = subjects.new_stream_id()
        early = [codec.encode(start(stream_id, "ep1"))] + [
            codec.encode(StreamDelta(seq=seq, text=f"t{seq}", index=seq, count=1, ts=time.time())) for seq in (1, 2)
        ]
        for data in early:
            await publisher.publish(subjects.events(stream_id), data)
        await _until(lambda: starts.total_bytes == sum(map(len, early)), "the early events were kept")
        reader = Reader(stream_id, epoch="ep1", resume=None, max_buffered_bytes=1 << 20, now=0.0)
        await hub.attach(reader)
        sent = reader.buffer.take()  # no await since attach: nothing came from the network in between
        assert b"event: start" in sent and b"t1" in sent and b"t2" in sent
        assert reader.live_events == 0
        assert reader.replay.next_seq == 3
        assert reader.state is ReaderState.LIVE  # whole from the start, no gap, no outage: it reads no history
        assert starts.total_bytes == 0
        later = StreamDelta(seq=3, text="t3", index=3, count=1, ts=time.time())
        await publisher.publish(subjects.events(stream_id), codec.encode(later))
        await _until(lambda: reader.live_events == 1, "the next event arrived live")
        assert b"t3" in reader.buffer.take()


async def _kept_then_attached(hub: Hub, publisher: DirectClient, events: list[StreamEvent]) -> Reader:
    assert hub.starts is not None
    starts, stream_id = hub.starts, subjects.new_stream_id()
    encoded = [codec.encode(event) for event in events]
    for data in encoded:
        await publisher.publish(subjects.events(stream_id), data)
    await _until(lambda: starts.total_bytes == sum(map(len, encoded)), "the events were kept")
    reader = Reader(stream_id, epoch="ep1", resume=None, max_buffered_bytes=1 << 20, now=0.0)
    await hub.attach(reader)
    return reader


def _delta(seq: int) -> StreamDelta:
    return StreamDelta(seq=seq, text=f"t{seq}", index=seq, count=1, ts=time.time())


async def test_first_events_with_a_seq_gap_are_not_whole_and_the_reader_reads_history(nats: NatsServer) -> None:
    async with hub_of(nats) as (hub, _, publisher):
        reader = await _kept_then_attached(hub, publisher, [start("unused", "ep1"), _delta(1), _delta(3)])
        assert reader.state is ReaderState.CATCHING_UP  # it reads its history
        assert reader.replay.next_seq == 2  # delta 3 is held behind the gap


async def test_first_events_kept_across_a_reconnect_of_the_live_connection_are_not_whole(nats: NatsServer) -> None:
    async with hub_of(nats) as (hub, live, publisher):
        assert hub.starts is not None
        stream_id = subjects.new_stream_id()
        await publisher.publish(subjects.events(stream_id), codec.encode(start(stream_id, "ep1")))
        await _until(lambda: hub.starts is not None and hub.starts.total_bytes > 0, "the start was kept")
        live.stats["reconnects"] += 1  # what nats-py counts once it reconnected after an outage
        reader = Reader(stream_id, epoch="ep1", resume=None, max_buffered_bytes=1 << 20, now=0.0)
        await hub.attach(reader)
        assert reader.replay.next_seq == 1  # still a head start
        assert reader.state is ReaderState.CATCHING_UP  # it reads its history


# --- end to end ---------------------------------------------------------------------------------

RUNNER_ARGS = ["--synthetic-tokens-per-s", "50", "--synthetic-ttft-ms", "0", "--synthetic-length-tokens", "100000"]


@pytest.fixture(scope="module")
def sut(nats: NatsServer) -> Iterator[System]:
    with system(nats.url, runner_args=RUNNER_ARGS) as running:
        yield running


async def _lookups(sut: System, source: str) -> float:
    return await metric(sut.streamer_url, LOOKUPS, source=source)


async def test_a_reader_of_a_running_stream_seen_starting_gets_every_event_without_a_record_read(sut: System) -> None:
    created = await create_stream(sut.gateway_url, "no record read", max_tokens=30_000)
    # The streamer notes the start as it goes by on NATS, usually before the reader's GET; a reader that
    # comes first reads the record.  Readers of the running stream until one was served from the start.
    deadline = time.monotonic() + WAIT_S
    while True:
        before = await _lookups(sut, "start_event")
        stream = await read_stream(created["events_url"], stop_after=4)
        if await _lookups(sut, "start_event") == before + 1:
            break
        assert time.monotonic() < deadline, "no reader was served from the stream's start event"
        await asyncio.sleep(0.05)
    assert stream.status == 200
    assert [e.event for e in stream.events][:2] == ["start", "delta"]
    ids = [e.id or "" for e in stream.events]
    epoch = ids[0].split(":")[0]
    assert epoch and all(i.startswith(f"{epoch}:") for i in ids)
    assert expected_text("no record read", 30_000).startswith(stream.text)
    # Its cursor belongs to this epoch; another epoch's is refused, as with a record read.
    async with (
        aiohttp.ClientSession() as session,
        session.get(created["events_url"], headers={"Last-Event-ID": "deadbeef:3"}) as forged,
    ):
        assert forged.status == 410
        assert orjson.loads(await forged.read())["error"]["code"] == "resume_unavailable"
    async with aiohttp.ClientSession() as session, session.post(created["stop_url"]) as response:
        assert response.status == 200


async def test_a_first_reader_whose_first_events_were_kept_whole_reads_no_history_and_gets_every_event(
    sut: System,
) -> None:
    fetches = "tokenrelay_streamer_history_fetches_total"
    skipped = "tokenrelay_streamer_history_reads_skipped_total"
    # A reader whose GET comes before the streamer saw the start reads history: try until one did not.
    deadline = time.monotonic() + WAIT_S
    while True:
        created = await create_stream(sut.gateway_url, "whole from memory", max_tokens=12)
        fetched, skipped_before = await metric(sut.streamer_url, fetches), await metric(sut.streamer_url, skipped)
        stream = await read_stream(created["events_url"])
        if await metric(sut.streamer_url, skipped) == skipped_before + 1:
            break
        assert time.monotonic() < deadline, "no reader's first events were whole"
    assert await metric(sut.streamer_url, fetches) == fetched
    assert stream.text == expected_text("whole from memory", 12)
    assert stream.terminal.event == "stop"


async def test_a_reader_of_a_finished_stream_reads_its_record(sut: System) -> None:
    created = await create_stream(sut.gateway_url, "finished first", max_tokens=3)
    await wait_finished(sut.gateway_url, created["id"])
    # Its end event may reach the streamer a moment after the record says finished: read until it did.
    deadline = time.monotonic() + WAIT_S
    while True:
        before = await _lookups(sut, "record")
        stream = await read_stream(created["events_url"])
        assert stream.text == expected_text("finished first", 3)
        assert stream.terminal.event == "stop"
        if await _lookups(sut, "record") == before + 1:
            break
        assert time.monotonic() < deadline, "a reader of the finished stream never read its record"
        await asyncio.sleep(0.05)
