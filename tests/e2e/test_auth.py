"""API keys: with keys configured, every gateway and streamer endpoint but the ops ones answers 401 ``unauthorized``
to a request without a configured key, and works for one with it (our own clients, curl-style requests, the
OpenAI and Anthropic SDKs); ``tokenrelay up`` refuses a non-loopback address without keys."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import anthropic
import openai
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tokenrelay.cli.supervisor import free_port
from tokenrelay.client import Client, ConnectionLost
from tokenrelay.runtime.auth import KeyFileError, KeyRing, digest, load_keyring, presented_key
from tokenrelay.testing.http import metric
from tokenrelay.testing.procs import NatsServer, System, system
from tokenrelay.testing.sse import read_stream
from tokenrelay.testing.synthetic import expected_text
from tokenrelay.wire.errors import TokenRelayError

ACME_KEY = "tr-acme-0123456789abcdef"
GLOBEX_KEY = "tr-globex-fedcba9876543210"
WRONG_KEY = "tr-wrong-00000000000000000"
BODY = {"prompt": "hello keys", "max_tokens": 5}


# -- the key file ------------------------------------------------------------------------------------------------


def test_a_key_file_maps_each_key_or_its_digest_to_its_tenant(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# tenants\nacme {ACME_KEY}\n\nglobex sha256:{digest(GLOBEX_KEY)}  # digest only\n")
    ring = KeyRing.from_file(path)
    assert len(ring) == 2
    assert ring.authenticate(ACME_KEY) is not None and ring.authenticate(ACME_KEY).tenant == "acme"  # type: ignore[union-attr]
    assert ring.authenticate(GLOBEX_KEY).tenant == "globex"  # type: ignore[union-attr]
    for presented in (None, "", WRONG_KEY, ACME_KEY.upper(), "x" * 1000, f"sha256:{digest(ACME_KEY)}"):
        assert ring.authenticate(presented) is None


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("acme short", "printable"),
        ("acme", "expected 'tenant key'"),
        (f"acme {ACME_KEY} extra", "expected 'tenant key'"),
        (f"ac/me {ACME_KEY}", "tenant"),
        ("acme sha256:abc", "printable"),
        (f"acme {ACME_KEY}\nglobex {ACME_KEY}", "two tenants"),
    ],
)
def test_a_bad_key_file_entry_is_refused_with_its_line(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "keys"
    path.write_text(line + "\n")
    with pytest.raises(KeyFileError, match=problem):
        KeyRing.from_file(path)


def test_keys_from_the_environment_join_those_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"acme {ACME_KEY}\n")
    ring = load_keyring(str(path), f"globex:{GLOBEX_KEY}, ")
    assert ring is not None and len(ring) == 2
    assert load_keyring(None, "  ") is None
    with pytest.raises(KeyFileError, match="tenant:key"):
        load_keyring(None, "no-colon-here")


@pytest.mark.parametrize(
    ("authorization", "x_api_key", "presented"),
    [
        (f"Bearer {ACME_KEY}", None, ACME_KEY),
        (f"bearer   {ACME_KEY} ", None, ACME_KEY),
        (None, ACME_KEY, ACME_KEY),
        (f"Basic {ACME_KEY}", ACME_KEY, None),  # a wrong scheme is not rescued by the other header
        ("Bearer", None, None),
        (None, None, None),
    ],
)
def test_a_request_presents_its_key_as_a_bearer_token_or_x_api_key(
    authorization: str | None, x_api_key: str | None, presented: str | None
) -> None:
    assert presented_key(authorization, x_api_key) == presented


# -- a system with keys ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("auth") / "api-keys"
    path.write_text(f"acme {ACME_KEY}\nglobex sha256:{digest(GLOBEX_KEY)}\n")
    return str(path)


@pytest.fixture(scope="module")
def sut(nats: NatsServer, keys_file: str) -> Iterator[System]:
    runner = ["--synthetic-tokens-per-s", "200", "--synthetic-ttft-ms", "0"]
    keys = ["--api-keys-file", keys_file]
    with system(nats.url, runner_args=runner, streamer_args=keys, gateway_args=keys) as running:
        yield running


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _endpoints(sut: System) -> list[tuple[str, str]]:
    stream = "0123456789abcdef0123456789abcdef"
    return [
        ("POST", f"{sut.gateway_url}/v1/streams"),
        ("GET", f"{sut.gateway_url}/v1/streams/{stream}"),
        ("POST", f"{sut.gateway_url}/v1/streams/{stream}/stop"),
        ("GET", f"{sut.gateway_url}/v1/control"),
        ("GET", f"{sut.gateway_url}/v1/control?token=not-a-token"),
        ("POST", f"{sut.gateway_url}/v1/control/token"),
        ("GET", f"{sut.streamer_url}/v1/streams/{stream}/events?token=not-a-token"),
        ("GET", f"{sut.gateway_url}/v1/no-such-path"),
        ("GET", f"{sut.streamer_url}/v1/streams/{stream}/events"),
        ("POST", f"{sut.streamer_url}/v1/chat/completions"),
        ("POST", f"{sut.streamer_url}/v1/messages"),
        ("GET", f"{sut.streamer_url}/v1/models"),
    ]


@pytest.mark.parametrize("headers", [{}, _bearer(WRONG_KEY), {"x-api-key": WRONG_KEY}, {"Authorization": "Basic x"}])
async def test_every_endpoint_answers_401_unauthorized_without_a_configured_key(
    sut: System, headers: dict[str, str]
) -> None:
    async with aiohttp.ClientSession() as session:
        for method, url in _endpoints(sut):
            async with session.request(method, url, data=orjson.dumps(BODY), headers=headers) as response:
                body = orjson.loads(await response.read())
                assert response.status == 401, (method, url, body)
                assert body["error"]["code"] == "unauthorized", url
                assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_refusals_are_counted_as_unauthorized_errors(sut: System) -> None:
    before = await metric(sut.gateway_url, "tokenrelay_gateway_errors_total", code="unauthorized")
    async with aiohttp.ClientSession() as session, session.post(f"{sut.gateway_url}/v1/streams", json=BODY) as r:
        assert r.status == 401
    assert await metric(sut.gateway_url, "tokenrelay_gateway_errors_total", code="unauthorized") == before + 1


async def test_ops_endpoints_and_the_page_answer_without_a_key(sut: System) -> None:
    async with aiohttp.ClientSession() as session:
        for url in (sut.gateway_url, sut.streamer_url):
            for path in ("/healthz", "/readyz", "/metrics"):
                async with session.get(f"{url}{path}") as response:
                    assert response.status == 200, (url, path)
        async with session.get(f"{sut.gateway_url}/") as response:
            assert response.status == 200


@pytest.mark.parametrize("key", [ACME_KEY, GLOBEX_KEY])  # a plain key and a key stored as its digest
async def test_a_configured_key_creates_and_reads_a_stream(sut: System, key: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{sut.gateway_url}/v1/streams", json=BODY, headers=_bearer(key)) as response,
    ):
        assert response.status == 201
        created = await response.json()
    stream = await read_stream(created["events_url"], headers=_bearer(key))
    assert stream.status == 200 and stream.text == expected_text("hello keys", 5)


async def test_the_control_socket_refuses_the_handshake_without_a_key_and_opens_with_one(sut: System) -> None:
    url = sut.gateway_url.replace("http://", "ws://") + "/v1/control"
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url):
            pass
    assert refused.value.response.status_code == 401
    async with connect(url, additional_headers=_bearer(ACME_KEY)) as ws:
        await ws.send(orjson.dumps({"type": "start", "ref": "r1", **BODY}).decode())
        reply = orjson.loads(await ws.recv())
        assert reply["type"] == "started" and reply["ref"] == "r1"


async def test_the_python_client_sends_its_api_key_on_the_control_socket_and_the_events(sut: System) -> None:
    async with Client(sut.gateway_url, api_key=ACME_KEY) as client:
        stream = await client.start(prompt="hello keys", max_tokens=5)
        assert await stream.collect() == expected_text("hello keys", 5)
    async with Client(sut.gateway_url, max_reconnects=0) as keyless:
        with pytest.raises((ConnectionLost, TokenRelayError)):
            await keyless.start(prompt="hello keys", max_tokens=5)


async def test_the_openai_sdk_sends_its_api_key_and_is_refused_with_a_wrong_one(sut: System) -> None:
    base_url = f"{sut.streamer_url}/v1"
    async with openai.AsyncOpenAI(base_url=base_url, api_key=ACME_KEY, max_retries=0) as good:
        reply = await good.chat.completions.create(
            model="synthetic", messages=[{"role": "user", "content": "hello keys"}], max_tokens=5
        )
    assert reply.choices[0].message.content == expected_text("hello keys", 5)
    async with openai.AsyncOpenAI(base_url=base_url, api_key=WRONG_KEY, max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError):
            await bad.models.list()


async def test_the_anthropic_sdk_sends_its_x_api_key_and_is_refused_with_a_wrong_one(sut: System) -> None:
    async with anthropic.AsyncAnthropic(base_url=sut.streamer_url, api_key=ACME_KEY, max_retries=0) as good:
        reply = await good.messages.create(
            model="synthetic", messages=[{"role": "user", "content": "hello keys"}], max_tokens=5
        )
    assert reply.content[0].text == expected_text("hello keys", 5)  # type: ignore[union-attr]
    async with anthropic.AsyncAnthropic(base_url=sut.streamer_url, api_key=WRONG_KEY, max_retries=0) as bad:
        with pytest.raises(anthropic.AuthenticationError):
            await bad.messages.create(model="synthetic", messages=[{"role": "user", "content": "x"}], max_tokens=1)


# -- tokenrelay up -----------------------------------------------------------------------------------------------


def _up(*extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    argv = [sys.executable, "-m", "tokenrelay", "up", "--gateway-port", str(free_port()), *extra]
    return subprocess.run(argv, check=False, capture_output=True, timeout=60, env=env)


def test_up_refuses_a_non_loopback_address_without_api_keys() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TOKENRELAY_API_KEYS"}
    result = _up("--host", "0.0.0.0", env=env)  # refused before anything binds
    assert result.returncode == 2
    assert b"refusing to listen on 0.0.0.0 without API keys" in result.stderr


def test_up_refuses_a_bad_key_file_before_starting_anything(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("acme short\n")
    result = _up("--api-keys-file", str(path))
    assert result.returncode != 0
    assert b"API keys: line 1" in result.stderr
