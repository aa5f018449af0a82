"""The Python client reads typed streams from a real system with the synthetic engine: a tool call assembled from its
fragments, reasoning apart from the answer, a tool conversation's second turn, and all of it across dropped
connections."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest

from tests.e2e.test_client import proxy_to
from tokenrelay.client import (
    ChatMessage,
    Client,
    Finished,
    ReasoningDelta,
    Stream,
    TextDelta,
    ToolCallDelta,
    function_tool,
)
from tokenrelay.runner.engines.synthetic import prompt_text, synthetic_tokens
from tokenrelay.testing.procs import System, nats_server, system

RUNNER_ARGS = ["--synthetic-tokens-per-s", "200", "--synthetic-ttft-ms", "0", "--publish-interval-ms", "0"]
STREAMER_ARGS = ["--flush-interval-ms", "0"]
"""Every token published and written as it comes: the client sees nearly every token as an event of its own."""
WEATHER = function_tool(
    "get_weather",
    "The forecast for a city",
    {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer"},
            "unit": {"enum": ["celsius", "fahrenheit"]},
            "hourly": {"type": "boolean"},
        },
        "required": ["city", "days", "unit"],
    },
)
REQUIRED = ("city", "days", "unit")
MAX_TOKENS = 200
HIGH_REASONING_TOKENS = 16
"""The synthetic engine's reasoning prelude at ``reasoning_effort="high"``."""


@pytest.fixture(scope="module")
def sut() -> Iterator[System]:
    # A broker of its own: runners of other modules on the shared broker would take these jobs too.
    with nats_server() as own, system(own.url, runner_args=RUNNER_ARGS, streamer_args=STREAMER_ARGS) as running:
        yield running


def _user(text: str) -> ChatMessage:
    return ChatMessage(role="user", content=text)


async def test_a_stream_with_tools_assembles_a_tool_call_whose_arguments_satisfy_the_schema(sut: System) -> None:
    async with Client(sut.gateway_url) as client:
        stream = await client.start(messages=[_user("weather in Paris?")], max_tokens=MAX_TOKENS, tools=[WEATHER])
        events = [event async for event in stream.events()]
    fragments = [event for event in events if isinstance(event, ToolCallDelta)]
    assert len(fragments) > 2 and not any(isinstance(event, TextDelta | ReasoningDelta) for event in events)
    assert fragments[0].id is not None and fragments[0].name == "get_weather"
    assert all(fragment.id is None and fragment.name is None for fragment in fragments[1:])
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.finish_reason == "tool_calls"
    (call,) = finished.tool_calls
    assert call == stream.tool_calls[0]
    assert call.id is not None and call.id.startswith("call_") and call.name == "get_weather"
    arguments = call.parsed_arguments()
    assert set(REQUIRED) <= arguments.keys()
    assert isinstance(arguments["city"], str) and isinstance(arguments["days"], int)
    assert arguments["unit"] in ("celsius", "fahrenheit")
    assert call.arguments == "".join(fragment.arguments for fragment in fragments)
    assert stream.text == "" and stream.finish_reason == "tool_calls"
    assert finished.usage.tokens == stream.tokens == fragments[-1].index


async def test_with_reasoning_effort_the_reasoning_comes_apart_from_the_text(sut: System) -> None:
    async with Client(sut.gateway_url) as client:
        stream = await client.start(prompt="think first", max_tokens=MAX_TOKENS, reasoning_effort="high")
        texts = [delta async for delta in stream]
    answer = synthetic_tokens(prompt_text((_user("think first"),)), max_tokens=MAX_TOKENS - HIGH_REASONING_TOKENS)
    assert "".join(texts) == stream.text == "".join(answer)
    assert stream.reasoning.startswith("Let me think") and stream.reasoning not in stream.text
    assert stream.finish_reason == "stop" and stream.tool_calls == ()
    assert stream.tokens == stream.usage.tokens == HIGH_REASONING_TOKENS + len(answer)


async def test_a_typed_reader_sees_the_reasoning_block_before_the_answer(sut: System) -> None:
    async with Client(sut.gateway_url) as client:
        stream = await client.start(prompt="think, then say", max_tokens=MAX_TOKENS, reasoning_effort="low")
        events = [event async for event in stream.events()]
    kinds = [type(event) for event in events]
    assert kinds[: kinds.index(TextDelta)] == [ReasoningDelta] * kinds.index(TextDelta)
    assert set(kinds[kinds.index(TextDelta) : -1]) == {TextDelta} and kinds[-1] is Finished
    indexes = [event.index for event in events if not isinstance(event, Finished)]
    assert indexes == sorted(set(indexes))  # every token counted, reasoning included
    assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)) == stream.reasoning


async def test_a_second_turn_with_the_assistant_message_and_a_tool_result_answers_in_text(sut: System) -> None:
    question = _user("weather in Oslo?")
    async with Client(sut.gateway_url) as client:
        first = await client.start(messages=[question], max_tokens=MAX_TOKENS, tools=[WEATHER])
        await first.collect()
        (call,) = first.tool_calls
        assert call.id is not None
        result = ChatMessage(role="tool", content=orjson.dumps({"forecast": "rain"}).decode(), tool_call_id=call.id)
        conversation = [question, first.assistant_message(), result]
        second = await client.start(messages=conversation, max_tokens=MAX_TOKENS, tools=[WEATHER])
        answer = await second.collect()
    assert first.assistant_message().tool_calls == (call.to_wire(),)
    assert answer == "".join(synthetic_tokens(prompt_text(tuple(conversation)), max_tokens=MAX_TOKENS))
    assert answer and second.tool_calls == () and second.finish_reason in ("stop", "length")


async def _read_with_cuts(sut: System, prompt: str, *, cut_at_tokens: tuple[int, ...]) -> Stream:
    """The stream read to its end through a proxy that cuts the connection once at each token count."""
    async with proxy_to(sut.streamer_url) as proxy, Client(sut.gateway_url, reconnect_delay_s=0.01) as client:
        started = await client.start(
            messages=[_user(prompt)], max_tokens=MAX_TOKENS, tools=[WEATHER], reasoning_effort="high"
        )
        stream = client.stream(started.stream_id, proxy.via(started.events_url))
        cuts = list(cut_at_tokens)
        async for _ in stream.events():
            if cuts and stream.tokens >= cuts[0]:
                cuts.pop(0)
                proxy.cut()
        assert not cuts, f"the stream ended before the cuts at {cuts}"
        return stream


def _assembled(stream: Stream) -> tuple[object, ...]:
    return stream.reasoning, stream.text, stream.tool_calls, stream.finish_reason, stream.tokens


async def test_a_client_resuming_after_drops_inside_reasoning_and_arguments_assembles_the_same(sut: System) -> None:
    prompt = "reason, call, and survive drops"
    whole = await _read_with_cuts(sut, prompt, cut_at_tokens=())
    assert whole.reconnects == 0 and whole.reasoning and whole.tool_calls
    # once inside the reasoning, once inside the tool call's arguments (after the fragment with its id and name)
    cut = await _read_with_cuts(sut, prompt, cut_at_tokens=(5, HIGH_REASONING_TOKENS + 3))
    assert cut.reconnects == 2
    assert _assembled(cut) == _assembled(whole)
    (call,) = cut.tool_calls
    assert cut.finish_reason == "tool_calls" and call.id is not None and call.name == "get_weather"
    assert set(REQUIRED) <= call.parsed_arguments().keys()
