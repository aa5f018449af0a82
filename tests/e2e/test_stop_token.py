"""The stop capability: with API keys, a stream's ``stop_url`` carries a ``stop`` token bound to that stream, so a
client that no longer holds the key (a page reloaded mid-answer) can still stop it with a plain ``POST``.  The token
stops exactly its stream: another stream's token, a forged, expired or other-scope one grants nothing (``401``)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import orjson
import pytest
from websockets.asyncio.client import connect

from tokenrelay.runtime.tokens import TOKEN_SECRET_ENV, Scope, TokenSigner
from tokenrelay.testing.http import wait_finished
from tokenrelay.testing.procs import NatsServer, System, system

ACME_KEY = "tr-acme-stopper-0123456789"
GLOBEX_KEY = "tr-globex-stopper-98765432"
LENGTH = 100_000
"""Every synthetic text is this long, so a stream of `BODY` (at 50 tokens a second) runs until it is stopped."""
BODY = {"prompt": "stop me with a token", "max_tokens": 30_000}


@pytest.fixture(scope="module")
def sut(nats: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    keys = tmp_path_factory.mktemp("stop-token") / "api-keys"
    keys.write_text(f"acme {ACME_KEY}\nglobex {GLOBEX_KEY}\n")
    runner = ["--synthetic-tokens-per-s", "50", "--synthetic-ttft-ms", "0", "--synthetic-length-tokens", str(LENGTH)]
    auth = ["--api-keys-file", str(keys)]
    with system(nats.url, runner_args=runner, streamer_args=auth, gateway_args=auth) as running:
        yield running


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _request(method: str, url: str, *, key: str | None = None, **kwargs: Any) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, headers=_bearer(key) if key else {}, **kwargs) as response,
    ):
        raw = await response.read()
        return response.status, orjson.loads(raw) if response.content_type == "application/json" else raw


async def _create(sut: System) -> dict[str, Any]:
    status, body = await _request("POST", f"{sut.gateway_url}/v1/streams", key=ACME_KEY, json=BODY)
    assert status == 201, body
    return dict(body)


async def _state(sut: System, stream_id: str) -> dict[str, Any]:
    status, body = await _request("GET", f"{sut.gateway_url}/v1/streams/{stream_id}", key=ACME_KEY)
    assert status == 200, body
    return dict(body)


def _token(url: str) -> str:
    return parse_qs(urlsplit(url).query)["token"][0]


def _bare(url: str) -> str:
    return url.split("?", 1)[0]


async def test_the_stop_url_stops_its_stream_without_a_key(sut: System) -> None:
    created = await _create(sut)
    assert _bare(created["stop_url"]) == f"{sut.gateway_url}/v1/streams/{created['id']}/stop"
    token = _token(created["stop_url"])
    assert token.startswith("v1.stop.") and token != _token(created["events_url"])
    status, stopped = await _request("POST", created["stop_url"])
    assert (status, stopped["id"], stopped["finish_reason"]) == (200, created["id"], "cancelled")
    record = await wait_finished(sut.gateway_url, created["id"], headers=_bearer(ACME_KEY))
    assert (record["finish_reason"], record["cancel_reason"]) == ("cancelled", "client")


async def test_another_streams_stop_token_is_refused_and_stops_nothing(sut: System) -> None:
    mine, other = await _create(sut), await _create(sut)
    status, refused = await _request("POST", f"{_bare(mine['stop_url'])}?token={_token(other['stop_url'])}")
    assert (status, refused["error"]["code"]) == (401, "unauthorized")
    assert (await _state(sut, mine["id"]))["state"] in ("queued", "running")
    assert (await _state(sut, other["id"]))["state"] in ("queued", "running")
    for created in (mine, other):
        assert (await _request("POST", created["stop_url"]))[0] == 200


async def test_a_forged_expired_events_or_missing_token_does_not_stop_the_stream(sut: System) -> None:
    created = await _create(sut)
    stream_id, later = created["id"], int(time.time()) + 600
    signer = TokenSigner(os.environ[TOKEN_SECRET_ENV])  # the secret every role of this test run shares
    tokens = (
        TokenSigner("not-the-secret-" + "x" * 32).issue(Scope.STOP, stream_id, expires_at=later),
        signer.issue(Scope.STOP, stream_id, expires_at=int(time.time()) - 1),
        _token(created["events_url"]),
        signer.issue(Scope.CONTROL, stream_id, expires_at=later),
        "garbage",
        "",
    )
    for token in tokens:
        status, refused = await _request("POST", f"{_bare(created['stop_url'])}?token={token}")
        assert (status, refused["error"]["code"]) == (401, "unauthorized"), token
    status, refused = await _request("POST", _bare(created["stop_url"]))
    assert (status, refused["error"]["code"]) == (401, "unauthorized")
    assert (await _state(sut, stream_id))["state"] in ("queued", "running")
    assert (await _request("POST", created["stop_url"]))[0] == 200


async def test_a_key_and_a_stop_token_together_are_judged_by_the_key(sut: System) -> None:
    created = await _create(sut)
    status, refused = await _request("POST", created["stop_url"], key=GLOBEX_KEY)
    assert (status, refused["error"]["code"]) == (404, "not_found")  # a token cannot lend a stream to another key
    assert (await _state(sut, created["id"]))["state"] in ("queued", "running")
    assert (await _request("POST", created["stop_url"], key=ACME_KEY))[0] == 200


async def test_the_control_sockets_started_reply_carries_a_stop_url_that_stops_without_a_key(sut: System) -> None:
    url = sut.gateway_url.replace("http://", "ws://") + "/v1/control"
    async with connect(url, additional_headers=_bearer(ACME_KEY)) as ws:
        await ws.send(orjson.dumps({"type": "start", "ref": 1, **BODY}).decode())
        started = orjson.loads(await ws.recv())
    assert started["type"] == "started" and _token(started["stop_url"]).startswith("v1.stop.")
    status, stopped = await _request("POST", started["stop_url"])
    assert (status, stopped["finish_reason"]) == (200, "cancelled")
