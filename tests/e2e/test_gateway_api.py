"""Bad input gets the contract's exact error codes, over HTTP and the control WebSocket."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tokenrelay.runtime.config import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_MESSAGES, DEFAULT_MAX_PROMPT_CHARS
from tokenrelay.testing.http import get_json, post
from tokenrelay.testing.procs import NatsServer, System, system
from tokenrelay.testing.sse import read_stream

UNKNOWN_ID = "0" * 32


@pytest.fixture(scope="module")
def sut(nats: NatsServer) -> Iterator[System]:
    with system(nats.url, runner_args=["--synthetic-tokens-per-s", "0", "--synthetic-ttft-ms", "0"]) as running:
        yield running


def _code(body: Any) -> str:
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["message"]
    return str(body["error"]["code"])


@pytest.mark.parametrize(
    "payload",
    [b"{not json", b"", b"[1, 2]", b'"a string"', b"\xff\xfe"],
    ids=["malformed", "empty", "array", "string", "not-utf8"],
)
async def test_create_rejects_a_body_that_is_not_a_json_object_with_bad_request(sut: System, payload: bytes) -> None:
    status, body = await post(f"{sut.gateway_url}/v1/streams", data=payload)
    assert (status, _code(body)) == (400, "bad_request")


@pytest.mark.parametrize(
    "request_body",
    [
        {},
        {"max_tokens": 5},
        {"messages": []},
        {"messages": "hello"},
        {"messages": [{"role": "user"}]},
        {"messages": [{"role": "robot", "content": "x"}]},
        {"prompt": ""},
        {"prompt": 5},
        {"prompt": "a", "messages": [{"role": "user", "content": "b"}]},
    ],
    ids=["empty", "no-input", "no-messages", "messages-string", "no-content", "bad-role", "empty-prompt",
         "prompt-number", "both"],
)  # fmt: skip
async def test_create_rejects_missing_or_invalid_messages_and_prompt_with_bad_request(
    sut: System, request_body: dict[str, Any]
) -> None:
    status, body = await post(f"{sut.gateway_url}/v1/streams", request_body)
    assert (status, _code(body)) == (400, "bad_request")


@pytest.mark.parametrize("max_tokens", [0, -1, 1.5, "10", True, [], 10**9])
async def test_create_rejects_max_tokens_that_is_not_a_positive_integer_within_the_cap(
    sut: System, max_tokens: Any
) -> None:
    status, body = await post(f"{sut.gateway_url}/v1/streams", {"prompt": "x", "max_tokens": max_tokens})
    assert (status, _code(body)) == (400, "bad_request")


@pytest.mark.parametrize(
    "request_body",
    [
        {"messages": [{"role": "user", "content": "x"}] * (DEFAULT_MAX_MESSAGES + 1)},
        {"prompt": "x" * (DEFAULT_MAX_PROMPT_CHARS + 1)},
    ],
    ids=["too-many-messages", "prompt-too-long"],
)
async def test_create_rejects_too_many_messages_or_too_long_a_prompt_with_bad_request(
    sut: System, request_body: dict[str, Any]
) -> None:
    status, body = await post(f"{sut.gateway_url}/v1/streams", request_body)
    assert (status, _code(body)) == (400, "bad_request")


async def test_create_accepts_messages_and_answers_201_with_urls(sut: System) -> None:
    status, body = await post(
        f"{sut.gateway_url}/v1/streams", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    )
    assert status == 201
    assert set(body) == {"id", "events_url", "control_url", "stop_url"}
    assert body["events_url"] == f"{sut.streamer_url}/v1/streams/{body['id']}/events"
    assert body["stop_url"] == f"{sut.gateway_url}/v1/streams/{body['id']}/stop"
    assert body["control_url"].startswith("ws://") and body["control_url"].endswith("/v1/control")


async def test_create_rejects_an_oversize_body_with_413_payload_too_large(sut: System) -> None:
    huge = orjson.dumps({"prompt": "x" * (DEFAULT_MAX_BODY_BYTES + 1)})
    status, body = await post(f"{sut.gateway_url}/v1/streams", data=huge)
    assert (status, _code(body)) == (413, "payload_too_large")


@pytest.mark.parametrize("stream_id", [UNKNOWN_ID, "nope", "A" * 32, "0" * 31 + "g"])
async def test_status_of_an_unknown_stream_is_404_not_found(sut: System, stream_id: str) -> None:
    status, body = await get_json(f"{sut.gateway_url}/v1/streams/{stream_id}")
    assert (status, _code(body)) == (404, "not_found")


@pytest.mark.parametrize("stream_id", [UNKNOWN_ID, "nope"])
async def test_stop_of_an_unknown_stream_is_404_not_found(sut: System, stream_id: str) -> None:
    status, body = await post(f"{sut.gateway_url}/v1/streams/{stream_id}/stop")
    assert (status, _code(body)) == (404, "not_found")


@pytest.mark.parametrize("stream_id", [UNKNOWN_ID, "nope", "a.b.c"])
async def test_events_of_an_unknown_stream_is_404_not_found(sut: System, stream_id: str) -> None:
    stream = await read_stream(f"{sut.streamer_url}/v1/streams/{stream_id}/events")
    assert (stream.status, _code(orjson.loads(stream.body))) == (404, "not_found")


@pytest.mark.parametrize("cursor", ["garbage", "abc", "zz:1", "ab:-1", "ab:01", "ab:1:2", "x" * 100])
async def test_events_with_a_malformed_cursor_is_400_bad_request(sut: System, cursor: str) -> None:
    _status, created = await post(f"{sut.gateway_url}/v1/streams", {"prompt": "cursor", "max_tokens": 2})
    stream = await read_stream(created["events_url"], headers={"Last-Event-ID": cursor})
    assert (stream.status, _code(orjson.loads(stream.body))) == (400, "bad_request")


async def test_wrong_method_is_405_with_the_error_shape(sut: System) -> None:
    async with aiohttp.ClientSession() as session, session.put(f"{sut.gateway_url}/v1/streams") as response:
        assert (response.status, _code(await response.json())) == (405, "method_not_allowed")


async def test_health_ready_and_metrics_answer_on_gateway_streamer_and_runner(sut: System) -> None:
    for url in (sut.gateway_url, sut.streamer_url, sut.runners[0].url):
        assert (await get_json(f"{url}/healthz"))[0] == 200
        assert (await get_json(f"{url}/readyz"))[0] == 200
        async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
            assert response.status == 200
            assert "# TYPE tokenrelay_" in await response.text()


async def _ask(ws: ClientConnection, message: str | bytes) -> dict[str, Any]:
    await ws.send(message)
    return dict(orjson.loads(await ws.recv()))


async def test_ws_message_that_is_not_json_gets_an_error_and_the_socket_stays_usable(sut: System) -> None:
    async with connect(f"{sut.gateway_url.replace('http', 'ws')}/v1/control") as ws:
        reply = await _ask(ws, "this is not json")
        assert reply["type"] == "error" and reply["code"] == "bad_request" and reply["message"]
        reply = await _ask(ws, b"\x00\x01binary")
        assert reply["type"] == "error" and reply["code"] == "bad_request"
        started = await _ask(ws, orjson.dumps({"type": "start", "prompt": "still works", "max_tokens": 2}).decode())
        assert started["type"] == "started"


async def test_ws_message_with_an_unknown_type_gets_an_error_echoing_ref(sut: System) -> None:
    async with connect(f"{sut.gateway_url.replace('http', 'ws')}/v1/control") as ws:
        reply = await _ask(ws, orjson.dumps({"type": "explode", "ref": "r-9"}).decode())
        assert reply == {"type": "error", "code": "bad_request", "message": reply["message"], "ref": "r-9"}
        reply = await _ask(ws, orjson.dumps({"ref": 3}).decode())
        assert (reply["code"], reply["ref"]) == ("bad_request", 3)


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ({"type": "start", "max_tokens": 0, "prompt": "x"}, "bad_request"),
        ({"type": "start"}, "bad_request"),
        ({"type": "stop"}, "bad_request"),
        ({"type": "stop", "stream_id": UNKNOWN_ID}, "not_found"),
        ({"type": "stop", "stream_id": "../etc"}, "not_found"),
        ({"type": "feedback", "stream_id": UNKNOWN_ID, "rating": "up"}, "not_found"),
        ({"type": "feedback", "stream_id": UNKNOWN_ID, "rating": "meh"}, "bad_request"),
        ({"type": "feedback", "stream_id": UNKNOWN_ID, "rating": "up", "comment": "x" * 5000}, "bad_request"),
    ],
    ids=["bad-max-tokens", "start-empty", "stop-no-id", "stop-unknown", "stop-garbage-id", "feedback-unknown",
         "feedback-bad-rating", "feedback-oversize-comment"],
)  # fmt: skip
async def test_ws_invalid_commands_get_their_exact_error_code(sut: System, message: dict[str, Any], code: str) -> None:
    async with connect(f"{sut.gateway_url.replace('http', 'ws')}/v1/control") as ws:
        reply = await _ask(ws, orjson.dumps({**message, "ref": 1}).decode())
        assert (reply["type"], reply["code"], reply["ref"]) == ("error", code, 1)


async def test_ws_feedback_for_a_real_stream_is_acknowledged(sut: System) -> None:
    async with connect(f"{sut.gateway_url.replace('http', 'ws')}/v1/control") as ws:
        started = await _ask(ws, orjson.dumps({"type": "start", "prompt": "rate me", "max_tokens": 2}).decode())
        ack = await _ask(
            ws,
            orjson.dumps(
                {
                    "type": "feedback",
                    "stream_id": started["stream_id"],
                    "rating": "up",
                    "comment": "good",
                    "ref": 2,
                }
            ).decode(),
        )
        assert ack == {"type": "ack", "stream_id": started["stream_id"], "ref": 2}
