"""Spec of typed requests: tool conversations, content parts, images and the parameters passed on as sent.

Every refusal is asserted with its exact code (``bad_request`` naming the field, ``payload_too_large`` for an
oversize image or a job the broker cannot carry).
"""

from __future__ import annotations

import base64
from typing import Any

import pytest

from tokenrelay.gateway.control import Start, parse_command
from tokenrelay.gateway.requests import JOB_HEADROOM_BYTES, StreamRequest, check_job_bytes, parse_stream_request
from tokenrelay.wire.content import ChatMessage, ContentPart, ToolCall
from tokenrelay.wire.errors import TokenRelayError

MAX_TOKENS_LIMIT = 1024
MAX_IMAGE_BYTES = 1000
MAX_TOOLS = 3
MAX_PARTS = 4
USER = {"role": "user", "content": "weather in Paris?"}
CALL = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
TOOL = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
PNG = base64.b64encode(b"\x89PNG" + b"\0" * 100).decode()


def parse(obj: dict[str, Any]) -> StreamRequest:
    return parse_stream_request(
        obj,
        default_max_tokens=256,
        max_tokens_limit=MAX_TOKENS_LIMIT,
        max_tools=MAX_TOOLS,
        max_content_parts=MAX_PARTS,
        max_image_bytes=MAX_IMAGE_BYTES,
    )


def refusal(obj: dict[str, Any]) -> TokenRelayError:
    with pytest.raises(TokenRelayError) as info:
        parse(obj)
    return info.value


def conversation(*extra: dict[str, Any]) -> dict[str, Any]:
    return {"messages": [USER, {"role": "assistant", "content": None, "tool_calls": [CALL]}, *extra]}


def test_a_tool_conversation_keeps_the_calls_and_the_answer_to_each() -> None:
    request = parse(conversation({"role": "tool", "tool_call_id": "call_1", "content": "22 C"}))
    assert request.messages[1] == ChatMessage(
        role="assistant", content="", tool_calls=(ToolCall(id="call_1", name="weather", arguments='{"city": "Paris"}'),)
    )
    assert request.messages[2] == ChatMessage(role="tool", content="22 C", tool_call_id="call_1")


def test_a_tool_message_without_tool_call_id_is_refused_naming_the_field() -> None:
    error = refusal(conversation({"role": "tool", "content": "22 C"}))
    assert (error.code, error.message) == ("bad_request", "messages[2].tool_call_id is required for a tool message")


def test_a_tool_message_answering_no_earlier_call_is_a_bad_request() -> None:
    error = refusal(conversation({"role": "tool", "tool_call_id": "call_9", "content": "22 C"}))
    assert error.code == "bad_request" and "messages[2].tool_call_id" in error.message


def test_developer_and_name_are_kept_as_sent() -> None:
    request = parse({"messages": [{"role": "developer", "content": "be brief", "name": "ops"}, USER]})
    assert request.messages[0] == ChatMessage(role="developer", content="be brief", name="ops")


def test_content_parts_keep_text_and_images_in_order() -> None:
    parts = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    ]
    request = parse({"messages": [{"role": "user", "content": parts}]})
    assert request.messages[0].content == (
        ContentPart(type="text", text="what is this?"),
        ContentPart(type="image_url", image_url="https://example.com/cat.png", detail="low"),
        ContentPart(type="image_url", image_url=f"data:image/png;base64,{PNG}"),
    )


def test_an_image_over_the_decoded_size_limit_is_payload_too_large() -> None:
    big = base64.b64encode(b"\0" * (MAX_IMAGE_BYTES + 1)).decode()
    part = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{big}"}}
    error = refusal({"messages": [{"role": "user", "content": [part]}]})
    assert (error.code, error.http_status) == ("payload_too_large", 413)
    assert "messages[0].content[0].image_url.url" in error.message


def test_an_image_of_exactly_the_limit_is_accepted() -> None:
    exact = base64.b64encode(b"\0" * MAX_IMAGE_BYTES).decode()
    part = {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{exact}"}}
    assert parse({"messages": [{"role": "user", "content": [part]}]}).messages[0].content != ""


def image(url: Any, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url, **extra}}]}]}


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        pytest.param(image("ftp://example.com/a.png"), "messages[0].content[0].image_url.url", id="ftp-url"),
        pytest.param(image("https://"), "messages[0].content[0].image_url.url", id="url-without-host"),
        pytest.param(image("data:text/plain;base64,aGk="), "messages[0].content[0].image_url.url", id="data-text"),
        pytest.param(image("data:image/png;base64,***"), "messages[0].content[0].image_url.url", id="bad-base64"),
        pytest.param(image(5), "messages[0].content[0].image_url.url", id="url-number"),
        pytest.param(image("https://e.com/a.png", detail="max"), "image_url.detail", id="detail-unknown"),
        pytest.param(
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "https://e.com/a.png"}]}]},
            "messages[0].content[0].image_url",
            id="image-url-string",
        ),
        pytest.param({"messages": [{"role": "user", "content": []}]}, "messages[0].content", id="parts-empty"),
        pytest.param(
            {"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "messages[0].content[0]", id="part-audio"
        ),
        pytest.param(
            {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
            "messages[0].content[0].text",
            id="text-part-number",
        ),
        pytest.param(
            {"messages": [{"role": "system", "content": image("https://e.com/a.png")["messages"][0]["content"]}]},
            "messages[0].content[0]",
            id="image-in-system",
        ),
        pytest.param({"messages": [{"role": "assistant", "content": None}]}, "messages[0].content", id="no-content"),
        pytest.param(
            {"messages": [{"role": "user", "content": "x", "tool_calls": [CALL]}]},
            "messages[0].tool_calls",
            id="user-with-calls",
        ),
        pytest.param(
            {"messages": [{"role": "assistant", "content": "x", "tool_calls": []}]},
            "messages[0].tool_calls",
            id="calls-empty",
        ),
        pytest.param(
            {"messages": [{"role": "assistant", "tool_calls": [{**CALL, "type": "code"}]}]},
            "messages[0].tool_calls[0]",
            id="call-not-function",
        ),
        pytest.param(
            {"messages": [{"role": "assistant", "tool_calls": [{**CALL, "id": ""}]}]},
            "messages[0].tool_calls[0].id",
            id="call-id-empty",
        ),
        pytest.param(
            {"messages": [{"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "w", "arguments": {}}}]}]},
            "messages[0].tool_calls[0].function.arguments",
            id="arguments-object",
        ),
        pytest.param(
            {"messages": [{"role": "assistant", "tool_calls": [{**CALL, "function": {"arguments": "{}"}}]}]},
            "messages[0].tool_calls[0].function.name",
            id="call-name-missing",
        ),
        pytest.param(
            {"messages": [{**USER, "tool_call_id": "call_1"}]}, "messages[0].tool_call_id", id="user-with-call-id"
        ),
        pytest.param({"messages": [{**USER, "name": ""}]}, "messages[0].name", id="name-empty"),
        pytest.param({"messages": [USER], "tools": {"weather": TOOL}}, "tools", id="tools-object"),
        pytest.param({"messages": [USER], "tools": [{"type": "code"}]}, "tools[0]", id="tool-not-function"),
        pytest.param({"messages": [USER], "tools": [{"type": "function"}]}, "tools[0].function", id="tool-no-fn"),
        pytest.param(
            {"messages": [USER], "tools": [{"type": "function", "function": {"name": ""}}]},
            "tools[0].function.name",
            id="tool-name-empty",
        ),
        pytest.param({"messages": [USER], "tools": [TOOL, TOOL]}, "tools[1].function.name", id="tool-twice"),
        pytest.param(
            {"messages": [USER], "tools": [{"type": "function", "function": {"name": "w", "parameters": []}}]},
            "tools[0].function.parameters",
            id="parameters-array",
        ),
        pytest.param(
            {"messages": [USER], "tools": [{"type": "function", "function": {"name": "w", "description": 1}}]},
            "tools[0].function.description",
            id="description-number",
        ),
        pytest.param({"messages": [USER], "tools": [TOOL] * (MAX_TOOLS + 1)}, "tools", id="too-many-tools"),
        pytest.param({"messages": [USER], "tool_choice": "any"}, "tool_choice", id="tool-choice-unknown"),
        pytest.param({"messages": [USER], "tool_choice": "required"}, "tool_choice", id="required-without-tools"),
        pytest.param(
            {"messages": [USER], "tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "clock"}}},
            "tool_choice.function.name",
            id="tool-choice-names-no-tool",
        ),
        pytest.param({"messages": [USER], "parallel_tool_calls": "yes"}, "parallel_tool_calls", id="parallel-string"),
        pytest.param({"messages": [USER], "temperature": 2.5}, "temperature", id="temperature-over-2"),
        pytest.param({"messages": [USER], "temperature": -0.1}, "temperature", id="temperature-negative"),
        pytest.param({"messages": [USER], "temperature": True}, "temperature", id="temperature-bool"),
        pytest.param({"messages": [USER], "top_p": 1.5}, "top_p", id="top-p-over-1"),
        pytest.param({"messages": [USER], "stop": ["a", "b", "c", "d", "e"]}, "stop", id="stop-five"),
        pytest.param({"messages": [USER], "stop": [1]}, "stop", id="stop-number"),
        pytest.param({"messages": [USER], "seed": 1.5}, "seed", id="seed-float"),
        pytest.param({"messages": [USER], "presence_penalty": 3}, "presence_penalty", id="presence-over-2"),
        pytest.param({"messages": [USER], "frequency_penalty": -3}, "frequency_penalty", id="frequency-under-2"),
        pytest.param({"messages": [USER], "response_format": "json"}, "response_format", id="format-string"),
        pytest.param({"messages": [USER], "response_format": {}}, "response_format", id="format-no-type"),
        pytest.param({"messages": [USER], "reasoning_effort": 3}, "reasoning_effort", id="effort-number"),
        pytest.param({"messages": [USER], "n": 2}, "n", id="n-2"),
        pytest.param({"messages": [USER], "max_completion_tokens": 0}, "max_completion_tokens", id="mct-0"),
        pytest.param(
            {"messages": [USER], "max_completion_tokens": MAX_TOKENS_LIMIT + 1}, "max_completion_tokens", id="mct-big"
        ),
        pytest.param(
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}] * (MAX_PARTS + 1)}]},
            "parts",
            id="too-many-parts-in-a-message",
        ),
        pytest.param(
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}] * 3}] * 2},
            "content parts",
            id="too-many-parts-together",
        ),
    ],
)
def test_a_malformed_typed_request_is_a_bad_request_naming_the_field(obj: dict[str, Any], field: str) -> None:
    error = refusal(obj)
    assert (error.code, error.http_status) == ("bad_request", 400)
    assert field in error.message


def test_every_field_tokenrelay_does_not_own_is_passed_on_as_sent() -> None:
    sent = {
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": ["\n\n"],
        "seed": 7,
        "tools": [TOOL],
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
        "parallel_tool_calls": False,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
        "reasoning_effort": "low",
        "presence_penalty": -1,
        "frequency_penalty": 1.5,
        "logprobs": True,
        "top_k": 40,
        "chat_template_kwargs": {"enable_thinking": True},
        "user": "u-1",
        "metadata": None,
    }
    request = parse({"model": "m", "messages": [USER], "stream": True, "max_tokens": 5, **sent})
    assert request.params == sent


def test_max_completion_tokens_is_the_limit_and_wins_over_max_tokens() -> None:
    assert parse({"messages": [USER], "max_completion_tokens": 9}).max_tokens == 9
    assert parse({"messages": [USER], "max_tokens": 5, "max_completion_tokens": 9}).max_tokens == 9
    assert "max_completion_tokens" not in parse({"messages": [USER], "max_completion_tokens": 9}).params


def test_tool_call_arguments_count_against_the_prompt_characters() -> None:
    long_call = {**CALL, "function": {"name": "weather", "arguments": "x" * 100}}
    with pytest.raises(TokenRelayError) as info:
        parse_stream_request(
            {"messages": [{"role": "assistant", "tool_calls": [long_call]}]},
            default_max_tokens=1,
            max_tokens_limit=1,
            max_prompt_chars=99,
        )
    assert info.value.code == "bad_request"


def test_a_control_start_passes_its_parameters_but_not_its_envelope() -> None:
    command = parse_command('{"type": "start", "ref": 1, "prompt": "hi", "temperature": 0.5}')
    assert isinstance(command, Start)
    assert parse(command.body).params == {"temperature": 0.5}


def test_a_job_over_the_brokers_max_payload_is_payload_too_large_naming_the_limit() -> None:
    check_job_bytes(1000 - JOB_HEADROOM_BYTES, max_payload_bytes=1000)
    with pytest.raises(TokenRelayError) as info:
        check_job_bytes(1001 - JOB_HEADROOM_BYTES, max_payload_bytes=1000)
    assert info.value.code == "payload_too_large"
    assert "1000 bytes" in info.value.message and "max_payload" in info.value.message
