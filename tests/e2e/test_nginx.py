"""deploy/nginx.conf in a real nginx, in front of a real system: streams pass through unbuffered.

The test runs the deploy file itself, included in a tiny main config, with only its two upstream ``server``
addresses and its ``listen`` port rewritten to 127.0.0.1 ports. The gateway hands out URLs through the proxy
(``--streamer-url`` and ``--public-url`` are the proxy's), as compose.yaml sets it up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import anthropic
import openai
import orjson
import pytest
from aiohttp import web
from websockets.asyncio.client import connect

from tests.helpers import STOPPED_TOKENS
from tokenrelay.cli.supervisor import free_port
from tokenrelay.gateway.app import WS_HEARTBEAT_S
from tokenrelay.runtime.config import DEFAULT_HEARTBEAT_S, DEFAULT_MAX_BODY_BYTES
from tokenrelay.testing.http import create_stream, get_json, post, wait_finished
from tokenrelay.testing.nginx import nginx_proxy
from tokenrelay.testing.procs import NatsServer, System, system
from tokenrelay.testing.sse import Event, Stream, read_stream
from tokenrelay.testing.synthetic import expected_text

ROOT = Path(__file__).resolve().parents[2]
DEPLOY_CONF = ROOT / "deploy" / "nginx.conf"
NGINX_CANDIDATES = ("nginx", "/usr/sbin/nginx")
TOKENS_PER_S = 20
TEXT_TOKENS = 40  # a stream read to its end: about 2 s at 20 tokens/s
LENGTH_TOKENS = 100_000  # the synthetic text's natural length: no text ends before its max_tokens
TTFT_MS = 600  # readers connect, and the proxy's reader sees pings, before the first token
HEARTBEAT_S = 0.1
RUNNER_ARGS = [
    *("--synthetic-tokens-per-s", str(TOKENS_PER_S), "--synthetic-ttft-ms", str(TTFT_MS)),
    *("--synthetic-length-tokens", str(LENGTH_TOKENS)),
]


def in_ci() -> bool:
    """Whether the CI environment variable is set (then a missing tool is a failure, not a skip)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def nginx_binary() -> str:
    """The nginx binary; skip without it, except under CI (``.ci/run`` installs nginx-light)."""
    for candidate in NGINX_CANDIDATES:
        path = shutil.which(candidate)
        if path:
            return path
    if in_ci():
        pytest.fail("nginx is not installed, but CI is set: .ci/run installs the nginx-light package")
    pytest.skip("nginx is not installed (apt-get install nginx-light; CI installs it)")


# Running deploy/nginx.conf


def netloc(url: str) -> str:
    return urlsplit(url).netloc


@dataclass
class Edge:
    """A system and the nginx in front of it."""

    sut: System
    url: str

    def direct(self, events_url: str) -> str:
        """The same events URL, straight to the streamer."""
        assert events_url.startswith(self.url), f"events_url does not go through nginx: {events_url}"
        return self.sut.streamer_url + urlsplit(events_url).path


@pytest.fixture(scope="module")
def edge(nats: NatsServer) -> Iterator[Edge]:
    binary = nginx_binary()
    port = free_port()  # first, so the gateway can hand out URLs through the proxy
    url = f"http://127.0.0.1:{port}"
    with (
        system(
            nats.url,
            runner_args=RUNNER_ARGS,
            streamer_args=["--heartbeat-s", str(HEARTBEAT_S)],
            gateway_args=["--streamer-url", url, "--public-url", url],
        ) as sut,
        nginx_proxy(binary, DEPLOY_CONF, gateway=netloc(sut.gateway_url), streamer=netloc(sut.streamer_url), port=port),
    ):
        yield Edge(sut, url)


def deltas(stream: Stream) -> list[Event]:
    found = stream.of("delta")
    assert found, f"no delta in {stream.events}"
    return found


# Streams through the proxy


async def test_tokens_arrive_through_nginx_as_they_are_generated_like_they_do_directly(edge: Edge) -> None:
    created = await create_stream(edge.url, "through the proxy", max_tokens=TEXT_TOKENS)
    proxied, direct = await asyncio.gather(
        read_stream(created["events_url"]), read_stream(edge.direct(created["events_url"]))
    )
    expected = expected_text("through the proxy", TEXT_TOKENS, LENGTH_TOKENS)
    assert proxied.text == direct.text == expected
    assert proxied.terminal.json()["finish_reason"] == "length"

    first = deltas(proxied)[0]
    print(f"\nfirst delta through nginx vs direct: {(first.at - deltas(direct)[0].at) * 1000:+.2f} ms")
    # Unbuffered, told by order and count rather than by a time bound (a loaded CI machine stretches every time):
    # the proxied reader has its first delta before the direct reader has the end (about 2 s of tokens later),
    # and the bytes came in many pieces, as the streamer wrote them, not in one buffer's worth.
    assert first.at < direct.terminal.at
    assert len(deltas(proxied)) >= TEXT_TOKENS // 4
    assert proxied.chunks >= TEXT_TOKENS // 4


async def test_an_event_stream_through_nginx_keeps_its_content_type_and_gets_no_length(edge: Edge) -> None:
    created = await create_stream(edge.url, "headers", max_tokens=5)
    stream = await read_stream(created["events_url"])
    headers = {name.lower(): value for name, value in stream.headers.items()}
    assert stream.status == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-cache"
    assert "content-length" not in headers
    assert headers.get("content-encoding") is None
    assert headers["transfer-encoding"] == "chunked"


async def test_heartbeats_reach_a_reader_through_nginx_while_the_stream_is_idle(edge: Edge) -> None:
    created = await create_stream(edge.url, "quiet start", max_tokens=3)
    stream = await read_stream(created["events_url"])
    assert "ping" in stream.comments  # sent during the time to first token
    assert stream.text == expected_text("quiet start", 3, LENGTH_TOKENS)


@pytest.mark.parametrize("how", ["header", "query"])
async def test_a_reader_resumes_through_nginx_from_its_last_event_id(edge: Edge, how: str) -> None:
    created = await create_stream(edge.url, f"resume by {how}", max_tokens=TEXT_TOKENS)
    first = await read_stream(created["events_url"], stop_after=6)
    cursor = first.events[-1].id
    assert cursor is not None
    if how == "header":
        rest = await read_stream(created["events_url"], headers={"Last-Event-ID": cursor})
    else:
        rest = await read_stream(f"{created['events_url']}?last_event_id={quote(cursor)}")
    assert rest.events[0].event == "delta", "a resumed stream does not repeat start"
    assert first.text + rest.text == expected_text(f"resume by {how}", TEXT_TOKENS, LENGTH_TOKENS)


async def test_the_control_websocket_starts_and_stops_a_stream_through_nginx(edge: Edge) -> None:
    created = await create_stream(edge.url, "url check", max_tokens=1)
    assert created["control_url"] == f"ws://{netloc(edge.url)}/v1/control"
    async with connect(created["control_url"]) as ws:
        start = {"type": "start", "prompt": "stop me", "max_tokens": STOPPED_TOKENS, "ref": 1}
        await ws.send(orjson.dumps(start).decode())
        started = orjson.loads(await ws.recv())
        assert started["type"] == "started", started
        assert started["events_url"].startswith(edge.url)
        begun = await read_stream(started["events_url"], stop_after=3)  # start and two deltas
        assert len(begun.of("delta")) == 2
        await ws.send(orjson.dumps({"type": "stop", "stream_id": started["stream_id"], "ref": 2}).decode())
        stopped = orjson.loads(await ws.recv())
    assert stopped["type"] == "stopped", stopped
    assert stopped["ref"] == 2
    assert stopped["finish_reason"] == "cancelled"
    assert 2 <= stopped["tokens"] < STOPPED_TOKENS


async def test_stop_url_and_status_answer_through_nginx(edge: Edge) -> None:
    created = await create_stream(edge.url, "stop by url", max_tokens=STOPPED_TOKENS)
    assert created["stop_url"].startswith(edge.url)
    await read_stream(created["events_url"], stop_after=2)  # running
    status, body = await post(created["stop_url"])
    assert status == 200, body
    assert body["finish_reason"] == "cancelled"
    status, record = await get_json(f"{edge.url}/v1/streams/{created['id']}")
    assert status == 200, record
    assert (record["state"], record["finish_reason"], record["cancel_reason"]) == ("finished", "cancelled", "client")


async def test_the_openai_sdk_streams_through_nginx(edge: Edge) -> None:
    client = openai.AsyncOpenAI(base_url=f"{edge.url}/v1", api_key="x", max_retries=0)
    stream = await client.chat.completions.create(
        model="synthetic",
        messages=[{"role": "user", "content": "sdk via proxy"}],
        max_tokens=TEXT_TOKENS,
        stream=True,
    )
    state_at_first_text: str | None = None
    text = ""
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if state_at_first_text is None:
                # The chunk's id is the stream's id. A proxy that buffered the response would hand over the first
                # text only after the generation (about 2 s of it) had finished: an order, not a timing bound.
                status, record = await get_json(f"{edge.url}/v1/streams/{chunk.id}")
                assert status == 200, record
                state_at_first_text = record["state"]
            text += chunk.choices[0].delta.content
    assert text == expected_text("sdk via proxy", TEXT_TOKENS, LENGTH_TOKENS)
    assert state_at_first_text == "running"  # chunk by chunk, not all at the end
    models = await client.models.list()
    assert [m.id for m in models.data] == ["synthetic"]


async def test_the_anthropic_sdk_streams_through_nginx(edge: Edge) -> None:
    client = anthropic.AsyncAnthropic(base_url=edge.url, api_key="x", max_retries=0)
    stream = await client.messages.create(
        model="synthetic", max_tokens=10, messages=[{"role": "user", "content": "claude via proxy"}], stream=True
    )
    text = "".join(
        [e.delta.text async for e in stream if e.type == "content_block_delta" and e.delta.type == "text_delta"]
    )
    assert text == expected_text("claude via proxy", 10, LENGTH_TOKENS)


async def test_a_background_response_is_created_and_streamed_back_through_nginx(edge: Edge) -> None:
    client = openai.AsyncOpenAI(base_url=f"{edge.url}/v1", api_key="x", max_retries=0)
    created = await client.responses.create(
        model="synthetic", input="responses via proxy", background=True, max_output_tokens=10
    )
    events = [event async for event in await client.responses.retrieve(created.id, stream=True)]
    final = events[-1]
    assert final.type == "response.incomplete"
    assert final.response.output_text == expected_text("responses via proxy", 10, LENGTH_TOKENS)
    assert (await client.responses.retrieve(created.id)).output_text == final.response.output_text


async def test_closing_an_sdk_stream_through_nginx_cancels_the_generation(edge: Edge) -> None:
    # nginx must pass the client's disconnect on to the streamer (it closes the upstream connection).
    client = openai.AsyncOpenAI(base_url=f"{edge.url}/v1", api_key="x", max_retries=0)
    stream = await client.chat.completions.create(
        model="synthetic", messages=[{"role": "user", "content": "walk away"}], max_tokens=STOPPED_TOKENS, stream=True
    )
    stream_id = ""
    async for chunk in stream:
        stream_id = chunk.id
        if chunk.choices and chunk.choices[0].delta.content:
            break
    await stream.close()
    record = await wait_finished(edge.url, stream_id, timeout_s=10)
    assert (record["finish_reason"], record["cancel_reason"]) == ("cancelled", "disconnect")
    assert record["tokens"] < STOPPED_TOKENS


# nginx's own answers


async def test_an_oversize_body_gets_payload_too_large_in_the_api_error_shape(edge: Edge) -> None:
    # 17 MiB reaches the gateway, which refuses it; 24 MiB is refused by nginx itself. Same status, same body shape.
    for size in (DEFAULT_MAX_BODY_BYTES + (1 << 20), 24 << 20):
        status, body = await post(f"{edge.url}/v1/streams", data=b"x" * size)
        assert status == 413, (size, body)
        assert body["error"]["code"] == "payload_too_large", (size, body)


async def test_nginx_answers_unavailable_as_json_when_the_streamer_is_unreachable(edge: Edge) -> None:
    nowhere = f"127.0.0.1:{free_port()}"  # nothing listens there
    with nginx_proxy(nginx_binary(), DEPLOY_CONF, gateway=netloc(edge.sut.gateway_url), streamer=nowhere) as url:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/v1/streams/{'0' * 32}/events") as response:
                body = await response.json(content_type=None)
                assert response.status == 503
                assert response.headers["Content-Type"] == "application/json"
                assert response.headers["Retry-After"] == "1"
            assert body["error"]["code"] == "unavailable"
            async with session.get(f"{url}/healthz") as response:
                assert response.status == 200  # the gateway side still works


# Routing and headers, against upstreams that echo what they received


@contextlib.asynccontextmanager
async def echo_upstream(role: str) -> AsyncIterator[str]:
    """An upstream on a free loopback port that answers every request with what it received; yields host:port."""

    async def echo(request: web.Request) -> web.Response:
        headers = dict(request.headers)
        return web.json_response(
            {"role": role, "path": request.path_qs, "version": list(request.version), "headers": headers}
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield f"127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def echo_proxy() -> AsyncIterator[str]:
    """deploy/nginx.conf in front of two echoing upstreams, one per role."""
    binary = nginx_binary()
    async with echo_upstream("gateway") as gateway, echo_upstream("streamer") as streamer:
        with nginx_proxy(binary, DEPLOY_CONF, gateway=gateway, streamer=streamer) as url:
            yield url


async def echoed(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.request(method, url, headers=headers) as response:
        assert response.status == 200, await response.text()
        return dict(await response.json())


ROUTES = [
    ("GET", f"/v1/streams/{'a' * 32}/events", "streamer"),
    ("GET", f"/v1/streams/{'a' * 32}/events?last_event_id=0a0b0c0d:3", "streamer"),
    ("POST", "/v1/chat/completions", "streamer"),
    ("POST", "/v1/messages", "streamer"),
    ("POST", "/v1/completions", "streamer"),
    ("POST", "/v1/responses", "streamer"),
    ("GET", "/v1/responses/resp_abc", "streamer"),
    ("GET", "/v1/responses/resp_abc?stream=true&starting_after=3", "streamer"),
    ("POST", "/v1/responses/resp_abc/cancel", "streamer"),
    ("GET", "/v1/responses/resp_abc/input_items?limit=2", "streamer"),
    ("DELETE", "/v1/responses/resp_abc", "streamer"),
    ("GET", "/v1/models", "streamer"),
    ("GET", "/v1/models/meta-llama/Llama-3.1-8B-Instruct", "streamer"),
    ("POST", "/v1/streams", "gateway"),
    ("GET", f"/v1/streams/{'a' * 32}", "gateway"),
    ("POST", f"/v1/streams/{'a' * 32}/stop", "gateway"),
    ("GET", "/v1/control", "gateway"),
    ("GET", "/healthz", "gateway"),
    ("GET", "/readyz", "gateway"),
    ("GET", "/metrics", "gateway"),
    ("GET", "/", "gateway"),
    ("GET", f"/v1/streams/{'a' * 32}/events/extra", "gateway"),
]


async def test_nginx_routes_the_data_plane_to_the_streamer_and_the_rest_to_the_gateway(echo_proxy: str) -> None:
    for method, path, role in ROUTES:
        got = await echoed(echo_proxy + path, method)
        assert (got["role"], got["path"]) == (role, path), (method, path)


async def test_nginx_forwards_the_client_address_and_keeps_upstream_connections_reusable(echo_proxy: str) -> None:
    got = await echoed(f"{echo_proxy}/v1/streams/{'a' * 32}/events")
    headers = {name.lower(): value for name, value in got["headers"].items()}
    assert got["version"] == [1, 1]
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-real-ip"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == "127.0.0.1"
    assert headers["x-forwarded-port"] == str(urlsplit(echo_proxy).port)
    assert "connection" not in headers, "Connection: close would end every upstream connection after one response"
    assert "upgrade" not in headers


async def test_nginx_passes_a_websocket_upgrade_on_to_the_gateway(echo_proxy: str) -> None:
    got = await echoed(f"{echo_proxy}/v1/control", headers={"Upgrade": "websocket", "Connection": "Upgrade"})
    headers = {name.lower(): value for name, value in got["headers"].items()}
    assert got["role"] == "gateway"
    assert (headers["upgrade"], headers["connection"]) == ("websocket", "upgrade")


# The file itself


def location_blocks(conf: str) -> dict[str, str]:
    """location pattern -> its body (deploy/nginx.conf has no nested blocks inside locations)."""
    return {match[0].strip(): match[1] for match in re.findall(r"location\s+([^{]+)\{(.*?)\}", conf, re.S)}


def seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    match = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", value)
    assert match is not None, f"not an nginx time: {value!r}"
    return int(match[1]) * units[match[2] or "s"]


def directive(body: str, name: str) -> str | None:
    found = re.findall(rf"^\s*{name}\s+([^;]+);", body, re.M)
    return found[-1].strip() if found else None


def test_streaming_locations_disable_buffering_caching_and_compression() -> None:
    blocks = location_blocks(DEPLOY_CONF.read_text())
    streaming = [p for p in blocks if "events" in p or "chat/completions" in p]
    assert len(streaming) == 2, blocks.keys()
    for pattern in streaming:
        body = blocks[pattern]
        assert directive(body, "proxy_buffering") == "off", pattern
        assert directive(body, "proxy_cache") == "off", pattern
        assert directive(body, "gzip") == "off", pattern


def test_quiet_streams_and_sockets_outlast_the_heartbeats_that_keep_them_open() -> None:
    blocks = location_blocks(DEPLOY_CONF.read_text())
    quiet = {p: body for p, body in blocks.items() if "events" in p or "chat/completions" in p or "control" in p}
    assert len(quiet) == 3, blocks.keys()
    for pattern, body in quiet.items():
        heartbeat_s = WS_HEARTBEAT_S if "control" in pattern else DEFAULT_HEARTBEAT_S
        for name in ("proxy_read_timeout", "proxy_send_timeout"):
            value = directive(body, name)
            assert value is not None and seconds(value) >= 10 * heartbeat_s, (pattern, name, value)
