"""Moves of a lost runner's stream with engines other than the plain synthetic text, and through the OpenAI API.

An ``openai``-engine runner told that its upstream continues a final assistant message
(``--upstream-continue-final-message on``) continues a moved chat from its text so far; with the flag off no runner
can continue it and it ends ``runner_lost``.  A synthetic stream of typed content (reasoning, a tool call) moves
whole, and an OpenAI SDK client streaming a chat completion sees no error and the uninterrupted content and usage.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, cast

import openai
import pytest
from openai.types.chat import ChatCompletionChunk

from tests.e2e.test_drain import generating
from tests.helpers import eventually, eventually_true
from tokenrelay.testing.fake_openai import Answer, FakeUpstream, served_in_thread
from tokenrelay.testing.http import create_stream, metric, post
from tokenrelay.testing.procs import NatsServer, Role, System, system
from tokenrelay.testing.sse import Event, Stream, read_stream
from tokenrelay.testing.synthetic import expected_text, synthetic_args

STALE = ["--runner-stale-after-s", "1"]
"""The runner is declared lost ~2 s after it went silent (1 s silent, 1 s more unanswered ping)."""

FIRST_WORDS = [f" w{i}" for i in range(400)]
"""The upstream's first answer: one token a word, far longer than any test waits for."""
CONTINUED_WORDS = [" and", " so", " it", " goes", " on", "."]
"""The upstream's answer to a request that continues the answer so far."""
UPSTREAM_INTERVAL_S = 0.05
"""Between the upstream's words: slow enough that the owner is killed with most of its answer still to come."""
WORDS_BEFORE_KILL = 10
"""The owner is killed once the upstream has sent it this many words."""
CLIENT_MAX_TOKENS = 100

TYPED_TOKENS_PER_S = 20
"""Slow enough that the owner is killed inside the tool call, seconds before it ends."""
HIGH_REASONING_TOKENS = 16
"""The synthetic engine's reasoning prelude at ``reasoning_effort="high"``."""
LONG_CHOICE = "x" * 480
"""The one value the tool's only required property may take: 60 fragments of arguments (8 characters each)."""
TOOL = {
    "type": "function",
    "function": {
        "name": "pick",
        "parameters": {
            "type": "object",
            "properties": {"choice": {"enum": [LONG_CHOICE]}},
            "required": ["choice"],
        },
    },
}
UNBATCHED_RUNNER = ["--publish-interval-ms", "0"]
UNBATCHED_STREAMER = ["--flush-interval-ms", "0"]

SDK_TOKENS_PER_S = 50
SDK_MAX_TOKENS = 150
SDK_LENGTH_TOKENS = 100_000
CHUNKS_BEFORE_KILL = 10


def continuing_answer(body: dict[str, object]) -> Answer:
    """The first answer for a new request, :data:`CONTINUED_WORDS` for one that continues an answer so far."""
    return Answer(CONTINUED_WORDS if body.get("continue_final_message") else FIRST_WORDS)


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    """A fake upstream of this test's own (its calls are this test's), on its own event loop in a thread."""
    fake = FakeUpstream([], interval_s=UPSTREAM_INTERVAL_S, answer=continuing_answer)
    with served_in_thread(fake) as served:
        yield served


async def every_runner_heard(sut: System) -> None:
    """Wait until the gateway has heard every runner: one it never heard from that takes the stream and is killed
    before its first heartbeat reaches the gateway would never be checked, so nothing would move its stream."""
    await eventually(
        lambda: metric(sut.gateway_url, "tokenrelay_gateway_runners_available"),
        lambda n: n == len(sut.runners),
        what="the gateway to hear every runner",
    )


def openai_runner(upstream: FakeUpstream, *, continue_final_message: str) -> list[str]:
    """Runner arguments: the ``openai`` engine against the fake upstream, ``continue_final_message`` ``on|off``."""
    return [
        *("--engine", "openai", "--upstream-url", upstream.url, "--upstream-model", "fake-model"),
        *("--upstream-continue-final-message", continue_final_message),
    ]


def offsets(events: list[Event]) -> list[int]:
    """The token offsets of the content events' ids (``<epoch>:<offset>``)."""
    return [int(event.id.rsplit(":", 1)[1]) for event in events if event.id and event.event != "start"]


def assert_offsets_increase(stream: Stream) -> None:
    """Every content event's offset is past the one before: no token repeats, none goes back."""
    marks = offsets(stream.events[:-1])
    assert marks == sorted(set(marks)), f"token offsets repeat or go back: {marks}"


async def kill_when_upstream_sent(upstream: FakeUpstream, runners: list[Role], words: int) -> Role:
    """SIGKILL the runner generating the one stream, once the upstream sent it ``words`` words; return it."""
    owner = await generating(runners)
    await eventually_true(
        lambda: len(upstream.calls) == 1 and upstream.calls[0].sent >= words, what=f"{words} words upstream"
    )
    owner.process.send_signal(signal.SIGKILL)
    return owner


async def test_an_openai_runner_continues_a_killed_runner_s_chat_from_its_text_so_far(
    nats: NatsServer, upstream: FakeUpstream
) -> None:
    args = openai_runner(upstream, continue_final_message="on")
    with system(nats.url, runner_args=args, runners=2, gateway_args=STALE) as sut:
        await every_runner_heard(sut)
        created = await create_stream(sut.gateway_url, "tell me more", max_tokens=CLIENT_MAX_TOKENS)
        reading = asyncio.create_task(read_stream(created["events_url"]))
        await kill_when_upstream_sent(upstream, sut.runners, WORDS_BEFORE_KILL)
        stream = await reading
        assert await metric(sut.gateway_url, "tokenrelay_gateway_stream_moves_total", outcome="moved") == 1
    assert stream.of("error") == []
    assert stream.terminal.event == "stop", stream.terminal
    assert_offsets_increase(stream)
    assert len(upstream.calls) == 2
    first, second = upstream.calls[0].body, upstream.calls[1].body
    messages = cast(list[dict[str, Any]], second["messages"])
    so_far = messages[-1]["content"]
    prefixes = {"".join(FIRST_WORDS[:n]): n for n in range(1, len(FIRST_WORDS))}
    assert so_far in prefixes, f"the text so far is no part of the first answer: {so_far!r}"
    tokens_so_far = prefixes[so_far]
    assert stream.text == so_far + "".join(CONTINUED_WORDS)
    assert messages == [*cast(list[dict[str, Any]], first["messages"]), {"role": "assistant", "content": so_far}]
    assert (second["continue_final_message"], second["add_generation_prompt"]) == (True, False)
    assert second["max_tokens"] == CLIENT_MAX_TOKENS - tokens_so_far
    assert stream.terminal.json()["tokens"] == tokens_so_far + len(CONTINUED_WORDS)


async def test_an_openai_runner_that_cannot_continue_a_final_message_leaves_a_killed_runner_s_stream_lost(
    nats: NatsServer, upstream: FakeUpstream
) -> None:
    args = openai_runner(upstream, continue_final_message="off")
    with system(nats.url, runner_args=args, runners=2, gateway_args=STALE) as sut:
        await every_runner_heard(sut)
        created = await create_stream(sut.gateway_url, "nobody continues me", max_tokens=CLIENT_MAX_TOKENS)
        reading = asyncio.create_task(read_stream(created["events_url"]))
        await kill_when_upstream_sent(upstream, sut.runners, WORDS_BEFORE_KILL)
        stream = await reading
        assert stream.terminal.event == "error" and stream.terminal.json()["code"] == "runner_lost"
        assert await metric(sut.gateway_url, "tokenrelay_gateway_stream_moves_total", outcome="lost") == 1
    assert len(upstream.calls) == 1, "a continuation reached the upstream"


CONTENT_FIELDS = ("text", "call", "id", "name", "arguments")
"""What a content event carries (not when it was made, nor where in the stream: ``ts``, ``index``)."""


def typed_content(stream: Stream) -> list[tuple[str, dict[str, Any]]]:
    """The stream's content events, adjacent ones of one kind (and one call) merged into one: what a reader builds,
    whatever the batching of tokens into events."""
    merged: list[tuple[str, dict[str, Any]]] = []
    for event in stream.events:
        if event.event not in ("reasoning", "delta", "tool_call"):
            continue
        data = {key: value for key, value in event.json().items() if key in CONTENT_FIELDS}
        last = merged[-1] if merged else None
        if last is None or last[0] != event.event or last[1].get("call") != data.get("call"):
            merged.append((event.event, data))
            continue
        for key in ("text", "id", "name", "arguments"):
            if key in data:
                last[1][key] = last[1].get(key, "") + data[key]
    return merged


async def typed_stream(sut: System) -> dict[str, Any]:
    """Create a stream that reasons (``high``: 16 tokens) and then calls :data:`TOOL` (61 tokens)."""
    body = {"prompt": "pick one", "max_tokens": 200, "reasoning_effort": "high", "tools": [TOOL]}
    status, created = await post(f"{sut.gateway_url}/v1/streams", body)
    assert status == 201, created
    return dict(created)


async def test_a_killed_runner_s_reasoning_and_tool_call_continue_on_the_other_runner_as_uninterrupted(
    nats: NatsServer,
) -> None:
    runner = [*synthetic_args(tokens_per_s=TYPED_TOKENS_PER_S, length_tokens=100_000), *UNBATCHED_RUNNER]
    with system(nats.url, runner_args=runner, runners=2, gateway_args=STALE, streamer_args=UNBATCHED_STREAMER) as sut:
        await every_runner_heard(sut)
        uninterrupted = await read_stream((await typed_stream(sut))["events_url"])
        created = await typed_stream(sut)
        reading = asyncio.create_task(read_stream(created["events_url"]))
        owner = await generating(sut.runners)
        # The start, the reasoning and the tool call's first fragments (more when tokens share an event).
        await read_stream(created["events_url"], stop_after=1 + HIGH_REASONING_TOKENS + 2)
        owner.process.send_signal(signal.SIGKILL)
        moved = await reading
        assert await metric(sut.gateway_url, "tokenrelay_gateway_stream_moves_total", outcome="moved") == 1
    assert moved.of("error") == []
    assert moved.terminal.event == "stop", moved.terminal
    assert_offsets_increase(moved)
    assert [kind for kind, _ in typed_content(moved)] == ["reasoning", "tool_call"]
    assert typed_content(moved) == typed_content(uninterrupted)
    assert moved.terminal.json()["finish_reason"] == uninterrupted.terminal.json()["finish_reason"] == "tool_calls"
    assert moved.terminal.json()["tokens"] == uninterrupted.terminal.json()["tokens"]
    assert offsets(moved.events[:-1])[-1] == offsets(uninterrupted.events[:-1])[-1]


@dataclass
class Completion:
    """What an SDK client read from one streamed chat completion."""

    content: str
    finish_reason: str | None
    completion_tokens: int


async def completion(chunks: AsyncIterator[ChatCompletionChunk]) -> Completion:
    """Read a streamed chat completion to its end (``completion_tokens`` -1: no usage chunk came)."""
    content, finish, tokens = "", None, -1
    async for chunk in chunks:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        for choice in chunk.choices:
            content += choice.delta.content or ""
            finish = choice.finish_reason or finish
    return Completion(content, finish, tokens)


async def kill_after(
    chunks: AsyncIterator[ChatCompletionChunk], count: int, owner: Role
) -> AsyncIterator[ChatCompletionChunk]:
    """``chunks`` as they come, the owner SIGKILLed once ``count`` of them have arrived."""
    seen = 0
    async for chunk in chunks:
        seen += 1
        if seen == count:
            owner.process.send_signal(signal.SIGKILL)
        yield chunk


async def test_an_sdk_streaming_a_chat_completion_sees_a_killed_runner_s_stream_continue_whole(
    nats: NatsServer,
) -> None:
    runner = synthetic_args(tokens_per_s=SDK_TOKENS_PER_S, length_tokens=SDK_LENGTH_TOKENS)
    with system(nats.url, runner_args=runner, runners=2, gateway_args=STALE) as sut:
        await every_runner_heard(sut)
        sdk = openai.AsyncOpenAI(base_url=f"{sut.streamer_url}/v1", api_key="not-checked", max_retries=0)

        async def stream() -> openai.AsyncStream[ChatCompletionChunk]:
            return await sdk.chat.completions.create(
                model="synthetic",
                messages=[{"role": "user", "content": "keep going"}],
                max_tokens=SDK_MAX_TOKENS,
                stream=True,
                stream_options={"include_usage": True},
            )

        uninterrupted = await completion(await stream())
        chunks = await stream()
        owner = await generating(sut.runners)
        moved = await completion(kill_after(chunks, CHUNKS_BEFORE_KILL, owner))
        assert await metric(sut.gateway_url, "tokenrelay_gateway_stream_moves_total", outcome="moved") == 1
    assert uninterrupted.content == expected_text("keep going", SDK_MAX_TOKENS, SDK_LENGTH_TOKENS)
    assert moved == uninterrupted
    assert moved.finish_reason == "length"
    assert moved.completion_tokens == SDK_MAX_TOKENS
