"""The unmodified ``anthropic`` SDK pointed at a streamer: streaming events, non-streaming, errors, stop."""

from __future__ import annotations

from collections.abc import Iterator

import aiohttp
import anthropic
import orjson
import pytest
from websockets.asyncio.client import connect

from tests.compat_systems import LENGTH_TOKENS, MAX_TOKENS_LIMIT, NATURAL_TOKENS, long_texts, natural_texts
from tests.helpers import STOPPED_TOKENS
from tokenrelay.runtime.config import DEFAULT_MAX_BODY_BYTES
from tokenrelay.testing.http import wait_finished
from tokenrelay.testing.procs import NatsServer, System
from tokenrelay.testing.synthetic import expected_text
from tokenrelay.wire.content import ChatMessage


@pytest.fixture(scope="module")
def sut(nats: NatsServer) -> Iterator[System]:
    with long_texts(nats.url) as running:
        yield running


@pytest.fixture(scope="module")
def natural() -> Iterator[System]:
    with natural_texts() as running:
        yield running


def sdk(sut: System) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=sut.streamer_url, api_key="not-checked", max_retries=0)


def ask(prompt: str) -> list[anthropic.types.MessageParam]:
    return [{"role": "user", "content": prompt}]


def expected(messages: tuple[ChatMessage, ...], max_tokens: int) -> str:
    from tokenrelay.runner.engines.synthetic import prompt_text, synthetic_tokens

    return "".join(synthetic_tokens(prompt_text(messages), max_tokens=max_tokens, length_tokens=LENGTH_TOKENS))


async def test_a_streamed_message_sends_anthropics_events_in_order(sut: System) -> None:
    stream = await sdk(sut).messages.create(model="synthetic", max_tokens=20, messages=ask("hello claude"), stream=True)
    events = [event async for event in stream]
    kinds = [event.type for event in events]
    assert kinds[:2] == ["message_start", "content_block_start"]  # the SDK does not yield pings
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta")
    assert text == expected_text("hello claude", 20, LENGTH_TOKENS)
    delta = next(e for e in events if e.type == "message_delta")
    assert delta.delta.stop_reason == "max_tokens"
    assert delta.usage.output_tokens == 20
    assert delta.usage.input_tokens == 3  # the synthetic engine's count: the words of "user: hello claude"


async def test_the_wire_carries_a_ping_after_the_content_block_start(sut: System) -> None:
    body = {"model": "synthetic", "max_tokens": 3, "stream": True, "messages": ask("raw")}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{sut.streamer_url}/v1/messages", json=body) as response,
    ):
        assert response.headers["Content-Type"].startswith("text/event-stream")
        raw = (await response.read()).decode()
    names = [line.removeprefix("event: ") for line in raw.splitlines() if line.startswith("event: ")]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-1] == "message_stop"


async def test_the_sdks_stream_helper_assembles_the_final_message(natural: System) -> None:
    async with sdk(natural).messages.stream(model="synthetic", max_tokens=100, messages=ask("natural end")) as stream:
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert "".join(pieces) == expected_text("natural end", 100, NATURAL_TOKENS)
    assert final.content[0].type == "text"
    assert final.content[0].text == "".join(pieces)
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens == 3  # from the message_delta: "user: natural end"


async def test_a_system_prompt_comes_first(sut: System) -> None:
    message = await sdk(sut).messages.create(
        model="synthetic", max_tokens=10, system="be brief", messages=ask("with system")
    )
    messages = (ChatMessage(role="system", content="be brief"), ChatMessage(role="user", content="with system"))
    assert message.content[0].type == "text"
    assert message.content[0].text == expected(messages, 10)
    assert message.usage.input_tokens == 6  # "system: be brief\nuser: with system"


async def test_a_non_streamed_message_returns_one_message(sut: System) -> None:
    message = await sdk(sut).messages.create(model="synthetic", max_tokens=15, messages=ask("whole"))
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text"
    assert message.content[0].text == expected_text("whole", 15, LENGTH_TOKENS)
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 15
    assert message.usage.input_tokens == 2  # "user: whole"


async def test_an_invalid_request_raises_the_sdks_bad_request_error(sut: System) -> None:
    with pytest.raises(anthropic.BadRequestError) as raised:
        await sdk(sut).messages.create(model="synthetic", max_tokens=5, messages=[])
    assert raised.value.status_code == 400
    body = raised.value.body
    assert isinstance(body, dict)
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith("bad_request: ")


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        (b"{not json", 400, "invalid_request_error"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}]}', 400, "invalid_request_error"),
        (
            b'{"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}',
            400,
            "invalid_request_error",
        ),
        (
            b'{"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image"}]}]}',
            400,
            "invalid_request_error",
        ),
        (
            orjson.dumps(
                {"model": "m", "max_tokens": MAX_TOKENS_LIMIT + 1, "messages": [{"role": "user", "content": "x"}]}
            ),
            400,
            "invalid_request_error",
        ),
        (b"{" + b'"pad": "' + b"x" * DEFAULT_MAX_BODY_BYTES + b'"}', 413, "request_too_large"),
    ],
)
async def test_bad_bodies_get_anthropic_shaped_errors(sut: System, body: bytes, status: int, kind: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{sut.streamer_url}/v1/messages", data=body) as response,
    ):
        assert response.status == status
        payload = orjson.loads(await response.read())
    assert payload["type"] == "error"
    assert payload["error"]["type"] == kind


async def test_a_stream_started_by_the_sdk_stops_over_the_control_socket(sut: System) -> None:
    stream = await sdk(sut).messages.create(
        model="synthetic", max_tokens=STOPPED_TOKENS, messages=ask("stop me"), stream=True
    )
    control_url = "ws" + sut.gateway_url.removeprefix("http") + "/v1/control"
    events = []
    async with connect(control_url) as ws:
        async for event in stream:
            events.append(event)
            if event.type == "message_start":
                await ws.send(orjson.dumps({"type": "stop", "stream_id": event.message.id}).decode())
        stopped = orjson.loads(await ws.recv())
    assert stopped["type"] == "stopped" and stopped["finish_reason"] == "cancelled"
    delta = next(e for e in events if e.type == "message_delta")
    assert delta.delta.stop_reason == "cancelled"  # type: ignore[comparison-overlap]
    assert events[-1].type == "message_stop"
    assert 0 <= stopped["tokens"] < STOPPED_TOKENS


async def test_closing_the_sdk_stream_cancels_the_generation(sut: System) -> None:
    stream = await sdk(sut).messages.create(
        model="synthetic", max_tokens=STOPPED_TOKENS, messages=ask("walk away"), stream=True
    )
    first = await stream.__anext__()
    assert first.type == "message_start"
    await stream.close()
    final = await wait_finished(sut.gateway_url, first.message.id)
    assert final["finish_reason"] == "cancelled"
    assert final["cancel_reason"] == "disconnect"
