"""Ownership: a stream belongs to the key that created it.  Another key gets 404 ``not_found`` for it on
every endpoint (as for a stream that does not exist); the events token in ``events_url`` lets a browser
read exactly that stream without headers until it expires; a control token opens the control socket as
its key; a page from a foreign origin cannot open the control socket."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import openai
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from tokenrelay.runtime.tokens import TOKEN_SECRET_ENV, Scope, TokenSigner
from tokenrelay.testing.http import metric, wait_finished
from tokenrelay.testing.procs import NatsServer, System, nats_server, system
from tokenrelay.testing.sse import Stream, read_stream
from tokenrelay.testing.synthetic import expected_text

ACME_KEY = "tr-acme-owner-0123456789"
GLOBEX_KEY = "tr-globex-other-987654321"
PROMPT = "whose stream is this"
BODY = {"prompt": PROMPT, "max_tokens": 6}
ALLOWED_ORIGIN = "https://chat.example.com"
LENGTH = 100_000
"""Every synthetic text is this long, so a stream with a large max_tokens runs until it is stopped."""


@pytest.fixture(scope="module")
def own_nats() -> Iterator[NatsServer]:
    with nats_server() as server:
        yield server


@pytest.fixture(scope="module")
def sut(own_nats: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    keys = tmp_path_factory.mktemp("ownership") / "api-keys"
    keys.write_text(f"acme {ACME_KEY}\nglobex {GLOBEX_KEY}\n")
    runner = ["--synthetic-tokens-per-s", "200", "--synthetic-ttft-ms", "0", "--synthetic-length-tokens", str(LENGTH)]
    auth = ["--api-keys-file", str(keys)]
    gateway = [*auth, "--control-allow-origin", ALLOWED_ORIGIN]
    with system(own_nats.url, runner_args=runner, streamer_args=auth, gateway_args=gateway) as running:
        yield running


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _ws_url(sut: System) -> str:
    return sut.gateway_url.replace("http://", "ws://") + "/v1/control"


def _signer() -> TokenSigner:
    return TokenSigner(os.environ[TOKEN_SECRET_ENV])  # the secret every role of this test session shares


async def _request(method: str, url: str, *, key: str | None = None, **kwargs: Any) -> tuple[int, Any]:
    headers = {**(_bearer(key) if key else {}), **kwargs.pop("headers", {})}
    async with aiohttp.ClientSession() as session, session.request(method, url, headers=headers, **kwargs) as r:
        raw = await r.read()
        return r.status, orjson.loads(raw) if r.content_type == "application/json" else raw


async def _create(sut: System, key: str = ACME_KEY) -> dict[str, Any]:
    status, body = await _request("POST", f"{sut.gateway_url}/v1/streams", key=key, json=BODY)
    assert status == 201, body
    return dict(body)


def _code(body: Any) -> str:
    return str(body["error"]["code"])


def _after_first_token(stream: Stream) -> str:
    """A resume cursor just after the stream's first published batch (how many delta events carried the text
    depends on timing: a stream read after it ended comes as one merged delta)."""
    last_id = stream.of("delta")[-1].id
    assert last_id is not None
    epoch, _, _ = last_id.rpartition(":")
    return f"{epoch}:1"


def _bare(events_url: str) -> str:
    """``events_url`` without its token."""
    return events_url.split("?", 1)[0]


@pytest.fixture
async def acme_ws(sut: System) -> AsyncIterator[ClientConnection]:
    async with connect(_ws_url(sut), additional_headers=_bearer(ACME_KEY)) as ws:
        yield ws


async def _command(ws: ClientConnection, **message: Any) -> dict[str, Any]:
    await ws.send(orjson.dumps(message).decode())
    return dict(orjson.loads(await ws.recv()))


# -- another key sees nothing ------------------------------------------------------------------------------------


async def test_stream_ids_are_128_random_bits(sut: System) -> None:
    ids = {(await _create(sut))["id"] for _ in range(3)}
    assert len(ids) == 3 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


async def test_another_key_gets_404_for_the_status_as_for_a_stream_that_does_not_exist(sut: System) -> None:
    created = await _create(sut)
    await wait_finished(sut.gateway_url, created["id"], headers=_bearer(ACME_KEY))
    status, theirs = await _request("GET", f"{sut.gateway_url}/v1/streams/{created['id']}", key=GLOBEX_KEY)
    missing_status, missing = await _request("GET", f"{sut.gateway_url}/v1/streams/{'0' * 32}", key=GLOBEX_KEY)
    not_found = {"error": {"code": "not_found", "message": "no such stream"}}
    assert (status, theirs) == (missing_status, missing) == (404, not_found)
    status, mine = await _request("GET", f"{sut.gateway_url}/v1/streams/{created['id']}", key=ACME_KEY)
    assert status == 200 and mine["state"] == "finished"


async def test_another_key_cannot_stop_the_stream_and_the_owner_can(sut: System) -> None:
    status, body = await _request("POST", f"{sut.gateway_url}/v1/streams", key=ACME_KEY,
                                  json={"prompt": PROMPT, "max_tokens": 5000})  # fmt: skip
    assert status == 201
    stop = f"{sut.gateway_url}/v1/streams/{body['id']}/stop"
    status, refused = await _request("POST", stop, key=GLOBEX_KEY)
    assert (status, _code(refused)) == (404, "not_found")
    status, record = await _request("GET", f"{sut.gateway_url}/v1/streams/{body['id']}", key=ACME_KEY)
    assert record["state"] in ("queued", "running")  # the refused stop did nothing
    status, stopped = await _request("POST", stop, key=ACME_KEY)
    assert (status, stopped["finish_reason"]) == (200, "cancelled")


async def test_another_key_cannot_read_or_resume_the_stream_with_its_own_key(sut: System) -> None:
    created = await _create(sut)
    url = _bare(created["events_url"])
    theirs = await read_stream(url, headers=_bearer(GLOBEX_KEY))
    assert (theirs.status, orjson.loads(theirs.body)["error"]["code"]) == (404, "not_found")
    mine = await read_stream(url, headers=_bearer(ACME_KEY))
    assert mine.status == 200 and mine.text == expected_text(PROMPT, 6, LENGTH)
    cursor = _after_first_token(mine)
    assert cursor is not None
    resumed = await read_stream(url, headers={**_bearer(GLOBEX_KEY), "Last-Event-ID": cursor})
    assert (resumed.status, orjson.loads(resumed.body)["error"]["code"]) == (404, "not_found")


async def test_another_key_gets_404_for_a_running_stream_the_streamer_saw_start_and_keys_always_read_the_record(
    sut: System,
) -> None:
    # A streamer remembers streams it saw starting and serves their token readers without a record read
    # (streamer/starts.py); a key's tenant must own the stream, and only the record names the owner.
    status, created = await _request(
        "POST", f"{sut.gateway_url}/v1/streams", key=ACME_KEY, json={"prompt": PROMPT, "max_tokens": 30_000}
    )
    assert status == 201, created
    url = _bare(created["events_url"])
    lookups = "tokenrelay_streamer_reader_lookups_total"
    before = await metric(sut.streamer_url, lookups, source="start_event")
    mine = await read_stream(url, headers=_bearer(ACME_KEY), stop_after=4)  # live events: the start went by
    assert mine.status == 200
    theirs = await read_stream(url, headers=_bearer(GLOBEX_KEY), stop_after=4)
    assert (theirs.status, orjson.loads(theirs.body)["error"]["code"]) == (404, "not_found")
    assert await metric(sut.streamer_url, lookups, source="start_event") == before
    status, _ = await _request("POST", created["stop_url"], key=ACME_KEY)
    assert status == 200


async def test_another_key_cannot_stop_or_rate_the_stream_over_the_control_socket(
    sut: System, acme_ws: ClientConnection
) -> None:
    started = await _command(acme_ws, type="start", ref=1, prompt=PROMPT, max_tokens=5000)
    stream_id = started["stream_id"]
    async with connect(_ws_url(sut), additional_headers=_bearer(GLOBEX_KEY)) as other:
        for message in ({"type": "stop"}, {"type": "feedback", "rating": "down"}):
            reply = await _command(other, ref=2, stream_id=stream_id, **message)
            assert (reply["type"], reply["code"], reply["ref"]) == ("error", "not_found", 2)
    stopped = await _command(acme_ws, type="stop", ref=3, stream_id=stream_id)
    assert (stopped["type"], stopped["finish_reason"]) == ("stopped", "cancelled")
    ack = await _command(acme_ws, type="feedback", ref=4, stream_id=stream_id, rating="up")
    assert ack["type"] == "ack"


async def test_a_stream_made_with_the_openai_sdk_belongs_to_its_key(sut: System) -> None:
    async with openai.AsyncOpenAI(base_url=f"{sut.streamer_url}/v1", api_key=ACME_KEY, max_retries=0) as sdk:
        raw = await sdk.chat.completions.with_raw_response.create(
            model="synthetic", messages=[{"role": "user", "content": PROMPT}], max_tokens=4
        )
    stream_id = raw.headers["X-Tokenrelay-Stream-Id"]
    assert raw.parse().choices[0].message.content == expected_text(PROMPT, 4, LENGTH)
    status, _ = await _request("GET", f"{sut.gateway_url}/v1/streams/{stream_id}", key=GLOBEX_KEY)
    assert status == 404
    status, record = await _request("GET", f"{sut.gateway_url}/v1/streams/{stream_id}", key=ACME_KEY)
    assert (status, record["tokens"]) == (200, 4)


# -- the events token ---------------------------------------------------------------------------------------------


async def test_the_events_url_alone_reads_and_resumes_the_stream_without_headers(sut: System) -> None:
    created = await _create(sut)
    assert "token" in parse_qs(urlsplit(created["events_url"]).query)
    first = await read_stream(created["events_url"])
    assert first.status == 200 and first.text == expected_text(PROMPT, 6, LENGTH)
    cursor = _after_first_token(first)
    resumed = await read_stream(created["events_url"], headers={"Last-Event-ID": cursor})
    assert resumed.status == 200 and first.text.endswith(resumed.text)
    assert resumed.terminal.event == first.terminal.event == "stop"


async def test_the_events_url_without_its_token_needs_a_key(sut: System) -> None:
    created = await _create(sut)
    stream = await read_stream(_bare(created["events_url"]))
    assert (stream.status, orjson.loads(stream.body)["error"]["code"]) == (401, "unauthorized")


async def _refused_token(sut: System, stream_id: str, token: str) -> tuple[int, str]:
    stream = await read_stream(f"{sut.streamer_url}/v1/streams/{stream_id}/events?token={token}")
    return stream.status, orjson.loads(stream.body)["error"]["code"]


async def test_a_forged_expired_or_other_stream_token_is_refused_with_401(sut: System) -> None:
    mine, other = await _create(sut), await _create(sut)
    later = int(time.time()) + 600
    forged = TokenSigner("not-the-secret-" + "x" * 32).issue(Scope.EVENTS, mine["id"], expires_at=later)
    expired = _signer().issue(Scope.EVENTS, mine["id"], expires_at=int(time.time()) - 1)
    control = _signer().issue(Scope.CONTROL, mine["id"], expires_at=later)
    other_token = parse_qs(urlsplit(other["events_url"]).query)["token"][0]
    for token in (forged, expired, control, other_token, "garbage", ""):
        assert await _refused_token(sut, mine["id"], token) == (401, "unauthorized"), token


async def test_a_key_and_a_token_together_are_judged_by_the_key(sut: System) -> None:
    created = await _create(sut)
    stream = await read_stream(created["events_url"], headers=_bearer(GLOBEX_KEY))
    assert stream.status == 404  # a token cannot lend another key's stream to a key


# -- the control token and the origin -------------------------------------------------------------------------------


async def _control_token(sut: System, key: str | None) -> tuple[int, Any]:
    return await _request("POST", f"{sut.gateway_url}/v1/control/token", key=key)


async def test_a_control_token_opens_the_control_socket_as_its_key(sut: System) -> None:
    status, issued = await _control_token(sut, GLOBEX_KEY)
    assert status == 200 and issued["expires_at"] > time.time()
    assert issued["control_url"].endswith(f"/v1/control?token={issued['token']}")
    async with connect(f"{_ws_url(sut)}?token={issued['token']}") as ws:
        started = await _command(ws, type="start", ref=1, **BODY)
    status, _ = await _request("GET", f"{sut.gateway_url}/v1/streams/{started['stream_id']}", key=GLOBEX_KEY)
    assert status == 200
    status, _ = await _request("GET", f"{sut.gateway_url}/v1/streams/{started['stream_id']}", key=ACME_KEY)
    assert status == 404


async def test_a_control_token_needs_a_key(sut: System) -> None:
    status, body = await _control_token(sut, None)
    assert (status, _code(body)) == (401, "unauthorized")


async def test_a_forged_expired_or_events_token_does_not_open_the_control_socket(sut: System) -> None:
    created = await _create(sut)
    later = int(time.time()) + 600
    tokens = [
        TokenSigner("not-the-secret-" + "x" * 32).issue(Scope.CONTROL, "acme", expires_at=later),
        _signer().issue(Scope.CONTROL, "acme", expires_at=int(time.time()) - 1),
        parse_qs(urlsplit(created["events_url"]).query)["token"][0],
        "garbage",
    ]
    for token in tokens:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"{_ws_url(sut)}?token={token}"):
                pass
        assert refused.value.response.status_code == 401, token
        assert orjson.loads(refused.value.response.body or b"{}")["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("origin", ["https://evil.example", "http://127.0.0.1:1", "null"])
async def test_a_page_from_a_foreign_origin_cannot_open_the_control_socket(sut: System, origin: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(_ws_url(sut), origin=origin, additional_headers=_bearer(ACME_KEY)):  # type: ignore[arg-type]
            pass
    assert refused.value.response.status_code == 403
    assert orjson.loads(refused.value.response.body or b"{}")["error"]["code"] == "forbidden"


async def test_the_gateways_own_origin_and_allowed_ones_may_open_the_control_socket(sut: System) -> None:
    own = sut.gateway_url
    for origin in (own, ALLOWED_ORIGIN):
        async with connect(_ws_url(sut), origin=origin, additional_headers=_bearer(ACME_KEY)) as ws:  # type: ignore[arg-type]
            assert (await _command(ws, type="start", ref=1, **BODY))["type"] == "started"


# -- a missing secret ---------------------------------------------------------------------------------------------


def test_a_role_with_api_keys_but_no_token_secret_refuses_to_start(tmp_path: Path) -> None:
    import subprocess
    import sys

    keys = tmp_path / "keys"
    keys.write_text(f"acme {ACME_KEY}\n")
    env = {k: v for k, v in os.environ.items() if k != TOKEN_SECRET_ENV}
    for role in ("gateway", "streamer"):
        done = subprocess.run(
            [sys.executable, "-m", "tokenrelay", role, "--api-keys-file", str(keys), "--port", "0"],
            check=False, env=env, capture_output=True, timeout=60,
        )  # fmt: skip
        assert done.returncode != 0
        assert TOKEN_SECRET_ENV.encode() in done.stderr, done.stderr
