"""Spec of the gateway's runner registry: a silent runner is suspect first, lost only when declared so."""

from __future__ import annotations

from tokenrelay.gateway.liveness import RunnerRegistry
from tokenrelay.wire.messages import RunnerHeartbeat

STALE_S = 3.0


def beat(runner_id: str, *streams: str) -> RunnerHeartbeat:
    return RunnerHeartbeat(
        runner_id=runner_id, engine="synthetic", model="m", active=len(streams), capacity=8, ts=0.0, streams=streams
    )


def test_a_runner_heard_from_within_the_stale_period_is_live_and_not_stale() -> None:
    registry = RunnerRegistry(stale_after_s=STALE_S)
    registry.on_heartbeat(beat("r1", "a"), now=10.0)
    assert [b.runner_id for b in registry.live(now=12.9)] == ["r1"]
    assert registry.stale(now=12.9) == []


def test_a_silent_runner_is_stale_and_not_live_but_still_holds_its_streams() -> None:
    registry = RunnerRegistry(stale_after_s=STALE_S)
    registry.on_heartbeat(beat("r1", "a"), now=10.0)
    assert registry.stale(now=13.0) == ["r1"]
    assert registry.live(now=13.0) == []
    assert registry.holds("a")


def test_forgetting_a_stale_runner_hands_back_its_listed_and_dispatched_streams_once() -> None:
    registry = RunnerRegistry(stale_after_s=STALE_S)
    registry.on_heartbeat(beat("r1", "a", "b"), now=10.0)
    registry.on_dispatch("c", "r1", now=11.0)
    assert registry.forget("r1", now=14.0) == {"a", "b", "c"}
    assert registry.forget("r1", now=14.0) is None
    assert registry.stale(now=14.0) == [] and not registry.holds("a")


def test_a_heartbeat_after_the_runner_was_suspected_keeps_it_from_being_forgotten() -> None:
    registry = RunnerRegistry(stale_after_s=STALE_S)
    registry.on_heartbeat(beat("r1", "a"), now=10.0)
    assert registry.stale(now=13.5) == ["r1"]
    registry.on_heartbeat(beat("r1", "a"), now=14.0)  # the answer to its ping, or a late heartbeat
    assert registry.forget("r1", now=14.5) is None
    assert [b.runner_id for b in registry.live(now=14.5)] == ["r1"]


def test_an_unknown_runner_cannot_be_forgotten() -> None:
    assert RunnerRegistry(stale_after_s=STALE_S).forget("nobody", now=100.0) is None


def test_a_suspect_runner_stays_registered_for_admission_until_it_is_declared_lost() -> None:
    registry = RunnerRegistry(stale_after_s=STALE_S)
    registry.on_heartbeat(beat("r1"), now=10.0)
    assert [b.runner_id for b in registry.registered()] == ["r1"]
    assert registry.live(now=14.0) == [] and [b.runner_id for b in registry.registered()] == ["r1"]
    registry.forget("r1", now=14.0)
    assert registry.registered() == []
