"""Spec of the Responses API's request side: a ``POST /v1/responses`` body checked and put in the canonical (chat)
form, every field acted on, converted, echoed or refused; the start request it makes; and the assistant turn an
earlier response's events make."""

from __future__ import annotations

from typing import Any

import pytest

from tokenrelay.streamer.compat.responses_request import (
    MAX_METADATA_KEYS,
    ResponseRequest,
    assistant_turn,
    parse_response_request,
    start_request,
)
from tokenrelay.wire.content import ChatMessage, ContentPart, ToolCall
from tokenrelay.wire.errors import BadRequest, ErrorCode
from tokenrelay.wire.messages import (
    FinishReason,
    ReasoningDelta,
    StreamDelta,
    StreamEnd,
    StreamError,
    StreamEvent,
    StreamStart,
    ToolCallDelta,
)

WEATHER = {"type": "function", "name": "weather", "description": "the weather", "parameters": {"type": "object"}}


def parse(**fields: Any) -> ResponseRequest:
    return parse_response_request({"input": "hi", **fields})


def refused(body: dict[str, Any]) -> BadRequest:
    with pytest.raises(BadRequest) as caught:
        parse_response_request(body)
    return caught.value


def bad_request(**fields: Any) -> str:
    error = refused({"input": "hi", **fields})
    assert error.code == ErrorCode.BAD_REQUEST
    return error.message


def unsupported(**fields: Any) -> str:
    error = refused({"input": "hi", **fields})
    assert error.code == ErrorCode.UNSUPPORTED_PARAMETER
    return error.message


def items(*items: Any) -> tuple[ChatMessage, ...]:
    return parse(input=list(items)).input


# -- input


def test_a_string_input_is_one_user_message() -> None:
    assert parse(input="hello").input == (ChatMessage(role="user", content="hello"),)


def test_messages_keep_their_roles_with_or_without_a_message_type() -> None:
    assert items(
        {"role": "developer", "content": "be brief"},
        {"type": "message", "role": "system", "content": "sys"},
        {"role": "user", "content": "hi"},
        {"type": "message", "role": "assistant", "content": "hello"},
    ) == (
        ChatMessage(role="developer", content="be brief"),
        ChatMessage(role="system", content="sys"),
        ChatMessage(role="user", content="hi"),
        ChatMessage(role="assistant", content="hello"),
    )


def test_input_text_output_text_and_refusal_parts_become_text_parts() -> None:
    user = {"role": "user", "content": [{"type": "input_text", "text": "a"}]}
    assistant = {
        "type": "message",
        "role": "assistant",
        "id": "msg_1",
        "status": "completed",
        "content": [
            {"type": "output_text", "text": "b", "annotations": []},
            {"type": "refusal", "refusal": "no"},
        ],
    }
    assert items(user, assistant) == (
        ChatMessage(role="user", content=(ContentPart(type="text", text="a"),)),
        ChatMessage(
            role="assistant", content=(ContentPart(type="text", text="b"), ContentPart(type="text", text="no"))
        ),
    )


def test_an_input_image_with_a_url_becomes_an_image_url_part_with_its_detail() -> None:
    part = {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"}
    (message,) = items({"role": "user", "content": [part]})
    assert message.content == (ContentPart(type="image_url", image_url="data:image/png;base64,AAAA", detail="low"),)


def test_a_function_call_item_becomes_an_assistant_tool_call() -> None:
    call = {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}", "id": "fc_1"}
    assert items({"role": "user", "content": "hi"}, call)[1] == ChatMessage(
        role="assistant", tool_calls=(ToolCall(id="c1", name="weather", arguments="{}"),)
    )


def test_consecutive_function_calls_and_the_assistant_message_before_them_make_one_assistant_message() -> None:
    first = {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"}
    second = {"type": "function_call", "call_id": "c2", "name": "clock", "arguments": "{}"}
    reasoning = {"type": "reasoning", "id": "rs_1", "summary": []}
    messages = items({"role": "user", "content": "hi"}, reasoning, {"role": "assistant", "content": "let me see"},
                     first, second)  # fmt: skip
    assert messages[1:] == (
        ChatMessage(
            role="assistant",
            content="let me see",
            tool_calls=(
                ToolCall(id="c1", name="weather", arguments="{}"),
                ToolCall(id="c2", name="clock", arguments="{}"),
            ),
        ),
    )


def test_a_function_call_after_a_tool_output_starts_a_new_assistant_message() -> None:
    call = {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"}
    output = {"type": "function_call_output", "call_id": "c1", "output": "sunny"}
    later = {**call, "call_id": "c2"}
    messages = items({"role": "user", "content": "hi"}, call, output, later)
    assert [m.role for m in messages] == ["user", "assistant", "tool", "assistant"]
    assert messages[3].tool_calls == (ToolCall(id="c2", name="weather", arguments="{}"),)


def test_a_function_call_output_becomes_a_tool_message_answering_its_call() -> None:
    output = {"type": "function_call_output", "call_id": "c1", "output": "sunny"}
    assert items(output) == (ChatMessage(role="tool", content="sunny", tool_call_id="c1"),)


def test_a_function_call_output_of_input_text_parts_becomes_their_text_joined() -> None:
    parts = [{"type": "input_text", "text": "sun"}, {"type": "input_text", "text": "ny"}]
    output = {"type": "function_call_output", "call_id": "c1", "output": parts}
    assert items(output)[0].content == "sunny"


def test_reasoning_items_are_accepted_and_left_out_of_the_prompt() -> None:
    reasoning = {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "thinking"}]}
    assert items(reasoning, {"role": "user", "content": "hi"}) == (ChatMessage(role="user", content="hi"),)


@pytest.mark.parametrize("value", [None, [], {}, 3])
def test_an_input_that_is_missing_empty_or_not_a_string_or_array_is_a_bad_request(value: Any) -> None:
    body = {} if value is None else {"input": value}
    error = refused(body)
    assert error.code == ErrorCode.BAD_REQUEST
    assert "input" in error.message


def test_an_item_of_an_unknown_type_is_a_bad_request_naming_the_type_and_its_value() -> None:
    error = refused({"input": [{"role": "user", "content": "hi"}, {"type": "computer_call_output", "call_id": "c"}]})
    assert error.code == ErrorCode.BAD_REQUEST
    assert "input[1].type" in error.message
    assert "computer_call_output" in error.message


def test_an_item_without_a_type_or_role_is_a_bad_request() -> None:
    assert "input[0].type" in bad_request(input=[{"content": "hi"}])


def test_an_item_that_is_not_an_object_is_a_bad_request() -> None:
    assert "input[0] must be an object" in bad_request(input=["hi"])


@pytest.mark.parametrize("item", [{"type": "item_reference", "id": "msg_1"}, {"id": "msg_1"}])
def test_an_item_reference_is_an_unsupported_parameter(item: Any) -> None:
    assert "input[0]" in unsupported(input=[item])


@pytest.mark.parametrize("role", ["tool", "function", None, ["user"]])
def test_a_message_of_a_role_the_responses_api_has_not_is_a_bad_request(role: Any) -> None:
    assert "input[0].role" in bad_request(input=[{"role": role, "content": "hi"}])


def test_a_message_whose_content_is_neither_a_string_nor_parts_is_a_bad_request() -> None:
    assert "input[0].content" in bad_request(input=[{"role": "user", "content": 3}])


@pytest.mark.parametrize("kind", ["input_file", "input_audio"])
def test_a_file_or_audio_part_is_an_unsupported_parameter(kind: str) -> None:
    message = unsupported(input=[{"role": "user", "content": [{"type": kind, "file_id": "f"}]}])
    assert f"input[0].content[0].type {kind!r}" in message


def test_an_image_by_file_id_is_an_unsupported_parameter() -> None:
    part = {"type": "input_image", "file_id": "file_1", "detail": "auto"}
    assert "input[0].content[0].file_id" in unsupported(input=[{"role": "user", "content": [part]}])


@pytest.mark.parametrize(
    ("part", "named"),
    [
        ({"type": "input_image", "detail": "auto"}, "input[0].content[0].image_url"),
        ({"type": "input_image", "image_url": "https://e.com/a.png", "detail": 1}, "input[0].content[0].detail"),
        ({"type": "input_text", "text": 1}, "input[0].content[0].text"),
        ({"type": "refusal"}, "input[0].content[0].refusal"),
        ({"type": "text", "text": "chat shape"}, "input[0].content[0].type 'text'"),
        ("hi", "input[0].content[0].type None"),
    ],
)
def test_a_malformed_content_part_is_a_bad_request_naming_it(part: Any, named: str) -> None:
    assert named in bad_request(input=[{"role": "user", "content": [part]}])


@pytest.mark.parametrize("field", ["call_id", "name", "arguments"])
def test_a_function_call_without_a_string_field_is_a_bad_request_naming_it(field: str) -> None:
    call = {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"}
    assert f"input[0].{field}" in bad_request(input=[{**call, field: None}])


def test_a_function_call_output_without_a_call_id_is_a_bad_request() -> None:
    assert "input[0].call_id" in bad_request(input=[{"type": "function_call_output", "output": "x"}])


@pytest.mark.parametrize("output", [None, 3, [{"type": "output_text", "text": "x"}], [{"type": "input_text"}]])
def test_a_function_call_output_that_is_not_text_is_a_bad_request(output: Any) -> None:
    item = {"type": "function_call_output", "call_id": "c1", "output": output}
    assert "input[0].output" in bad_request(input=[item])


def test_a_function_call_output_holding_an_image_is_an_unsupported_parameter() -> None:
    image = {"type": "input_image", "image_url": "https://e.com/a.png"}
    item = {"type": "function_call_output", "call_id": "c1", "output": [image]}
    assert "input[0].output[0].type 'input_image'" in unsupported(input=[item])


# -- the request's own fields


def test_a_minimal_request_gets_openai_defaults() -> None:
    request = parse()
    assert (request.model, request.instructions, request.max_output_tokens) == (None, None, None)
    assert (request.stream, request.background, request.store, request.previous_response_id) == (
        False,
        False,
        True,
        None,
    )
    assert request.params == {}


def test_model_instructions_max_output_tokens_and_previous_response_id_are_kept() -> None:
    request = parse(model="m", instructions="be brief", max_output_tokens=64, previous_response_id="resp_1")
    assert (request.model, request.instructions, request.max_output_tokens) == ("m", "be brief", 64)
    assert request.previous_response_id == "resp_1"
    assert request.input == (ChatMessage(role="user", content="hi"),)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"model": ""}, "model"),
        ({"instructions": 3}, "instructions"),
        ({"max_output_tokens": "64"}, "max_output_tokens"),
        ({"max_output_tokens": True}, "max_output_tokens"),
        ({"previous_response_id": 1}, "previous_response_id"),
        ({"max_tool_calls": 1.5}, "max_tool_calls"),
        ({"top_logprobs": "3"}, "top_logprobs"),
        ({"user": 1}, "user"),
        ({"safety_identifier": 1}, "safety_identifier"),
        ({"prompt_cache_key": 1}, "prompt_cache_key"),
    ],
)
def test_a_field_of_the_wrong_type_is_a_bad_request_naming_it(fields: dict[str, Any], named: str) -> None:
    assert named in bad_request(**fields)


def test_stream_background_and_store_are_kept() -> None:
    request = parse(stream=True, background=True, store=True)
    assert (request.stream, request.background, request.store) == (True, True, True)
    assert parse(store=False).store is False


def test_null_stream_background_and_store_take_their_defaults() -> None:
    request = parse(stream=None, background=None, store=None)
    assert (request.stream, request.background, request.store) == (False, False, True)


@pytest.mark.parametrize("field", ["stream", "background", "store"])
def test_a_flag_that_is_not_a_boolean_is_a_bad_request(field: str) -> None:
    assert field in bad_request(**{field: "yes"})


def test_background_without_store_is_a_bad_request() -> None:
    assert "background" in bad_request(background=True, store=False)


def test_stream_options_are_accepted_with_stream() -> None:
    assert parse(stream=True, stream_options={"include_obfuscation": False}).stream is True


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"stream_options": {"include_obfuscation": False}}, "stream_options"),
        ({"stream": True, "stream_options": []}, "stream_options"),
        ({"stream": True, "stream_options": {"include_obfuscation": "no"}}, "stream_options.include_obfuscation"),
    ],
)
def test_malformed_stream_options_or_ones_without_stream_are_a_bad_request(fields: dict[str, Any], named: str) -> None:
    assert named in bad_request(**fields)


# -- generation parameters


def test_function_tools_become_chat_function_tools() -> None:
    request = parse(tools=[{**WEATHER, "strict": True}])
    assert request.params["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "the weather",
                "parameters": {"type": "object"},
                "strict": True,
            },
        }
    ]


def test_a_function_tool_with_only_a_name_keeps_only_its_name() -> None:
    tool = {"type": "function", "name": "clock"}
    assert parse(tools=[tool]).params["tools"] == [{"type": "function", "function": {"name": "clock"}}]


@pytest.mark.parametrize("kind", ["web_search", "file_search", "mcp", "code_interpreter", "custom"])
def test_a_tool_that_is_not_a_function_is_an_unsupported_parameter_naming_its_type(kind: str) -> None:
    assert f"tools[1].type {kind!r}" in unsupported(tools=[WEATHER, {"type": kind}])


@pytest.mark.parametrize(
    "extra", [{"defer_loading": True}, {"output_schema": {"type": "object"}}, {"allowed_callers": ["programmatic"]}]
)
def test_a_function_tool_asking_for_deferred_loading_output_schema_or_programmatic_calls_is_unsupported(
    extra: dict[str, Any],
) -> None:
    assert "tools[0]" in unsupported(tools=[{**WEATHER, **extra}])


def test_a_function_tool_for_direct_calls_only_is_accepted() -> None:
    assert parse(tools=[{**WEATHER, "allowed_callers": ["direct"], "defer_loading": False}]).params["tools"]


@pytest.mark.parametrize(
    ("tools", "named"),
    [({"type": "function"}, "tools"), (["weather"], "tools[0]"), ([{"type": "function"}], "tools[0].name")],
)
def test_malformed_tools_are_a_bad_request_naming_them(tools: Any, named: str) -> None:
    assert named in bad_request(tools=tools)


@pytest.mark.parametrize("choice", ["auto", "none", "required"])
def test_a_tool_choice_mode_passes_as_sent(choice: str) -> None:
    assert parse(tools=[WEATHER], tool_choice=choice).params["tool_choice"] == choice


def test_a_function_tool_choice_becomes_the_chat_shape() -> None:
    request = parse(tools=[WEATHER], tool_choice={"type": "function", "name": "weather"})
    assert request.params["tool_choice"] == {"type": "function", "function": {"name": "weather"}}


@pytest.mark.parametrize("kind", ["allowed_tools", "file_search", "web_search_preview", "mcp", "custom"])
def test_a_tool_choice_other_than_a_function_is_an_unsupported_parameter(kind: str) -> None:
    assert f"tool_choice.type {kind!r}" in unsupported(tool_choice={"type": kind})


@pytest.mark.parametrize(
    ("choice", "named"),
    [("always", "tool_choice"), (3, "tool_choice"), ({"type": "function"}, "tool_choice.name")],
)
def test_a_malformed_tool_choice_is_a_bad_request(choice: Any, named: str) -> None:
    assert named in bad_request(tool_choice=choice)


def test_sampling_and_chat_shared_fields_pass_into_params_as_sent() -> None:
    fields = {
        "temperature": 0.5,
        "top_p": 0.9,
        "parallel_tool_calls": False,
        "user": "u",
        "safety_identifier": "s",
        "prompt_cache_key": "k",
        "prompt_cache_retention": "24h",
        "service_tier": "auto",
    }
    assert parse(**fields).params == fields


def test_null_generation_fields_are_left_out_of_params() -> None:
    assert parse(temperature=None, top_p=None, tools=None, tool_choice=None, reasoning=None, text=None).params == {}


def test_fields_the_responses_api_does_not_define_pass_into_params_as_sent() -> None:
    assert parse(top_k=5, chat_template_kwargs={"thinking": True}, n=1).params == {
        "top_k": 5,
        "chat_template_kwargs": {"thinking": True},
        "n": 1,
    }


@pytest.mark.parametrize(
    ("field", "instead"),
    [
        ("messages", "input"),
        ("max_tokens", "max_output_tokens"),
        ("max_completion_tokens", "max_output_tokens"),
        ("response_format", "text.format"),
        ("reasoning_effort", "reasoning.effort"),
        ("verbosity", "text.verbosity"),
    ],
)
def test_a_chat_field_with_a_responses_name_of_its_own_is_a_bad_request_pointing_to_it(
    field: str, instead: str
) -> None:
    message = bad_request(**{field: 1})
    assert field in message
    assert instead in message


def test_reasoning_effort_becomes_chat_reasoning_effort_and_its_summary_is_echoed() -> None:
    request = parse(reasoning={"effort": "low", "summary": "auto"})
    assert request.params == {"reasoning_effort": "low"}
    assert request.echo["reasoning"] == {"effort": "low", "summary": "auto"}


def test_the_deprecated_generate_summary_is_echoed_as_the_summary() -> None:
    assert parse(reasoning={"generate_summary": "concise"}).echo["reasoning"] == {"effort": None, "summary": "concise"}


def test_reasoning_in_the_current_turn_and_standard_mode_is_accepted() -> None:
    assert parse(reasoning={"context": "current_turn", "mode": "standard"}).params == {}


@pytest.mark.parametrize(
    ("reasoning", "named"),
    [([], "reasoning"), ({"effort": 1}, "reasoning.effort"), ({"summary": "long"}, "reasoning.summary")],
)
def test_malformed_reasoning_is_a_bad_request(reasoning: Any, named: str) -> None:
    assert named in bad_request(reasoning=reasoning)


@pytest.mark.parametrize(
    ("reasoning", "named"), [({"context": "all_turns"}, "reasoning.context"), ({"mode": "pro"}, "reasoning.mode")]
)
def test_reasoning_across_turns_or_in_another_mode_is_an_unsupported_parameter(reasoning: Any, named: str) -> None:
    assert named in unsupported(reasoning=reasoning)


def test_a_text_format_leaves_params_alone() -> None:
    request = parse(text={"format": {"type": "text"}})
    assert request.params == {}
    assert request.echo["text"] == {"format": {"type": "text"}}


def test_a_json_schema_format_becomes_a_chat_json_schema_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    fmt = {"type": "json_schema", "name": "answer", "schema": schema, "strict": True, "description": "d"}
    request = parse(text={"format": fmt})
    assert request.params["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema, "strict": True, "description": "d"},
    }
    assert request.echo["text"] == {"format": fmt}


def test_a_json_object_format_becomes_a_chat_json_object_response_format() -> None:
    assert parse(text={"format": {"type": "json_object"}}).params["response_format"] == {"type": "json_object"}


def test_text_verbosity_becomes_chat_verbosity_and_is_echoed() -> None:
    request = parse(text={"verbosity": "low"})
    assert request.params == {"verbosity": "low"}
    assert request.echo["text"] == {"format": {"type": "text"}, "verbosity": "low"}


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("json", "text"),
        ({"format": "json"}, "text.format.type"),
        ({"format": {"type": "grammar"}}, "text.format.type"),
        ({"format": {"type": "json_schema", "schema": {}}}, "text.format.name"),
        ({"format": {"type": "json_schema", "name": "a"}}, "text.format.schema"),
        ({"verbosity": 1}, "text.verbosity"),
    ],
)
def test_a_malformed_text_config_is_a_bad_request_naming_it(text: Any, named: str) -> None:
    assert named in bad_request(text=text)


# -- refused and echoed fields


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("conversation", "conv_1"),
        ("prompt", {"id": "pmpt_1"}),
        ("moderation", {"model": "omni-moderation-latest"}),
        ("context_management", [{"type": "compaction"}]),
        ("background_options", {"completion_window": "2h"}),
        ("access_programs", {"cyber": "standard"}),
        ("image", {"context_compression": "auto"}),
    ],
)
def test_a_responses_feature_tokenrelay_cannot_serve_is_an_unsupported_parameter(field: str, value: Any) -> None:
    assert field in unsupported(**{field: value})


@pytest.mark.parametrize("field", ["conversation", "prompt", "moderation", "context_management", "image"])
def test_a_feature_left_null_or_empty_is_accepted(field: str) -> None:
    assert parse(**{field: None}).params == {}
    assert parse(**{field: {}}).params == {}


@pytest.mark.parametrize("include", [None, []])
def test_an_absent_or_empty_include_is_accepted(include: Any) -> None:
    assert parse(include=include).params == {}


def test_an_include_asking_for_anything_is_an_unsupported_parameter() -> None:
    assert "include" in unsupported(include=["reasoning.encrypted_content"])


def test_an_include_that_is_not_an_array_is_a_bad_request() -> None:
    assert "include" in bad_request(include="reasoning.encrypted_content")


def test_truncation_disabled_is_accepted_and_auto_is_an_unsupported_parameter() -> None:
    assert parse(truncation="disabled").echo["truncation"] == "disabled"
    assert "truncation" in unsupported(truncation="auto")
    assert "truncation" in bad_request(truncation="sometimes")


def test_metadata_is_echoed_and_not_passed_on() -> None:
    request = parse(metadata={"team": "a"})
    assert request.echo["metadata"] == {"team": "a"}
    assert request.params == {}


@pytest.mark.parametrize(
    "metadata",
    [
        ["a"],
        {str(i): "v" for i in range(MAX_METADATA_KEYS + 1)},
        {"k" * 65: "v"},
        {"k": "v" * 513},
        {"k": 1},
    ],
)
def test_metadata_that_is_not_at_most_16_short_strings_is_a_bad_request(metadata: Any) -> None:
    assert "metadata" in bad_request(metadata=metadata)


def test_the_echo_of_a_minimal_request_has_openai_defaults() -> None:
    assert parse().echo == {
        "instructions": None,
        "max_output_tokens": None,
        "max_tool_calls": None,
        "top_logprobs": None,
        "tools": [],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "temperature": 1.0,
        "top_p": 1.0,
        "reasoning": {"effort": None, "summary": None},
        "text": {"format": {"type": "text"}},
        "truncation": "disabled",
        "metadata": {},
        "user": None,
        "safety_identifier": None,
        "prompt_cache_key": None,
        "previous_response_id": None,
        "store": True,
        "background": False,
    }


def test_the_echo_repeats_what_was_sent_with_tools_in_the_responses_shape() -> None:
    echo = parse(
        instructions="be brief",
        max_output_tokens=9,
        max_tool_calls=2,
        top_logprobs=3,
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "weather"},
        parallel_tool_calls=False,
        temperature=0.2,
        top_p=0.5,
        user="u",
        previous_response_id="resp_1",
        background=True,
        stream=True,
    ).echo
    assert echo["tools"] == [WEATHER]
    assert echo["tool_choice"] == {"type": "function", "name": "weather"}
    assert (echo["instructions"], echo["max_output_tokens"], echo["max_tool_calls"], echo["top_logprobs"]) == (
        "be brief",
        9,
        2,
        3,
    )
    assert (echo["parallel_tool_calls"], echo["temperature"], echo["top_p"], echo["user"]) == (False, 0.2, 0.5, "u")
    assert (echo["previous_response_id"], echo["store"], echo["background"]) == ("resp_1", True, True)


# -- start_request


def test_the_start_request_puts_the_instructions_first_then_the_earlier_conversation_then_the_input() -> None:
    request = parse(model="m", instructions="be brief", max_output_tokens=9, temperature=0.5)
    earlier = (ChatMessage(role="user", content="before"), ChatMessage(role="assistant", content="ok"))
    start = start_request(request, earlier)
    assert start.messages == (
        ChatMessage(role="system", content="be brief"),
        *earlier,
        ChatMessage(role="user", content="hi"),
    )
    assert (start.max_tokens, start.model, start.params) == (9, "m", {"temperature": 0.5})


def test_the_start_request_of_a_request_without_instructions_or_earlier_turns_is_its_input() -> None:
    start = start_request(parse())
    assert start.messages == (ChatMessage(role="user", content="hi"),)
    assert (start.max_tokens, start.model, start.params) == (None, None, {})


def test_the_start_request_has_its_own_copy_of_the_params() -> None:
    request = parse(temperature=0.5)
    start_request(request).params["temperature"] = 2
    assert request.params == {"temperature": 0.5}


# -- assistant_turn

START = StreamStart(stream_id="0" * 32, epoch="e", model="m", created=1, runner_id="r", ts=0.0)
END = StreamEnd(seq=9, finish_reason=FinishReason.STOP, tokens=3, ttft_ms=1.0)


def delta(seq: int, text: str) -> StreamDelta:
    return StreamDelta(seq=seq, text=text, index=seq, count=1, ts=0.0)


def call(seq: int, number: int, arguments: str, *, id: str | None = None, name: str | None = None) -> ToolCallDelta:
    return ToolCallDelta(seq=seq, call=number, id=id, name=name, arguments=arguments, index=seq, count=1, ts=0.0)


def test_an_earlier_responses_text_deltas_make_one_assistant_message() -> None:
    thinking = ReasoningDelta(seq=1, text="hmm", index=1, count=1, ts=0.0)
    events: list[StreamEvent] = [START, thinking, delta(2, "Hel"), delta(3, "lo"), END]
    assert assistant_turn(events) == (ChatMessage(role="assistant", content="Hello"),)


def test_an_earlier_responses_tool_calls_are_grouped_by_call_with_their_arguments_joined() -> None:
    events: list[StreamEvent] = [
        START,
        delta(1, "checking"),
        call(2, 0, '{"city":', id="c1", name="weather"),
        call(3, 1, "{}", id="c2", name="clock"),
        call(4, 0, ' "Paris"}'),
        StreamEnd(seq=5, finish_reason=FinishReason.TOOL_CALLS, tokens=4, ttft_ms=1.0),
    ]
    assert assistant_turn(events) == (
        ChatMessage(
            role="assistant",
            content="checking",
            tool_calls=(
                ToolCall(id="c1", name="weather", arguments='{"city": "Paris"}'),
                ToolCall(id="c2", name="clock", arguments="{}"),
            ),
        ),
    )


def test_an_earlier_response_with_neither_text_nor_calls_makes_no_turn() -> None:
    thinking = ReasoningDelta(seq=1, text="hmm", index=1, count=1, ts=0.0)
    failed = StreamError(seq=2, code="engine_error", message="boom", tokens=0)
    assert assistant_turn([START, thinking, failed]) == ()
    assert assistant_turn([]) == ()
