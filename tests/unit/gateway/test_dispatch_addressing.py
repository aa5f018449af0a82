"""Spec of the dispatcher's addressed offers: a new stream goes through the model's queue group, and once an offer
of it went unanswered (a member of the group may be paused, and still gets its share), it is offered to the model's
live runners in turn, addressed to each alone; on a fake clock."""

from __future__ import annotations

from dataclasses import replace

from tests.unit.gateway.test_dispatch import OFFER_TIMEOUT_S, STALE_S, beat, dispatcher, job, of_type
from tokenrelay.gateway.actions import Action, Offer
from tokenrelay.gateway.addressing import DIRECT_OFFER_PROTOCOL
from tokenrelay.gateway.dispatch import DISPATCH_BACKOFF_MIN_S, Dispatcher


def addressed(actions: list[Action]) -> list[str | None]:
    """Whom each offer among ``actions`` is addressed to (``None``: the queue group)."""
    return [offer.runner_id for offer in of_type(actions, Offer)]


def unanswered(d: Dispatcher, stream_id: str, now: float) -> list[Action]:
    """The stream's offer got no answer in time, and no runner says it holds it: the actions of its next turn."""
    d.offer_timed_out(stream_id, now=now)
    d.holders_answered(stream_id, None, now=now + OFFER_TIMEOUT_S)
    due = d.next_due_at()
    assert due is not None
    return d.tick(now=due)


def test_a_new_stream_is_offered_through_the_queue_group() -> None:
    d = dispatcher(runners=("r1", "r2"))
    assert addressed(d.admit(job("s1"), now=0.0)) == [None]


def test_after_an_unanswered_offer_the_stream_is_offered_to_the_least_busy_live_runner_then_the_next() -> None:
    d = dispatcher(runners=("r1", "r2"))
    d.admit(job("s1"), now=0.0)
    for now, expected in ((0.0, "r2"), (2.0, "r1"), (4.0, "r2")):
        d.heartbeat(replace(beat("r1", "x"), capacity=4), now=now)  # r1: 1 of 4 busy
        d.heartbeat(beat("r2"), now=now)  # r2: 0 of 1
        assert addressed(unanswered(d, "s1", now=now)) == [expected]


def test_a_runner_gone_silent_is_not_addressed() -> None:
    d = dispatcher(runners=("r1", "r2"))
    d.admit(job("s1"), now=0.0)
    for now in (STALE_S, STALE_S + 2.0):
        d.heartbeat(beat("r2"), now=now)  # r1 silent since 0
        assert addressed(unanswered(d, "s1", now=now)) == ["r2"]


def test_an_offer_no_runner_could_receive_counts_as_unanswered() -> None:
    d = dispatcher(runners=("r1",))
    d.admit(job("s1"), now=0.0)
    d.offer_unanswered("s1", now=0.1)
    assert addressed(d.tick(now=0.1 + DISPATCH_BACKOFF_MIN_S)) == ["r1"]


def test_an_addressed_runner_that_refuses_for_capacity_leaves_the_next_offer_to_the_next_runner() -> None:
    d = dispatcher(runners=("r1", "r2"))
    d.admit(job("s1"), now=0.0)
    assert addressed(unanswered(d, "s1", now=0.5)) == ["r1"]
    d.offer_refused("s1", now=1.6)
    due = d.next_due_at()
    assert due is not None
    assert addressed(d.tick(now=due)) == ["r2"]


def test_a_refusal_for_capacity_is_an_answer_and_the_stream_stays_with_the_queue_group() -> None:
    d = dispatcher(runners=("r1", "r2"))
    d.admit(job("s1"), now=0.0)
    d.offer_refused("s1", now=0.1)
    assert addressed(d.tick(now=0.1 + DISPATCH_BACKOFF_MIN_S)) == [None]


def test_with_no_live_runner_that_takes_addressed_offers_the_queue_group_is_asked_again() -> None:
    d = dispatcher(runners=())
    d.heartbeat(replace(beat("old"), v=DIRECT_OFFER_PROTOCOL - 1), now=0.0)
    d.admit(job("s1"), now=0.0)
    assert addressed(unanswered(d, "s1", now=1.0)) == [None]
    d2 = dispatcher(runners=("r1",))
    d2.admit(job("s1"), now=STALE_S)
    assert addressed(unanswered(d2, "s1", now=STALE_S + 1.0)) == [None]  # r1 silent: nobody to address
