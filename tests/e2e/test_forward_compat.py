"""Spec of a streamer meeting a newer runner mid-upgrade: an event of a type it does not know, in a live stream.

The test stands in for that newer runner: it keeps the stream's record and publishes the stream's events on its
events subject as a runner does, with an event of an unknown type taking the next ``seq`` between two deltas.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import nats
import orjson
import pytest
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from tests.helpers import eventually
from tokenrelay.testing.http import create_stream, metric
from tokenrelay.testing.procs import NatsServer, System, system
from tokenrelay.testing.sse import Stream, read_stream
from tokenrelay.wire import codec, subjects
from tokenrelay.wire.messages import FinishReason, StreamDelta, StreamEnd, StreamRecord, StreamStart, StreamState

UNKNOWN_EVENTS = "tokenrelay_streamer_unknown_events_total"
READERS_OPEN = "tokenrelay_streamer_readers_open"
UNKNOWN_TYPE = "citation"
EPOCH = "ep-newer"
READ_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def sut(nats: NatsServer) -> Iterator[System]:
    with system(nats.url) as running:
        yield running


@pytest.fixture
async def newer_runner(sut: System) -> AsyncIterator[tuple[NATS, KeyValue]]:
    nc = await nats.connect(sut.nats_url)
    try:
        yield nc, await nc.jetstream().key_value(subjects.STREAMS_BUCKET)
    finally:
        await nc.close()


def _record(stream_id: str, state: StreamState) -> bytes:
    return codec.encode(
        StreamRecord(
            stream_id=stream_id, state=state, model="newer", created=0, epoch=EPOCH, gateway_id="g", runner_id="newer"
        )
    )


def _read_as_a_client_sees_it(stream: Stream) -> tuple[list[str], str, object]:
    """The event names (each once in a row: the streamer may send two deltas as one), the text, the stop's data."""
    names = [name for name, _ in itertools.groupby(e.event for e in stream.events)]
    return names, stream.text, stream.terminal.json()


async def test_a_reader_gets_the_rest_of_a_live_stream_after_an_event_of_an_unknown_type_and_it_is_counted(
    sut: System, newer_runner: tuple[NATS, KeyValue]
) -> None:
    nc, kv = newer_runner
    stream_id = uuid.uuid4().hex
    events_subject = subjects.events(stream_id)
    counted_before = await metric(sut.streamer_url, UNKNOWN_EVENTS, type=UNKNOWN_TYPE)
    readers_before = await metric(sut.streamer_url, READERS_OPEN)
    await kv.put(stream_id, _record(stream_id, StreamState.RUNNING))
    start = StreamStart(stream_id=stream_id, epoch=EPOCH, model="newer", created=0, runner_id="newer", ts=time.time())
    await nc.publish(events_subject, codec.encode(start))
    await nc.publish(events_subject, codec.encode(StreamDelta(seq=1, text="Hello", index=1, count=1, ts=time.time())))
    await nc.flush()

    url = f"{sut.streamer_url}/v1/streams/{stream_id}/events"
    reading = asyncio.create_task(read_stream(url, timeout_s=READ_TIMEOUT_S))
    await eventually(
        lambda: metric(sut.streamer_url, READERS_OPEN),
        lambda open_now: open_now > readers_before,
        what="the reader to join the streamer",
    )
    # Live, in order: the unknown event takes seq 2, and the stream goes on after it.
    unknown = {"type": UNKNOWN_TYPE, "seq": 2, "index": 1, "url": "https://example.com/source"}
    await nc.publish(events_subject, orjson.dumps(unknown))
    await nc.publish(events_subject, codec.encode(StreamDelta(seq=3, text=" world", index=2, count=1, ts=time.time())))
    await nc.publish(
        events_subject, codec.encode(StreamEnd(seq=4, finish_reason=FinishReason.STOP, tokens=2, ttft_ms=1.0))
    )
    await nc.flush()
    await kv.put(stream_id, _record(stream_id, StreamState.FINISHED))

    live = await reading
    assert live.status == 200
    names, text, stop = _read_as_a_client_sees_it(live)
    assert (names, text) == (["start", "delta", "stop"], "Hello world")
    assert stop == {"finish_reason": "stop", "tokens": 2, "ttft_ms": 1.0}
    assert all((e.id or "").startswith(f"{EPOCH}:") for e in live.events)
    assert await metric(sut.streamer_url, UNKNOWN_EVENTS, type=UNKNOWN_TYPE) == counted_before + 1

    # A reader that comes after the end reads the stream from history, the unknown event in its place there too.
    late = await read_stream(url, timeout_s=READ_TIMEOUT_S)
    assert _read_as_a_client_sees_it(late) == (names, text, stop)
    assert await metric(sut.streamer_url, UNKNOWN_EVENTS, type=UNKNOWN_TYPE) == counted_before + 2


async def test_a_gateway_and_a_runner_drop_messages_of_a_type_they_do_not_know_count_them_and_go_on(
    sut: System, newer_runner: tuple[NATS, KeyValue]
) -> None:
    nc, _ = newer_runner
    await nc.publish(subjects.RUNNER_HEARTBEAT, orjson.dumps({"type": "runner_census", "runner_id": "newer"}))
    await nc.publish(subjects.STREAMER_LAG, orjson.dumps({"type": "streamer_census", "streamer_id": "newer"}))
    await nc.flush()
    await eventually(
        lambda: metric(sut.gateway_url, "tokenrelay_gateway_unknown_messages_total", type="runner_census"),
        lambda counted: counted == 1,
        what="the gateway to count the heartbeat of an unknown type",
    )
    await eventually(
        lambda: metric(sut.runners[0].url, "tokenrelay_runner_unknown_messages_total", type="streamer_census"),
        lambda counted: counted == 1,
        what="the runner to count the lag report of an unknown type",
    )
    created = await create_stream(sut.gateway_url, "still serving", max_tokens=5)
    stream = await read_stream(created["events_url"], timeout_s=READ_TIMEOUT_S)
    assert stream.terminal.event == "stop"
    assert stream.text
