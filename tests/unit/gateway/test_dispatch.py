"""Spec of the gateway's dispatch: the queue, offers, deadlines, holders, stops and lost runners, on a fake clock.

The dispatcher is fed events with the time they happen at and answers with actions; no server, no sleeps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import pytest

from tokenrelay.gateway.actions import (
    Action,
    AskHolders,
    AskOwner,
    AwaitDispatch,
    CancelOwner,
    Dispatched,
    EndUnstarted,
    Offer,
)
from tokenrelay.gateway.dispatch import (
    DISPATCH_BACKOFF_MAX_S,
    DISPATCH_BACKOFF_MIN_S,
    OFFER_TAKE_FRACTION,
    Dispatcher,
)
from tokenrelay.gateway.states import DispatchState, Owner
from tokenrelay.wire.content import ChatMessage
from tokenrelay.wire.errors import ErrorCode, Overloaded, Unavailable
from tokenrelay.wire.messages import CancelReason, FinishReason, JobRequest, RunnerHeartbeat

QUEUE_TIMEOUT_S = 10.0
OFFER_TIMEOUT_S = 1.0
STALE_S = 3.0

T = TypeVar("T")


def job(stream_id: str, *, owner: str | None = None) -> JobRequest:
    return JobRequest(
        stream_id=stream_id, epoch="e1", gateway_id="g1", model="synthetic",
        messages=(ChatMessage(role="user", content="hi"),), max_tokens=5, created=0, owner=owner,
    )  # fmt: skip


def beat(runner_id: str, *streams: str) -> RunnerHeartbeat:
    return RunnerHeartbeat(
        runner_id=runner_id, engine="synthetic", model="synthetic", active=len(streams), capacity=1, ts=0.0,
        streams=streams,
    )  # fmt: skip


def dispatcher(*, runners: Sequence[str] = ("r1",), **limits: float) -> Dispatcher:
    """A dispatcher that heard ``runners`` at time 0."""
    d = Dispatcher(
        queue_timeout_s=limits.pop("queue_timeout_s", QUEUE_TIMEOUT_S),
        offer_timeout_s=OFFER_TIMEOUT_S,
        runner_stale_after_s=STALE_S,
        max_queued_streams=int(limits.pop("max_queued_streams", 1_000)),
    )
    for runner_id in runners:
        d.heartbeat(beat(runner_id), now=0.0)
    return d


def offered(actions: Sequence[Action]) -> list[str]:
    return [a.job.stream_id for a in actions if isinstance(a, Offer)]


def of_type(actions: Sequence[Action], cls: type[T]) -> list[T]:
    return [a for a in actions if isinstance(a, cls)]


def admitted_behind_a_full_runner(d: Dispatcher, *stream_ids: str, now: float = 0.0) -> None:
    """Admit the streams and have every first offer refused: the queue is full."""
    for stream_id in stream_ids:
        assert offered(d.admit(job(stream_id), now)) == [stream_id]
    for stream_id in stream_ids:
        assert offered(d.offer_refused(stream_id, now)) == []


def run_refusing(d: Dispatcher, *, until: float) -> list[tuple[float, str]]:
    """Advance the clock from timer to timer up to ``until``, every offer refused at once; the offers made."""
    made: list[tuple[float, str]] = []
    while (due := d.next_due_at()) is not None and due <= until:
        pending = offered(d.tick(due))
        while pending:
            stream_id = pending.pop()
            made.append((due, stream_id))
            pending += offered(d.offer_refused(stream_id, due))
    return made


# -- admission -----------------------------------------------------------------------------------------


def test_a_stream_admitted_while_the_runners_have_room_is_offered_at_once_with_its_take_window() -> None:
    d = dispatcher()
    [offer] = d.admit(job("s1"), now=0.0)
    assert isinstance(offer, Offer)
    assert offer.job.stream_id == "s1"
    assert offer.timeout_s == OFFER_TIMEOUT_S
    assert offer.take_within_s == pytest.approx(OFFER_TAKE_FRACTION * OFFER_TIMEOUT_S)
    assert d.state_of("s1") is DispatchState.OFFERED


def test_streams_admitted_while_the_runners_have_room_are_offered_side_by_side() -> None:
    d = dispatcher()
    assert [offered(d.admit(job(f"s{i}"), now=0.0)) for i in range(3)] == [["s0"], ["s1"], ["s2"]]
    assert d.queued == 3


def test_admission_is_unavailable_when_no_runner_was_heard() -> None:
    d = dispatcher(runners=())
    with pytest.raises(Unavailable):
        d.check_admission()
    with pytest.raises(Unavailable):
        d.admit(job("s1"), now=0.0)


def test_admission_is_overloaded_with_a_retry_after_once_max_queued_streams_wait() -> None:
    d = dispatcher(max_queued_streams=2)
    d.admit(job("s1"), now=0.0)
    d.admit(job("s2"), now=0.0)
    with pytest.raises(Overloaded) as raised:
        d.check_admission()
    assert raised.value.retry_after_s == 1
    with pytest.raises(Overloaded):
        d.admit(job("s3"), now=0.0)


def test_a_stream_counts_against_the_queue_bound_until_a_runner_takes_it() -> None:
    d = dispatcher(max_queued_streams=1)
    d.admit(job("s1"), now=0.0)  # offered, not taken yet: it still waits
    with pytest.raises(Overloaded):
        d.check_admission()
    d.offer_accepted("s1", "r1", now=0.01)
    assert d.queued == 0
    assert [b.runner_id for b in d.check_admission()] == ["r1"]


def test_a_silent_runner_counts_for_admission_until_it_is_declared_lost() -> None:
    d = dispatcher()
    assert d.live_runners(now=STALE_S) == []
    assert [b.runner_id for b in d.check_admission()] == ["r1"]
    d.runner_silent("r1", now=STALE_S)
    with pytest.raises(Unavailable):
        d.check_admission()


def test_a_stream_id_cannot_be_admitted_twice() -> None:
    d = dispatcher()
    d.admit(job("s1"), now=0.0)
    with pytest.raises(ValueError, match="s1"):
        d.admit(job("s1"), now=0.0)


# -- offers and the queue ------------------------------------------------------------------------------


def test_an_accepted_offer_makes_the_runner_the_streams_owner_and_says_how_long_it_waited() -> None:
    d = dispatcher()
    d.admit(job("s1", owner="tenant-a"), now=1.0)
    [dispatched] = d.offer_accepted("s1", "r1", now=1.25)
    assert dispatched == Dispatched("s1", Owner("r1"), queued_s=0.25)
    assert d.state_of("s1") is DispatchState.RUNNING
    assert d.owner_of("s1") == Owner("r1", generation=1)
    assert d.tenant_of("s1") == "tenant-a"
    assert d.holds("s1")  # the runner took it: its slot counts until its heartbeat says otherwise


def test_a_refused_offer_is_offered_again_after_a_backoff_that_doubles_up_to_its_maximum() -> None:
    d = dispatcher()
    d.admit(job("s1"), now=0.0)
    assert d.offer_refused("s1", now=0.0) == []
    assert d.state_of("s1") is DispatchState.QUEUED
    offers = [at for at, _ in run_refusing(d, until=1.0)]
    waits = [round(b - a, 6) for a, b in zip([0.0, *offers], offers, strict=False)]
    assert waits[:6] == [0.005, 0.01, 0.02, 0.04, 0.08, DISPATCH_BACKOFF_MAX_S]
    assert set(waits[6:]) == {DISPATCH_BACKOFF_MAX_S}


def test_an_unanswered_offer_is_offered_again_after_the_backoff_and_fills_no_queue() -> None:
    d = dispatcher()
    d.admit(job("s1"), now=0.0)
    d.admit(job("s2"), now=0.0)
    assert d.offer_unanswered("s1", now=0.0) == []
    assert d.next_due_at() == DISPATCH_BACKOFF_MIN_S
    assert offered(d.tick(now=DISPATCH_BACKOFF_MIN_S)) == ["s1"]
    d.offer_unanswered("s2", now=0.0)
    assert offered(d.admit(job("s3"), now=0.0)) == ["s3"]  # no capacity signal: new streams are still offered


def test_once_a_runner_refused_a_stream_only_the_head_of_the_queue_asks_again() -> None:
    d = dispatcher()
    waiting = [f"s{i}" for i in range(6)]
    admitted_behind_a_full_runner(d, *waiting)
    assert offered(d.admit(job("late"), now=0.001)) == []  # a full queue: a new stream waits its turn
    offers = run_refusing(d, until=1.0)
    assert {stream_id for _, stream_id in offers} == {"s0"}
    # One asker backing off to DISPATCH_BACKOFF_MAX_S, not six (or seven) each on its own backoff.
    assert len(offers) <= 1.0 / DISPATCH_BACKOFF_MAX_S + 6


def test_streams_waiting_for_a_runner_are_taken_in_the_order_they_were_admitted() -> None:
    d = dispatcher()
    waiting = [f"s{i}" for i in range(6)]
    admitted_behind_a_full_runner(d, *waiting)
    run_refusing(d, until=0.5)
    taken: list[str] = []
    pending = offered(d.stream_done("busy", now=0.6))  # the busy stream ended: a slot is free
    now = 0.6
    while pending:
        [stream_id] = pending
        taken.append(stream_id)
        now += 0.1
        pending = offered(d.offer_accepted(stream_id, "r1", now))  # the next head asks as soon as one is taken
    assert taken == waiting
    assert d.queued == 0


def test_a_runner_finishing_a_stream_lets_the_head_ask_at_once_instead_of_after_its_backoff() -> None:
    d = dispatcher()
    admitted_behind_a_full_runner(d, "s1", "s2")
    run_refusing(d, until=0.5)
    assert offered(d.stream_done("busy", now=0.501)) == ["s1"]


def test_a_runner_finishing_a_stream_while_the_heads_offer_is_out_has_it_ask_again_once_refused() -> None:
    d = dispatcher()
    admitted_behind_a_full_runner(d, "s1")
    assert offered(d.tick(now=DISPATCH_BACKOFF_MIN_S)) == ["s1"]
    assert d.stream_done("busy", now=0.006) == []  # its offer is out
    assert offered(d.offer_refused("s1", now=0.007)) == ["s1"]  # asks again at once, not after its backoff


def test_a_queue_that_emptied_offers_new_streams_at_once_again() -> None:
    d = dispatcher()
    admitted_behind_a_full_runner(d, "s1")
    assert offered(d.stream_done("busy", now=0.01)) == ["s1"]
    d.offer_accepted("s1", "r1", now=0.02)
    assert offered(d.admit(job("s2"), now=0.03)) == ["s2"]
    assert offered(d.admit(job("s3"), now=0.03)) == ["s3"]


# -- offers without an answer: the holders -------------------------------------------------------------


def test_an_offer_without_an_answer_in_time_asks_the_holders_before_it_is_offered_again() -> None:
    d = dispatcher()
    d.admit(job("s1"), now=0.0)
    assert d.offer_timed_out("s1", now=OFFER_TIMEOUT_S) == [AskHolders("s1", OFFER_TIMEOUT_S)]
    assert d.state_of("s1") is DispatchState.CONFIRMING
    assert d.next_due_at() is None  # nothing is offered while the runners are asked
    assert d.tick(now=5.0) == []


def test_a_stream_a_runner_says_it_holds_is_that_runners_and_is_not_offered_again() -> None:
    d = dispatcher()
    d.admit(job("s1"), now=0.0)
    d.offer_timed_out("s1", now=1.0)
    assert of_type(d.holders_answered("s1", "r1", now=1.5), Dispatched) == [Dispatched("s1", Owner("r1"), 1.5)]
    assert d.owner_of("s1") == Owner("r1")
    assert d.next_due_at() is None
    assert d.offer_accepted("s1", "r2", now=1.6) == []  # the first offer's late answer changes nothing
    assert d.owner_of("s1") == Owner("r1")


def test_a_stream_no_runner_says_it_holds_is_offered_again_after_the_backoff() -> None:
    d = dispatcher()
    d.admit(job("s1"), now=0.0)
    d.offer_timed_out("s1", now=1.0)
    assert d.holders_answered("s1", None, now=2.0) == []
    assert d.state_of("s1") is DispatchState.QUEUED
    assert offered(d.tick(now=2.0 + DISPATCH_BACKOFF_MIN_S)) == ["s1"]


def test_answers_that_come_late_or_twice_are_ignored() -> None:
    d = dispatcher()
    d.admit(job("s1"), now=0.0)
    d.offer_accepted("s1", "r1", now=0.1)
    assert d.offer_accepted("s1", "r1", now=0.2) == []
    assert d.offer_refused("s1", now=0.2) == []
    assert d.offer_unanswered("s1", now=0.2) == []
    assert d.offer_timed_out("s1", now=0.2) == []
    assert d.holders_answered("s1", "r2", now=0.2) == []
    assert d.offer_refused("unknown", now=0.2) == []
    assert d.state_of("s1") is DispatchState.RUNNING


# -- the queue's deadline ------------------------------------------------------------------------------


def test_a_stream_no_runner_took_within_queue_timeout_ends_overloaded() -> None:
    d = dispatcher(queue_timeout_s=1.0)
    d.admit(job("s1"), now=0.0)
    d.offer_unanswered("s1", now=0.0)
    ends: list[EndUnstarted] = []
    while (due := d.next_due_at()) is not None:
        actions = d.tick(due)
        ends += of_type(actions, EndUnstarted)
        for stream_id in offered(actions):
            d.offer_unanswered(stream_id, due)
    [end] = ends
    assert (end.job.stream_id, end.error, end.finish_reason) == ("s1", ErrorCode.OVERLOADED, FinishReason.ERROR)
    assert d.state_of("s1") is DispatchState.FINISHED
    assert d.queued == 0


def test_a_stream_waiting_behind_the_head_ends_overloaded_at_its_deadline() -> None:
    d = dispatcher(queue_timeout_s=1.0)
    admitted_behind_a_full_runner(d, "s1")
    assert offered(d.admit(job("s2"), now=0.5)) == []
    run_refusing(d, until=1.2)  # s1 expired at 1.0, and s2 became the head: it asks now
    assert d.state_of("s1") is DispatchState.FINISHED
    assert d.state_of("s2") is DispatchState.QUEUED
    made = run_refusing(d, until=2.0)
    assert made and {stream_id for _, stream_id in made} == {"s2"}
    assert d.state_of("s2") is DispatchState.FINISHED
    assert d.queued == 0


def test_an_offer_out_at_the_deadline_ends_the_stream_only_once_no_runner_took_it() -> None:
    d = dispatcher(queue_timeout_s=1.0)
    d.admit(job("s1"), now=0.0)
    assert d.tick(now=1.5) == []  # its offer is out
    [end] = d.offer_refused("s1", now=1.5)
    assert isinstance(end, EndUnstarted) and end.error is ErrorCode.OVERLOADED
    d.admit(job("s2"), now=2.0)
    assert of_type(d.offer_accepted("s2", "r1", now=3.5), Dispatched)  # taken late, but taken: it runs


def test_a_head_a_free_slot_wakes_after_its_deadline_is_offered_if_the_clock_has_not_ended_it_yet() -> None:
    d = dispatcher(queue_timeout_s=1.0)
    admitted_behind_a_full_runner(d, "s1")
    run_refusing(d, until=0.9)
    assert offered(d.stream_done("busy", now=1.05)) == ["s1"]  # the slot is worth more than the deadline's letter


def test_the_last_backoff_is_cut_short_by_the_deadline() -> None:
    d = dispatcher(queue_timeout_s=1.0)
    d.admit(job("s1"), now=0.0)
    d.offer_refused("s1", now=1.0 - 2**-9)  # its backoff would end after the deadline
    assert d.next_due_at() == 1.0
    [end] = d.tick(now=1.0)
    assert isinstance(end, EndUnstarted)


# -- stops ---------------------------------------------------------------------------------------------


def test_a_stop_while_queued_ends_the_stream_cancelled_and_the_next_head_asks() -> None:
    d = dispatcher()
    admitted_behind_a_full_runner(d, "s1", "s2")
    route = d.stop("s1", CancelReason.CLIENT, now=0.001)
    assert isinstance(route, AwaitDispatch)
    end, offer = route.actions
    assert end == EndUnstarted(job("s1"), cancel_reason=CancelReason.CLIENT)
    assert end.finish_reason is FinishReason.CANCELLED
    assert isinstance(offer, Offer) and offer.job.stream_id == "s2"
    assert d.state_of("s1") is DispatchState.FINISHED
    assert d.stop("s1", CancelReason.CLIENT, now=0.002) is None  # no runner had it: its record answers


def test_a_stop_while_offered_waits_for_the_answer_and_goes_to_the_runner_that_took_it() -> None:
    d = dispatcher()
    d.admit(job("s1"), now=0.0)
    assert d.stop("s1", CancelReason.DISCONNECT, now=0.01) == AwaitDispatch(())
    assert d.stopping("s1") is CancelReason.DISCONNECT
    actions = d.offer_accepted("s1", "r1", now=0.02)
    assert of_type(actions, CancelOwner) == [CancelOwner("s1", Owner("r1"), CancelReason.DISCONNECT)]


def test_a_stop_while_offered_ends_the_stream_cancelled_when_no_runner_took_it() -> None:
    d = dispatcher()
    d.admit(job("s1"), now=0.0)
    d.stop("s1", CancelReason.CLIENT, now=0.01)
    [end] = d.offer_refused("s1", now=0.02)
    assert end == EndUnstarted(job("s1"), cancel_reason=CancelReason.CLIENT)


def test_a_stop_while_the_holders_are_asked_goes_to_the_runner_that_says_it_holds_the_stream() -> None:
    d = dispatcher()
    d.admit(job("s1"), now=0.0)
    d.offer_timed_out("s1", now=1.0)
    assert d.stop("s1", CancelReason.CLIENT, now=1.1) == AwaitDispatch(())
    assert of_type(d.holders_answered("s1", "r2", now=1.2), CancelOwner) == [
        CancelOwner("s1", Owner("r2"), CancelReason.CLIENT)
    ]


def test_a_stop_while_running_and_after_the_stream_finished_goes_to_its_owner() -> None:
    d = dispatcher()
    d.admit(job("s1"), now=0.0)
    d.offer_accepted("s1", "r1", now=0.1)
    assert d.stop("s1", CancelReason.CLIENT, now=0.2) == AskOwner(Owner("r1"))
    d.stream_done("s1", now=0.3)
    assert d.state_of("s1") is DispatchState.FINISHED
    assert d.stop("s1", CancelReason.CLIENT, now=0.4) == AskOwner(Owner("r1"))  # a runner remembers how it ended


def test_a_stop_of_a_stream_this_gateway_does_not_know_is_not_routed_here() -> None:
    assert dispatcher().stop("elsewhere", CancelReason.CLIENT, now=0.0) is None


def test_the_first_stops_reason_is_the_one_kept() -> None:
    d = dispatcher()
    d.admit(job("s1"), now=0.0)
    d.stop("s1", CancelReason.DISCONNECT, now=0.01)
    d.stop("s1", CancelReason.CLIENT, now=0.02)
    [end] = d.offer_unanswered("s1", now=0.03)
    assert isinstance(end, EndUnstarted) and end.cancel_reason is CancelReason.DISCONNECT


def test_an_abandoned_dispatch_leaves_the_queue_and_the_next_head_asks() -> None:
    d = dispatcher()
    admitted_behind_a_full_runner(d, "s1", "s2")
    assert offered(d.abandon("s1", now=0.001)) == ["s2"]
    assert d.state_of("s1") is DispatchState.FINISHED
    assert not d.may_run("s1")


# -- runners -------------------------------------------------------------------------------------------


def lost_after_silence(d: Dispatcher, runner_id: str, *, now: float) -> tuple[str, ...]:
    assert d.runners_to_check(now) == [runner_id]
    lost = d.runner_silent(runner_id, now)
    d.runner_checked(runner_id)
    assert lost is not None and lost.runner_id == runner_id
    return lost.stream_ids


def test_a_lost_runner_fails_the_streams_it_owns_and_those_listed_in_its_last_heartbeat() -> None:
    d = dispatcher()
    d.heartbeat(beat("r1", "from-another-gateway"), now=0.0)
    d.admit(job("s1"), now=0.0)
    d.offer_accepted("s1", "r1", now=0.1)
    assert lost_after_silence(d, "r1", now=STALE_S + 0.1) == ("from-another-gateway", "s1")
    assert d.state_of("s1") is DispatchState.FINISHED


def test_a_lost_runner_does_not_fail_a_stream_another_runner_owns() -> None:
    d = dispatcher(runners=("r1", "r2"))
    d.heartbeat(beat("r1", "s1"), now=0.0)  # r1 took s1 too late, and says so
    d.admit(job("s1"), now=0.0)
    d.offer_accepted("s1", "r2", now=0.1)
    d.heartbeat(beat("r2", "s1"), now=STALE_S)
    assert lost_after_silence(d, "r1", now=STALE_S + 0.1) == ()
    assert d.state_of("s1") is DispatchState.RUNNING


def test_a_runner_heard_from_while_it_was_pinged_is_not_lost() -> None:
    d = dispatcher()
    assert d.runners_to_check(now=STALE_S) == ["r1"]
    d.heartbeat(beat("r1"), now=STALE_S + 1.0)  # its answer to the ping, or a late heartbeat
    assert d.runner_silent("r1", now=STALE_S + 1.5) is None
    assert [b.runner_id for b in d.live_runners(now=STALE_S + 1.5)] == ["r1"]


def test_a_silent_runner_is_pinged_once_until_its_check_is_over() -> None:
    d = dispatcher()
    assert d.runners_to_check(now=STALE_S) == ["r1"]
    assert d.runners_to_check(now=STALE_S + 1.0) == []
    d.runner_checked("r1")
    assert d.runners_to_check(now=STALE_S + 2.0) == ["r1"]


# -- what the shell reads ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "may_run"),
    [
        (lambda d: None, True),  # offered
        (lambda d: d.offer_accepted("s1", "r1", 0.1), True),  # running
        (lambda d: (d.offer_accepted("s1", "r1", 0.1), d.stream_done("s1", 0.2)), True),  # finished, owner known
        (lambda d: d.stop("s1", CancelReason.CLIENT, 0.1), True),  # stop waits for its offer's answer
        (lambda d: (d.stop("s1", CancelReason.CLIENT, 0.1), d.offer_refused("s1", 0.2)), False),  # never started
    ],
)
def test_a_stream_may_run_while_queued_here_or_once_a_runner_took_it(
    steps: Callable[[Dispatcher], object], may_run: bool
) -> None:
    d = dispatcher()
    d.admit(job("s1"), now=0.0)
    steps(d)
    assert d.may_run("s1") is may_run
    assert not d.may_run("unknown")


def test_streams_that_left_the_queue_are_remembered_up_to_a_bound_oldest_forgotten_first() -> None:
    d = Dispatcher(max_remembered_streams=2)
    d.heartbeat(beat("r1"), now=0.0)
    for stream_id in ("s1", "s2", "s3"):
        d.admit(job(stream_id), now=0.0)
        d.offer_accepted(stream_id, "r1", now=0.1)
    assert [d.owner_of(s) for s in ("s1", "s2", "s3")] == [None, Owner("r1"), Owner("r1")]
    assert d.stop("s1", CancelReason.CLIENT, now=0.2) is None  # forgotten: its record says who owns it


def test_a_runner_whose_heartbeat_is_late_is_still_registered_until_it_is_declared_lost() -> None:
    d = dispatcher(runners=("r1", "r2"))
    d.heartbeat(beat("r1"), now=0.0)
    d.heartbeat(beat("r2"), now=STALE_S)
    late = STALE_S + 0.5
    assert [b.runner_id for b in d.live_runners(now=late)] == ["r2"]
    assert sorted(b.runner_id for b in d.registered_runners()) == ["r1", "r2"]
    d.runners_to_check(now=late)
    assert d.runner_silent("r1", now=late + 1.0) is not None
    assert [b.runner_id for b in d.registered_runners()] == ["r2"]
