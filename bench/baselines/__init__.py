"""Baselines for the load benchmarks: the least a token relay can cost, and what most people build.

Both speak the small subset of tokenrelay's native API that a load generator needs, so the same
load drives them unchanged and every tokenrelay result can be reported as a ratio against them:

* ``POST /v1/streams`` ``{"prompt", "max_tokens"}`` -> ``201 {"id", "events_url"}``;
* ``GET /v1/streams/{id}/events`` -> ``start`` (id ``e:0``), ``delta`` (id ``e:<index>``,
  ``{"text", "index", "ts"}``), then ``stop`` (``{"finish_reason", "tokens", "ttft_ms"}``);
* ``POST /v1/streams/{id}/stop`` -> ``200 {"id", "finish_reason": "cancelled", "tokens"}``;
* ``GET /healthz``; ``GET /metrics`` with ``process_*`` and ``tokenrelay_streamer_readers_open``.

Left out on purpose: messages, models, the control WebSocket, resume, several readers per stream,
heartbeats, history, slow-reader handling.  A stream is read once: its first ``GET`` takes it.

This module holds what both baselines share: request parsing, token pacing, SSE frames, the
ops routes and the serve loop.  :mod:`bench.baselines.common` starts them as processes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import secrets
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from tokenrelay.runner.engines.steps import StepClock
from tokenrelay.runner.engines.synthetic import iter_synthetic_tokens, paced, prompt_text
from tokenrelay.runtime.config import DEFAULT_SYNTHETIC_STEP_MS
from tokenrelay.wire.content import ChatMessage

DEFAULT_TTFT_MS = 0.0
"""Delay before a stream's first token, in milliseconds."""
DEFAULT_TOKENS_PER_S = 20.0
"""Pace of the tokens after the first; 0 means as fast as the event loop goes."""
DEFAULT_MAX_TOKENS = 256
"""A stream's length when the body names none (as on tokenrelay's gateway)."""
MAX_TOKENS_LIMIT = 1_000_000
"""The largest ``max_tokens`` accepted; more answers ``400 bad_request``."""
MAX_PENDING_STREAMS = 100_000
"""Streams created and not yet read that a baseline keeps; past it ``POST`` answers ``503 overloaded``."""
SHUTDOWN_TIMEOUT_S = 1.0
"""How long open responses get to finish on SIGTERM before they are cancelled."""
MODEL = "synthetic"
READERS_OPEN = "tokenrelay_streamer_readers_open"
"""The gauge's name is tokenrelay's streamer's, so a load tool samples both the same way."""

_STREAM_ID = re.compile(r"[0-9a-f]{32}")
log = logging.getLogger("bench.baselines")


def add_event_loop_argument(parser: argparse.ArgumentParser) -> None:
    """``--event-loop asyncio|uvloop``: asyncio's own by default (what the tutorials do); uvloop to compare like
    with like against tokenrelay on uvloop."""
    parser.add_argument(
        "--event-loop", choices=("asyncio", "uvloop"), default="asyncio", help="event loop (default: asyncio)"
    )


class BadRequest(ValueError):
    """A body the baselines do not accept; answered as ``400 bad_request`` with this message."""


@dataclass(frozen=True, slots=True)
class NewStream:
    """A created stream, waiting for its reader."""

    prompt: str
    max_tokens: int
    created: int
    """Unix seconds, as in the ``start`` event."""


@dataclass(frozen=True, slots=True)
class Pacing:
    """The synthetic engine's timing: ``ttft_ms`` before the first token, then ``tokens_per_s`` (in steps)."""

    ttft_ms: float = DEFAULT_TTFT_MS
    tokens_per_s: float = DEFAULT_TOKENS_PER_S
    step_ms: float = DEFAULT_SYNTHETIC_STEP_MS
    """Decode steps shared by every stream of the process, as tokenrelay's synthetic engine makes them."""


def new_stream_id() -> str:
    """32 hex characters, like tokenrelay's stream ids."""
    return secrets.token_hex(16)


def is_stream_id(value: str) -> bool:
    """Whether ``value`` could be a stream id (which also keeps NATS wildcards out of subjects)."""
    return _STREAM_ID.fullmatch(value) is not None


def parse_new_stream(body: bytes, *, max_tokens_limit: int = MAX_TOKENS_LIMIT) -> NewStream:
    """``{"prompt": str, "max_tokens": int}``; raises :class:`BadRequest` naming what is wrong."""
    try:
        fields = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not JSON: {exc}") from None
    if not isinstance(fields, dict) or not isinstance(fields.get("prompt"), str):
        raise BadRequest("body must be an object with a string 'prompt'")
    max_tokens = fields.get("max_tokens", DEFAULT_MAX_TOKENS)
    if type(max_tokens) is not int or not 1 <= max_tokens <= max_tokens_limit:
        raise BadRequest(f"'max_tokens' must be an integer from 1 to {max_tokens_limit}")
    return NewStream(fields["prompt"], max_tokens, int(time.time()))


def paced_tokens(prompt: str, max_tokens: int, pacing: Pacing, steps: StepClock) -> AsyncIterator[str]:
    """Exactly ``max_tokens`` tokens of the synthetic engine's text for ``prompt``, on its fixed schedule.

    The text is what tokenrelay's runner generates for the same prompt (a one-message chat), released
    as its engine releases them (:func:`~tokenrelay.runner.engines.synthetic.paced`), at the process's shared ``steps``.
    """
    text_key = prompt_text((ChatMessage(role="user", content=prompt),))
    tokens = iter_synthetic_tokens(text_key, max_tokens=max_tokens, length_tokens=max_tokens)
    return paced(tokens, ttft_ms=pacing.ttft_ms, tokens_per_s=pacing.tokens_per_s, steps=steps)


def sse_frame(event: str, event_id: str, data: dict[str, Any]) -> bytes:
    """One SSE event; ``data`` is one line because orjson escapes every line break (WHATWG SSE §9.2.6)."""
    return b"event: %s\nid: %s\ndata: %s\n\n" % (event.encode(), event_id.encode(), orjson.dumps(data))


def error_frame(code: str, message: str) -> bytes:
    """An ``error`` event (no id: it ends the stream, and no cursor follows it)."""
    return b"event: error\ndata: %s\n\n" % orjson.dumps({"code": code, "message": message})


def start_data(stream_id: str, created: int) -> dict[str, Any]:
    """The ``start`` event's data."""
    return {"stream_id": stream_id, "model": MODEL, "created": created}


def delta_data(text: str, index: int) -> dict[str, Any]:
    """A ``delta`` event's data, stamped now (wall clock, so a client on this machine measures lag)."""
    return {"text": text, "index": index, "ts": time.time()}


def stop_data(finish_reason: str, tokens: int, ttft_ms: float | None) -> dict[str, Any]:
    """The ``stop`` event's data."""
    return {"finish_reason": finish_reason, "tokens": tokens, "ttft_ms": ttft_ms}


def json_response(body: Any, *, status: int = 200) -> web.Response:
    """A JSON response encoded with orjson."""
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def error_response(status: int, code: str, message: str) -> web.Response:
    """tokenrelay's error shape: ``{"error": {"code", "message"}}``."""
    return json_response({"error": {"code": code, "message": message}}, status=status)


def created_response(request: web.Request, stream_id: str) -> web.Response:
    """``201 {"id", "events_url"}``, the events URL absolute on the server that was asked."""
    events_url = f"{request.url.origin()}/v1/streams/{stream_id}/events"
    return json_response({"id": stream_id, "events_url": events_url}, status=201)


class Metrics:
    """One registry per process: ``process_*`` (RSS, CPU seconds...) and the open-readers gauge."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.readers_open = Gauge(READERS_OPEN, "SSE readers connected now", registry=self.registry)

    async def handle(self, _: web.Request) -> web.Response:
        """``GET /metrics``: Prometheus text."""
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(_: web.Request) -> web.Response:
    """``GET /healthz``: the process serves HTTP."""
    return json_response({"status": "ok"})


def add_ops_routes(app: web.Application, metrics: Metrics) -> None:
    """Mount ``/healthz`` and ``/metrics``."""
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics.handle)


async def serve(
    app: web.Application, host: str, port: int, *, cancel_on_disconnect: bool = True, backlog: int = 128
) -> None:
    """Serve ``app`` until SIGINT or SIGTERM; ``cancel_on_disconnect`` cancels a handler whose client left;
    ``backlog``: the listen queue (aiohttp's default unless a baseline must match tokenrelay's)."""
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, handler_cancellation=cancel_on_disconnect,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
    )  # fmt: skip
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=backlog, reuse_address=True).start()
    log.info("listening on http://%s:%s", host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


class Baseline:
    """What the baselines do alike: ``POST /v1/streams`` records a stream (for its reader to start, unless
    :meth:`created` starts it).

    Subclasses serve ``GET /v1/streams/{id}/events`` (:meth:`events`) and ``POST .../stop`` (:meth:`stop`).
    """

    def __init__(self, metrics: Metrics, *, max_pending_streams: int = MAX_PENDING_STREAMS) -> None:
        self.metrics = metrics
        self.max_pending_streams = max_pending_streams
        """Streams created and not yet read; past it ``POST`` answers ``503 overloaded``."""
        self.pending: dict[str, NewStream] = {}

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/streams", self.create)
        app.router.add_get("/v1/streams/{id}/events", self.events)
        app.router.add_post("/v1/streams/{id}/stop", self.stop)

    async def create(self, request: web.Request) -> web.Response:
        """``POST /v1/streams``: record the stream; its reader starts it."""
        try:
            stream = parse_new_stream(await request.read())
        except BadRequest as exc:
            return error_response(400, "bad_request", str(exc))
        if len(self.pending) >= self.max_pending_streams:
            return error_response(503, "overloaded", f"{self.max_pending_streams} streams wait for a reader")
        stream_id = new_stream_id()
        self.pending[stream_id] = stream
        await self.created(stream_id, stream)
        return created_response(request, stream_id)

    async def created(self, stream_id: str, stream: NewStream) -> None:
        """A stream was recorded, before its ``201`` goes out (nothing by default: its reader starts it)."""

    async def events(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError

    async def stop(self, request: web.Request) -> web.Response:
        raise NotImplementedError
