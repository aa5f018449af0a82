"""Spec of what each engine announces it can honour among a request's ``params`` (its runner's heartbeats carry it)."""

from __future__ import annotations

from typing import Any

import pytest

from tokenrelay.runner.engines import EngineError
from tokenrelay.runner.engines.base import announced_params
from tokenrelay.runner.engines.openai import OpenAIEngine
from tokenrelay.runner.engines.synthetic import SyntheticEngine
from tokenrelay.runner.engines.transformers_params import ACCEPTED_PARAMETERS, generate_kwargs
from tokenrelay.runtime.config import SyntheticConfig

VALID_VALUES: dict[str, Any] = {
    "temperature": 0.7, "top_p": 0.9, "top_k": 20, "repetition_penalty": 1.1,
    "n": 1, "user": "u-1", "metadata": {"k": "v"}, "store": False,
}  # fmt: skip


class _Declaring:
    name = "declaring"
    model = "m"
    accepts_params = frozenset({"top_p", "temperature"})


def test_the_transformers_engine_announces_exactly_what_its_mapping_accepts() -> None:
    assert set(VALID_VALUES) == ACCEPTED_PARAMETERS
    for name, value in VALID_VALUES.items():
        generate_kwargs({name: value})  # accepted: no EngineError


@pytest.mark.parametrize("name", ["tools", "stop", "seed", "logprobs", "reasoning_effort", "response_format"])
def test_a_parameter_the_transformers_engine_does_not_announce_is_one_it_refuses(name: str) -> None:
    assert name not in ACCEPTED_PARAMETERS
    with pytest.raises(EngineError):
        generate_kwargs({name: 1})


def test_an_engine_announces_its_accepted_parameters_sorted() -> None:
    assert announced_params(_Declaring()) == ("temperature", "top_p")  # type: ignore[arg-type]


def test_the_openai_engine_announces_no_restriction_as_it_passes_every_parameter_upstream() -> None:
    assert announced_params(OpenAIEngine(base_url="http://127.0.0.1:9/v1", model="m")) is None


def test_the_synthetic_engine_announces_no_restriction_as_it_ignores_what_it_does_not_honour() -> None:
    assert announced_params(SyntheticEngine(SyntheticConfig())) is None
