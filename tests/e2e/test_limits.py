"""Limits with clear errors: a key over its request rate, its concurrent streams or its control sockets
gets 429 ``rate_limited`` with ``Retry-After`` (over HTTP, over the control socket, through the
OpenAI SDK); a stop is never refused for rate; one reader too many for a stream gets 429; a control
message over the size limit closes the socket with 1009."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tokenrelay.testing.procs import System, nats_server, system

KEYS = {tenant: f"tr-{tenant}-limits-0123456789" for tenant in ("rate", "compat", "streams", "sockets", "readers")}
LONG = {"prompt": "a long one", "max_tokens": 5000}
SHORT = {"prompt": "a short one", "max_tokens": 3}
RELEASE_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("limits") / "api-keys"
    path.write_text("".join(f"{tenant} {key}\n" for tenant, key in KEYS.items()))
    return str(path)


RUNNER = ["--synthetic-tokens-per-s", "100", "--synthetic-ttft-ms", "0", "--synthetic-length-tokens", "100000"]
"""Texts are 100,000 tokens long: a stream with a large max_tokens runs until it is stopped."""


@pytest.fixture(scope="module")
def rated(keys_file: str) -> Iterator[System]:
    """A gateway allowing each key 3 requests at once and then one every 10 s."""
    auth = ["--api-keys-file", keys_file]
    gateway = [*auth, "--key-requests-per-s", "0.1", "--key-request-burst", "3"]
    with nats_server() as nats, system(nats.url, runner_args=RUNNER, streamer_args=auth, gateway_args=gateway) as sut:
        yield sut


@pytest.fixture(scope="module")
def bounded(keys_file: str) -> Iterator[System]:
    """Two streams and two control sockets per key; two readers per stream (a NATS of its own: no other
    system's runner takes its streams)."""
    auth = ["--api-keys-file", keys_file]
    gateway = [*auth, "--key-max-streams", "2", "--key-max-control-sockets", "2"]
    streamer = [*auth, "--max-readers-per-stream", "2"]
    with (
        nats_server() as nats,
        system(nats.url, runner_args=RUNNER, streamer_args=streamer, gateway_args=gateway) as sut,
    ):
        yield sut


def _bearer(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


async def _post(url: str, tenant: str, body: Any = None) -> tuple[int, dict[str, str], Any]:
    async with aiohttp.ClientSession() as session, session.post(url, json=body, headers=_bearer(tenant)) as r:
        return r.status, dict(r.headers), orjson.loads(await r.read())


def _assert_rate_limited(status: int, headers: dict[str, str], body: Any) -> None:
    assert (status, body["error"]["code"]) == (429, "rate_limited"), body
    assert int(headers["Retry-After"]) >= 1


# -- request rate ---------------------------------------------------------------------------------------------------


async def test_a_key_over_its_request_rate_gets_429_with_retry_after(rated: System) -> None:
    url = f"{rated.gateway_url}/v1/streams"
    created = [await _post(url, "rate", LONG) for _ in range(3)]
    assert [status for status, _, _ in created] == [201, 201, 201]
    _assert_rate_limited(*await _post(url, "rate", SHORT))
    # Another key is not affected, and a stop is never refused for rate.
    assert (await _post(url, "streams", SHORT))[0] == 201
    for _, _, body in created:
        status, _, stopped = await _post(f"{rated.gateway_url}/v1/streams/{body['id']}/stop", "rate")
        assert (status, stopped["finish_reason"]) == (200, "cancelled")


async def test_control_messages_count_against_the_rate_one_by_one(rated: System) -> None:
    url = rated.gateway_url.replace("http://", "ws://") + "/v1/control"
    async with connect(url, additional_headers=_bearer("sockets")) as ws:  # the upgrade is request 1
        replies = []
        for ref in range(3):
            await ws.send(orjson.dumps({"type": "start", "ref": ref, **SHORT}).decode())
            replies.append(orjson.loads(await ws.recv()))
    assert [r["type"] for r in replies] == ["started", "started", "error"]
    assert (replies[2]["code"], replies[2]["retry_after_s"] >= 1) == ("rate_limited", True)


async def test_the_openai_sdk_sees_a_rate_limit_error(rated: System) -> None:
    async with openai.AsyncOpenAI(base_url=f"{rated.streamer_url}/v1", api_key=KEYS["compat"], max_retries=0) as sdk:
        for _ in range(3):
            await sdk.chat.completions.create(model="synthetic", messages=[{"role": "user", "content": "x"}],
                                              max_tokens=1)  # fmt: skip
        with pytest.raises(openai.RateLimitError) as refused:
            await sdk.chat.completions.create(model="synthetic", messages=[{"role": "user", "content": "x"}],
                                              max_tokens=1)  # fmt: skip
    assert refused.value.status_code == 429 and int(refused.value.response.headers["Retry-After"]) >= 1
    assert refused.value.code == "rate_limited"


# -- concurrent streams -----------------------------------------------------------------------------------------------


async def _until_created(url: str, tenant: str) -> dict[str, Any]:
    """POST until the key's slot is free again (released when the runner reports the stream done)."""
    deadline = asyncio.get_running_loop().time() + RELEASE_TIMEOUT_S
    while True:
        status, headers, body = await _post(url, tenant, SHORT)
        if status == 201:
            return dict(body)
        _assert_rate_limited(status, headers, body)
        assert asyncio.get_running_loop().time() < deadline, "the stopped stream's slot was never freed"
        await asyncio.sleep(0.05)


async def test_a_key_with_its_limit_of_streams_running_gets_429_until_one_ends(bounded: System) -> None:
    url = f"{bounded.gateway_url}/v1/streams"
    running = [await _post(url, "streams", LONG) for _ in range(2)]
    assert [status for status, _, _ in running] == [201, 201]
    _assert_rate_limited(*await _post(url, "streams", SHORT))
    ws_url = bounded.gateway_url.replace("http://", "ws://") + "/v1/control"
    async with connect(ws_url, additional_headers=_bearer("streams")) as ws:
        await ws.send(orjson.dumps({"type": "start", "ref": 1, **SHORT}).decode())
        reply = orjson.loads(await ws.recv())
    assert (reply["type"], reply["code"]) == ("error", "rate_limited")
    assert (await _post(url, "readers", SHORT))[0] == 201  # other keys are not affected
    await _post(f"{bounded.gateway_url}/v1/streams/{running[0][2]['id']}/stop", "streams")
    await _until_created(url, "streams")
    await _post(f"{bounded.gateway_url}/v1/streams/{running[1][2]['id']}/stop", "streams")


# -- control sockets --------------------------------------------------------------------------------------------------


async def test_a_key_with_its_limit_of_control_sockets_open_gets_429_on_the_handshake(bounded: System) -> None:
    url = bounded.gateway_url.replace("http://", "ws://") + "/v1/control"
    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(connect(url, additional_headers=_bearer("sockets")))
        await stack.enter_async_context(connect(url, additional_headers=_bearer("sockets")))
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url, additional_headers=_bearer("sockets")):
                pass
        response = refused.value.response
        assert (response.status_code, orjson.loads(response.body or b"{}")["error"]["code"]) == (429, "rate_limited")
        assert int(response.headers["Retry-After"]) >= 1
        await first.close()
        deadline = asyncio.get_running_loop().time() + RELEASE_TIMEOUT_S
        while True:  # the server counts the socket closed once its handler returns
            try:
                async with connect(url, additional_headers=_bearer("sockets")):
                    break
            except InvalidStatus:
                assert asyncio.get_running_loop().time() < deadline, "the closed control socket's place was never freed"
                await asyncio.sleep(0.05)


# -- readers per stream -----------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _reader(session: aiohttp.ClientSession, url: str) -> AsyncIterator[aiohttp.ClientResponse]:
    async with session.get(url) as response:
        if response.status == 200:
            await response.content.readline()  # the first event's first line: the reader is attached
        yield response


async def test_one_reader_too_many_for_a_stream_gets_429(bounded: System) -> None:
    status, _, created = await _post(f"{bounded.gateway_url}/v1/streams", "readers", LONG)
    assert status == 201
    async with aiohttp.ClientSession() as session:
        async with _reader(session, created["events_url"]) as one, _reader(session, created["events_url"]) as two:
            assert (one.status, two.status) == (200, 200)
            async with session.get(created["events_url"]) as three:
                _assert_rate_limited(three.status, dict(three.headers), orjson.loads(await three.read()))
        deadline = asyncio.get_running_loop().time() + RELEASE_TIMEOUT_S
        while True:  # readers that left free their places
            async with session.get(created["events_url"]) as again:
                if again.status == 200:
                    break
            assert asyncio.get_running_loop().time() < deadline, "the readers that left never freed their places"
            await asyncio.sleep(0.05)
    await _post(f"{bounded.gateway_url}/v1/streams/{created['id']}/stop", "readers")


# -- message size -----------------------------------------------------------------------------------------------------


async def test_a_control_message_over_the_size_limit_closes_the_socket_with_1009(bounded: System) -> None:
    url = bounded.gateway_url.replace("http://", "ws://") + "/v1/control"
    async with connect(url, additional_headers=_bearer("sockets"), max_size=None) as ws:
        await ws.send(orjson.dumps({"type": "start", "prompt": "x" * (2 << 20)}).decode())
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
