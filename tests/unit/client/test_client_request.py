"""The client's ``start`` command: the OpenAI chat shape, every field the caller gives sent once and as given."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from tokenrelay.client import ChatMessage, ContentPart, function_tool
from tokenrelay.client.request import OWNED_FIELDS, start_command
from tokenrelay.gateway.requests import parse_stream_request
from tokenrelay.wire.content import ToolCall

WEATHER = function_tool(
    "get_weather", "The weather in a city now", {"type": "object", "properties": {"city": {"type": "string"}}}
)

TOOL_CONVERSATION = (
    ChatMessage(role="system", content="Be brief."),
    ChatMessage(
        role="user",
        content=(
            ContentPart(type="text", text="What is the weather where this was taken?"),
            ContentPart(type="image_url", image_url="data:image/png;base64,iVBORw0KGgo=", detail="low"),
        ),
    ),
    ChatMessage(
        role="assistant", tool_calls=(ToolCall(id="call_a", name="get_weather", arguments='{"city": "Paris"}'),)
    ),
    ChatMessage(role="tool", tool_call_id="call_a", content='{"celsius": 21}'),
)


def test_a_prompt_alone_makes_the_same_command_as_before() -> None:
    assert start_command(prompt="Hi", max_tokens=5) == {"type": "start", "prompt": "Hi", "max_tokens": 5}


def test_chat_messages_are_sent_in_the_openai_shape_tool_calls_tool_results_and_image_parts_included() -> None:
    command = start_command(messages=TOOL_CONVERSATION)
    assert command["messages"] == [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is the weather where this was taken?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "content": '{"celsius": 21}', "tool_call_id": "call_a"},
    ]


def test_the_command_is_a_request_the_gateway_admits_with_every_field_in_params() -> None:
    command = start_command(
        messages=TOOL_CONVERSATION,
        model="synthetic",
        max_tokens=64,
        params={"top_k": 40, "chat_template_kwargs": {"thinking": True}},
        fields={"tools": [WEATHER], "tool_choice": "auto", "temperature": 0.2, "stop": ["\n\n"], "seed": 7},
    )
    command.pop("type")  # the control socket's envelope
    request = parse_stream_request(command, default_max_tokens=16, max_tokens_limit=128)
    assert request.messages == TOOL_CONVERSATION
    assert (request.model, request.max_tokens) == ("synthetic", 64)
    assert request.params == {
        "top_k": 40,
        "chat_template_kwargs": {"thinking": True},
        "tools": [WEATHER],
        "tool_choice": "auto",
        "temperature": 0.2,
        "stop": ["\n\n"],
        "seed": 7,
    }


def test_openai_message_objects_and_read_only_mappings_and_tuples_are_sent_as_plain_json() -> None:
    command = start_command(
        messages=[MappingProxyType({"role": "user", "content": "Hi"})],
        fields={"stop": ("a", "b"), "response_format": MappingProxyType({"type": "json_object"})},
    )
    assert command["messages"] == [{"role": "user", "content": "Hi"}]
    assert (command["stop"], command["response_format"]) == (["a", "b"], {"type": "json_object"})


def test_a_field_given_both_in_params_and_as_a_keyword_is_refused_rather_than_one_value_dropped() -> None:
    with pytest.raises(ValueError, match="temperature"):
        start_command(prompt="Hi", params={"temperature": 1.0}, fields={"temperature": 0.5})


@pytest.mark.parametrize("field", sorted(OWNED_FIELDS))
def test_params_may_not_carry_a_field_the_client_sets_itself(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        start_command(prompt="Hi", params={field: 1})


def test_fields_not_given_are_left_out() -> None:
    assert start_command(messages=[ChatMessage(role="user", content="Hi")], params={}, fields={}) == {
        "type": "start",
        "messages": [{"role": "user", "content": "Hi"}],
    }
