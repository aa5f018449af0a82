"""Tool calls, reasoning and every request parameter through the unmodified ``openai`` and ``anthropic`` SDKs.

A system whose runner uses the ``openai`` engine stands in front of a fake upstream that answers a first turn with
reasoning and a tool call and a turn carrying the tool's result with text; what the upstream received is compared
field by field with what the client sent.  A system with the synthetic engine gives the same shapes with no
upstream, through both SDKs and the native API.  Bad requests get their exact codes in each API's error shape.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import aiohttp
import anthropic
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from tokenrelay.testing.fake_openai import Answer, FakeUpstream, served_in_thread
from tokenrelay.testing.http import post
from tokenrelay.testing.procs import System, nats_server, system
from tokenrelay.testing.sse import read_stream
from tokenrelay.testing.synthetic import synthetic_args

MODEL = "weather-llm"
"""The model the upstream is asked for, which the relaying runner serves."""
TOOL_OWNED = frozenset({"model", "messages", "stream", "stream_options", "max_tokens"})
"""What tokenrelay itself puts in an upstream request; every other field is the client's, as sent."""
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer"},
    },
    "required": ["city", "unit"],
}
TOOL: ChatCompletionToolParam = {
    "type": "function",
    "function": {"name": "get_weather", "description": "The weather in a city.", "parameters": SCHEMA},
}
ANTHROPIC_TOOL: anthropic.types.ToolParam = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": SCHEMA,
}
CALL_ID = "call_up_1"
ARGUMENTS = '{"city": "Paris", "unit": "celsius"}'
REASONING = ["The", " user", " wants", " the", " weather."]
TOOL_FRAGMENTS = [
    {"index": 0, "id": CALL_ID, "type": "function", "function": {"name": "get_weather", "arguments": ""}},
    {"index": 0, "function": {"arguments": ARGUMENTS[:10]}},
    {"index": 0, "function": {"arguments": ARGUMENTS[10:]}},
]
WORDS = ["It", " is", " 21", " degrees", " in", " Paris", "."]
PNG = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
"""A 1x1 PNG."""
RESULT = '{"temperature_c": 21}'
SYNTHETIC_RUNNER = synthetic_args(tokens_per_s=1000, length_tokens=12)


PARALLEL_QUESTION = "What is the weather in Paris and in Rome?"
PARALLEL_ARGUMENTS = (ARGUMENTS, '{"city": "Rome", "unit": "celsius"}')
PARALLEL_FRAGMENTS: list[dict[str, Any]] = [
    {"index": 0, "id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": ""}},
    {"index": 1, "id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": ""}},
    *(
        {"index": call, "function": {"arguments": PARALLEL_ARGUMENTS[call][start : start + 12]}}
        for start in range(0, 36, 12)
        for call in (0, 1)
    ),
]
"""Two calls whose fragments interleave, as a model calling tools in parallel streams them."""


def answer(body: dict[str, object]) -> Answer:
    """Reasoning and a tool call (two, interleaved, when asked about two cities), until the conversation holds the
    tool's result: then text."""
    messages = body["messages"]
    assert isinstance(messages, list)
    if any(message.get("role") == "tool" for message in messages):
        return Answer(words=WORDS, finish_reason="stop")
    if messages[-1].get("content") == PARALLEL_QUESTION:
        return Answer(reasoning=REASONING, tool_fragments=PARALLEL_FRAGMENTS, finish_reason="tool_calls")
    return Answer(reasoning=REASONING, tool_fragments=TOOL_FRAGMENTS, finish_reason="tool_calls")


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    """The fake upstream runs on its own event loop in a thread, for the whole module."""
    with served_in_thread(FakeUpstream([], interval_s=0.001, usage_prompt_tokens=11, answer=answer)) as fake:
        yield fake


@pytest.fixture(scope="module")
def relay(upstream: FakeUpstream) -> Iterator[System]:
    """A system whose runner relays the fake upstream (a broker of its own: no other module's runner takes jobs)."""
    args = ["--engine", "openai", "--upstream-url", upstream.url, "--upstream-model", MODEL]
    with nats_server() as own, system(own.url, runner_args=args) as running:
        yield running


@pytest.fixture(scope="module")
def synthetic() -> Iterator[System]:
    with nats_server() as own, system(own.url, runner_args=SYNTHETIC_RUNNER) as running:
        yield running


def openai_sdk(sut: System) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{sut.streamer_url}/v1", api_key="not-checked", max_retries=0)


def anthropic_sdk(sut: System) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=sut.streamer_url, api_key="not-checked", max_retries=0)


def sent_fields(body: dict[str, object], sent: dict[str, Any]) -> None:
    """The upstream got every field the client sent, each as sent, and nothing but tokenrelay's own besides."""
    assert {name: body.get(name) for name in sent} == sent
    assert set(body) - set(sent) <= TOOL_OWNED


# --- the openai SDK, relayed to an upstream --------------------------------------------------------------------

OPENAI_PARAMS: dict[str, Any] = {
    "tools": [TOOL],
    "tool_choice": "auto",
    "temperature": 0.3,
    "seed": 7,
    "stop": ["\nObservation:"],
    "top_p": 0.9,
}
VENDOR_FIELDS = {"top_k": 20, "chat_template_kwargs": {"enable_thinking": True}}
FIRST_TURN: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You check the weather."},
    {"role": "user", "content": "What is the weather in Paris?"},
]


PHOTO_QUESTION = "And what does this photo show?"


def second_turn(call_id: str, name: str, arguments: str) -> list[Any]:
    """The first turn, the assistant's tool call, the tool's result and a user message with an image."""
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    image = [{"type": "text", "text": PHOTO_QUESTION}, {"type": "image_url", "image_url": {"url": PNG}}]
    return [
        *FIRST_TURN,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call_id, "content": RESULT},
        {"role": "user", "content": image},
    ]


async def openai_turn(
    client: openai.AsyncOpenAI,
    messages: list[Any],
    *,
    streamed: bool,
    model: str = MODEL,
    **fields: Any,
) -> tuple[Any, str, str]:
    """One turn: the assembled message, its finish reason, and the reasoning (streamed: from the chunks' deltas)."""
    common: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": 64, "extra_body": VENDOR_FIELDS}
    if not streamed:
        completion = await client.chat.completions.create(**common, **fields)
        message = completion.choices[0].message
        reasoning = (message.model_extra or {}).get("reasoning_content", "")
        return message, str(completion.choices[0].finish_reason), reasoning
    pieces, contents = [], []
    async with client.chat.completions.stream(**common, **fields) as stream:
        async for event in stream:
            if event.type == "chunk" and event.chunk.choices:
                delta = event.chunk.choices[0].delta
                pieces.append((delta.model_extra or {}).get("reasoning_content") or "")
                contents.append(delta.content or "")
        final = await stream.get_final_completion()
    assert "".join(contents) == (final.choices[0].message.content or "")
    return final.choices[0].message, str(final.choices[0].finish_reason), "".join(pieces)


@pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "whole"])
async def test_the_openai_sdk_makes_a_tool_round_trip_through_an_upstream_with_every_parameter_passed_on(
    relay: System, upstream: FakeUpstream, streamed: bool
) -> None:
    client = openai_sdk(relay)
    message, finish, reasoning = await openai_turn(client, FIRST_TURN, streamed=streamed, **OPENAI_PARAMS)
    assert finish == "tool_calls"
    assert reasoning == "".join(REASONING)
    assert not message.content  # the reasoning arrives as reasoning, never as the answer's text
    assert message.tool_calls is not None and len(message.tool_calls) == 1
    call = message.tool_calls[0]
    assert (call.id, call.type, call.function.name, call.function.arguments) == (
        CALL_ID, "function", "get_weather", ARGUMENTS,
    )  # fmt: skip
    first = upstream.calls[-1].body
    sent_fields(first, {**OPENAI_PARAMS, **VENDOR_FIELDS})
    assert first["messages"] == FIRST_TURN
    assert (first["model"], first["max_tokens"], first["stream"]) == (MODEL, 64, True)

    messages = second_turn(call.id, call.function.name, call.function.arguments)
    message, finish, reasoning = await openai_turn(client, messages, streamed=streamed, **OPENAI_PARAMS)
    assert (message.content, finish, reasoning, message.tool_calls) == ("".join(WORDS), "stop", "", None)
    second = upstream.calls[-1].body
    sent_fields(second, {**OPENAI_PARAMS, **VENDOR_FIELDS})
    assert second["messages"] == messages


# --- the anthropic SDK, relayed to an upstream -----------------------------------------------------------------

ANTHROPIC_FIELDS: dict[str, Any] = {
    "tools": [ANTHROPIC_TOOL],
    "tool_choice": {"type": "auto"},
    "thinking": {"type": "enabled", "budget_tokens": 2048},
    "stop_sequences": ["\nObservation:"],
    "extra_body": {"temperature": 1.0, "top_k": 20},  # this SDK's create() takes sampling fields no more
}
TRANSLATED = {
    "tools": [TOOL],
    "tool_choice": "auto",
    "reasoning_effort": "low",
    "reasoning": {"max_tokens": 2048},
    "stop": ["\nObservation:"],
    "temperature": 1.0,
    "top_k": 20,
}
"""``ANTHROPIC_FIELDS`` as the upstream gets them: translated to their OpenAI counterparts, the rest as sent."""
QUESTION: list[anthropic.types.MessageParam] = [{"role": "user", "content": "What is the weather in Paris?"}]
SYSTEM = "You check the weather."


async def anthropic_turn(
    client: anthropic.AsyncAnthropic, messages: list[Any], *, streamed: bool
) -> anthropic.types.Message:
    fields: dict[str, Any] = {"model": MODEL, "max_tokens": 4096, "system": SYSTEM, "messages": messages}
    if not streamed:
        message: anthropic.types.Message = await client.messages.create(**fields, **ANTHROPIC_FIELDS)
        return message
    async with client.messages.stream(**fields, **ANTHROPIC_FIELDS) as stream:
        async for _ in stream:
            pass
        return await stream.get_final_message()


@pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "whole"])
async def test_the_anthropic_sdk_makes_a_tool_round_trip_through_an_upstream_with_every_field_translated(
    relay: System, upstream: FakeUpstream, streamed: bool
) -> None:
    client = anthropic_sdk(relay)
    message = await anthropic_turn(client, QUESTION, streamed=streamed)
    assert message.stop_reason == "tool_use"
    assert [block.type for block in message.content] == ["thinking", "tool_use"]
    thinking, tool_use = message.content
    assert thinking.type == "thinking" and thinking.thinking == "".join(REASONING) and thinking.signature
    assert tool_use.type == "tool_use"
    assert (tool_use.id, tool_use.name, tool_use.input) == (CALL_ID, "get_weather", orjson.loads(ARGUMENTS))
    first = upstream.calls[-1].body
    sent_fields(first, TRANSLATED)
    assert first["messages"] == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": QUESTION[0]["content"]},
    ]
    assert first["max_tokens"] == 4096

    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG.split(",")[1]}}
    reply = [{"type": "tool_result", "tool_use_id": tool_use.id, "content": RESULT}, image]
    messages: list[Any] = [
        *QUESTION,
        {"role": "assistant", "content": message.content},  # the thinking block goes back as the SDK gave it
        {"role": "user", "content": [*reply, {"type": "text", "text": PHOTO_QUESTION}]},
    ]
    answered = await anthropic_turn(client, messages, streamed=streamed)
    assert answered.stop_reason == "end_turn"
    assert [(block.type, getattr(block, "text", None)) for block in answered.content] == [("text", "".join(WORDS))]
    second = upstream.calls[-1].body
    sent_fields(second, TRANSLATED)
    call = {
        "id": CALL_ID,
        "type": "function",
        "function": {"name": "get_weather", "arguments": orjson.dumps(tool_use.input).decode()},
    }
    assert second["messages"] == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": QUESTION[0]["content"]},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": CALL_ID, "content": RESULT},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": PNG}}, {"type": "text", "text": PHOTO_QUESTION},
        ]},
    ]  # fmt: skip


async def test_parallel_tool_calls_reach_both_sdks_as_whole_calls_in_order(relay: System) -> None:
    question = [{"role": "user", "content": PARALLEL_QUESTION}]
    expected = [("call_a", orjson.loads(PARALLEL_ARGUMENTS[0])), ("call_b", orjson.loads(PARALLEL_ARGUMENTS[1]))]
    message, finish, _ = await openai_turn(openai_sdk(relay), question, streamed=True, tools=[TOOL])
    assert finish == "tool_calls" and message.tool_calls is not None
    assert [(call.id, orjson.loads(call.function.arguments)) for call in message.tool_calls] == expected
    fields: dict[str, Any] = {"model": MODEL, "max_tokens": 100, "messages": question, "tools": [ANTHROPIC_TOOL]}
    async with anthropic_sdk(relay).messages.stream(**fields) as stream:
        events = [event async for event in stream]
        final = await stream.get_final_message()
    assert [block.type for block in final.content] == ["thinking", "tool_use", "tool_use"]
    assert [(block.id, block.input) for block in final.content if block.type == "tool_use"] == expected
    # Anthropic's blocks never interleave: each one starts and stops once, in order.
    starts = [event.index for event in events if event.type == "content_block_start"]
    stops = [event.index for event in events if event.type == "content_block_stop"]
    assert starts == stops == [0, 1, 2]


# --- the synthetic engine: the same shapes with no upstream ----------------------------------------------------


def satisfies_schema(arguments: dict[str, Any]) -> None:
    """The synthetic call's arguments: every required property, each of its declared type."""
    assert set(SCHEMA["required"]) <= set(arguments)
    assert isinstance(arguments["city"], str)
    assert arguments["unit"] in ("celsius", "fahrenheit")


@pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "whole"])
async def test_the_synthetic_engine_calls_a_tool_and_reasons_through_the_openai_sdk(
    synthetic: System, streamed: bool
) -> None:
    client = openai_sdk(synthetic)
    fields: dict[str, Any] = {"model": "synthetic", "tools": [TOOL], "reasoning_effort": "low"}
    message, finish, reasoning = await openai_turn(client, FIRST_TURN, streamed=streamed, **fields)
    assert finish == "tool_calls"
    assert reasoning == "Let me think about"  # the synthetic prelude: 4 tokens at "low"
    assert not message.content
    assert message.tool_calls is not None and len(message.tool_calls) == 1
    call = message.tool_calls[0]
    assert call.id.startswith("call_") and call.function.name == "get_weather"
    satisfies_schema(orjson.loads(call.function.arguments))
    messages = [*second_turn(call.id, call.function.name, call.function.arguments)[:-1]]  # ends with the result
    message, finish, _ = await openai_turn(client, messages, streamed=streamed, **fields)
    assert finish == "stop" and message.content and not message.tool_calls


@pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "whole"])
async def test_the_synthetic_engine_calls_a_tool_and_thinks_through_the_anthropic_sdk(
    synthetic: System, streamed: bool
) -> None:
    client = anthropic_sdk(synthetic)
    fields: dict[str, Any] = {"model": "synthetic", "max_tokens": 200, "messages": QUESTION}
    extra: dict[str, Any] = {"tools": [ANTHROPIC_TOOL], "thinking": {"type": "enabled", "budget_tokens": 1024}}
    if streamed:
        async with client.messages.stream(**fields, **extra) as stream:
            message = await stream.get_final_message()
    else:
        message = await client.messages.create(**fields, **extra)
    assert message.stop_reason == "tool_use"
    assert [block.type for block in message.content] == ["thinking", "tool_use"]
    thinking, tool_use = message.content
    assert thinking.type == "thinking" and thinking.thinking == "Let me think about" and thinking.signature
    assert tool_use.type == "tool_use" and tool_use.name == "get_weather"
    assert isinstance(tool_use.input, dict)
    satisfies_schema(tool_use.input)


async def test_the_synthetic_engine_makes_a_tool_round_trip_through_the_native_api(synthetic: System) -> None:
    body: dict[str, Any] = {"messages": FIRST_TURN, "tools": [TOOL], "reasoning_effort": "low", "max_tokens": 100}
    status, created = await post(f"{synthetic.gateway_url}/v1/streams", body)
    assert status == 201, created
    stream = await read_stream(created["events_url"])
    assert "".join(event.json()["text"] for event in stream.of("reasoning")) == "Let me think about"
    assert stream.text == ""
    fragments = [event.json() for event in stream.of("tool_call")]
    assert {fragment["call"] for fragment in fragments} == {0}
    call_id, name = fragments[0]["id"], fragments[0]["name"]
    assert call_id.startswith("call_") and name == "get_weather"
    arguments = "".join(fragment["arguments"] for fragment in fragments)
    satisfies_schema(orjson.loads(arguments))
    assert stream.terminal.json()["finish_reason"] == "tool_calls"

    body["messages"] = second_turn(call_id, name, arguments)[:-1]
    status, created = await post(f"{synthetic.gateway_url}/v1/streams", body)
    assert status == 201, created
    stream = await read_stream(created["events_url"])
    assert stream.text and not stream.of("tool_call")
    assert stream.terminal.json()["finish_reason"] == "stop"


# --- bad input: each refusal with its exact code, in each API's shape ------------------------------------------

USER = {"role": "user", "content": "weather?"}
ASKED = {"role": "assistant", "content": None, "tool_calls": [
    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]}  # fmt: skip
BIG_IMAGE = "data:image/png;base64," + base64.b64encode(bytes(6 << 20)).decode()
"""An image of 6 MiB: over every limit on an image, a body and a NATS message."""
OPENAI_BAD: dict[str, tuple[dict[str, Any], int, str]] = {
    "tools not a list": ({"messages": [USER], "tools": TOOL}, 400, "bad_request"),
    "a tool not a function definition": ({"messages": [USER], "tools": [{"type": "retrieval"}]}, 400, "bad_request"),
    "a tool message without tool_call_id": (
        {"messages": [USER, ASKED, {"role": "tool", "content": "sunny"}]}, 400, "bad_request",
    ),
    "tool-call arguments not a string": (
        {"messages": [USER, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": {"city": "Paris"}}}]}]},
        400, "bad_request",
    ),
    "an unknown content part type": (
        {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": ""}}]}]},
        400, "bad_request",
    ),
    "an image over the size limit": (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": BIG_IMAGE}}]}]},
        413, "payload_too_large",
    ),
    "temperature out of range": ({"messages": [USER], "temperature": 2.5}, 400, "bad_request"),
}  # fmt: skip
ANTHROPIC_BAD: dict[str, tuple[dict[str, Any], int, str]] = {
    "tools not a list": ({"messages": [USER], "tools": ANTHROPIC_TOOL}, 400, "bad_request"),
    "a tool not a custom tool": (
        {"messages": [USER], "tools": [{"type": "bash_20250124", "name": "bash"}]}, 400, "bad_request",
    ),
    "a tool result without tool_use_id": (
        {"messages": [USER, {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "content": "sunny"}]}]},
        400, "bad_request",
    ),
    "tool-use input not an object": (
        {"messages": [USER, {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": '{"city": "Paris"}'}]}]},
        400, "bad_request",
    ),
    "an unknown content block type": (
        {"messages": [{"role": "user", "content": [{"type": "audio", "source": {}}]}]}, 400, "bad_request",
    ),
    "an image over the size limit": (
        {"messages": [{"role": "user", "content": [{"type": "image", "source": {
            "type": "base64", "media_type": "image/png", "data": BIG_IMAGE.split(",")[1]}}]}]},
        413, "payload_too_large",
    ),
    "temperature out of range": ({"messages": [USER], "temperature": 2.5}, 400, "bad_request"),
}  # fmt: skip
ANTHROPIC_TYPES = {"bad_request": "invalid_request_error", "payload_too_large": "request_too_large"}


async def _post_raw(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.post(url, data=orjson.dumps(body)) as response:
        return response.status, orjson.loads(await response.read())


@pytest.mark.parametrize("case", OPENAI_BAD)
async def test_a_bad_request_gets_its_exact_code_on_the_native_api(synthetic: System, case: str) -> None:
    body, status, code = OPENAI_BAD[case]
    got, answer_body = await _post_raw(f"{synthetic.gateway_url}/v1/streams", body)
    assert (got, answer_body["error"]["code"]) == (status, code), answer_body


@pytest.mark.parametrize("case", OPENAI_BAD)
async def test_a_bad_request_gets_its_exact_code_in_openais_shape(synthetic: System, case: str) -> None:
    body, status, code = OPENAI_BAD[case]
    got, answer_body = await _post_raw(f"{synthetic.streamer_url}/v1/chat/completions", {"model": "synthetic", **body})
    error = answer_body["error"]
    assert (got, error["code"], error["type"]) == (status, code, "invalid_request_error"), answer_body


@pytest.mark.parametrize("case", ANTHROPIC_BAD)
async def test_a_bad_request_gets_its_exact_code_in_anthropics_shape(synthetic: System, case: str) -> None:
    body, status, code = ANTHROPIC_BAD[case]
    got, answer_body = await _post_raw(
        f"{synthetic.streamer_url}/v1/messages", {"model": "synthetic", "max_tokens": 20, **body}
    )
    assert (got, answer_body["type"], answer_body["error"]["type"]) == (status, "error", ANTHROPIC_TYPES[code])
    assert answer_body["error"]["message"].startswith(f"{code}: "), answer_body


async def test_the_sdks_raise_their_bad_request_errors_for_a_temperature_out_of_range(synthetic: System) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        await openai_sdk(synthetic).chat.completions.create(
            model="synthetic", messages=FIRST_TURN, max_tokens=5, temperature=2.5
        )
    assert raised.value.code == "bad_request" and "temperature" in raised.value.message
    with pytest.raises(anthropic.BadRequestError) as refused:
        await anthropic_sdk(synthetic).messages.create(
            model="synthetic", max_tokens=5, messages=QUESTION, extra_body={"temperature": 2.5}
        )
    assert refused.value.status_code == 400 and "temperature" in refused.value.message
