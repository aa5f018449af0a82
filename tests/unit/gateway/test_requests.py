"""Spec of new-stream body validation: every invalid body is a bad_request."""

from __future__ import annotations

from typing import Any

import pytest

from tokenrelay.gateway.requests import MAX_MODEL_CHARS, parse_stream_request
from tokenrelay.wire.codec import parse_json_object
from tokenrelay.wire.content import ChatMessage
from tokenrelay.wire.errors import BadRequest

DEFAULT_MAX_TOKENS = 256
MAX_TOKENS_LIMIT = 1024
HI = [{"role": "user", "content": "hi"}]


def parse(obj: dict[str, Any]) -> Any:
    return parse_stream_request(obj, default_max_tokens=DEFAULT_MAX_TOKENS, max_tokens_limit=MAX_TOKENS_LIMIT)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"{", id="truncated"),
        pytest.param(b"{'messages': []}", id="single-quotes"),
        pytest.param(b'{"prompt": "x",}', id="trailing-comma"),
        pytest.param(b'{"prompt": NaN}', id="nan"),
        pytest.param(b"\xff\xfe{}", id="invalid-utf8"),
        pytest.param('{"prompt": "\ud800"}', id="lone-surrogate"),
        pytest.param(b"[" * 2000 + b"]" * 2000, id="deeply-nested"),
    ],
)
def test_parse_json_object_rejects_malformed_json_as_bad_request(body: bytes | str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_json_object(body)
    assert info.value.code == "bad_request"


@pytest.mark.parametrize("body", [b"[]", b"[{}]", b"1", b'"prompt"', b"null", b"true"])
def test_parse_json_object_rejects_json_that_is_not_an_object_as_bad_request(body: bytes) -> None:
    with pytest.raises(BadRequest) as info:
        parse_json_object(body)
    assert info.value.code == "bad_request"


def test_parse_json_object_returns_the_object_from_bytes_or_str() -> None:
    assert parse_json_object(b'{"prompt": "caf\xc3\xa9"}') == {"prompt": "café"}
    assert parse_json_object('{"prompt": "日本"}') == {"prompt": "日本"}


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param({}, id="no-messages-no-prompt"),
        pytest.param({"messages": None, "prompt": None}, id="both-null"),
        pytest.param({"messages": HI, "prompt": "hi"}, id="both-given"),
        pytest.param({"messages": []}, id="empty-messages"),
        pytest.param({"messages": "hi"}, id="messages-string"),
        pytest.param({"messages": {"role": "user", "content": "hi"}}, id="messages-object"),
        pytest.param({"messages": ["hi"]}, id="message-string"),
        pytest.param({"messages": [None]}, id="message-null"),
        pytest.param({"messages": [[]]}, id="message-array"),
        pytest.param({"messages": [*HI, 1]}, id="second-message-number"),
        pytest.param({"messages": [{"content": "hi"}]}, id="role-missing"),
        pytest.param({"messages": [{"role": "robot", "content": "hi"}]}, id="role-unknown"),
        pytest.param({"messages": [{"role": "User", "content": "hi"}]}, id="role-capitalised"),
        pytest.param({"messages": [{"role": 1, "content": "hi"}]}, id="role-number"),
        pytest.param({"messages": [{"role": "user"}]}, id="content-missing"),
        pytest.param({"messages": [{"role": "user", "content": None}]}, id="content-null"),
        pytest.param({"messages": [{"role": "user", "content": 5}]}, id="content-number"),
        pytest.param({"messages": [{"role": "user", "content": ["hi"]}]}, id="content-array"),
        pytest.param({"prompt": ""}, id="prompt-empty"),
        pytest.param({"prompt": 5}, id="prompt-number"),
        pytest.param({"prompt": ["hi"]}, id="prompt-array"),
        pytest.param({"prompt": "hi", "max_tokens": 0}, id="max-tokens-0"),
        pytest.param({"prompt": "hi", "max_tokens": -1}, id="max-tokens-negative"),
        pytest.param({"prompt": "hi", "max_tokens": 1.5}, id="max-tokens-float"),
        pytest.param({"prompt": "hi", "max_tokens": 10.0}, id="max-tokens-integral-float"),
        pytest.param({"prompt": "hi", "max_tokens": "10"}, id="max-tokens-string"),
        pytest.param({"prompt": "hi", "max_tokens": True}, id="max-tokens-true"),
        pytest.param({"prompt": "hi", "max_tokens": False}, id="max-tokens-false"),
        pytest.param({"prompt": "hi", "max_tokens": MAX_TOKENS_LIMIT + 1}, id="max-tokens-over-limit"),
        pytest.param({"prompt": "hi", "model": ""}, id="model-empty"),
        pytest.param({"prompt": "hi", "model": 5}, id="model-number"),
        pytest.param({"prompt": "hi", "model": ["m"]}, id="model-array"),
        pytest.param({"prompt": "hi", "model": "m" * (MAX_MODEL_CHARS + 1)}, id="model-too-long"),
    ],
)
def test_parse_stream_request_rejects_invalid_body_as_bad_request(obj: dict[str, Any]) -> None:
    with pytest.raises(BadRequest) as info:
        parse(obj)
    assert info.value.code == "bad_request"
    assert info.value.http_status == 400


@pytest.mark.parametrize("role", [[], {}, ["user"]])
def test_parse_stream_request_rejects_unhashable_role_as_bad_request(role: Any) -> None:
    with pytest.raises(BadRequest):
        parse({"messages": [{"role": role, "content": "hi"}]})


def test_prompt_becomes_one_user_message() -> None:
    request = parse({"prompt": "café 😀"})
    assert request.messages == (ChatMessage(role="user", content="café 😀"),)


def test_messages_keep_their_order_roles_and_content() -> None:
    request = parse(
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": ""},
            ]
        }
    )
    assert request.messages == (
        ChatMessage(role="system", content="be brief"),
        ChatMessage(role="user", content="hi"),
        ChatMessage(role="assistant", content=""),
    )


def test_default_max_tokens_applies_when_max_tokens_is_absent_or_null() -> None:
    assert parse({"prompt": "hi"}).max_tokens == DEFAULT_MAX_TOKENS
    assert parse({"prompt": "hi", "max_tokens": None}).max_tokens == DEFAULT_MAX_TOKENS


@pytest.mark.parametrize("max_tokens", [1, 100, MAX_TOKENS_LIMIT])
def test_max_tokens_from_1_to_the_limit_is_accepted(max_tokens: int) -> None:
    assert parse({"prompt": "hi", "max_tokens": max_tokens}).max_tokens == max_tokens


def test_model_is_none_unless_given() -> None:
    assert parse({"prompt": "hi"}).model is None
    assert parse({"prompt": "hi", "model": "m" * MAX_MODEL_CHARS}).model == "m" * MAX_MODEL_CHARS


def test_unknown_fields_are_ignored() -> None:
    request = parse({"prompt": "hi", "temperature": 0.7, "stream": True})
    assert request.messages == (ChatMessage(role="user", content="hi"),)


def test_a_request_may_carry_at_most_max_messages_messages() -> None:
    three = [{"role": "user", "content": "hi"}] * 3
    assert (
        len(
            parse_stream_request({"messages": three}, default_max_tokens=8, max_tokens_limit=8, max_messages=3).messages
        )
        == 3
    )
    with pytest.raises(BadRequest, match="4 messages; at most 3"):
        parse_stream_request({"messages": three + HI}, default_max_tokens=8, max_tokens_limit=8, max_messages=3)


@pytest.mark.parametrize("field", ["prompt", "messages"])
def test_the_messages_may_hold_at_most_max_prompt_chars_characters_together(field: str) -> None:
    def body(chars: int) -> dict[str, Any]:
        if field == "prompt":
            return {"prompt": "é" * chars}
        return {"messages": [{"role": "system", "content": "é" * (chars - 1)}, {"role": "user", "content": "x"}]}

    limits: dict[str, Any] = {"default_max_tokens": 8, "max_tokens_limit": 8, "max_prompt_chars": 10}
    assert parse_stream_request(body(10), **limits).max_tokens == 8
    with pytest.raises(BadRequest, match="11 characters; at most 10"):
        parse_stream_request(body(11), **limits)
