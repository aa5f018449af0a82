"""A reader's first history read can miss events JetStream has not stored yet; live events that then
arrive behind that gap make the streamer read history again at once, instead of waiting forever."""

from __future__ import annotations

import asyncio

import nats as nats_client
import pytest

from tokenrelay.runtime import natsio
from tokenrelay.runtime.config import HistoryConfig, StreamerConfig
from tokenrelay.streamer import app as streamer_app
from tokenrelay.streamer.frames import frame
from tokenrelay.streamer.hub import Reader
from tokenrelay.testing.procs import NatsServer
from tokenrelay.wire import codec, subjects
from tokenrelay.wire.messages import StreamDelta, StreamRecord, StreamStart, StreamState

EPOCH = "e1"


async def test_a_live_event_held_behind_a_gap_after_the_first_read_gets_history_read_again_at_once(
    nats: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streamer_app, "HISTORY_SETTLE_S", 30.0)  # only the gap may end the wait
    nc = await nats_client.connect(nats.url)
    try:
        js = nc.jetstream()
        await natsio.ensure_events_stream(js, HistoryConfig())
        kv = await natsio.ensure_streams_bucket(js, HistoryConfig())
        app = streamer_app.make_app(StreamerConfig(), nc=nc, kv=kv)
        stream_id = subjects.new_stream_id()
        start = StreamStart(stream_id=stream_id, epoch=EPOCH, model="m", created=0, runner_id="r", ts=0.0)
        first = StreamDelta(seq=1, text="stored ", index=1, count=1, ts=0.0)
        live = StreamDelta(seq=2, text="live", index=2, count=1, ts=0.0)
        for event in (start, first):  # published before the reader subscribed; stored by now
            await nc.publish(subjects.events(stream_id), codec.encode(event))
        await nc.flush()
        record = StreamRecord(
            stream_id=stream_id, state=StreamState.RUNNING, model="m", created=0, epoch=EPOCH, gateway_id="g"
        )
        reader = Reader(stream_id, epoch=EPOCH, resume=None, max_buffered_bytes=1 << 20, now=0.0)
        # The first read ran before those two were stored (it found nothing); then the next one arrives live.
        reader.deliver(live, 0.0, frame(live, EPOCH))
        assert reader.replay.waiting_on_gap and reader.gap.is_set()

        await asyncio.wait_for(streamer_app.settle_history(app, reader, record), timeout=10.0)

        assert not reader.replay.waiting_on_gap
        assert reader.replay.next_seq == 3
        sent = reader.buffer.take()
        assert b"event: start" in sent and b"stored live" in sent  # the two deltas, merged, in order
    finally:
        await nc.close()


async def test_a_reader_whose_live_events_arrive_in_order_does_not_read_history_again(
    nats: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streamer_app, "HISTORY_SETTLE_S", 0.0)
    reads: list[str] = []

    async def counting_read(app: object, reader: Reader) -> bool:
        reads.append(reader.stream_id)
        return True

    monkeypatch.setattr(streamer_app, "read_history", counting_read)
    nc = await nats_client.connect(nats.url)
    try:
        kv = await natsio.ensure_streams_bucket(nc.jetstream(), HistoryConfig())
        app = streamer_app.make_app(StreamerConfig(), nc=nc, kv=kv)
        stream_id = subjects.new_stream_id()
        reader = Reader(stream_id, epoch=EPOCH, resume=None, max_buffered_bytes=1 << 20, now=0.0)
        start = StreamStart(stream_id=stream_id, epoch=EPOCH, model="m", created=0, runner_id="r", ts=0.0)
        reader.deliver(start, 0.0, frame(start, EPOCH))
        record = StreamRecord(
            stream_id=stream_id, state=StreamState.RUNNING, model="m", created=0, epoch=EPOCH, gateway_id="g"
        )
        await streamer_app.settle_history(app, reader, record)
        assert reads == [] and not reader.gap.is_set()
    finally:
        await nc.close()
