"""The ``openai`` engine against a real (small) OpenAI-compatible server started by the test."""

from __future__ import annotations

import time
from collections.abc import Iterator

import orjson
import pytest
from websockets.asyncio.client import connect

from tests.helpers import eventually_true
from tokenrelay.runner.engines import GenerationRequest
from tokenrelay.runner.engines.openai import OpenAIEngine
from tokenrelay.testing.fake_openai import FakeUpstream, served_in_thread
from tokenrelay.testing.http import create_stream, post, wait_finished
from tokenrelay.testing.procs import NatsServer, System, nats_server, system
from tokenrelay.testing.sse import read_stream
from tokenrelay.wire.content import ChatMessage

WORDS = ["Hé", "llo", " 日本", "語", " 🚀", " ok", *[f" w{i}" for i in range(400)]]


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    """The fake upstream runs on its own event loop in a thread, for the whole module."""
    with served_in_thread(FakeUpstream(WORDS)) as fake:
        yield fake


@pytest.fixture(scope="module")
def sut(nats: NatsServer, upstream: FakeUpstream) -> Iterator[System]:
    args = ["--engine", "openai", "--upstream-url", upstream.url, "--upstream-model", "fake-model"]
    with system(nats.url, runner_args=args) as running:
        yield running


@pytest.fixture(autouse=True)
def reset(upstream: FakeUpstream) -> None:
    upstream.status, upstream.words, upstream.stall_after, upstream.usage_prompt_tokens = 200, WORDS, None, None
    upstream.reasoning, upstream.reasoning_field, upstream.tool_fragments = [], "reasoning_content", []
    upstream.finish_reason, upstream.end_after_done_s = None, 0.0


TOOL_FRAGMENTS = [
    {"index": 0, "id": "call_up", "type": "function", "function": {"name": "get_weather", "arguments": ""}},
    {"index": 0, "function": {"arguments": '{"city":'}},
    {"index": 0, "function": {"arguments": ' "Paris"}'}},
]


async def test_streams_the_upstream_text_with_multibyte_characters_intact(sut: System, upstream: FakeUpstream) -> None:
    upstream.words = WORDS[:6]
    created = await create_stream(sut.gateway_url, "hello upstream", max_tokens=100)
    stream = await read_stream(created["events_url"])
    assert stream.text == "Héllo 日本語 🚀 ok"
    assert stream.terminal.json()["finish_reason"] == "stop"
    assert "prompt_tokens" not in stream.terminal.json()  # the upstream sent no usage: no count to give
    call = upstream.calls[-1]
    assert call.body["model"] == "fake-model" and call.body["stream"] is True
    assert call.body["messages"] == [{"role": "user", "content": "hello upstream"}]
    assert call.body["stream_options"] == {"include_usage": True}  # --upstream-include-usage is on by default


async def test_every_request_parameter_reaches_the_upstream_as_sent(sut: System, upstream: FakeUpstream) -> None:
    upstream.words = WORDS[:2]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    params = {
        "temperature": 0.2, "top_p": 0.9, "stop": ["\n\n"], "seed": 7, "tools": tools, "tool_choice": "auto",
        "reasoning_effort": "low", "top_k": 20, "chat_template_kwargs": {"enable_thinking": True},
    }  # fmt: skip
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]  # fmt: skip
    status, created = await post(f"{sut.gateway_url}/v1/streams", {"messages": messages, "max_tokens": 50, **params})
    assert status == 201, created
    await read_stream(created["events_url"])
    body = upstream.calls[-1].body
    assert {name: body[name] for name in params} == params
    assert body["messages"] == messages
    assert body["max_tokens"] == 50


async def test_upstream_reasoning_and_tool_calls_reach_a_native_reader_as_typed_events(
    sut: System, upstream: FakeUpstream
) -> None:
    upstream.reasoning, upstream.reasoning_field = ["Let", " me", " see"], "reasoning"
    upstream.words, upstream.tool_fragments, upstream.finish_reason = ["Checking."], TOOL_FRAGMENTS, "tool_calls"
    upstream.usage_prompt_tokens = 9
    created = await create_stream(sut.gateway_url, "weather in Paris?", max_tokens=100)
    stream = await read_stream(created["events_url"])
    assert "".join(e.json()["text"] for e in stream.of("reasoning")) == "Let me see"
    assert stream.text == "Checking."
    calls = stream.of("tool_call")
    assert calls[0].json()["id"] == "call_up" and calls[0].json()["name"] == "get_weather"
    assert all(e.json()["call"] == 0 for e in calls)
    assert "".join(e.json()["arguments"] for e in calls) == '{"city": "Paris"}'
    assert calls[-1].id is not None and calls[-1].id.endswith(":7")  # every upstream chunk of content is a token
    end = stream.terminal.json()
    assert (end["finish_reason"], end["tokens"], end["prompt_tokens"], end["completion_tokens"]) == (
        "tool_calls", 7, 9, 7,
    )  # fmt: skip


@pytest.mark.parametrize("finish", ["content_filter", "length"])
async def test_the_upstreams_finish_reason_ends_the_stream(sut: System, upstream: FakeUpstream, finish: str) -> None:
    upstream.words, upstream.finish_reason = WORDS[:3], finish
    created = await create_stream(sut.gateway_url, "filtered", max_tokens=100)
    stream = await read_stream(created["events_url"])
    assert stream.terminal.json()["finish_reason"] == finish


async def test_without_include_usage_no_stream_options_go_upstream(upstream: FakeUpstream) -> None:
    upstream.words = WORDS[:2]
    args = ["--engine", "openai", "--upstream-url", upstream.url, "--upstream-model", "m"]
    with nats_server() as own, system(own.url, runner_args=[*args, "--upstream-include-usage", "off"]) as other:
        created = await create_stream(other.gateway_url, "no usage please", max_tokens=10)
        await read_stream(created["events_url"])
    assert "stream_options" not in upstream.calls[-1].body


async def test_the_prompt_count_of_an_upstream_usage_chunk_ends_the_stream(sut: System, upstream: FakeUpstream) -> None:
    upstream.words, upstream.usage_prompt_tokens = WORDS[:6], 17
    created = await create_stream(sut.gateway_url, "count my prompt", max_tokens=100)
    stream = await read_stream(created["events_url"])
    assert stream.text == "Héllo 日本語 🚀 ok"
    assert stream.terminal.json()["prompt_tokens"] == 17


async def test_a_stream_read_to_its_end_leaves_its_upstream_connection_to_the_next(upstream: FakeUpstream) -> None:
    upstream.words, upstream.end_after_done_s = WORDS[:3], 0.05  # the body's end comes after the stream's end
    engine = OpenAIEngine(base_url=upstream.url, model="fake-model")
    request = GenerationRequest(
        stream_id="s", model="m", messages=(ChatMessage(role="user", content="hi"),), max_tokens=50
    )
    try:
        for _ in range(2):
            assert "".join([str(piece) async for piece in engine.stream(request)]) == "".join(WORDS[:3])
            await eventually_true(lambda: engine.connections_settling == 0, what="the body's end, its connection kept")
    finally:
        await engine.aclose()
    first, second = upstream.calls[-2:]
    assert first.peer == second.peer != ""  # one TCP connection: the second stream opened none


async def test_stop_closes_the_upstream_request_mid_answer(sut: System, upstream: FakeUpstream) -> None:
    calls_before = len(upstream.calls)
    async with connect(f"{sut.gateway_url.replace('http', 'ws')}/v1/control") as ws:
        await ws.send(orjson.dumps({"type": "start", "prompt": "long", "max_tokens": 1000}).decode())
        started = orjson.loads(await ws.recv())
        await eventually_true(
            lambda: len(upstream.calls) > calls_before and upstream.calls[-1].sent >= 5,
            what="the upstream to send 5 words of the new request",
        )
        call = upstream.calls[-1]
        stop_sent = time.monotonic()
        await ws.send(orjson.dumps({"type": "stop", "stream_id": started["stream_id"]}).decode())
        stopped = orjson.loads(await ws.recv())
    assert stopped["type"] == "stopped" and stopped["finish_reason"] == "cancelled"
    # The runner closes the request as it halts the engine; the upstream (on its own loop) notices when it next
    # writes. How soon is bench.cancel's to measure, not a test's.
    await eventually_true(lambda: call.disconnected_at is not None, what="the upstream to see its client go away")
    assert call.disconnected_at is not None and call.disconnected_at >= stop_sent
    print(f"stop sent -> upstream saw disconnect: {(call.disconnected_at - stop_sent) * 1000:.1f} ms")
    assert not call.finished


async def test_max_tokens_closes_the_upstream_request(sut: System, upstream: FakeUpstream) -> None:
    calls_before = len(upstream.calls)
    created = await create_stream(sut.gateway_url, "short", max_tokens=3)
    stream = await read_stream(created["events_url"])
    assert stream.text == "".join(WORDS[:3])
    assert stream.terminal.json()["finish_reason"] == "length"
    assert len(upstream.calls) == calls_before + 1
    await eventually_true(
        lambda: upstream.calls[-1].disconnected_at is not None, what="the upstream to see its request closed"
    )
    assert not upstream.calls[-1].finished


@pytest.mark.parametrize("status", [400, 500, 503])
async def test_an_upstream_error_status_becomes_an_upstream_error_event(
    sut: System, upstream: FakeUpstream, status: int
) -> None:
    upstream.status = status
    created = await create_stream(sut.gateway_url, "fail", max_tokens=10)
    stream = await read_stream(created["events_url"])
    assert stream.terminal.event == "error"
    assert stream.terminal.json()["code"] == "upstream_error"
    assert str(status) in stream.terminal.json()["message"]
    final = await wait_finished(sut.gateway_url, created["id"])
    assert (final["finish_reason"], final["error_code"]) == ("error", "upstream_error")


async def test_an_unreachable_upstream_becomes_an_upstream_unavailable_event() -> None:
    dead = "http://127.0.0.1:9/v1"  # discard port: nothing listens
    args = ["--engine", "openai", "--upstream-url", dead, "--upstream-model", "m"]
    # A broker of its own: the module's runners would otherwise take the job from the shared queue group.
    with nats_server() as own, system(own.url, runner_args=args) as other:
        created = await create_stream(other.gateway_url, "anyone?", max_tokens=10)
        stream = await read_stream(created["events_url"])
    assert stream.terminal.json()["code"] == "upstream_unavailable"


async def test_a_silent_upstream_becomes_an_upstream_timeout_event(upstream: FakeUpstream) -> None:
    upstream.stall_after = 2
    args = [
        "--engine",
        "openai",
        "--upstream-url",
        upstream.url,
        "--upstream-model",
        "m",
        "--upstream-timeout-s",
        "0.5",
    ]
    with nats_server() as own, system(own.url, runner_args=args) as other:
        created = await create_stream(other.gateway_url, "then silence", max_tokens=10)
        stream = await read_stream(created["events_url"])
    assert stream.text == "".join(WORDS[:2])
    assert stream.terminal.json()["code"] == "upstream_timeout"
