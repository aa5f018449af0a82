"""Spec of where an offer is addressed (``gateway/addressing.py``): to each runner of the model that can take it, live
ones first and the least busy first, never to the runner left out, and through the queue group only for runners
that predate addressed offers."""

from __future__ import annotations

from dataclasses import replace

from tests.unit.gateway.test_dispatch import beat
from tokenrelay.gateway.addressing import DIRECT_OFFER_PROTOCOL, QUEUE_GROUP, offer_order
from tokenrelay.wire.messages import Continuation, Continues, RunnerHeartbeat


def taker(
    runner_id: str,
    *,
    active: int = 0,
    capacity: int = 4,
    models: tuple[str, ...] = ("synthetic",),
    continues: Continues = Continues.ANY,
    v: int = DIRECT_OFFER_PROTOCOL,
) -> RunnerHeartbeat:
    return replace(beat(runner_id), active=active, capacity=capacity, models=models, continues=continues, v=v)


def order(
    *runners: RunnerHeartbeat, live: tuple[str, ...] = ("r1", "r2", "r3"), typed: bool = False
) -> list[str | None]:
    continuation = Continuation(gen=1, seq=3, tokens=2, typed=typed)
    return offer_order(runners, model="synthetic", continuation=continuation, leave_out="lost", live=live)


def test_a_continuation_is_offered_to_each_runner_that_can_take_it_never_to_the_lost_one_least_busy_first() -> None:
    runners = (taker("lost"), taker("r1", active=3), taker("r2", active=1), taker("r3", active=1, capacity=1))
    assert order(*runners) == ["r2", "r1", "r3"]  # 1 of 4 busy, 3 of 4, 1 of 1


def test_runners_whose_heartbeats_are_late_are_offered_it_after_the_live_ones() -> None:
    assert order(taker("r1"), taker("r2", active=3), live=("r2",)) == ["r2", "r1"]


def test_runners_of_other_models_or_that_cannot_continue_it_are_not_offered_it() -> None:
    runners = (taker("r1", models=("other",)), taker("r2", continues=Continues.TEXT), taker("r3"))
    assert order(*runners, typed=True) == ["r3"]
    assert order(*runners) == ["r2", "r3"]


def test_the_queue_group_is_offered_it_last_only_for_runners_that_predate_direct_offers() -> None:
    old = taker("r1", v=DIRECT_OFFER_PROTOCOL - 1)
    assert order(old, taker("r2")) == ["r2", QUEUE_GROUP]
    assert order(taker("r2")) == ["r2"]
    assert order(taker("lost")) == []


def test_a_new_stream_with_no_continuation_may_go_to_a_runner_that_continues_nothing() -> None:
    runners = (taker("r1", continues=Continues.NOTHING), taker("r2", active=1))
    assert offer_order(runners, model="synthetic", live=("r1", "r2")) == ["r1", "r2"]
