"""Spec of planning a lost runner's stream's move from its history (``gateway/moves.py``), and of what the dispatcher
learns from a move: stops go to the new owner, the new owner's loss is the stream's loss, and a superseded runner
that is heard from again is counted as a false loss with the streams to cancel on it."""

from __future__ import annotations

from dataclasses import replace

from tests.unit.gateway.test_dispatch import STALE_S, beat, dispatcher, job, lost_after_silence
from tokenrelay.gateway.actions import AskOwner
from tokenrelay.gateway.moves import Broken, Continue, Ended, can_continue, plan_move
from tokenrelay.gateway.states import Owner
from tokenrelay.wire.messages import (
    CancelReason,
    Continuation,
    Continues,
    FinishReason,
    ReasoningDelta,
    ReceivedEvent,
    StreamDelta,
    StreamEnd,
    StreamError,
    StreamFence,
    StreamStart,
    ToolCallDelta,
    UnknownEvent,
)
from tokenrelay.wire.pages import MAX_STREAMS_PER_HEARTBEAT, listed_on, pages_for

START = StreamStart(stream_id="s1", epoch="e1", model="synthetic", created=0, runner_id="r1", ts=0.0)


def text(seq: int, words: str, *, gen: int = 0, fence: int = 0) -> StreamDelta:
    return StreamDelta(seq=seq, text=words, index=seq, count=1, ts=0.0, gen=gen, fence=fence)


def test_a_stream_stopped_mid_text_continues_one_past_its_last_event_with_its_text_and_tokens() -> None:
    plan = plan_move([START, text(1, "Hello"), text(2, " there")], generation=0)
    assert plan == Continue(Continuation(gen=1, seq=3, tokens=2, text="Hello there", typed=False))


def test_a_stream_with_no_token_yet_continues_from_seq_1() -> None:
    assert plan_move([START], generation=0) == Continue(Continuation(gen=1, seq=1, tokens=0))


def test_reasoning_or_a_tool_call_so_far_makes_the_continuation_typed() -> None:
    reasoning = ReasoningDelta(seq=1, text="hmm", index=1, count=1, ts=0.0)
    call = ToolCallDelta(seq=2, call=0, id="c", name="f", arguments="{", index=2, count=1, ts=0.0)
    plan = plan_move([START, reasoning, call], generation=0)
    assert plan == Continue(Continuation(gen=1, seq=3, tokens=2, text="", typed=True))


def test_a_stream_whose_terminal_event_is_stored_had_ended_and_does_not_move() -> None:
    end = StreamEnd(seq=3, finish_reason=FinishReason.STOP, tokens=2, ttft_ms=1.0)
    assert plan_move([START, text(1, "a"), text(2, "b"), end], generation=0) == Ended(end)


def test_a_gateway_s_runner_lost_error_ends_the_plan_too() -> None:
    lost = StreamError(seq=-1, code="runner_lost", message="gone", tokens=1)
    assert plan_move([START, text(1, "a"), lost], generation=0) == Ended(lost)


def test_a_history_with_a_gap_or_without_its_start_cannot_be_continued() -> None:
    assert isinstance(plan_move([START, text(2, "b")], generation=0), Broken)
    assert isinstance(plan_move([text(1, "a")], generation=0), Broken)


def test_history_is_read_in_any_order_with_copies_and_unknown_events_keeping_their_place() -> None:
    unknown = UnknownEvent(seq=2, tag="newer")
    plan = plan_move([text(1, "a"), START, unknown, text(1, "a"), text(3, "c")], generation=0)
    assert plan == Continue(Continuation(gen=1, seq=4, tokens=3, text="ac"))


def test_a_second_move_continues_the_first_s_generation_and_leaves_out_what_the_first_owner_made_past_its_fence() -> (
    None
):
    events: list[ReceivedEvent] = [
        START, text(1, "a"), text(2, "b"), StreamFence(gen=1, fence=3),
        text(3, "c", gen=1, fence=3), text(3, "X"), text(4, "Y"),  # the first owner woke up: void
        text(4, "d", gen=1, fence=3),
    ]  # fmt: skip
    assert plan_move(events, generation=1) == Continue(Continuation(gen=2, seq=5, tokens=4, text="abcd"))


def test_an_engine_continues_text_only_unless_it_continues_anything() -> None:
    plain, typed = Continuation(gen=1, seq=3, tokens=2), Continuation(gen=1, seq=3, tokens=2, typed=True)
    assert can_continue(Continues.ANY, typed) and can_continue(Continues.ANY, plain)
    assert can_continue(Continues.TEXT, plain) and not can_continue(Continues.TEXT, typed)
    assert not can_continue(Continues.NOTHING, plain)


# -- the dispatcher after a move -----------------------------------------------------------------------------


def test_after_a_move_stops_go_to_the_new_owner_and_its_loss_is_the_stream_s_loss() -> None:
    d = dispatcher(runners=("r1", "r2"))
    d.admit(job("s1"), now=0.0)
    d.offer_accepted("s1", "r1", now=0.1)
    d.heartbeat(beat("r2"), now=STALE_S)
    assert lost_after_silence(d, "r1", now=STALE_S + 0.1) == ("s1",)
    d.moved(job("s1"), Owner("r2", 1), now=STALE_S + 0.2)
    assert d.stop("s1", CancelReason.CLIENT, now=STALE_S + 0.3) == AskOwner(Owner("r2", 1))
    assert lost_after_silence(d, "r2", now=2 * STALE_S + 0.1) == ("s1",)


def test_a_stream_admitted_by_another_gateway_is_routed_here_once_this_gateway_moved_it() -> None:
    d = dispatcher(runners=("r2",))
    assert d.stop("elsewhere", CancelReason.CLIENT, now=0.0) is None
    d.moved(job("elsewhere"), Owner("r2", 1), now=0.1)
    assert d.stop("elsewhere", CancelReason.CLIENT, now=0.2) == AskOwner(Owner("r2", 1))


def test_a_runner_declared_lost_and_heard_again_is_a_false_loss_with_its_moved_streams_to_cancel() -> None:
    d = dispatcher(runners=("r1", "r2"))
    d.admit(job("s1"), now=0.0)
    d.offer_accepted("s1", "r1", now=0.1)
    d.heartbeat(beat("r2"), now=STALE_S)
    lost_after_silence(d, "r1", now=STALE_S + 0.1)
    d.moved(job("s1"), Owner("r2", 1), now=STALE_S + 0.2)
    heard = d.heartbeat(beat("r1", "s1", "other"), now=STALE_S + 1.0)
    assert heard.returned and heard.superseded == ("s1",)
    again = d.heartbeat(beat("r1", "s1"), now=STALE_S + 2.0)
    assert not again.returned and again.superseded == ("s1",)  # cancelled again while it still lists it
    assert d.heartbeat(beat("r2", "s1"), now=STALE_S + 2.0).superseded == ()  # the new owner lists it: its own


def test_a_runner_that_says_it_is_leaving_is_checked_at_once_and_lost_with_the_streams_it_left() -> None:
    d = dispatcher(runners=("r1", "r2"))
    d.heartbeat(replace(beat("r1", "s1"), leaving=True), now=1.0)
    assert d.runners_to_check(now=1.0) == ["r1"]
    lost = d.runner_silent("r1", now=1.0)
    assert lost is not None and lost.stream_ids == ("s1",)


def test_a_runner_that_took_a_stream_before_any_heartbeat_of_it_arrived_is_watched_and_lost_with_it() -> None:
    d = dispatcher(runners=("r1",))
    d.admit(job("s1"), now=0.0)
    d.offer_accepted("s1", "unheard", now=0.1)  # the queue group gave it to a runner this gateway never heard from
    assert d.holds("s1")
    d.heartbeat(beat("r1"), now=STALE_S)
    assert d.runners_to_check(now=0.1 + STALE_S - 0.01) == []
    assert lost_after_silence(d, "unheard", now=0.1 + STALE_S) == ("s1",)


def test_an_unheard_runner_s_first_heartbeat_keeps_the_streams_it_took() -> None:
    d = dispatcher(runners=("r1",))
    d.admit(job("s1"), now=0.0)
    d.offer_accepted("s1", "late", now=0.1)
    d.heartbeat(beat("late"), now=0.5)
    d.heartbeat(beat("r1"), now=STALE_S + 0.2)
    assert lost_after_silence(d, "late", now=STALE_S + 0.6) == ("s1",)


def test_a_runner_of_many_streams_listed_over_several_heartbeats_is_lost_with_every_one_of_them() -> None:
    ids = [f"{i:032x}" for i in range(3 * MAX_STREAMS_PER_HEARTBEAT)]
    pages = pages_for(len(ids))
    d = dispatcher(runners=("r1", "r2"))
    for beat_number in range(pages):
        page = listed_on(ids, beat_number, pages)
        d.heartbeat(replace(beat("r1", *page), page=beat_number, pages=pages), now=beat_number * 1.0)
    last = (pages - 1) * 1.0
    d.heartbeat(beat("r2"), now=last + STALE_S)
    assert all(d.holds(stream_id) for stream_id in ids)
    assert set(lost_after_silence(d, "r1", now=last + STALE_S)) == set(ids)


def test_a_stream_that_finished_leaves_its_page_when_the_page_is_heard_again() -> None:
    d = dispatcher(runners=("r1",))
    ids = [f"{i:032x}" for i in range(2 * MAX_STREAMS_PER_HEARTBEAT)]
    for number in range(2):
        d.heartbeat(replace(beat("r1", *listed_on(ids, number, 2)), page=number, pages=2), now=number * 1.0)
    done = listed_on(ids, 0, 2)[0]
    still = [stream_id for stream_id in listed_on(ids, 0, 2) if stream_id != done]
    d.heartbeat(replace(beat("r1", *still), page=0, pages=2), now=2.0)
    assert not d.holds(done) and all(d.holds(stream_id) for stream_id in ids if stream_id != done)
