"""Spec of the per-reader buffer: coalesced writes, one byte budget (refusals returned as disconnects), idleness."""

from __future__ import annotations

import sys
from dataclasses import replace

import orjson

from tokenrelay.streamer.buffer import BYTES_OVERHEAD_BYTES, RUN_OVERHEAD_BYTES, TEXT_OVERHEAD_BYTES, ReaderBuffer
from tokenrelay.streamer.disconnect import OVER_BUFFER
from tokenrelay.streamer.frames import frame
from tokenrelay.streamer.sse import PING
from tokenrelay.wire.errors import ErrorCode
from tokenrelay.wire.messages import StreamDelta

T0 = 1000.0
HEARTBEAT_S = 15.0
OVERHEAD = BYTES_OVERHEAD_BYTES


def only_data(frame: bytes) -> dict[str, object]:
    """The JSON object carried by a single-``data:``-line SSE frame."""
    data_lines = [line for line in frame.split(b"\n") if line.startswith(b"data: ")]
    assert len(data_lines) == 1, frame
    obj = orjson.loads(data_lines[0].removeprefix(b"data: "))
    assert isinstance(obj, dict)
    return obj


def test_buffer_starts_empty() -> None:
    buffer = ReaderBuffer(max_buffered_bytes=100, now=T0)
    assert buffer.buffered_bytes == 0
    assert buffer.take() == b""
    assert not buffer.closed
    assert buffer.close_code is None


def test_buffer_coalesces_appended_frames_into_one_take() -> None:
    buffer = ReaderBuffer(max_buffered_bytes=1000, now=T0)
    assert buffer.append(b"one\n\n", T0) is None
    assert buffer.append(b"two\n\n", T0 + 1) is None
    assert buffer.append(b"three\n\n", T0 + 2) is None
    assert buffer.buffered_bytes == 17 + 3 * OVERHEAD
    assert buffer.take() == b"one\n\ntwo\n\nthree\n\n"


def test_buffer_is_empty_after_take() -> None:
    buffer = ReaderBuffer(max_buffered_bytes=100, now=T0)
    buffer.append(b"x", T0)
    buffer.take()
    assert buffer.buffered_bytes == 0
    assert buffer.take() == b""


def test_buffer_accepts_bytes_up_to_exactly_max_buffered_bytes() -> None:
    buffer = ReaderBuffer(max_buffered_bytes=10 + 2 * OVERHEAD, now=T0)
    assert buffer.append(b"12345", T0) is None
    assert buffer.append(b"67890", T0) is None
    assert not buffer.closed
    assert buffer.take() == b"1234567890"


def test_taking_frees_room_for_more_bytes() -> None:
    buffer = ReaderBuffer(max_buffered_bytes=10 + OVERHEAD, now=T0)
    assert buffer.append(b"1234567890", T0) is None
    buffer.take()
    assert buffer.append(b"abcdefghij", T0) is None
    assert buffer.take() == b"abcdefghij"


def test_buffer_refuses_bytes_past_max_buffered_bytes_and_returns_the_slow_consumer_disconnect() -> None:
    buffer = ReaderBuffer(max_buffered_bytes=10 + 2 * OVERHEAD, now=T0)
    assert buffer.append(b"12345", T0) is None
    assert buffer.append(b"678901", T0) is OVER_BUFFER
    assert OVER_BUFFER.code is ErrorCode.SLOW_CONSUMER
    assert buffer.buffered_bytes == 5 + OVERHEAD  # nothing of the refused bytes is counted
    assert not buffer.closed  # closing is its reader's, which acts on the disconnect


def test_failing_with_the_disconnect_replaces_pending_bytes_with_one_slow_consumer_error_frame() -> None:
    buffer = ReaderBuffer(max_buffered_bytes=10 + 2 * OVERHEAD, now=T0)
    assert buffer.append(b"12345", T0) is None
    refused = buffer.append(b"678901", T0)
    assert refused is not None
    buffer.fail(str(refused.code), refused.message, T0)
    assert buffer.closed
    assert buffer.close_code == str(ErrorCode.SLOW_CONSUMER)
    written = buffer.take()
    assert written.startswith(b"event: error\n")
    assert written.endswith(b"\n\n")
    assert written.count(b"\n\n") == 1
    assert b"12345" not in written
    assert only_data(written)["code"] == "slow_consumer"
    assert buffer.buffered_bytes == 0


def test_bytes_of_the_write_in_flight_count_against_max_buffered_bytes() -> None:
    buffer = ReaderBuffer(max_buffered_bytes=10 + OVERHEAD, now=T0)
    assert buffer.append(b"1234567890", T0) is None
    buffer.take()
    buffer.in_flight_bytes = 10
    assert buffer.append(b"a", T0) is OVER_BUFFER


def test_a_completed_write_frees_its_room() -> None:
    buffer = ReaderBuffer(max_buffered_bytes=10 + 2 * OVERHEAD, now=T0)
    buffer.in_flight_bytes = 6
    assert buffer.append(b"1234", T0) is None
    buffer.in_flight_bytes = 0
    assert buffer.append(b"567890", T0) is None
    assert buffer.take() == b"1234567890"


def test_a_failed_buffer_takes_no_further_bytes() -> None:
    buffer = ReaderBuffer(max_buffered_bytes=1000, now=T0)
    buffer.fail("shutting_down", "bye", T0)
    buffer.take()
    assert buffer.append(b"y", T0) is None
    assert buffer.append_delta(_delta(1, "z"), T0) is None
    assert buffer.take() == b""


def test_a_closed_buffer_takes_nothing_more_and_keeps_what_was_pending() -> None:
    buffer = ReaderBuffer(max_buffered_bytes=1000, now=T0)
    buffer.append(b"pending\n\n", T0)
    buffer.close()
    assert buffer.closed and buffer.close_code is None
    buffer.append(b"late\n\n", T0)
    assert buffer.take() == b"pending\n\n"


def test_finish_queues_the_terminal_frame_and_closes() -> None:
    buffer = ReaderBuffer(max_buffered_bytes=100, now=T0)
    buffer.append(b"delta\n\n", T0)
    buffer.finish(b"stop\n\n", T0)
    assert buffer.closed
    assert buffer.close_code is None
    assert buffer.take() == b"delta\n\nstop\n\n"
    assert buffer.append(b"late\n\n", T0) is None
    assert buffer.take() == b""


def test_finish_queues_the_terminal_frame_even_beyond_max_buffered_bytes() -> None:
    buffer = ReaderBuffer(max_buffered_bytes=8 + OVERHEAD, now=T0)
    buffer.append(b"12345678", T0)
    buffer.finish(b"terminal frame\n\n", T0)
    assert buffer.closed
    assert buffer.take() == b"12345678terminal frame\n\n"


def test_finish_after_slow_consumer_failure_is_ignored() -> None:
    buffer = ReaderBuffer(max_buffered_bytes=4, now=T0)
    refused = buffer.append(b"12345", T0)
    assert refused is not None
    buffer.fail(str(refused.code), refused.message, T0)
    buffer.finish(b"stop\n\n", T0)
    assert b"stop" not in buffer.take()
    assert buffer.close_code == "slow_consumer"


def test_fail_queues_one_error_frame_with_code_message_and_id() -> None:
    buffer = ReaderBuffer(max_buffered_bytes=100, now=T0)
    buffer.append(b"pending\n\n", T0)
    buffer.fail("runner_lost", "the runner went away", T0, id="e1:4")
    written = buffer.take()
    assert written.startswith(b"event: error\nid: e1:4\n")
    assert only_data(written) == {"code": "runner_lost", "message": "the runner went away"}
    assert buffer.close_code == "runner_lost"


def test_a_buffer_is_not_idle_before_heartbeat_s_of_inactivity() -> None:
    buffer = ReaderBuffer(max_buffered_bytes=100, now=T0)
    assert not buffer.idle(T0 + HEARTBEAT_S - 0.5, HEARTBEAT_S)


def test_a_buffer_is_idle_after_heartbeat_s_of_inactivity() -> None:
    buffer = ReaderBuffer(max_buffered_bytes=100, now=T0)
    assert buffer.idle(T0 + HEARTBEAT_S, HEARTBEAT_S)


def test_a_ping_restarts_the_idle_interval() -> None:
    buffer = ReaderBuffer(max_buffered_bytes=1000, now=T0)
    assert buffer.append(PING, T0 + 20) is None
    assert not buffer.idle(T0 + 30, HEARTBEAT_S)
    assert buffer.idle(T0 + 35, HEARTBEAT_S)


def test_appending_a_frame_restarts_the_idle_interval() -> None:
    buffer = ReaderBuffer(max_buffered_bytes=1000, now=T0)
    buffer.append(b"delta\n\n", T0 + 10)
    assert not buffer.idle(T0 + 20, HEARTBEAT_S)
    assert buffer.idle(T0 + 25, HEARTBEAT_S)


def test_a_closed_buffer_is_never_idle() -> None:
    buffer = ReaderBuffer(max_buffered_bytes=100, now=T0)
    buffer.finish(b"stop\n\n", T0)
    buffer.take()
    assert not buffer.idle(T0 + 1000, HEARTBEAT_S)


def _delta(index: int, text: str) -> StreamDelta:
    return StreamDelta(seq=index, text=text, index=index, count=1, ts=0.0)


def test_a_lone_pending_delta_goes_out_as_its_shared_frame() -> None:
    buffer = ReaderBuffer(max_buffered_bytes=10_000, now=T0, epoch="e1")
    shared = frame(_delta(1, "a"), "e1")
    buffer.append_delta(_delta(1, "a"), T0, shared)
    assert buffer.take() is shared


def test_back_to_back_pending_deltas_go_out_as_one_delta_with_the_last_id_and_index() -> None:
    buffer = ReaderBuffer(max_buffered_bytes=10_000, now=T0, epoch="e1")
    for i, text in enumerate(["Hel", "lo", " wörld"], start=1):
        buffer.append_delta(_delta(i, text), T0, frame(_delta(i, text), "e1"))
    written = buffer.take()
    assert written.count(b"\n\n") == 1
    assert b"id: e1:3\n" in written
    assert only_data(written) == {"text": "Hello wörld", "index": 3, "ts": 0.0}


def test_a_frame_between_deltas_keeps_the_order_and_splits_the_merge() -> None:
    buffer = ReaderBuffer(max_buffered_bytes=10_000, now=T0, epoch="e1")
    buffer.append_delta(_delta(1, "a"), T0)
    buffer.append(PING, T0)
    buffer.append_delta(_delta(2, "b"), T0)
    buffer.append_delta(_delta(3, "c"), T0)
    first, ping, rest = buffer.take().split(b"\n\n", 2)
    assert b'"text":"a"' in first
    assert ping + b"\n\n" == PING
    assert b'"text":"bc"' in rest


def test_a_delta_merged_into_a_pending_run_costs_only_its_text() -> None:
    buffer = ReaderBuffer(max_buffered_bytes=10_000, now=T0, epoch="e1")
    buffer.append_delta(_delta(1, "first"), T0)
    after_first = buffer.buffered_bytes
    assert after_first == RUN_OVERHEAD_BYTES + sys.getsizeof("first") + TEXT_OVERHEAD_BYTES
    buffer.append_delta(_delta(2, "second"), T0)
    assert buffer.buffered_bytes - after_first == sys.getsizeof("second") + TEXT_OVERHEAD_BYTES


def test_a_delta_past_the_limit_is_refused_with_the_slow_consumer_disconnect() -> None:
    limit = RUN_OVERHEAD_BYTES + 3 * (sys.getsizeof("x") + TEXT_OVERHEAD_BYTES)
    buffer = ReaderBuffer(max_buffered_bytes=limit, now=T0, epoch="e1")
    assert all(buffer.append_delta(_delta(i, "x"), T0) is None for i in (1, 2, 3))
    assert buffer.append_delta(_delta(4, "x"), T0) is OVER_BUFFER
    assert buffer.buffered_bytes == limit


def test_live_deltas_count_their_tokens_and_oldest_publish_time_until_taken() -> None:
    buffer = ReaderBuffer(max_buffered_bytes=10_000, now=T0)
    buffer.append_delta(replace(_delta(1, "a"), ts=100.0), T0, live=True)
    buffer.append_delta(replace(_delta(2, "b"), ts=101.0), T0, live=True)
    assert (buffer.live_tokens, buffer.oldest_live_ts) == (2, 100.0)
    buffer.take()
    assert (buffer.live_tokens, buffer.oldest_live_ts) == (0, None)


def test_history_deltas_are_not_counted_as_live() -> None:
    buffer = ReaderBuffer(max_buffered_bytes=10_000, now=T0)
    buffer.append_delta(_delta(1, "a"), T0)
    assert (buffer.live_tokens, buffer.oldest_live_ts) == (0, None)


def test_a_merged_delta_carries_the_publish_time_of_its_oldest_token() -> None:
    buffer = ReaderBuffer(max_buffered_bytes=10_000, now=T0, epoch="e1")
    buffer.append_delta(replace(_delta(1, "a"), ts=100.0), T0)
    buffer.append_delta(replace(_delta(2, "b"), ts=101.0), T0)
    assert only_data(buffer.take()) == {"text": "ab", "index": 2, "ts": 100.0}
