"""Spec of a request's token limit: the client's, else the operator's ``--default-max-tokens``, else none at all (the
engine's own limit under the hard cap ``--max-tokens-limit``), and how a job says which it is."""

from __future__ import annotations

from typing import Any

import pytest

from tokenrelay.cli.commands import build_parser
from tokenrelay.cli.configs import gateway_config
from tokenrelay.gateway.requests import StreamRequest, parse_stream_request, stream_request
from tokenrelay.runtime.config import DEFAULT_MAX_TOKENS_LIMIT, GatewayConfig
from tokenrelay.wire import codec
from tokenrelay.wire.content import ChatMessage
from tokenrelay.wire.errors import BadRequest
from tokenrelay.wire.messages import JobRequest

MAX_TOKENS_LIMIT = 1024
HI = [{"role": "user", "content": "hi"}]


def parse(obj: dict[str, Any], *, default_max_tokens: int | None = None) -> StreamRequest:
    return parse_stream_request(
        {"messages": HI, **obj}, max_tokens_limit=MAX_TOKENS_LIMIT, default_max_tokens=default_max_tokens
    )


def job(**fields: Any) -> JobRequest:
    return JobRequest(
        stream_id="0" * 32, epoch="e1", gateway_id="g1", model="m", messages=(ChatMessage(role="user", content="hi"),),
        created=1, **fields,
    )  # fmt: skip


@pytest.mark.parametrize(
    "body", [{}, {"max_tokens": None}, {"max_completion_tokens": None}], ids=["absent", "null", "null-newer"]
)
def test_a_request_that_sets_no_limit_gets_the_hard_cap_marked_as_nobodys_limit(body: dict[str, Any]) -> None:
    request = parse(body)
    assert (request.max_tokens, request.max_tokens_set) == (MAX_TOKENS_LIMIT, False)


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_a_limit_the_client_sets_is_its_own_whatever_the_operators_default(field: str) -> None:
    request = parse({field: 300}, default_max_tokens=20)
    assert (request.max_tokens, request.max_tokens_set) == (300, True)


def test_the_newer_max_completion_tokens_wins_over_max_tokens() -> None:
    assert parse({"max_tokens": 10, "max_completion_tokens": 30}).max_tokens == 30


def test_the_operators_default_applies_to_a_request_that_sets_no_limit() -> None:
    request = parse({}, default_max_tokens=20)
    assert (request.max_tokens, request.max_tokens_set) == (20, True)


def test_the_operators_default_is_held_under_the_hard_cap() -> None:
    request = parse({}, default_max_tokens=MAX_TOKENS_LIMIT * 4)
    assert (request.max_tokens, request.max_tokens_set) == (MAX_TOKENS_LIMIT, True)


@pytest.mark.parametrize("value", [0, -1, MAX_TOKENS_LIMIT + 1, "64", 1.5, True])
def test_a_limit_the_client_sets_out_of_range_or_not_an_integer_is_refused(value: Any) -> None:
    with pytest.raises(BadRequest, match="max_tokens"):
        parse({"max_tokens": value})


def test_a_gateway_configured_with_no_default_lets_the_engine_decide() -> None:
    request = stream_request(GatewayConfig(), {"prompt": "hi"})
    assert (request.max_tokens, request.max_tokens_set) == (DEFAULT_MAX_TOKENS_LIMIT, False)


def test_a_gateway_configured_with_a_default_uses_it() -> None:
    request = stream_request(GatewayConfig(default_max_tokens=64), {"prompt": "hi"})
    assert (request.max_tokens, request.max_tokens_set) == (64, True)


def test_the_gateway_command_has_no_default_max_tokens_unless_one_is_given() -> None:
    assert gateway_config(build_parser().parse_args(["gateway"])).default_max_tokens is None
    given = build_parser().parse_args(["gateway", "--default-max-tokens", "300"])
    assert gateway_config(given).default_max_tokens == 300


def test_a_job_says_that_nobody_set_its_limit_across_the_wire() -> None:
    decoded = codec.decode_as(codec.encode(job(max_tokens=MAX_TOKENS_LIMIT, max_tokens_set=False)), JobRequest)
    assert (decoded.max_tokens, decoded.max_tokens_set) == (MAX_TOKENS_LIMIT, False)


def test_a_job_from_a_gateway_older_than_the_field_keeps_its_limit_as_set() -> None:
    encoded = codec.encode(job(max_tokens=256))
    older = encoded.replace(b',"max_tokens_set":true', b"")
    assert older != encoded
    assert codec.decode_as(older, JobRequest).max_tokens_set is True
