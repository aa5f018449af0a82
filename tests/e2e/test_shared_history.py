"""Spec of a stream's shared history on a streamer: its later readers are handed it as they join and read none.

On the hub over a real nats-server, then end to end: many readers of one running stream, each with the whole text.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from nats.aio.client import Client as NATS

from tests.e2e.test_hub import new_reader, running_hub, start_event, stream_ids, until
from tokenrelay.runtime.config import LiveSubscription
from tokenrelay.streamer.hub import Hub
from tokenrelay.streamer.reader import Reader
from tokenrelay.streamer.reader_state import ReaderState
from tokenrelay.testing.http import create_stream, metric
from tokenrelay.testing.procs import NatsServer, System, system
from tokenrelay.testing.sse import read_stream
from tokenrelay.testing.synthetic import expected_text
from tokenrelay.wire import codec, subjects
from tokenrelay.wire.messages import ReceivedEvent, StreamDelta, StreamStart

WAIT_S = 10.0
HANDED = "tokenrelay_streamer_shared_history_readers_total"
FETCHES = "tokenrelay_streamer_history_fetches_total"


def delta(seq: int) -> StreamDelta:
    return StreamDelta(seq=seq, text=f"t{seq}", index=seq, count=1, ts=time.time())


async def publish(publisher: NATS, stream_id: str, seqs: range) -> None:
    for seq in seqs:
        data = start_event(stream_id) if seq == 0 else codec.encode(delta(seq))
        await publisher.publish(subjects.events(stream_id), data)


async def joined(hub: Hub, stream_id: str) -> Reader:
    reader = new_reader(stream_id)
    await hub.attach(reader)
    return reader


# --- on the hub -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(LiveSubscription))
async def test_a_reader_joining_a_stream_whose_shared_history_is_whole_is_handed_it_and_is_live_at_once(
    nats: NatsServer, mode: LiveSubscription
) -> None:
    async with running_hub(nats, mode, f"shared-handed-{mode}") as (hub, publisher):
        (stream_id,) = stream_ids(1)
        first, second = await joined(hub, stream_id), await joined(hub, stream_id)  # the second opens it
        await publish(publisher, stream_id, range(4))
        await until(lambda: second.live_events == 4, "the events came live")
        assert hub.shared_epoch(stream_id) == "e1"
        third = await joined(hub, stream_id)
        sent = third.buffer.take()  # no await since attach: nothing came from the network in between
        assert b"event: start" in sent and b"t1" in sent and b"t3" in sent
        assert third.state is ReaderState.LIVE  # it reads no history
        assert third.replay.next_seq == 4
        assert third.live_events == 0
        await publish(publisher, stream_id, range(4, 5))
        await until(lambda: third.live_events == 1, "the next event came live")
        assert b"t4" in third.buffer.take()
        assert first.state is ReaderState.CATCHING_UP  # untouched: its own catch-up is not part of this spec


async def test_the_events_before_the_sharing_opened_come_from_a_readers_history_pages(nats: NatsServer) -> None:
    async with running_hub(nats, LiveSubscription.SHARED, "shared-pages") as (hub, publisher):
        (stream_id,) = stream_ids(1)
        first = await joined(hub, stream_id)
        await publish(publisher, stream_id, range(3))
        await until(lambda: first.live_events == 3, "the first events came live")
        second = await joined(hub, stream_id)
        await publish(publisher, stream_id, range(3, 4))
        await until(lambda: second.live_events == 1, "the next event came live")
        assert hub.shared_epoch(stream_id) is None  # 0..2 went by before it opened
        before: list[ReceivedEvent] = [
            StreamStart(stream_id=stream_id, epoch="e1", model="m", created=0, runner_id="r", ts=0.0),
            delta(1),
            delta(2),
        ]
        hub.history_read(second, before, 300)  # the second reader's history read, as its catch-up makes it
        assert hub.shared_epoch(stream_id) == "e1"
        third = await joined(hub, stream_id)
        assert third.state is ReaderState.LIVE
        assert third.replay.next_seq == 4


async def test_after_an_outage_of_the_live_connection_no_reader_is_handed_a_shared_history(nats: NatsServer) -> None:
    async with running_hub(nats, LiveSubscription.SHARED, "shared-outage") as (hub, publisher):
        (stream_id,) = stream_ids(1)
        await joined(hub, stream_id)
        second = await joined(hub, stream_id)
        await publish(publisher, stream_id, range(2))
        await until(lambda: second.live_events == 2, "the events came live")
        hub._nc.stats["reconnects"] += 1  # what nats-py counts once it reconnected after an outage
        third = await joined(hub, stream_id)
        assert third.state is ReaderState.CATCHING_UP
        assert hub.shared_epoch(stream_id) is None
        assert hub.shared_history.total_bytes == 0


async def test_a_gap_in_the_live_events_ends_the_sharing_and_the_last_reader_leaving_frees_what_it_held(
    nats: NatsServer,
) -> None:
    async with running_hub(nats, LiveSubscription.SHARED, "shared-gap") as (hub, publisher):
        (stream_id,) = stream_ids(1)
        readers = [await joined(hub, stream_id), await joined(hub, stream_id)]
        await publish(publisher, stream_id, range(2))
        await until(lambda: readers[1].live_events == 2, "the events came live")
        assert hub.shared_history.total_bytes > 0
        for reader in readers:
            hub.detach(reader)
        assert hub.shared_history.total_bytes == 0

        other = stream_ids(1)[0]
        readers = [await joined(hub, other), await joined(hub, other)]
        await publish(publisher, other, range(2))
        await publisher.publish(subjects.events(other), codec.encode(delta(3)))
        await until(lambda: readers[1].live_events == 3, "the events came live")
        late = await joined(hub, other)
        assert late.state is ReaderState.CATCHING_UP  # 2 never came: it reads history
        assert hub.shared_history.total_bytes == 0


# --- end to end ---------------------------------------------------------------------------------------

TOKENS = 150
RUNNER_ARGS = ["--synthetic-tokens-per-s", "50", "--synthetic-ttft-ms", "0"]


@pytest.fixture(scope="module")
def sut(nats: NatsServer) -> Iterator[System]:
    with system(nats.url, runner_args=RUNNER_ARGS) as running:
        yield running


async def test_many_readers_joining_a_running_stream_each_get_the_whole_text_and_few_read_history(
    sut: System,
) -> None:
    prompt = "one history for all"
    created = await create_stream(sut.gateway_url, prompt, max_tokens=TOKENS)
    handed_before, fetched_before = await metric(sut.streamer_url, HANDED), await metric(sut.streamer_url, FETCHES)
    readers = [asyncio.create_task(read_stream(created["events_url"]))]
    # Readers keep joining while it runs (3 s at 50 tokens/s), until some were handed the shared history.
    deadline = time.monotonic() + WAIT_S
    while await metric(sut.streamer_url, HANDED) < handed_before + 5:
        assert time.monotonic() < deadline, "no reader was handed the stream's shared history"
        readers.append(asyncio.create_task(read_stream(created["events_url"])))
        await asyncio.sleep(0.05)
    readers += [asyncio.create_task(read_stream(created["events_url"])) for _ in range(20)]
    streams = await asyncio.gather(*readers)
    text = expected_text(prompt, TOKENS)
    for stream in streams:
        assert stream.status == 200
        assert stream.text == text
        assert stream.terminal.event == "stop"
        offsets = [int((e.id or "").split(":")[1]) for e in stream.events if e.id and e.event == "delta"]
        assert offsets == sorted(set(offsets)), "token offsets repeat or go back"
    handed = await metric(sut.streamer_url, HANDED) - handed_before
    fetched = await metric(sut.streamer_url, FETCHES) - fetched_before
    assert handed >= 5
    assert fetched <= len(streams) - handed
