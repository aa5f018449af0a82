"""The gateway's HTTP and WebSocket shell over :class:`~gateway.streams.StreamManager`."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web
from aiohttp.typedefs import Middleware
from nats.aio.client import Client as NATS

from gateway import control
from gateway.admission import Admission
from gateway.metrics import GatewayMetrics
from gateway.requests import stream_request
from gateway.streams import StopResult, StreamManager
from tokenrelay import natsio, subjects
from tokenrelay.codec import parse_json_object
from tokenrelay.config import GatewayConfig
from tokenrelay.errors import BadRequest, NotFound, TokenRelayError
from tokenrelay.messages import StreamRecord
from tokenrelay.service import add_ops_routes, auth_middleware, errors_middleware, json_response, serve

log = logging.getLogger(__name__)

CONFIG_KEY = web.AppKey("config", GatewayConfig)
STREAMS_KEY = web.AppKey("streams", StreamManager)
METRICS_KEY = web.AppKey("metrics", GatewayMetrics)
WS_HEARTBEAT_S = 30.0


def _urls(config: GatewayConfig, stream_id: str) -> dict[str, str]:
    base = config.base_url()
    ws_base = "ws" + base.removeprefix("http")
    return {
        "events_url": f"{config.streamer_url.rstrip('/')}/v1/streams/{stream_id}/events",
        "control_url": f"{ws_base}/v1/control",
        "stop_url": f"{base}/v1/streams/{stream_id}/stop",
    }


def _stop_body(result: StopResult) -> dict[str, Any]:
    reason = str(result.finish_reason) if result.finish_reason is not None else None
    return {"id": result.stream_id, "finish_reason": reason, "tokens": result.tokens}


def _status_body(record: StreamRecord) -> dict[str, Any]:
    return {
        "id": record.stream_id,
        "state": str(record.state),
        "model": record.model,
        "created": record.created,
        "finish_reason": str(record.finish_reason) if record.finish_reason is not None else None,
        "tokens": record.tokens,
        "ttft_ms": record.ttft_ms,
        "error_code": record.error_code,
        "cancel_reason": str(record.cancel_reason) if record.cancel_reason is not None else None,
    }


async def create_stream(request: web.Request) -> web.Response:
    """``POST /v1/streams`` -> 201 with the stream's id and URLs."""
    config, streams = request.app[CONFIG_KEY], request.app[STREAMS_KEY]
    streams.check_admission()  # at capacity: 503 before the body is even read
    body = parse_json_object(await request.read())
    record = await streams.create(stream_request(config, body))
    return json_response({"id": record.stream_id, **_urls(config, record.stream_id)}, status=201)


async def stream_status(request: web.Request) -> web.Response:
    """``GET /v1/streams/{id}`` -> state, finish reason, tokens, TTFT."""
    record = await request.app[STREAMS_KEY].record(request.match_info["id"])
    return json_response(_status_body(record))


async def stop_stream(request: web.Request) -> web.Response:
    """``POST /v1/streams/{id}/stop`` -> the final state once generation halted."""
    return json_response(_stop_body(await request.app[STREAMS_KEY].stop(request.match_info["id"])))


class ControlSession:
    """One control WebSocket: each message is handled in its own task, replies are serialised."""

    def __init__(self, app: web.Application, ws: web.WebSocketResponse) -> None:
        self._config = app[CONFIG_KEY]
        self._streams = app[STREAMS_KEY]
        self._metrics = app[METRICS_KEY]
        self._ws = ws
        self._send_lock = asyncio.Lock()
        self._inflight = asyncio.Semaphore(self._config.max_control_inflight)
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Read messages until the client closes; bounded concurrency applies backpressure to reads."""
        try:
            async for msg in self._ws:
                if msg.type is WSMsgType.TEXT:
                    await self._inflight.acquire()
                    task = asyncio.create_task(self._handle(msg.data))
                    self._tasks.add(task)
                    task.add_done_callback(self._done)
                elif msg.type is WSMsgType.BINARY:
                    await self._send(control.error_reply(BadRequest("binary messages are not supported"), None))
        finally:
            for task in self._tasks:
                task.cancel()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._inflight.release()

    async def _handle(self, text: str) -> None:
        ref: control.Ref = None
        try:
            command = control.parse_command(text)
            ref = command.ref
            self._metrics.control_messages.labels(type=type(command).__name__.lower()).inc()
            await self._send(await self._execute(command))
        except control.ControlError as exc:
            self._metrics.errors.labels(code=str(exc.code)).inc()
            await self._send(control.error_reply(exc, exc.ref))
        except TokenRelayError as exc:
            self._metrics.errors.labels(code=str(exc.code)).inc()
            await self._send(control.error_reply(exc, ref))
        except ConnectionResetError:
            pass

    async def _execute(self, command: control.Command) -> str:
        if isinstance(command, control.Start):
            record = await self._streams.create(stream_request(self._config, command.body))
            urls = _urls(self._config, record.stream_id)
            return control.reply("started", command.ref, stream_id=record.stream_id, events_url=urls["events_url"])
        if isinstance(command, control.Stop):
            result = await self._streams.stop(command.stream_id)
            body = _stop_body(result)
            return control.reply(
                "stopped", command.ref, stream_id=result.stream_id,
                tokens=body["tokens"], finish_reason=body["finish_reason"], halted_ts=result.halted_ts,
            )  # fmt: skip
        await self._streams.feedback(command.stream_id, command.rating, command.comment)
        return control.reply("ack", command.ref, stream_id=command.stream_id)

    async def _send(self, text: str) -> None:
        if self._ws.closed:
            return
        async with self._send_lock:
            await self._ws.send_str(text)


async def control_socket(request: web.Request) -> web.WebSocketResponse:
    """``WS /v1/control``: start, stop and feedback messages (see :mod:`gateway.control`)."""
    config = request.app[CONFIG_KEY]
    ws = web.WebSocketResponse(heartbeat=WS_HEARTBEAT_S, max_msg_size=config.max_ws_message_bytes)
    await ws.prepare(request)
    metrics = request.app[METRICS_KEY]
    metrics.control_sockets.inc()
    try:
        await ControlSession(request.app, ws).run()
    finally:
        metrics.control_sockets.dec()
    return ws


STATIC_DIR = Path(__file__).with_name("static")
STATIC_ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}
"""The chat page's assets by name: only these are served; no file path is ever built from a request."""


def _static_file(name: str, content_type: str, headers: dict[str, str] | None = None) -> web.FileResponse:
    # no-cache: browsers revalidate (ETag / Last-Modified), so a new release is picked up at once.
    base = {"Content-Type": f"{content_type}; charset=utf-8", "Cache-Control": "no-cache"}
    return web.FileResponse(STATIC_DIR / name, headers={**base, "X-Content-Type-Options": "nosniff", **(headers or {})})


def _page_policy(config: GatewayConfig) -> str:
    """The page's Content-Security-Policy: its own files, its control socket, and the streamer's events."""
    streamer = urlsplit(config.streamer_url)
    return (
        f"default-src 'self'; connect-src 'self' {streamer.scheme}://{streamer.netloc}; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


async def chat_page(request: web.Request) -> web.FileResponse:
    """``GET /``: the browser chat page (``gateway/static/index.html``)."""
    policy = _page_policy(request.app[CONFIG_KEY])
    return _static_file("index.html", "text/html", {"Content-Security-Policy": policy})


async def static_asset(request: web.Request) -> web.FileResponse:
    """``GET /static/{name}``: one of the chat page's assets."""
    name = request.match_info["name"]
    if name not in STATIC_ASSETS:
        raise NotFound(f"no static file named {name!r}")
    return _static_file(name, STATIC_ASSETS[name])


def make_app(config: GatewayConfig, streams: StreamManager, metrics: GatewayMetrics, nc: NATS) -> web.Application:
    """The gateway application around a started :class:`StreamManager`."""
    middlewares: list[Middleware] = [errors_middleware]
    if config.api_keys is not None:  # the page and its assets are public; everything it calls is not
        middlewares.append(auth_middleware(config.api_keys, open_paths={"/"}, open_prefixes=("/static/",)))
    app = web.Application(middlewares=middlewares, client_max_size=config.max_body_bytes)
    app[CONFIG_KEY], app[STREAMS_KEY], app[METRICS_KEY] = config, streams, metrics
    app.router.add_post("/v1/streams", create_stream)
    app.router.add_get("/v1/streams/{id}", stream_status)
    app.router.add_post("/v1/streams/{id}/stop", stop_stream)
    app.router.add_get("/v1/control", control_socket)
    app.router.add_get("/", chat_page)
    app.router.add_get("/static/{name}", static_asset)

    def ready() -> str | None:
        if not nc.is_connected:
            return "not connected to NATS"
        return None if streams.live_runners() else "no runner is available"

    add_ops_routes(app, metrics.registry, ready, errors=metrics.errors)
    return app


async def run(config: GatewayConfig) -> None:
    """Run one gateway until SIGINT/SIGTERM."""
    gateway_id = subjects.new_node_id("gateway")
    nc = await natsio.connect(config.nats_url, name=gateway_id)
    js = nc.jetstream()
    await natsio.ensure_events_stream(js, config.history)
    await natsio.ensure_feedback_stream(js)
    kv = await natsio.ensure_streams_bucket(js, config.history)
    metrics = GatewayMetrics()
    streams = StreamManager(config, nc=nc, kv=kv, metrics=metrics, gateway_id=gateway_id)
    await streams.start()
    admission = Admission(config, nc=nc, streams=streams)
    await admission.start()
    try:
        await serve(make_app(config, streams, metrics, nc), config.host, config.port, name=gateway_id)
    finally:
        await admission.close()
        await streams.close()
        await nc.drain()
