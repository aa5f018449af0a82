"""Spec of a text completion's validation at admission (``POST /v1/completions``): the raw prompt is kept as a
prompt, ``max_tokens`` defaults to 16, and every invalid field is a ``bad_request`` naming it."""

from __future__ import annotations

from typing import Any

import pytest

from tokenrelay.gateway.requests import DEFAULT_COMPLETION_MAX_TOKENS, parse_completion_request
from tokenrelay.wire.errors import BadRequest, ErrorCode

MAX_TOKENS_LIMIT = 1024
MAX_PROMPT_CHARS = 100


def parse(obj: dict[str, Any], *, max_tokens_limit: int = MAX_TOKENS_LIMIT) -> Any:
    return parse_completion_request(obj, max_tokens_limit=max_tokens_limit, max_prompt_chars=MAX_PROMPT_CHARS)


def test_a_completion_keeps_its_raw_prompt_as_a_prompt_and_carries_no_messages() -> None:
    parsed = parse({"prompt": "def f():\n", "max_tokens": 7, "model": "m"})
    assert parsed.prompt == "def f():\n"
    assert parsed.messages == ()
    assert (parsed.max_tokens, parsed.max_tokens_set, parsed.model) == (7, True, "m")


def test_a_completion_without_max_tokens_gets_openais_default_of_16() -> None:
    assert DEFAULT_COMPLETION_MAX_TOKENS == 16
    parsed = parse({"prompt": "x"})
    assert (parsed.max_tokens, parsed.max_tokens_set) == (16, True)


def test_the_default_max_tokens_is_capped_at_the_gateways_limit() -> None:
    assert parse({"prompt": "x"}, max_tokens_limit=4).max_tokens == 4


def test_an_empty_prompt_is_the_start_of_a_document_and_is_accepted() -> None:
    assert parse({"prompt": "", "suffix": "tail"}).prompt == ""


def test_suffix_stop_and_every_other_field_stay_in_params_as_sent() -> None:
    params = {"suffix": "tail", "stop": ["\n"], "temperature": 0.1, "echo": False, "logprobs": 1, "vendor_x": [1]}
    assert parse({"prompt": "x", **params}).params == params


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param({}, "prompt must be a string", id="no-prompt"),
        pytest.param({"prompt": ["a"]}, "prompt must be a string", id="prompt-array"),
        pytest.param({"prompt": 5}, "prompt must be a string", id="prompt-number"),
        pytest.param({"prompt": "x", "suffix": 3}, "suffix must be a string", id="suffix-number"),
        pytest.param({"prompt": "x", "max_tokens": 0}, "max_tokens must be at least 1", id="max-tokens-0"),
        pytest.param({"prompt": "x", "max_tokens": -3}, "max_tokens must be at least 1", id="max-tokens-negative"),
        pytest.param({"prompt": "x", "max_tokens": 1.5}, "max_tokens must be an integer", id="max-tokens-float"),
        pytest.param({"prompt": "x", "max_tokens": "9"}, "max_tokens must be an integer", id="max-tokens-string"),
        pytest.param({"prompt": "x", "max_tokens": 1025}, "max_tokens must be at most 1024", id="max-tokens-over"),
        pytest.param({"prompt": "x", "n": 2}, "n must be 1", id="several-choices"),
        pytest.param({"prompt": "x", "stop": 7}, "stop must be", id="stop-number"),
        pytest.param({"prompt": "x", "temperature": 3}, "temperature must be", id="temperature-over"),
        pytest.param({"prompt": "x" * 60, "suffix": "y" * 41}, "the prompt and suffix hold 101", id="too-long"),
    ],
)
def test_an_invalid_completion_is_a_bad_request_naming_the_field(body: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse(body)
    assert caught.value.code == ErrorCode.BAD_REQUEST
    assert caught.value.message.startswith(message)
