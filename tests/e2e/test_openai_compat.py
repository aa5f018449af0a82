"""The unmodified ``openai`` SDK pointed at a streamer: streaming, non-streaming, usage, errors, stop."""

from __future__ import annotations

from collections.abc import Iterator

import aiohttp
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageParam
from websockets.asyncio.client import connect

from tests.compat_systems import LENGTH_TOKENS, MAX_TOKENS_LIMIT, NATURAL_TOKENS, long_texts, natural_texts
from tests.helpers import STOPPED_TOKENS
from tokenrelay.runtime.config import DEFAULT_MAX_BODY_BYTES
from tokenrelay.testing.http import wait_finished
from tokenrelay.testing.procs import NatsServer, System
from tokenrelay.testing.synthetic import expected_text


@pytest.fixture(scope="module")
def sut(nats: NatsServer) -> Iterator[System]:
    with long_texts(nats.url) as running:
        yield running


@pytest.fixture(scope="module")
def natural() -> Iterator[System]:
    with natural_texts() as running:
        yield running


def sdk(sut: System) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{sut.streamer_url}/v1", api_key="not-checked", max_retries=0)


def ask(prompt: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": prompt}]


async def test_a_streamed_completion_sends_the_role_first_then_the_text_then_the_finish_reason(sut: System) -> None:
    stream = await sdk(sut).chat.completions.create(
        model="synthetic", messages=ask("hello sdk"), max_tokens=20, stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {chunk.id for chunk in chunks} == {chunks[0].id}
    assert {chunk.object for chunk in chunks} == {"chat.completion.chunk"}
    assert chunks[0].model == "synthetic"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected_text("hello sdk", 20, LENGTH_TOKENS)
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].choices[0].finish_reason == "length"


async def test_a_completion_that_ends_naturally_finishes_with_stop(natural: System) -> None:
    stream = await sdk(natural).chat.completions.create(
        model="synthetic", messages=ask("short"), max_tokens=100, stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected_text("short", 100, NATURAL_TOKENS)


async def test_include_usage_adds_a_final_chunk_with_usage_and_no_choices(sut: System) -> None:
    stream = await sdk(sut).chat.completions.create(
        model="synthetic",
        messages=ask("count me"),
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 12
    assert chunks[-1].usage.prompt_tokens == 3  # the synthetic engine's count: the words of "user: count me"
    assert chunks[-1].usage.total_tokens == 15
    assert chunks[-2].choices[0].finish_reason == "length"
    assert all(chunk.usage is None for chunk in chunks[:-1])


async def test_a_non_streamed_completion_returns_one_chat_completion(sut: System) -> None:
    completion = await sdk(sut).chat.completions.create(model="synthetic", messages=ask("whole"), max_tokens=15)
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == expected_text("whole", 15, LENGTH_TOKENS)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 15
    assert (completion.usage.prompt_tokens, completion.usage.total_tokens) == (2, 17)  # "user: whole"
    status = await _status(sut, completion.id)
    assert status["state"] == "finished" and status["tokens"] == 15
    assert status["prompt_tokens"] == 2


async def test_content_given_as_text_parts_is_the_same_prompt(sut: System) -> None:
    parts: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "parts"}]}
    ]
    completion = await sdk(sut).chat.completions.create(model="synthetic", messages=parts, max_tokens=8)
    assert completion.choices[0].message.content == expected_text("hello parts", 8, LENGTH_TOKENS)


async def test_an_invalid_request_raises_the_sdks_bad_request_error_with_our_code(sut: System) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        await sdk(sut).chat.completions.create(model="synthetic", messages=[], max_tokens=5)
    assert raised.value.status_code == 400
    assert raised.value.code == "bad_request"
    assert "messages" in raised.value.message


async def test_max_tokens_over_the_gateways_limit_is_refused_as_a_bad_request(sut: System) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        await sdk(sut).chat.completions.create(model="synthetic", messages=ask("x"), max_tokens=MAX_TOKENS_LIMIT + 1)
    assert raised.value.code == "bad_request"
    assert str(MAX_TOKENS_LIMIT) in raised.value.message


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "bad_request"),
        (b"[1, 2]", 400, "bad_request"),
        (b'{"messages": [{"role": "robot", "content": "x"}]}', 400, "bad_request"),
        (b'{"messages": [{"role": "user", "content": 5}]}', 400, "bad_request"),
        (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": "9"}', 400, "bad_request"),
        (b'{"messages": [{"role": "user", "content": "x"}], "n": 2}', 400, "bad_request"),
        (b'{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}', 400, "bad_request"),
        (b"{" + b'"pad": "' + b"x" * DEFAULT_MAX_BODY_BYTES + b'"}', 413, "payload_too_large"),
    ],
)
async def test_bad_bodies_get_openai_shaped_errors_with_exact_codes(
    sut: System, body: bytes, status: int, code: str
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{sut.streamer_url}/v1/chat/completions", data=body) as response,
    ):
        assert response.status == status
        error = orjson.loads(await response.read())["error"]
    assert error["code"] == code
    assert error["type"] == "invalid_request_error"
    assert error["message"]


async def test_models_lists_the_live_runners_model(sut: System) -> None:
    listed = await sdk(sut).models.list()
    assert [model.id for model in listed.data] == ["synthetic"]


async def test_a_stream_started_by_the_sdk_stops_over_the_control_socket_with_finish_reason_cancelled(
    sut: System,
) -> None:
    stream = await sdk(sut).chat.completions.create(
        model="synthetic", messages=ask("stop me"), max_tokens=STOPPED_TOKENS, stream=True
    )
    control_url = "ws" + sut.gateway_url.removeprefix("http") + "/v1/control"
    chunks = []
    async with connect(control_url) as ws:
        async for chunk in stream:
            chunks.append(chunk)
            if len(chunks) == 3:
                await ws.send(orjson.dumps({"type": "stop", "stream_id": chunk.id}).decode())
        stopped = orjson.loads(await ws.recv())
    assert stopped["type"] == "stopped" and stopped["finish_reason"] == "cancelled"
    # The SDK's type lists OpenAI's own reasons; it passes tokenrelay's "cancelled" through as sent.
    assert str(chunks[-1].choices[0].finish_reason) == "cancelled"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == expected_text("stop me", stopped["tokens"], LENGTH_TOKENS)
    assert 0 < stopped["tokens"] < STOPPED_TOKENS


async def test_closing_the_sdk_stream_cancels_the_generation(sut: System) -> None:
    stream = await sdk(sut).chat.completions.create(
        model="synthetic", messages=ask("walk away"), max_tokens=STOPPED_TOKENS, stream=True
    )
    first = await stream.__anext__()
    await stream.close()
    final = await wait_finished(sut.gateway_url, first.id)
    assert final["finish_reason"] == "cancelled"
    assert final["cancel_reason"] == "disconnect"
    assert final["tokens"] < STOPPED_TOKENS


async def _status(sut: System, stream_id: str) -> dict[str, object]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{sut.gateway_url}/v1/streams/{stream_id}") as response,
    ):
        body = orjson.loads(await response.read())
    assert isinstance(body, dict)
    return body
