"""Spec of one SSE reader's bookkeeping: events held while catching up share the buffer's byte limit."""

from __future__ import annotations

from tokenrelay.streamer.hub import Reader
from tokenrelay.streamer.replay import held_size
from tokenrelay.wire.errors import ErrorCode
from tokenrelay.wire.messages import StreamDelta, StreamStart

SID = "0123456789abcdef0123456789abcdef"
EPOCH = "e1"
T0 = 1000.0


def delta(seq: int) -> StreamDelta:
    return StreamDelta(seq=seq, text="x" * 100, index=seq, count=1, ts=0.0)


def test_live_events_held_while_history_is_missing_close_the_reader_as_a_slow_consumer_past_the_limit() -> None:
    limit = 3 * held_size(delta(2))
    reader = Reader(SID, epoch=EPOCH, resume=None, max_buffered_bytes=limit, now=T0)
    for seq in (2, 3, 4):  # seq 0 and 1 are still in history
        reader.deliver(delta(seq), T0, b"framed")
    assert not reader.buffer.closed
    reader.deliver(delta(5), T0, b"framed")
    assert reader.buffer.close_code == str(ErrorCode.SLOW_CONSUMER)
    assert reader.replay.held_bytes == 0


def test_a_failed_reader_takes_no_more_events() -> None:
    reader = Reader(SID, epoch=EPOCH, resume=None, max_buffered_bytes=1 << 20, now=T0)
    reader.fail("shutting_down", "bye", T0)
    before = reader.buffer.take()
    reader.deliver(StreamStart(stream_id=SID, epoch=EPOCH, model="m", created=0, runner_id="r", ts=0.0), T0)
    reader.deliver(delta(1), T0)
    assert reader.buffer.take() == b""
    assert reader.replay.held_bytes == 0
    assert b"shutting_down" in before
