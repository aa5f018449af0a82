"""The gateway's HTTP and WebSocket shell over :class:`~tokenrelay.gateway.streams.StreamManager`."""

from __future__ import annotations

import asyncio
import functools
import html
import logging
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.typedefs import Middleware
from nats.aio.client import Client as NATS

from tokenrelay.gateway import control
from tokenrelay.gateway.actions import StopResult
from tokenrelay.gateway.admission import Admission
from tokenrelay.gateway.metrics import GatewayMetrics
from tokenrelay.gateway.requests import stream_request
from tokenrelay.gateway.streams import StreamManager
from tokenrelay.runtime import natsio
from tokenrelay.runtime.config import GatewayConfig
from tokenrelay.runtime.service import (
    Handler,
    add_ops_routes,
    auth_middleware,
    errors_middleware,
    json_response,
    request_tenant,
    resource_of,
    serve,
    token_grant,
)
from tokenrelay.runtime.tokens import Scope
from tokenrelay.wire import subjects
from tokenrelay.wire.codec import parse_json_object
from tokenrelay.wire.errors import BadRequest, ErrorCode, Forbidden, NotFound, TokenRelayError
from tokenrelay.wire.messages import StreamRecord

log = logging.getLogger(__name__)

CONFIG_KEY = web.AppKey("config", GatewayConfig)
STREAMS_KEY = web.AppKey("streams", StreamManager)
METRICS_KEY = web.AppKey("metrics", GatewayMetrics)
SOCKETS_KEY = web.AppKey("control_sockets", dict[web.WebSocketResponse, "ControlSession"])
"""The control sockets open now (closed with 1012 when the gateway drains)."""
DRAIN_TIMEOUT_S = 10.0
"""How long a draining gateway waits for the streams queued in it to reach a runner."""
DRAIN_POLL_S = 0.05
WS_HEARTBEAT_S = 30.0
CONTROL_RESOURCE = "/v1/control"
STOP_RESOURCE = "/v1/streams/{id}/stop"


def _control_url(config: GatewayConfig) -> str:
    return "ws" + config.base_url().removeprefix("http") + CONTROL_RESOURCE


def _urls(config: GatewayConfig, stream_id: str, tenant: str | None) -> dict[str, str]:
    """A new stream's URLs.

    With keys, ``events_url`` and ``stop_url`` each carry a token bound to this stream (valid for
    ``events_token_ttl_s``): a browser reads the stream and stops it without headers, and a page that was
    reloaded, and so no longer holds the key, can still stop the answer it resumed.
    """
    events_url = f"{config.streamer_url.rstrip('/')}/v1/streams/{stream_id}/events"
    stop_url = f"{config.base_url()}/v1/streams/{stream_id}/stop"
    if tenant is not None and config.tokens is not None:
        expires_at = int(time.time() + config.events_token_ttl_s)
        events_url += "?token=" + config.tokens.issue(Scope.EVENTS, stream_id, expires_at=expires_at)
        stop_url += "?token=" + config.tokens.issue(Scope.STOP, stream_id, expires_at=expires_at)
    return {"events_url": events_url, "control_url": _control_url(config), "stop_url": stop_url}


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
        "prompt_tokens": record.prompt_tokens,
        "error_code": record.error_code,
        "cancel_reason": str(record.cancel_reason) if record.cancel_reason is not None else None,
    }


async def create_stream(request: web.Request) -> web.Response:
    """``POST /v1/streams`` -> 201 with the stream's id and URLs."""
    config, streams = request.app[CONFIG_KEY], request.app[STREAMS_KEY]
    streams.check_admission()  # at capacity: 503 before the body is even read
    body = parse_json_object(await request.read())
    tenant = request_tenant(request)
    record = await streams.create(stream_request(config, body), owner=tenant)
    return json_response({"id": record.stream_id, **_urls(config, record.stream_id, tenant)}, status=201)


async def stream_status(request: web.Request) -> web.Response:
    """``GET /v1/streams/{id}`` -> state, finish reason, tokens, TTFT (``not_found`` for another key's stream)."""
    record = await request.app[STREAMS_KEY].owned_record(request.match_info["id"], request_tenant(request))
    return json_response(_status_body(record))


async def stop_stream(request: web.Request) -> web.Response:
    """``POST /v1/streams/{id}/stop`` -> the final state once generation halted.

    Only its owner may: by its key, or (with no key presented) by the ``stop`` token of this very stream
    that ``stop_url`` carries, which only the owner was ever given.
    """
    config, stream_id = request.app[CONFIG_KEY], request.match_info["id"]
    tenant = request_tenant(request)
    if tenant is None and config.api_keys is not None:
        token_grant(request, config.tokens, Scope.STOP, subject=stream_id)  # 401 unless it is this stream's
    stopped = await request.app[STREAMS_KEY].stop(stream_id, tenant=tenant)
    return json_response(_stop_body(stopped))


async def control_token(request: web.Request) -> web.Response:
    """``POST /v1/control/token`` -> a short-lived token that opens the control socket (``?token=``) as this key.

    For browsers, which cannot put an ``Authorization`` header on a WebSocket.  Without API keys there is
    nothing to prove: the token is ``null`` and the socket opens without one.
    """
    config, tenant = request.app[CONFIG_KEY], request_tenant(request)
    if tenant is None or config.tokens is None:
        return json_response({"token": None, "expires_at": None, "control_url": _control_url(config)})
    expires_at = int(time.time() + config.control_token_ttl_s)
    token = config.tokens.issue(Scope.CONTROL, tenant, expires_at=expires_at)
    body = {"token": token, "expires_at": expires_at, "control_url": f"{_control_url(config)}?token={quote(token)}"}
    return json_response(body)


class ControlSession:
    """One control WebSocket: each message is handled in its own task, replies are serialised."""

    def __init__(self, app: web.Application, ws: web.WebSocketResponse, tenant: str | None) -> None:
        self._config = app[CONFIG_KEY]
        self._tenant = tenant
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
                    self._metrics.errors.labels(code=str(ErrorCode.BAD_REQUEST)).inc()
                    await self._send(control.error_reply(BadRequest("binary messages are not supported"), None))
        finally:
            for task in self._tasks:
                task.cancel()

    async def settle(self, timeout_s: float) -> None:
        """Wait (up to ``timeout_s``) until the commands being handled now are answered: a draining gateway closes
        the socket only then, so no reply is lost (a client cannot tell whether an unanswered start ran)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._tasks and loop.time() < deadline:  # those that arrive meanwhile (refused at once) too
            await asyncio.wait(set(self._tasks), timeout=deadline - loop.time())

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
        tenant = self._tenant
        if tenant is not None and not isinstance(command, control.Stop):  # a stop is never refused for rate
            self._streams.quotas.check_rate(tenant, time.monotonic())
        if isinstance(command, control.Start):
            record = await self._streams.create(stream_request(self._config, command.body), owner=tenant)
            urls = _urls(self._config, record.stream_id, tenant)
            return control.reply(
                "started", command.ref,
                stream_id=record.stream_id, events_url=urls["events_url"], stop_url=urls["stop_url"],
            )  # fmt: skip
        if isinstance(command, control.Stop):
            result = await self._streams.stop(command.stream_id, tenant=tenant)
            body = _stop_body(result)
            return control.reply(
                "stopped", command.ref, stream_id=result.stream_id,
                tokens=body["tokens"], finish_reason=body["finish_reason"], halted_ts=result.halted_ts,
            )  # fmt: skip
        await self._streams.feedback(command.stream_id, command.rating, command.comment, tenant=tenant)
        return control.reply("ack", command.ref, stream_id=command.stream_id)

    async def _send(self, text: str) -> None:
        if self._ws.closed:
            return
        async with self._send_lock:
            await self._ws.send_str(text)


def _socket_tenant(request: web.Request) -> str | None:
    """The control socket's tenant: from the API key, else from a ``control`` token in ``?token=``."""
    config = request.app[CONFIG_KEY]
    tenant = request_tenant(request)
    if tenant is not None or config.api_keys is None:
        return tenant
    return token_grant(request, config.tokens, Scope.CONTROL).subject


async def control_socket(request: web.Request) -> web.WebSocketResponse:
    """``WS /v1/control``: start, stop and feedback messages (see :mod:`tokenrelay.gateway.control`).

    Refused before the upgrade: a page from an origin that is not allowed (403 ``forbidden``), no key or
    token (401), a key at its limit of control sockets (429).
    """
    config, streams = request.app[CONFIG_KEY], request.app[STREAMS_KEY]
    if not control.origin_allowed(request.headers.get("Origin"), host=request.host, allowed=_own_origins(config)):
        raise Forbidden("pages from this origin may not open the control socket")
    tenant = _socket_tenant(request)
    if tenant is not None:
        streams.quotas.socket_opened(tenant)
    try:
        # aiohttp refuses a message of max_msg_size bytes or more; ours is the largest allowed size, inclusive.
        ws = web.WebSocketResponse(heartbeat=WS_HEARTBEAT_S, max_msg_size=config.max_ws_message_bytes + 1)
        await ws.prepare(request)
        metrics, sockets = request.app[METRICS_KEY], request.app[SOCKETS_KEY]
        metrics.control_sockets.inc()
        session = sockets[ws] = ControlSession(request.app, ws, tenant)
        try:
            await session.run()
        finally:
            sockets.pop(ws, None)
            metrics.control_sockets.dec()
    finally:
        if tenant is not None:
            streams.quotas.socket_closed(tenant)
    return ws


STATIC_DIR = Path(__file__).with_name("static")
STATIC_ASSETS = {
    "app.js": "text/javascript",
    "markdown.js": "text/javascript",
    "memory.js": "text/javascript",
    "style.css": "text/css",
    "vendor/marked.umd.js": "text/javascript",
    "vendor/purify.min.js": "text/javascript",
}
"""The chat page's assets by name (``vendor/``: third-party files, see ``static/vendor/VENDORED.md``): only these are
served; no file path is ever built from a request."""
STREAMER_URL_META = '<meta name="tokenrelay-streamer-url" content="">'
"""The page's placeholder for the streamer's public URL, filled in when the page is served (the model picker reads
the streamer's ``GET /v1/models`` before any stream names the streamer)."""


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


@functools.cache
def _page_template() -> str:
    # Read once: the page is a few kilobytes and changes only with a release.
    return (STATIC_DIR / "index.html").read_text(encoding="utf-8")


def page_html(streamer_url: str) -> str:
    """The chat page with the streamer's public URL in its ``tokenrelay-streamer-url`` meta tag (HTML-escaped)."""
    filled = STREAMER_URL_META.replace('content=""', f'content="{html.escape(streamer_url, quote=True)}"')
    return _page_template().replace(STREAMER_URL_META, filled, 1)


async def chat_page(request: web.Request) -> web.Response:
    """``GET /``: the browser chat page (``gateway/static/index.html``, the streamer's URL filled in)."""
    config = request.app[CONFIG_KEY]
    headers = {
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": _page_policy(config),
    }
    return web.Response(text=page_html(config.streamer_url), content_type="text/html", headers=headers)


async def static_asset(request: web.Request) -> web.FileResponse:
    """``GET /static/{name}``: one of the chat page's assets."""
    name = request.match_info["name"]
    if name not in STATIC_ASSETS:
        raise NotFound(f"no static file named {name!r}")
    return _static_file(name, STATIC_ASSETS[name])


def _rate_middleware(streams: StreamManager) -> Middleware:
    """Count each keyed request against its key's rate (a stop never counts; control messages count one by one)."""

    @web.middleware
    async def rate(request: web.Request, handler: Handler) -> web.StreamResponse:
        tenant = request_tenant(request)
        if tenant is not None and resource_of(request) != STOP_RESOURCE:
            streams.quotas.check_rate(tenant, time.monotonic())
        return await handler(request)

    return rate


def _own_origins(config: GatewayConfig) -> tuple[str, ...]:
    """The allowed control-socket origins: the configured ones and the gateway's public URL's."""
    public = urlsplit(config.base_url())
    return (*(origin.lower() for origin in config.control_allow_origins), f"{public.scheme}://{public.netloc}".lower())


def make_app(config: GatewayConfig, streams: StreamManager, metrics: GatewayMetrics, nc: NATS) -> web.Application:
    """The gateway application around a started :class:`StreamManager`."""
    middlewares: list[Middleware] = [errors_middleware]
    if config.api_keys is not None:  # the page and its assets are public; everything it calls is not
        middlewares.append(
            auth_middleware(
                config.api_keys,
                open_paths={"/"},
                open_prefixes=("/static/",),
                token_resources={CONTROL_RESOURCE, STOP_RESOURCE},
            )
        )
        middlewares.append(_rate_middleware(streams))
    app = web.Application(middlewares=middlewares, client_max_size=config.max_body_bytes)
    app[CONFIG_KEY], app[STREAMS_KEY], app[METRICS_KEY] = config, streams, metrics
    app[SOCKETS_KEY] = {}
    app.router.add_post("/v1/streams", create_stream)
    app.router.add_get("/v1/streams/{id}", stream_status)
    app.router.add_post("/v1/streams/{id}/stop", stop_stream)
    app.router.add_post("/v1/control/token", control_token)
    app.router.add_get(CONTROL_RESOURCE, control_socket)
    app.router.add_get("/", chat_page)
    app.router.add_get("/static/{name:.+}", static_asset)  # a name may hold "/" (vendor/...)

    def ready() -> str | None:
        if streams.draining:
            return "draining: admitting no new stream"
        if not nc.is_connected:
            return "not connected to NATS"
        return None if streams.live_runners() else "no runner is available"

    add_ops_routes(app, metrics.registry, ready, errors=metrics.errors)
    return app


async def run(config: GatewayConfig) -> None:
    """Run one gateway until SIGINT/SIGTERM."""
    gateway_id = subjects.new_node_id("gateway")
    nc = await natsio.connect(config.nats_url, name=gateway_id)
    config = replace(config, history=natsio.replicated(nc, config.history))
    js = nc.jetstream()
    await natsio.ensure_events_stream(js, config.history)
    await natsio.ensure_feedback_stream(js, replicas=config.history.replicas)
    kv = await natsio.ensure_streams_bucket(js, config.history)
    store = await natsio.ensure_payload_store(js, config.history)
    jobs = await natsio.ensure_jobs_bucket(js, config.history) if config.max_migrations > 0 else None
    metrics = GatewayMetrics()
    streams = StreamManager(config, nc=nc, kv=kv, metrics=metrics, gateway_id=gateway_id, payloads=store, jobs=jobs)
    await streams.start()
    await heard_from_runners(streams, timeout_s=config.runner_stale_after_s)
    admission = Admission(config, nc=nc, streams=streams, payloads=store)
    await admission.start()
    app = make_app(config, streams, metrics, nc)

    async def on_signal(received: signal.Signals) -> None:
        if received is signal.SIGTERM:
            await drain(app, admission)

    try:
        await serve(app, config.host, config.port, name=gateway_id, on_signal=on_signal)
    finally:
        await admission.close()
        await streams.close()
        await nc.drain()


async def heard_from_runners(streams: StreamManager, *, timeout_s: float) -> None:
    """Wait (up to ``timeout_s``) for a runner's first heartbeat before serving: a gateway that starts beside running
    runners (a restart behind a load balancer) would otherwise answer every stream it is sent in its first second
    ``unavailable``, as if there were no runner.  With no runner at all it serves after ``timeout_s`` all the same."""
    for _ in range(round(timeout_s / DRAIN_POLL_S)):
        if streams.live_runners():
            return
        await asyncio.sleep(DRAIN_POLL_S)


async def drain(app: web.Application, admission: Admission) -> None:
    """SIGTERM: admit nothing more (``/readyz`` 503, ``shutting_down`` to a new stream, the streamers' admissions
    left to the other gateways), let what waits in this gateway's queue reach a runner (for up to
    :data:`DRAIN_TIMEOUT_S`), answer the control commands in flight, then close the control sockets with 1012
    (service restart): their clients open the next one on another gateway.  Requests in progress are answered as the
    server stops."""
    streams = app[STREAMS_KEY]
    streams.draining = True
    await admission.close()
    for _ in range(round(DRAIN_TIMEOUT_S / DRAIN_POLL_S)):
        if not streams.dispatch.queued:
            break
        await asyncio.sleep(DRAIN_POLL_S)
    sessions = list(app[SOCKETS_KEY].items())
    # Commands in flight are answered first (new ones meanwhile are refused shutting_down, which a client may send
    # again on its next socket: nothing was done).
    await asyncio.gather(*(session.settle(DRAIN_TIMEOUT_S) for _, session in sessions))
    for ws, _ in sessions:
        await ws.close(code=WSCloseCode.SERVICE_RESTART, message=b"the gateway is restarting; reconnect")
