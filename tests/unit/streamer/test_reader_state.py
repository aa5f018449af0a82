"""Spec of a reader's lifecycle: the transition table, and the moves a reader makes as events reach it."""

from __future__ import annotations

import pytest

from tokenrelay.streamer.disconnect import OVER_BUFFER, TOO_MANY_HELD, WRITE_STALLED, Disconnect
from tokenrelay.streamer.reader import Reader
from tokenrelay.streamer.reader_state import ENDED, TRANSITIONS, IllegalTransition, ReaderState, advance
from tokenrelay.wire.errors import ErrorCode
from tokenrelay.wire.messages import FinishReason, StreamDelta, StreamEnd, StreamStart

SID = "0123456789abcdef0123456789abcdef"
EPOCH = "e1"
T0 = 1000.0
START = StreamStart(stream_id=SID, epoch=EPOCH, model="m", created=0, runner_id="r", ts=0.0)
OPEN = (ReaderState.CATCHING_UP, ReaderState.LIVE)


def delta(seq: int) -> StreamDelta:
    return StreamDelta(seq=seq, text="x", index=seq, count=1, ts=0.0)


def end(seq: int) -> StreamEnd:
    return StreamEnd(seq=seq, finish_reason=FinishReason.STOP, tokens=seq - 1, ttft_ms=1.0)


def new_reader(*, max_buffered_bytes: int = 1 << 20, max_held_events: int = 4096) -> Reader:
    return Reader(
        SID, epoch=EPOCH, resume=None, max_buffered_bytes=max_buffered_bytes, now=T0, max_held_events=max_held_events
    )


# The table.


def test_every_state_has_a_row_in_the_transition_table() -> None:
    assert set(TRANSITIONS) == set(ReaderState)


def test_a_closed_reader_goes_nowhere() -> None:
    assert TRANSITIONS[ReaderState.CLOSED] == frozenset()
    for target in ReaderState:
        with pytest.raises(IllegalTransition):
            advance(SID, ReaderState.CLOSED, target)


@pytest.mark.parametrize("ending", [ReaderState.FINISHING, ReaderState.FAILING])
def test_a_reader_whose_terminal_event_is_queued_can_only_close(ending: ReaderState) -> None:
    assert TRANSITIONS[ending] == frozenset({ReaderState.CLOSED})


@pytest.mark.parametrize("state", OPEN)
@pytest.mark.parametrize("target", [ReaderState.FINISHING, ReaderState.FAILING, ReaderState.CLOSED])
def test_an_open_reader_may_end_either_way_or_close(state: ReaderState, target: ReaderState) -> None:
    assert advance(SID, state, target) is target


def test_a_live_reader_may_fall_back_to_catching_up_and_catch_up_again() -> None:
    assert advance(SID, ReaderState.LIVE, ReaderState.CATCHING_UP) is ReaderState.CATCHING_UP
    assert advance(SID, ReaderState.CATCHING_UP, ReaderState.LIVE) is ReaderState.LIVE


def test_an_illegal_transition_names_the_stream_the_state_and_the_target() -> None:
    with pytest.raises(IllegalTransition, match=f"{SID}.*from finishing to failing") as raised:
        advance(SID, ReaderState.FINISHING, ReaderState.FAILING)
    assert (raised.value.state, raised.value.target) == (ReaderState.FINISHING, ReaderState.FAILING)


def test_the_ended_states_are_those_that_take_no_more_events() -> None:
    assert frozenset(ReaderState) - ENDED == frozenset(OPEN)


# A reader's moves.


def test_a_reader_starts_catching_up() -> None:
    reader = new_reader()
    assert reader.state is ReaderState.CATCHING_UP
    assert not reader.ended


def test_a_reader_caught_up_is_live_and_being_caught_up_twice_is_a_bug() -> None:
    reader = new_reader()
    reader.caught_up()
    assert reader.state is ReaderState.LIVE
    with pytest.raises(IllegalTransition, match="from live to live"):
        reader.caught_up()


def test_a_live_reader_that_sees_a_live_event_behind_a_gap_is_catching_up_again() -> None:
    reader = new_reader()
    reader.deliver(START, T0, b"framed")
    reader.caught_up()
    reader.deliver(delta(2), T0, b"framed")  # seq 1 was lost
    assert reader.state is ReaderState.CATCHING_UP
    assert reader.gap.is_set()


def test_the_first_gap_a_live_event_shows_is_told_once() -> None:
    reader = new_reader()
    told: list[int] = []
    reader.on_gap = lambda: told.append(reader.replay.next_seq)
    reader.deliver(START, T0, b"framed")
    reader.caught_up()
    reader.deliver(delta(2), T0, b"framed")  # seq 1 was lost
    reader.deliver(delta(3), T0, b"framed")
    assert told == [1]
    assert reader.on_gap is None


def test_a_gap_in_history_alone_leaves_a_live_reader_live() -> None:
    reader = new_reader()
    reader.deliver(START, T0, b"framed")
    reader.caught_up()
    reader.deliver(delta(2), T0)  # from history (no live frame): the read in progress fills the gap
    assert reader.state is ReaderState.LIVE
    assert not reader.gap.is_set()


def test_a_reader_that_gets_its_terminal_event_is_finishing_and_takes_nothing_more() -> None:
    reader = new_reader()
    for event in (START, delta(1), end(2)):
        reader.deliver(event, T0)
    assert reader.state is ReaderState.FINISHING
    assert reader.ended
    queued = reader.buffer.take()
    reader.deliver(delta(3), T0)
    assert reader.buffer.take() == b""
    assert b"event: stop" in queued


def test_a_finishing_reader_is_not_failed_after_its_end() -> None:
    reader = new_reader()
    for event in (START, end(1)):
        reader.deliver(event, T0)
    reader.fail("shutting_down", "bye", T0)
    assert reader.state is ReaderState.FINISHING
    assert reader.buffer.close_code is None


def test_a_failed_reader_is_failing_with_its_error_event_queued() -> None:
    reader = new_reader()
    reader.fail("shutting_down", "bye", T0)
    assert reader.state is ReaderState.FAILING
    assert b"shutting_down" in reader.buffer.take()
    assert reader.wake.is_set() and reader.written.is_set()


def test_a_reader_that_ended_stays_ended_when_told_it_caught_up() -> None:
    reader = new_reader()
    reader.fail("unavailable", "history read failed", T0)
    reader.caught_up()
    assert reader.state is ReaderState.FAILING


@pytest.mark.parametrize("ending", ["finish", "fail", "none"])
def test_a_reader_closes_from_any_state_once_and_takes_nothing_afterwards(ending: str) -> None:
    reader = new_reader()
    reader.deliver(START, T0)
    if ending == "finish":
        reader.deliver(end(1), T0)
    elif ending == "fail":
        reader.fail("shutting_down", "bye", T0)
    reader.buffer.take()
    reader.close()
    assert reader.state is ReaderState.CLOSED
    reader.deliver(delta(1), T0, b"framed")
    reader.fail("shutting_down", "bye", T0)
    assert reader.buffer.take() == b""
    with pytest.raises(IllegalTransition, match="from closed to closed"):
        reader.close()


# Acting on a disconnect: the one place it happens.


def test_a_disconnect_fails_an_open_reader_with_its_code_and_message_and_is_reported_once() -> None:
    reader = new_reader()
    heard: list[Disconnect] = []
    reader.on_disconnect = heard.append
    reader.disconnect(OVER_BUFFER, T0)
    reader.disconnect(OVER_BUFFER, T0)
    assert reader.state is ReaderState.FAILING
    assert reader.buffer.close_code == str(ErrorCode.SLOW_CONSUMER)
    assert OVER_BUFFER.message.encode() in reader.buffer.take()
    assert heard == [OVER_BUFFER]


def test_a_disconnect_of_a_reader_that_ended_is_not_reported_and_keeps_its_end() -> None:
    reader = new_reader()
    heard: list[Disconnect] = []
    reader.on_disconnect = heard.append
    reader.fail("shutting_down", "bye", T0)
    reader.disconnect(TOO_MANY_HELD, T0)
    assert reader.buffer.close_code == "shutting_down"
    assert heard == []


@pytest.mark.parametrize("ended", [False, True])
def test_a_stalled_write_disconnect_drops_the_connection_whether_or_not_the_reader_ended(ended: bool) -> None:
    reader = new_reader()
    aborted: list[bool] = []
    reader.abort = lambda: aborted.append(True)
    if ended:
        reader.deliver(START, T0)
        reader.deliver(end(1), T0)
    reader.disconnect(WRITE_STALLED, T0)
    assert aborted == [True]
    assert reader.state is (ReaderState.FINISHING if ended else ReaderState.FAILING)


def test_a_buffer_disconnect_leaves_the_connection_to_carry_the_error_event() -> None:
    reader = new_reader()
    reader.abort = lambda: pytest.fail("the connection was dropped")
    reader.disconnect(OVER_BUFFER, T0)
    assert reader.state is ReaderState.FAILING


def test_a_reader_past_its_held_events_limit_is_disconnected_with_too_many_held() -> None:
    reader = new_reader(max_held_events=2)
    heard: list[Disconnect] = []
    reader.on_disconnect = heard.append
    for seq in (2, 3):  # seq 0 and 1 are still in history
        reader.deliver(delta(seq), T0, b"framed")
    assert heard == [] and not reader.ended
    reader.deliver(delta(4), T0, b"framed")
    assert heard == [TOO_MANY_HELD]
    assert reader.state is ReaderState.FAILING
    assert reader.replay.held_events == 0
    assert b"too many events held while catching up" in reader.buffer.take()


def test_a_reader_whose_buffer_refuses_a_live_delta_is_disconnected_with_over_buffer() -> None:
    reader = new_reader(max_buffered_bytes=1200)
    heard: list[Disconnect] = []
    reader.on_disconnect = heard.append
    reader.deliver(START, T0)
    reader.deliver(StreamDelta(seq=1, text="y" * 2000, index=1, count=1, ts=0.0), T0, b"framed")
    assert heard == [OVER_BUFFER]
    assert reader.state is ReaderState.FAILING
    written = reader.buffer.take()
    assert written.startswith(b"event: error\n") and b"event: start" not in written
