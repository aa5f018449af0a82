"""Spec of the transformers engine's parameters: what maps onto ``generate``, and ``unsupported_parameter``."""

from __future__ import annotations

import pytest

from tokenrelay.runner.engines import EngineError
from tokenrelay.runner.engines.transformers_params import generate_kwargs


def test_no_parameters_decode_greedily() -> None:
    assert generate_kwargs({}) == {"do_sample": False}


def test_sampling_parameters_map_onto_generate_and_turn_sampling_on() -> None:
    assert generate_kwargs({"temperature": 0.7, "top_p": 0.9, "top_k": 40}) == {
        "do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 40,
    }  # fmt: skip


def test_temperature_zero_is_greedy_decoding() -> None:
    assert generate_kwargs({"temperature": 0}) == {"do_sample": False}


def test_fields_that_do_not_shape_generation_are_accepted() -> None:
    assert generate_kwargs({"user": "u1", "metadata": {"a": "b"}, "n": 1, "stop": None}) == {"do_sample": False}


@pytest.mark.parametrize(
    "params",
    [{"tools": [{"type": "function"}]}, {"stop": ["\n"]}, {"seed": 3}, {"reasoning_effort": "low"}, {"n": 2},
     {"logprobs": True}, {"response_format": {"type": "json_object"}}],
)  # fmt: skip
def test_a_parameter_the_engine_cannot_honour_is_unsupported(params: dict[str, object]) -> None:
    with pytest.raises(EngineError) as caught:
        generate_kwargs(params)
    assert caught.value.code == "unsupported_parameter"
    assert next(iter(params)) in caught.value.message


@pytest.mark.parametrize("params", [{"temperature": "hot"}, {"top_k": 1.5}, {"top_p": True}])
def test_a_sampling_parameter_of_the_wrong_type_is_unsupported(params: dict[str, object]) -> None:
    with pytest.raises(EngineError) as caught:
        generate_kwargs(params)
    assert caught.value.code == "unsupported_parameter"
