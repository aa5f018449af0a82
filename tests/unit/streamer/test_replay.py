"""Spec of the replay merge: history and live events released once each, in seq order."""

from __future__ import annotations

import sys
from collections.abc import Iterable

import pytest

from tokenrelay.streamer.replay import EVENT_OVERHEAD_BYTES, MergeState, Replay, ReplayError, held_size
from tokenrelay.wire.cursor import Cursor
from tokenrelay.wire.errors import ErrorCode
from tokenrelay.wire.messages import (
    OUT_OF_BAND_SEQ,
    FinishReason,
    ReceivedEvent,
    StreamDelta,
    StreamEnd,
    StreamError,
    StreamEvent,
    StreamStart,
)

EPOCH = "e1"
SID = "0123456789abcdef0123456789abcdef"


def start(epoch: str = EPOCH) -> StreamStart:
    return StreamStart(stream_id=SID, epoch=epoch, model="m", created=0, runner_id="r", ts=0.0)


def delta(seq: int, index: int, count: int) -> StreamDelta:
    return StreamDelta(seq=seq, text=f"<{seq}>", index=index, count=count, ts=0.0)


def end(seq: int, tokens: int) -> StreamEnd:
    return StreamEnd(seq=seq, finish_reason=FinishReason.STOP, tokens=tokens, ttft_ms=1.0)


def error(seq: int, tokens: int) -> StreamError:
    return StreamError(seq=seq, code="engine_error", message="boom", tokens=tokens)


# Tokens: 2 in seq 1 (index 2), 1 in seq 2 (index 3), 3 in seq 3 (index 6); ends with 6 tokens.
START, D1, D2, D3, END = start(), delta(1, 2, 2), delta(2, 3, 1), delta(3, 6, 3), end(4, 6)
STREAM: list[StreamEvent] = [START, D1, D2, D3, END]


def push_all(replay: Replay, events: Iterable[ReceivedEvent]) -> list[StreamEvent]:
    """Push every event; return everything released, failing the test on a ReplayError."""
    released: list[StreamEvent] = []
    for event in events:
        out = replay.push(event)
        assert not isinstance(out, ReplayError), out
        released.extend(out)
    return released


def test_replay_releases_in_order_events_one_by_one() -> None:
    replay = Replay(epoch=EPOCH)
    for event in STREAM:
        assert replay.push(event) == [event]
        assert not replay.waiting_on_gap


def test_replay_is_finished_after_releasing_the_end_event() -> None:
    replay = Replay(epoch=EPOCH)
    push_all(replay, STREAM[:-1])
    assert not replay.finished
    push_all(replay, [END])
    assert replay.finished


def test_replay_is_finished_after_releasing_an_error_event() -> None:
    replay = Replay(epoch=EPOCH)
    failure = error(2, 2)
    assert push_all(replay, [START, D1, failure]) == [START, D1, failure]
    assert replay.finished


def test_replay_drops_duplicate_live_event_already_replayed_from_history() -> None:
    replay = Replay(epoch=EPOCH)
    push_all(replay, [START, D1])
    assert replay.push(D1) == []
    assert replay.push(START) == []
    assert replay.push(D2) == [D2]


def test_replay_drops_duplicate_of_an_event_held_ahead_of_a_gap() -> None:
    replay = Replay(epoch=EPOCH)
    push_all(replay, [START, D2])
    assert replay.push(D2) == []
    assert replay.push(D1) == [D1, D2]


def test_replay_holds_out_of_order_live_events_until_the_gap_fills() -> None:
    replay = Replay(epoch=EPOCH)
    assert replay.push(START) == [START]
    assert replay.push(D2) == []
    assert replay.waiting_on_gap
    assert replay.push(D3) == []
    assert replay.waiting_on_gap
    assert replay.push(D1) == [D1, D2, D3]
    assert not replay.waiting_on_gap


def test_replay_holds_everything_until_the_start_event_arrives() -> None:
    replay = Replay(epoch=EPOCH)
    assert push_all(replay, [D1, D2]) == []
    assert replay.waiting_on_gap
    assert replay.push(START) == [START, D1, D2]


def test_replay_releases_overlapping_history_and_live_exactly_once_in_seq_order() -> None:
    replay = Replay(epoch=EPOCH)
    live_before_history: list[StreamEvent] = [D2, D3]
    history: list[StreamEvent] = [START, D1, D2, D3]
    live_after_history: list[StreamEvent] = [D3, END]
    released = push_all(replay, live_before_history + history + live_after_history)
    assert released == STREAM


def test_replay_releases_history_interleaved_with_live_exactly_once() -> None:
    replay = Replay(epoch=EPOCH)
    arrivals: list[StreamEvent] = [D1, START, D3, D1, END, D2, START, D3, END]
    assert push_all(replay, arrivals) == STREAM


def test_replay_resumed_at_a_cursor_skips_start_and_deltas_at_or_before_its_offset() -> None:
    replay = Replay(epoch=EPOCH, resume=Cursor(EPOCH, 3))
    assert push_all(replay, STREAM) == [D3, END]


def test_replay_resumed_at_offset_zero_skips_only_the_start_event() -> None:
    replay = Replay(epoch=EPOCH, resume=Cursor(EPOCH, 0))
    assert push_all(replay, STREAM) == [D1, D2, D3, END]


def test_replay_resumed_after_the_last_delta_releases_only_the_terminal_event() -> None:
    replay = Replay(epoch=EPOCH, resume=Cursor(EPOCH, 6))
    assert push_all(replay, STREAM) == [END]
    assert replay.finished


def test_replay_resumed_with_held_events_still_releases_in_order() -> None:
    replay = Replay(epoch=EPOCH, resume=Cursor(EPOCH, 2))
    assert push_all(replay, [END, D3, D2, D1, START]) == [D2, D3, END]


@pytest.mark.parametrize("offset", [1, 4, 5])
def test_replay_rejects_a_cursor_inside_a_batch_as_bad_request(offset: int) -> None:
    replay = Replay(epoch=EPOCH, resume=Cursor(EPOCH, offset))
    results = [replay.push(event) for event in STREAM[:4]]
    errors = [r for r in results if isinstance(r, ReplayError)]
    assert len(errors) == 1
    assert errors[0].code is ErrorCode.BAD_REQUEST


def test_replay_rejects_a_start_event_from_another_epoch_as_resume_unavailable() -> None:
    replay = Replay(epoch=EPOCH, resume=Cursor(EPOCH, 2))
    result = replay.push(start(epoch="e2"))
    assert isinstance(result, ReplayError)
    assert result.code is ErrorCode.RESUME_UNAVAILABLE


def test_replay_rejects_a_cursor_past_the_end_at_the_end_event_as_bad_request() -> None:
    replay = Replay(epoch=EPOCH, resume=Cursor(EPOCH, 7))
    assert push_all(replay, STREAM[:-1]) == []
    result = replay.push(END)
    assert isinstance(result, ReplayError)
    assert result.code is ErrorCode.BAD_REQUEST


def test_replay_rejects_a_cursor_past_the_end_at_an_error_event_as_bad_request() -> None:
    replay = Replay(epoch=EPOCH, resume=Cursor(EPOCH, 5))
    assert push_all(replay, [START, D1]) == []
    result = replay.push(error(2, 2))
    assert isinstance(result, ReplayError)
    assert result.code is ErrorCode.BAD_REQUEST


def test_replay_ignores_every_event_after_the_terminal_event() -> None:
    replay = Replay(epoch=EPOCH)
    push_all(replay, STREAM)
    assert replay.push(delta(5, 7, 1)) == []
    assert replay.push(end(6, 7)) == []
    assert replay.push(END) == []
    assert replay.finished
    assert not replay.waiting_on_gap


def test_replay_drops_events_held_beyond_the_terminal_event() -> None:
    replay = Replay(epoch=EPOCH)
    failure = error(2, 2)
    assert push_all(replay, [START, D3, failure]) == [START]
    assert replay.push(D1) == [D1, failure]
    assert replay.finished
    assert not replay.waiting_on_gap


def test_replay_counts_the_events_held_ahead_of_a_gap_for_its_reader_to_bound() -> None:
    replay = Replay(epoch=EPOCH)
    assert push_all(replay, [START, D2, D3, END]) == [START]
    assert replay.held_events == 3
    assert replay.push(D1) == [D1, D2, D3, END]
    assert replay.held_events == 0


def test_a_repeated_held_event_is_not_counted_twice() -> None:
    replay = Replay(epoch=EPOCH)
    push_all(replay, [START, D2, D2])
    assert replay.held_events == 1
    assert replay.held_bytes == held_size(D2)


def test_replay_is_open_until_it_releases_its_terminal_event() -> None:
    replay = Replay(epoch=EPOCH)
    push_all(replay, STREAM[:-1])
    assert replay.state is MergeState.OPEN
    push_all(replay, [END])
    assert replay.finished


def test_abandoning_a_finished_replay_leaves_it_finished() -> None:
    replay = Replay(epoch=EPOCH)
    push_all(replay, STREAM)
    replay.abandon()
    assert replay.state is MergeState.FINISHED
    assert replay.finished


def test_an_abandoned_replay_takes_not_even_an_out_of_band_error() -> None:
    replay = Replay(epoch=EPOCH)
    push_all(replay, [START])
    replay.abandon()
    assert replay.state is MergeState.ABANDONED
    assert replay.push(error(OUT_OF_BAND_SEQ, 0)) == []


def test_replay_counts_the_bytes_of_events_held_ahead_of_a_gap() -> None:
    replay = Replay(epoch=EPOCH)
    push_all(replay, [START, D2, D3])
    assert replay.held_bytes == held_size(D2) + held_size(D3)
    assert held_size(D2) == sys.getsizeof(D2.text) + EVENT_OVERHEAD_BYTES


def test_released_events_no_longer_count_as_held() -> None:
    replay = Replay(epoch=EPOCH)
    push_all(replay, [START, D2, D3])
    replay.push(D1)
    assert replay.held_bytes == 0


def test_an_abandoned_replay_drops_what_it_held_and_releases_nothing_more() -> None:
    replay = Replay(epoch=EPOCH)
    push_all(replay, [START, D2])
    replay.abandon()
    assert replay.held_bytes == 0
    assert replay.push(D1) == []
    assert not replay.finished
