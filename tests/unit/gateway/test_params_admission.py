"""Spec of admission by request parameter: what runners announce they can honour, and what the gateway refuses.

Pure cores: no server, no sleeps.
"""

from __future__ import annotations

import pytest

from tokenrelay.gateway.models import check_params
from tokenrelay.wire import codec
from tokenrelay.wire.errors import BadRequest, ErrorCode, UnsupportedParameter, from_code
from tokenrelay.wire.messages import RunnerHeartbeat

TINY = "tiny-gpt2"
OTHER = "qwen2.5:7b"
TRANSFORMERS_PARAMS = ("metadata", "n", "repetition_penalty", "store", "temperature", "top_k", "top_p", "user")


def beat(runner_id: str, model: str, accepts_params: tuple[str, ...] | None) -> RunnerHeartbeat:
    return RunnerHeartbeat(
        runner_id=runner_id, engine="e", model=model, active=0, capacity=1, ts=0.0, accepts_params=accepts_params
    )


def test_a_heartbeat_carries_the_parameters_its_engine_accepts_across_the_wire() -> None:
    sent = beat("r1", TINY, TRANSFORMERS_PARAMS)
    received = codec.decode(codec.encode(sent))
    assert received == sent
    assert isinstance(received, RunnerHeartbeat)
    assert received.accepts("temperature") and not received.accepts("tools")


def test_a_heartbeat_without_the_field_comes_from_a_runner_that_accepts_every_parameter() -> None:
    older = b'{"type":"runner_heartbeat","runner_id":"r1","engine":"e","model":"m","active":0,"capacity":1,"ts":0}'
    received = codec.decode(older)
    assert isinstance(received, RunnerHeartbeat)
    assert received.accepts_params is None
    assert received.accepts("tools") and received.accepts("logprobs")


def test_admission_refuses_a_parameter_no_runner_of_the_model_accepts_naming_the_field_and_the_model() -> None:
    with pytest.raises(UnsupportedParameter) as refused:
        check_params({"temperature": 0.5, "tools": []}, model=TINY, runners=[beat("r1", TINY, TRANSFORMERS_PARAMS)])
    assert "'tools'" in refused.value.message and repr(TINY) in refused.value.message
    assert "temperature" in refused.value.message  # what the model's runners do accept
    assert (refused.value.code, refused.value.http_status) == (ErrorCode.UNSUPPORTED_PARAMETER, 400)


def test_admission_lets_through_parameters_every_runner_of_the_model_accepts() -> None:
    check_params({"temperature": 0.5, "top_p": 0.9}, model=TINY, runners=[beat("r1", TINY, TRANSFORMERS_PARAMS)])


def test_admission_lets_through_a_parameter_that_one_runner_of_the_model_accepts() -> None:
    runners = [beat("r1", TINY, TRANSFORMERS_PARAMS), beat("r2", TINY, None)]
    check_params({"tools": [], "logprobs": True}, model=TINY, runners=runners)


def test_admission_counts_only_the_runners_of_the_requested_model() -> None:
    runners = [beat("r1", TINY, TRANSFORMERS_PARAMS), beat("r2", OTHER, None)]
    with pytest.raises(UnsupportedParameter, match="logprobs"):
        check_params({"logprobs": True}, model=TINY, runners=runners)
    check_params({"logprobs": True}, model=OTHER, runners=runners)


def test_admission_lets_through_a_parameter_set_to_null() -> None:
    check_params({"tools": None}, model=TINY, runners=[beat("r1", TINY, TRANSFORMERS_PARAMS)])


def test_a_runner_that_announces_no_parameters_accepts_none_of_them() -> None:
    with pytest.raises(UnsupportedParameter, match="accept: none"):
        check_params({"temperature": 1.0}, model=TINY, runners=[beat("r1", TINY, ())])
    check_params({}, model=TINY, runners=[beat("r1", TINY, ())])


def test_an_unsupported_parameter_error_rebuilt_from_its_code_is_a_bad_request_with_status_400() -> None:
    message = "no runner of model 'tiny' can honour the parameter 'tools'"
    error = from_code("unsupported_parameter", message)
    assert isinstance(error, UnsupportedParameter) and isinstance(error, BadRequest)
    assert error.http_status == 400
    assert error.to_dict() == {"error": {"code": "unsupported_parameter", "message": message}}
