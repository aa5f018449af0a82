"""Spec of model routing in the gateway: which model a stream is for, the registry's models, one queue per model.

Pure cores on a fake clock: no server, no sleeps.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from tokenrelay.gateway.actions import Action, Offer
from tokenrelay.gateway.dispatch import Dispatcher
from tokenrelay.gateway.liveness import RunnerRegistry
from tokenrelay.gateway.models import RAW_PROMPT_PROTOCOL, check_raw_prompt, choose_model
from tokenrelay.gateway.waiting import queue_key
from tokenrelay.wire.content import ChatMessage
from tokenrelay.wire.errors import BadRequest, ErrorCode, ModelNotFound, NotFound, Overloaded, Unavailable
from tokenrelay.wire.messages import JobRequest, RunnerHeartbeat

STALE_S = 3.0
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
QWEN = "qwen2.5:7b"


def beat(runner_id: str, *models: str, model: str = "") -> RunnerHeartbeat:
    return RunnerHeartbeat(
        runner_id=runner_id, engine="synthetic", model=model or models[0], models=models, active=0, capacity=1, ts=0.0
    )


def job(stream_id: str, model: str) -> JobRequest:
    return JobRequest(
        stream_id=stream_id, epoch="e1", gateway_id="g1", model=model,
        messages=(ChatMessage(role="user", content="hi"),), max_tokens=5, created=0,
    )  # fmt: skip


def dispatcher(*beats: RunnerHeartbeat, max_queued_streams: int = 1_000) -> Dispatcher:
    d = Dispatcher(runner_stale_after_s=STALE_S, max_queued_streams=max_queued_streams)
    for one in beats:
        d.heartbeat(one, now=0.0)
    return d


def offered(actions: Sequence[Action]) -> list[str]:
    return [a.job.stream_id for a in actions if isinstance(a, Offer)]


def never_heard(model: str) -> bool:
    return False


# -- choosing the model ----------------------------------------------------------------------------------


def test_a_request_naming_a_served_model_gets_it() -> None:
    assert choose_model(QWEN, served={QWEN, LLAMA}, knows=never_heard) == QWEN


def test_a_request_naming_no_model_gets_the_only_model_served() -> None:
    assert choose_model(None, served={LLAMA}, knows=never_heard) == LLAMA


def test_a_request_naming_no_model_while_several_are_served_is_a_bad_request_naming_them() -> None:
    with pytest.raises(BadRequest) as raised:
        choose_model(None, served={QWEN, LLAMA}, knows=never_heard)
    assert LLAMA in raised.value.message and QWEN in raised.value.message


def test_a_request_naming_no_model_while_several_are_served_gets_the_default_model() -> None:
    assert choose_model(None, served={QWEN, LLAMA}, knows=never_heard, default_model=QWEN) == QWEN


def test_the_only_model_served_wins_over_a_default_model_no_runner_serves() -> None:
    assert choose_model(None, served={LLAMA}, knows=never_heard, default_model=QWEN) == LLAMA


def test_a_model_no_runner_ever_announced_is_model_not_found_a_404() -> None:
    with pytest.raises(ModelNotFound) as raised:
        choose_model("gpt-nothing", served={QWEN}, knows=never_heard)
    assert raised.value.code is ErrorCode.MODEL_NOT_FOUND
    assert raised.value.http_status == 404
    assert isinstance(raised.value, NotFound)
    assert QWEN in raised.value.message


def test_a_known_model_whose_runners_are_all_gone_is_unavailable() -> None:
    with pytest.raises(Unavailable, match="qwen"):
        choose_model(QWEN, served={LLAMA}, knows=lambda model: model == QWEN)


def test_a_request_naming_no_model_while_none_is_served_is_unavailable() -> None:
    with pytest.raises(Unavailable):
        choose_model(None, served=set(), knows=lambda model: True)


# -- the registry's models ---------------------------------------------------------------------------------


def test_the_registry_knows_which_live_runners_serve_which_models() -> None:
    registry = RunnerRegistry(stale_after_s=STALE_S)
    registry.on_heartbeat(beat("r1", LLAMA), now=0.0)
    registry.on_heartbeat(beat("r2", QWEN, "tiny"), now=0.0)
    registry.on_heartbeat(beat("r3", QWEN), now=0.0)
    assert registry.live_models(now=1.0) == [LLAMA, QWEN, "tiny"]
    assert registry.registered_models() == {LLAMA, QWEN, "tiny"}


def test_a_heartbeat_that_names_no_models_serves_its_model() -> None:
    old = RunnerHeartbeat(runner_id="r1", engine="synthetic", model="m", active=0, capacity=1, ts=0.0)
    assert old.served_models() == ("m",)
    registry = RunnerRegistry(stale_after_s=STALE_S)
    registry.on_heartbeat(old, now=0.0)
    assert registry.registered_models() == {"m"}


def test_a_lost_runners_models_are_no_longer_served_but_still_known() -> None:
    registry = RunnerRegistry(stale_after_s=STALE_S)
    registry.on_heartbeat(beat("r1", QWEN), now=0.0)
    assert registry.live_models(now=STALE_S) == []  # suspect: not live, still registered
    assert registry.registered_models() == {QWEN}
    registry.forget("r1", now=STALE_S)
    assert registry.registered_models() == set()
    assert registry.knows_model(QWEN)
    assert not registry.knows_model(LLAMA)


def test_the_registry_forgets_the_least_recently_announced_model_past_max_known_models() -> None:
    registry = RunnerRegistry(stale_after_s=STALE_S, max_known_models=2)
    registry.on_heartbeat(beat("r1", "a"), now=0.0)
    registry.on_heartbeat(beat("r2", "b"), now=0.0)
    registry.on_heartbeat(beat("r1", "a"), now=1.0)  # announced again: the most recent
    registry.on_heartbeat(beat("r3", "c"), now=1.0)
    assert [registry.knows_model(m) for m in ("a", "b", "c")] == [True, False, True]


# -- admission and one queue per model ----------------------------------------------------------------------


def test_every_model_has_a_queue_of_its_own() -> None:
    assert queue_key(QWEN) == QWEN
    assert queue_key(LLAMA) != queue_key(QWEN)


def test_the_dispatcher_chooses_the_model_from_what_its_runners_announced() -> None:
    d = dispatcher(beat("r1", LLAMA), beat("r2", QWEN))
    assert d.choose_model(QWEN) == QWEN
    assert d.choose_model(None, default_model=LLAMA) == LLAMA
    with pytest.raises(ModelNotFound):
        d.choose_model("unknown")
    with pytest.raises(BadRequest):
        d.choose_model(None)
    d.runner_silent("r2", now=STALE_S)
    with pytest.raises(Unavailable):
        d.choose_model(QWEN)


def test_a_stream_of_a_model_no_runner_serves_is_not_admitted() -> None:
    d = dispatcher(beat("r1", LLAMA))
    with pytest.raises(ModelNotFound):
        d.admit(job("s1", "unknown"), now=0.0)
    assert d.queued == 0


def test_a_gateway_that_heard_no_runner_is_unavailable_for_every_model() -> None:
    d = dispatcher()
    with pytest.raises(Unavailable):
        d.check_admission()
    with pytest.raises(Unavailable):
        d.admit(job("s1", QWEN), now=0.0)


def test_a_saturated_model_never_holds_up_the_streams_of_another() -> None:
    d = dispatcher(beat("r1", LLAMA), beat("r2", QWEN))
    assert offered(d.admit(job("l1", LLAMA), now=0.0)) == ["l1"]
    assert offered(d.offer_refused("l1", now=0.0)) == []  # llama's runners are full
    assert offered(d.admit(job("l2", LLAMA), now=0.0)) == []  # behind llama's head
    assert offered(d.admit(job("q1", QWEN), now=0.0)) == ["q1"]  # qwen's are not: offered at once
    assert offered(d.admit(job("q2", QWEN), now=0.0)) == ["q2"]  # side by side


def test_a_stream_done_wakes_the_head_of_its_own_models_queue_only() -> None:
    d = dispatcher(beat("r1", LLAMA), beat("r2", QWEN))
    d.admit(job("l1", LLAMA), now=0.0)
    d.offer_accepted("l1", "r1", now=0.0)
    for stream_id, model in (("l2", LLAMA), ("q1", QWEN)):
        d.admit(job(stream_id, model), now=0.0)
        d.offer_refused(stream_id, now=0.0)  # both models' runners are full
    assert offered(d.stream_done("l1", now=0.001)) == ["l2"]  # a llama slot is free: not a qwen one


def test_max_queued_streams_bounds_each_models_queue_apart() -> None:
    d = dispatcher(beat("r1", LLAMA), beat("r2", QWEN), max_queued_streams=1)
    d.admit(job("l1", LLAMA), now=0.0)
    with pytest.raises(Overloaded):
        d.admit(job("l2", LLAMA), now=0.0)
    with pytest.raises(Overloaded):
        d.check_admission(LLAMA)
    assert offered(d.admit(job("q1", QWEN), now=0.0)) == ["q1"]
    with pytest.raises(Overloaded):  # every served model's queue is full: nothing could be admitted
        d.check_admission()


def test_a_raw_prompt_is_admitted_when_every_runner_of_its_model_reads_one() -> None:
    check_raw_prompt(model="m", runners=[beat("r1", "m"), beat("r2", "other")])


def test_a_raw_prompt_is_unavailable_while_a_runner_of_its_model_predates_it_naming_that_runner() -> None:
    old = RunnerHeartbeat(runner_id="r-old", engine="synthetic", model="m", active=0, capacity=1, ts=0.0, v=2)
    assert old.v < RAW_PROMPT_PROTOCOL
    with pytest.raises(Unavailable, match="r-old"):
        check_raw_prompt(model="m", runners=[beat("r1", "m"), old])


def test_an_old_runner_of_another_model_does_not_hold_up_raw_prompts() -> None:
    old = RunnerHeartbeat(runner_id="r-old", engine="synthetic", model="other", active=0, capacity=1, ts=0.0, v=1)
    check_raw_prompt(model="m", runners=[beat("r1", "m"), old])
