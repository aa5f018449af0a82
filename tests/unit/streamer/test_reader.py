"""Spec of one SSE reader's bookkeeping: events held while catching up share the buffer's byte limit; heartbeats."""

from __future__ import annotations

from tokenrelay.streamer.buffer import BYTES_OVERHEAD_BYTES
from tokenrelay.streamer.disconnect import OVER_BUFFER, Disconnect
from tokenrelay.streamer.reader import Reader
from tokenrelay.streamer.reader_state import ReaderState
from tokenrelay.streamer.replay import held_size
from tokenrelay.streamer.sse import PING
from tokenrelay.wire.errors import ErrorCode
from tokenrelay.wire.messages import FinishReason, StreamDelta, StreamEnd, StreamStart

SID = "0123456789abcdef0123456789abcdef"
EPOCH = "e1"
T0 = 1000.0
HEARTBEAT_S = 15.0


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


def test_an_idle_reader_gets_a_ping_after_heartbeat_s_and_its_writer_is_woken() -> None:
    reader = Reader(SID, epoch=EPOCH, resume=None, max_buffered_bytes=1 << 20, now=T0)
    reader.ping_if_idle(T0 + HEARTBEAT_S - 0.5, HEARTBEAT_S)
    assert not reader.wake.is_set()
    reader.ping_if_idle(T0 + HEARTBEAT_S, HEARTBEAT_S)
    assert reader.wake.is_set()
    assert reader.buffer.take() == PING


def test_a_ping_past_the_buffer_limit_disconnects_the_reader_as_a_slow_consumer() -> None:
    reader = Reader(SID, epoch=EPOCH, resume=None, max_buffered_bytes=len(PING) + BYTES_OVERHEAD_BYTES, now=T0)
    heard: list[Disconnect] = []
    reader.on_disconnect = heard.append
    reader.buffer.in_flight_bytes = 1  # a write the client has not taken yet
    reader.ping_if_idle(T0 + HEARTBEAT_S, HEARTBEAT_S)
    assert heard == [OVER_BUFFER]
    assert reader.state is ReaderState.FAILING
    assert reader.wake.is_set()


def test_a_reader_that_ended_gets_no_ping() -> None:
    reader = Reader(SID, epoch=EPOCH, resume=None, max_buffered_bytes=1 << 20, now=T0)
    reader.fail("shutting_down", "bye", T0)
    reader.buffer.take()
    reader.wake.clear()
    reader.ping_if_idle(T0 + 1000, HEARTBEAT_S)
    assert reader.buffer.take() == b""
    assert not reader.wake.is_set()


def test_a_terminal_event_reaching_a_reader_already_over_its_limit_ends_it_as_a_slow_consumer() -> None:
    reader = Reader(SID, epoch=EPOCH, resume=None, max_buffered_bytes=1000, now=T0)
    reader.deliver(StreamStart(stream_id=SID, epoch=EPOCH, model="m", created=0, runner_id="r", ts=0.0), T0)
    reader.buffer.take()
    reader.buffer.in_flight_bytes = 1001  # a write longer on the wire than it was counted, not taken yet
    reader.deliver(StreamEnd(seq=1, finish_reason=FinishReason.STOP, tokens=0, ttft_ms=1.0), T0, b"framed")
    assert reader.state is ReaderState.FAILING
    assert reader.buffer.close_code == str(ErrorCode.SLOW_CONSUMER)


def test_a_repeated_event_reaching_a_reader_already_over_its_limit_ends_it_as_a_slow_consumer() -> None:
    reader = Reader(SID, epoch=EPOCH, resume=None, max_buffered_bytes=1000, now=T0)
    start = StreamStart(stream_id=SID, epoch=EPOCH, model="m", created=0, runner_id="r", ts=0.0)
    reader.deliver(start, T0)
    reader.buffer.take()
    reader.buffer.in_flight_bytes = 1001
    reader.deliver(start, T0)  # from history, after it came live: nothing to queue
    assert reader.state is ReaderState.FAILING


def test_a_delta_reaching_a_reader_already_over_its_limit_ends_it_as_a_slow_consumer_once() -> None:
    reader = Reader(SID, epoch=EPOCH, resume=None, max_buffered_bytes=1000, now=T0)
    heard: list[Disconnect] = []
    reader.on_disconnect = heard.append
    reader.deliver(StreamStart(stream_id=SID, epoch=EPOCH, model="m", created=0, runner_id="r", ts=0.0), T0)
    reader.buffer.take()
    reader.buffer.in_flight_bytes = 1001
    reader.deliver(delta(1), T0, b"framed")
    assert heard == [OVER_BUFFER]
    assert b"the client did not read fast enough" in reader.buffer.take()
