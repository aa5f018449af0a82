"""A reader's first history read can miss events JetStream has not stored yet; live events that then
arrive behind that gap make the streamer read history again at once, instead of waiting forever."""

from __future__ import annotations

import asyncio

import nats as nats_client
from nats.aio.client import Client as NATS

from tokenrelay.runtime import natsio
from tokenrelay.runtime.config import HistoryConfig
from tokenrelay.streamer.catchup import CatchUp
from tokenrelay.streamer.frames import frame
from tokenrelay.streamer.metrics import StreamerMetrics
from tokenrelay.streamer.reader import Reader
from tokenrelay.testing.procs import NatsServer
from tokenrelay.wire import codec, subjects
from tokenrelay.wire.messages import StreamDelta, StreamStart, StreamState

EPOCH = "e1"


def catch_up_of(nc: NATS, *, settle_s: float) -> CatchUp:
    return CatchUp(nc, clock=lambda: 0.0, metrics=StreamerMetrics(), settle_s=settle_s)


async def test_a_live_event_held_behind_a_gap_after_the_first_read_gets_history_read_again_at_once(
    nats: NatsServer,
) -> None:
    nc = await nats_client.connect(nats.url)
    try:
        js = nc.jetstream()
        await natsio.ensure_events_stream(js, HistoryConfig())
        catch_up = catch_up_of(nc, settle_s=30.0)  # only the gap may end the wait
        stream_id = subjects.new_stream_id()
        start = StreamStart(stream_id=stream_id, epoch=EPOCH, model="m", created=0, runner_id="r", ts=0.0)
        first = StreamDelta(seq=1, text="stored ", index=1, count=1, ts=0.0)
        live = StreamDelta(seq=2, text="live", index=2, count=1, ts=0.0)
        for event in (start, first):  # published before the reader subscribed; stored by now
            await nc.publish(subjects.events(stream_id), codec.encode(event))
        await nc.flush()
        reader = Reader(stream_id, epoch=EPOCH, resume=None, max_buffered_bytes=1 << 20, now=0.0)
        # The first read ran before those two were stored (it found nothing); then the next one arrives live.
        reader.deliver(live, 0.0, frame(live, EPOCH))
        assert reader.replay.waiting_on_gap and reader.gap.is_set()

        await asyncio.wait_for(catch_up.settle(reader, StreamState.RUNNING), timeout=10.0)

        assert not reader.replay.waiting_on_gap
        assert reader.replay.next_seq == 3
        sent = reader.buffer.take()
        assert b"event: start" in sent and b"stored live" in sent  # the two deltas, merged, in order
    finally:
        await nc.close()


class CountingCatchUp(CatchUp):
    """Counts its history reads instead of making them."""

    def __init__(self, nc: NATS) -> None:
        super().__init__(nc, clock=lambda: 0.0, metrics=StreamerMetrics(), settle_s=0.0)
        self.reads: list[str] = []

    async def read(self, reader: Reader) -> None:
        self.reads.append(reader.stream_id)


async def test_a_reader_whose_live_events_arrive_in_order_does_not_read_history_again(nats: NatsServer) -> None:
    nc = await nats_client.connect(nats.url)
    try:
        catch_up = CountingCatchUp(nc)
        stream_id = subjects.new_stream_id()
        reader = Reader(stream_id, epoch=EPOCH, resume=None, max_buffered_bytes=1 << 20, now=0.0)
        start = StreamStart(stream_id=stream_id, epoch=EPOCH, model="m", created=0, runner_id="r", ts=0.0)
        reader.deliver(start, 0.0, frame(start, EPOCH))
        await catch_up.settle(reader, StreamState.RUNNING)
        assert catch_up.reads == [] and not reader.gap.is_set()
    finally:
        await nc.close()
