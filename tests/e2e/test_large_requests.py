"""Requests larger than one NATS message: a 5 MB image passes end to end, whole, through the native API and the
OpenAI SDK (the job, and the streamer's start request, leave their content in the payload store), every role as
its own NATS user with only the permissions of ``deploy/nats-auth.conf``; an image over ``--max-image-bytes`` is
``413 payload_too_large``; and the store keeps nothing once the streams are done."""

from __future__ import annotations

import base64
import hashlib
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import openai
import orjson
import pytest
from aiohttp import web

from tests.e2e.test_nats_security import ROLES, auth_config, configured_nats, role_credentials, violations
from tests.helpers import eventually
from tokenrelay.cli.supervisor import free_port
from tokenrelay.runtime import natsio
from tokenrelay.runtime.natsauth import NatsSecurity
from tokenrelay.testing.fake_openai import served_in_thread
from tokenrelay.testing.http import post
from tokenrelay.testing.procs import NatsServer, System, start_role, stop_process, system
from tokenrelay.testing.sse import read_stream
from tokenrelay.testing.synthetic import synthetic_args
from tokenrelay.wire import subjects

IMAGE_BYTES = 5_000_000
"""A 5 MB image: its data URL (6.7 MB of base64) is far over NATS' default max_payload of 1 MiB."""
MAX_IMAGE_BYTES = 5 << 20
UPSTREAM_MODEL = "relay-model"
SYNTHETIC_MODEL = "synthetic"
BODY_LIMIT_BYTES = 64 << 20
"""The recording upstream's own body limit (aiohttp's default is 1 MiB)."""


def image_url(size: int) -> str:
    return "data:image/png;base64," + base64.b64encode(secrets.token_bytes(size)).decode()


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def conversation(url: str) -> Any:
    """A user message with a text part and the image (typed ``Any``: the SDK takes it as its message param)."""
    content = [{"type": "text", "text": "what is in this picture?"}, {"type": "image_url", "image_url": {"url": url}}]
    return [{"role": "user", "content": content}]


@dataclass
class RecordingUpstream:
    """An OpenAI-compatible upstream that records the image URLs of each request it gets and answers one word."""

    images: list[str] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=BODY_LIMIT_BYTES)
        app.router.add_post("/v1/chat/completions", self._completions)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/v1"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        for message in body["messages"]:
            parts = message["content"] if isinstance(message["content"], list) else []
            self.images += [part["image_url"]["url"] for part in parts if part["type"] == "image_url"]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunk = {"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "ok"}}]}
        await response.write(b"data: " + orjson.dumps(chunk) + b"\n\ndata: [DONE]\n\n")
        return response


@dataclass
class Secured:
    """A system on a nats-server that enforces ``deploy/nats-auth.conf``, its upstream, and the roles' passwords."""

    sut: System
    server: NatsServer
    upstream: RecordingUpstream
    passwords: dict[str, str]


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    """The recording upstream on its own event loop in a thread, for the whole module."""
    with served_in_thread(RecordingUpstream()) as fake:
        yield fake


@pytest.fixture(scope="module")
def secured(upstream: RecordingUpstream) -> Iterator[Secured]:
    """``openai`` runners on the recording upstream and a synthetic runner, every role as its own NATS user."""
    passwords = {role: secrets.token_urlsafe(18) for role in ROLES}
    runner = ["--engine", "openai", "--upstream-url", upstream.url, "--upstream-model", UPSTREAM_MODEL]
    gateway = ["--max-image-bytes", str(MAX_IMAGE_BYTES)]
    runner_env = role_credentials("runner", passwords)
    with (
        configured_nats(auth_config(passwords)) as server,
        system(
            server.url, runner_args=runner, gateway_args=gateway,
            role_env={role: role_credentials(role, passwords) for role in ("gateway", "runner", "streamer")},
        ) as sut,
        tempfile.TemporaryDirectory(prefix="tokenrelay-test-logs-") as logs,
    ):  # fmt: skip
        synthetic = start_role(
            "runner", server.url, logs, "synthetic", synthetic_args(tokens_per_s=0, length_tokens=8), env=runner_env
        )
        try:
            yield Secured(sut, server, upstream, passwords)
        finally:
            stop_process(synthetic.process)


def sdk(sut: System) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{sut.streamer_url}/v1", api_key="not-checked", max_retries=0)


async def test_a_5_mb_image_reaches_the_upstream_whole_through_the_native_api(secured: Secured) -> None:
    url = image_url(IMAGE_BYTES)
    body = {"model": UPSTREAM_MODEL, "messages": conversation(url), "max_tokens": 5}
    status, created = await post(f"{secured.sut.gateway_url}/v1/streams", body)
    assert status == 201, created
    stream = await read_stream(created["events_url"])
    assert (stream.text, stream.terminal.event) == ("ok", "stop"), stream.terminal.json()
    received = secured.upstream.images[-1]
    assert (len(received), digest(received)) == (len(url), digest(url))


async def test_a_5_mb_image_reaches_the_upstream_whole_through_the_openai_sdk(secured: Secured) -> None:
    url = image_url(IMAGE_BYTES)
    chunks = [
        chunk
        async for chunk in await sdk(secured.sut).chat.completions.create(
            model=UPSTREAM_MODEL, messages=conversation(url), max_tokens=5, stream=True
        )
    ]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "ok"
    received = secured.upstream.images[-1]
    assert (len(received), digest(received)) == (len(url), digest(url))


async def test_a_5_mb_image_passes_to_the_synthetic_engine_on_both_apis(secured: Secured) -> None:
    messages = conversation(image_url(IMAGE_BYTES))
    body = {"model": SYNTHETIC_MODEL, "messages": messages}
    status, created = await post(f"{secured.sut.gateway_url}/v1/streams", body)
    assert status == 201, created
    assert (await read_stream(created["events_url"])).terminal.json()["finish_reason"] == "stop"
    answer = await sdk(secured.sut).chat.completions.create(model=SYNTHETIC_MODEL, messages=messages)
    assert answer.choices[0].finish_reason == "stop" and answer.choices[0].message.content


async def test_an_image_over_max_image_bytes_is_payload_too_large_on_both_apis(secured: Secured) -> None:
    messages = conversation(image_url(MAX_IMAGE_BYTES + 1))
    status, body = await post(f"{secured.sut.gateway_url}/v1/streams", {"model": UPSTREAM_MODEL, "messages": messages})
    assert (status, body["error"]["code"]) == (413, "payload_too_large"), body
    with pytest.raises(openai.APIStatusError) as refused:
        await sdk(secured.sut).chat.completions.create(model=UPSTREAM_MODEL, messages=messages)
    assert refused.value.status_code == 413
    assert refused.value.body["code"] == "payload_too_large"  # type: ignore[index]


async def test_no_role_needs_a_subject_it_is_not_granted_and_the_store_is_emptied(secured: Secured) -> None:
    assert violations(secured.server.log_path) == [], "a role used a subject its user may not"
    gateway = NatsSecurity.from_env(role_credentials("gateway", secured.passwords))
    nc = await natsio.connect(secured.server.url, name="payload-check", security=gateway)
    try:
        js, stream = nc.jetstream(), f"OBJ_{subjects.PAYLOADS_BUCKET}"

        async def stored_chunks() -> int:
            info = await js.stream_info(stream, subjects_filter=f"$O.{subjects.PAYLOADS_BUCKET}.C.>")
            return sum((info.state.subjects or {}).values())

        # The objects were stored (deletion leaves each one's marker), and no content is left.
        assert (await js.stream_info(stream)).state.messages > 0
        await eventually(stored_chunks, lambda chunks: chunks == 0, what="every stored request content deleted")
    finally:
        await nc.close()
