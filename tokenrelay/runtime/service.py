"""What every HTTP-serving role shares: JSON errors, health, metrics and the serve loop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import resource
import signal
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine
from typing import Any, TypeVar

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware
from nats.errors import Error as NatsError
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from tokenrelay.runtime.accept import DrainingSite
from tokenrelay.runtime.auth import KeyRing, Principal, presented_key
from tokenrelay.runtime.tokens import Grant, Scope, TokenError, TokenSigner
from tokenrelay.wire.errors import STATUS_CODES, ErrorCode, RetryLater, TokenRelayError, Unauthorized, Unavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ReadyCheck = Callable[[], str | None]
"""Returns ``None`` when ready, else the reason it is not."""

REGISTRY_KEY = web.AppKey("metrics_registry", CollectorRegistry)
READY_KEY: web.AppKey[ReadyCheck] = web.AppKey("ready_check")
ERRORS_KEY = web.AppKey("errors_counter", Counter)
"""The role's errors-by-code counter (label ``code``); every error answered over HTTP is counted."""


def count_error(app: web.Application, code: ErrorCode | str) -> None:
    """Count one error answered, if the app has an errors counter."""
    counter = app.get(ERRORS_KEY)
    if counter is not None:
        counter.labels(code=str(code)).inc()


def json_response(body: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response encoded with orjson."""
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json", headers=headers)


def error_response(exc: TokenRelayError) -> web.Response:
    """The contract's error shape; ``overloaded``/``rate_limited`` add ``Retry-After``, ``unauthorized``
    ``WWW-Authenticate``."""
    headers: dict[str, str] | None = None
    if isinstance(exc, RetryLater):
        headers = {"Retry-After": str(exc.retry_after_s)}
    elif isinstance(exc, Unauthorized):
        headers = {"WWW-Authenticate": 'Bearer realm="tokenrelay"'}
    return json_response(exc.to_dict(), status=exc.http_status, headers=headers)


def plain_error(status: int, code: ErrorCode, message: str) -> web.Response:
    """An error response for statuses that have no exception class of their own (405, 413...)."""
    return json_response({"error": {"code": str(code), "message": message}}, status=status)


OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
"""Operations endpoints answer without an API key (keep them off the public network)."""
PRINCIPAL_KEY = web.RequestKey("principal", Principal)


def resource_of(request: web.Request) -> str | None:
    """The route pattern a request matched (``/v1/streams/{id}/events``), ``None`` if none did."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else None


def request_tenant(request: web.Request) -> str | None:
    """The tenant of the request's API key (``None`` without one: no keys configured, or a ``?token=`` request)."""
    principal = request.get(PRINCIPAL_KEY)
    return principal.tenant if principal is not None else None


def token_grant(request: web.Request, signer: TokenSigner | None, scope: Scope, *, subject: str | None = None) -> Grant:
    """What the request's ``?token=`` grants in ``scope`` (for ``subject`` when given), else ``unauthorized``."""
    token = request.query.get("token", "")
    if signer is None or not token:
        raise Unauthorized(f"a valid API key or {scope} token is required")
    try:
        return signer.verify(token, scope, now=time.time(), subject=subject)
    except TokenError:
        raise Unauthorized(f"the {scope} token is not valid (forged, expired or not for this)") from None


def auth_middleware(
    keyring: KeyRing,
    *,
    open_paths: Collection[str] = (),
    open_prefixes: tuple[str, ...] = (),
    token_resources: Collection[str] = (),
) -> Middleware:
    """Every request but the ops endpoints (and ``open_paths``, paths under ``open_prefixes``) needs a configured key.

    A request to one of ``token_resources`` (route patterns) that presents no key but a ``?token=`` is
    passed on without a principal: its handler checks the token, since only it knows what the token
    must grant.  Runs inside :func:`errors_middleware`, so a refusal is the contract's ``401
    unauthorized`` JSON (with ``WWW-Authenticate: Bearer``) and is counted; a WebSocket upgrade is
    refused before it happens.
    """

    open_set = OPEN_PATHS | frozenset(open_paths)
    token_set = frozenset(token_resources)

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in open_set or (open_prefixes and request.path.startswith(open_prefixes)):
            return await handler(request)
        key = presented_key(request.headers.get("Authorization"), request.headers.get("x-api-key"))
        if key is None and token_set and "token" in request.query and resource_of(request) in token_set:
            return await handler(request)
        principal = keyring.authenticate(key)
        if principal is None:
            raise Unauthorized("a valid API key is required (Authorization: Bearer <key>)")
        request[PRINCIPAL_KEY] = principal
        return await handler(request)

    return authenticate


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error into the contract's JSON shape; never leak a traceback to a client."""
    try:
        return await handler(request)
    except TokenRelayError as exc:
        count_error(request.app, exc.code)
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = STATUS_CODES.get(exc.status, ErrorCode.BAD_REQUEST if exc.status < 500 else ErrorCode.INTERNAL)
        count_error(request.app, code)
        return plain_error(exc.status, code, exc.reason)
    except asyncio.CancelledError:
        raise
    except ConnectionResetError:
        transport = request.transport
        if transport is None or transport.is_closing():
            # The client left mid-request (mid-body, say): no one to answer. Handled as aiohttp handles a
            # client that leaves, instead of as a handler failure (a 500 with a traceback in the log).
            raise asyncio.CancelledError from None
        raise
    except NatsError as exc:  # JetStream errors derive from it too
        log.warning("NATS failed during %s %s: %s", request.method, request.path, exc)
        count_error(request.app, ErrorCode.UNAVAILABLE)
        return error_response(Unavailable("the message broker is unavailable; retry shortly"))
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        count_error(request.app, ErrorCode.INTERNAL)
        return plain_error(500, ErrorCode.INTERNAL, "internal error")


async def healthz(_: web.Request) -> web.Response:
    """The process is alive and serving HTTP."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready to serve: connected to NATS, and whatever else the role checks."""
    reason = request.app[READY_KEY]()
    if reason is None:
        return json_response({"status": "ready"})
    return plain_error(503, ErrorCode.UNAVAILABLE, reason)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition of this process's registry."""
    body = generate_latest(request.app[REGISTRY_KEY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_ops_routes(
    app: web.Application, registry: CollectorRegistry, ready: ReadyCheck, *, errors: Counter | None = None
) -> None:
    """Mount ``/healthz``, ``/readyz`` and ``/metrics``; ``errors`` (label ``code``) counts errors answered."""
    app[REGISTRY_KEY] = registry
    app[READY_KEY] = ready
    if errors is not None:
        app[ERRORS_KEY] = errors
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)


GC_YOUNG_OBJECTS = 7_000
"""Container objects allocated (less those freed) between two collections of the young generation (CPython's
default: 700).  At the default a burst of 200 stream starts ran the collector every few starts, every tenth of those
scanned what all the streams in flight held, and two full collections per 1,000 starts stopped the event loop for
13-26 ms each (``python -m bench.starts``: collector CPU per start 50-77 µs in each role, 12-30 µs after)."""


def settle_heap() -> None:
    """Freeze what startup built, which lives as long as the process (no collection scans it again), and collect the
    young generation less often (:data:`GC_YOUNG_OBJECTS`); memory held in reference cycles is freed that much later."""
    gc.collect()  # startup's garbage goes first: frozen, it would never be freed
    gc.freeze()
    gc.set_threshold(GC_YOUNG_OBJECTS, *gc.get_threshold()[1:])


def _refusals(app: web.Application) -> Callable[[], None] | None:
    """What counts a connection refused for want of file descriptors, on the app's ``/metrics`` (if it has one)."""
    registry = app.get(REGISTRY_KEY)
    if registry is None:
        return None
    counter = Counter(
        "tokenrelay_connections_refused",
        "Connections refused (accepted and closed at once) because the process had no file descriptor left",
        registry=registry,
    )
    return counter.inc


async def serve(
    app: web.Application,
    host: str,
    port: int,
    *,
    name: str,
    cancel_on_disconnect: bool = False,
    reuse_port: bool = False,
    process_port: int = 0,
    on_signal: Callable[[signal.Signals], Awaitable[None]] | None = None,
) -> None:
    """Serve ``app`` until SIGINT or SIGTERM, then shut down gracefully.

    ``on_signal`` is awaited with the signal that arrived before the server stops (a runner drains on SIGTERM).

    ``cancel_on_disconnect`` cancels a handler as soon as its client goes away (what a
    long-lived SSE response wants; not what a request that must finish its work wants).
    ``reuse_port`` shares ``port`` with other processes (``SO_REUSEPORT``); ``process_port``, when not 0, is a
    second port that only this process listens on.
    """
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=2.0,
        handler_cancellation=cancel_on_disconnect,
    )
    await runner.setup()
    settle_heap()  # what the role built to serve lives as long as it does
    refused = _refusals(app)
    try:
        site = DrainingSite(runner, host, port, backlog=LISTEN_BACKLOG, reuse_port=reuse_port, on_refused=refused)
        await _listen(site, host, port)
        if process_port:
            own = DrainingSite(runner, host, process_port, backlog=LISTEN_BACKLOG, on_refused=refused)
            await _listen(own, host, process_port)
    except ListenError:
        await runner.cleanup()
        raise
    bound = runner.addresses[0] if runner.addresses else (host, port)
    log.info("%s listening on http://%s:%s", name, bound[0], bound[1])
    received = await wait_for_signal()
    if on_signal is not None:
        await on_signal(received)  # still serving: a draining role answers /readyz and its clients meanwhile
    log.info("%s shutting down", name)
    await runner.cleanup()


class ListenError(OSError):
    """A port could not be listened on (in use, not allowed, an address not of this machine).

    Its message names the address, ``cannot listen on 127.0.0.1:8080: address already in use``, which the command
    line prints as the one line of a role that exits with status 2.
    """

    def __init__(self, host: str, port: int, cause: OSError) -> None:
        reason = cause.strerror or str(cause)
        address = f"[{host}]" if ":" in host else host
        super().__init__(cause.errno, f"cannot listen on {address}:{port}: {reason[:1].lower()}{reason[1:]}")
        self.host = host
        self.port = port

    def __str__(self) -> str:
        return str(self.strerror)


async def _listen(site: web.BaseSite, host: str, port: int) -> None:
    try:
        await site.start()
    except ListenError:
        raise
    except OSError as exc:
        raise ListenError(host, port, exc) from exc


LISTEN_BACKLOG = 4096
"""Connections the kernel queues for ``accept`` (capped by ``net.core.somaxconn``).  aiohttp's default of 128
overflowed when a busy streamer got a burst of readers: the kernel dropped the SYNs and those clients retried
one second later (``TcpExtListenOverflows``; TTFT p95 ~1 s at 150 new streams a second)."""

EVENT_LOOPS = ("auto", "asyncio", "uvloop")
"""``auto``: uvloop where it is installed (a dependency everywhere but Windows), else asyncio's own loop."""


def loop_factory(event_loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What makes a loop of the named kind: uvloop's (``uvloop``; ``auto`` where installed), or ``None`` for
    asyncio's own.  ``ValueError`` for an unknown name, ``ImportError`` for ``uvloop`` when it is not installed."""
    if event_loop not in EVENT_LOOPS:
        raise ValueError(f"unknown event loop {event_loop!r} (one of {', '.join(EVENT_LOOPS)})")
    if event_loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if event_loop == "uvloop":
            raise
        return None
    return uvloop.new_event_loop


def run_role(main: Coroutine[Any, Any, None], *, event_loop: str = "auto") -> None:
    """Run one role's ``main`` to completion on the chosen event loop, with its open-files limit raised.

    uvloop (libuv) runs the same code with a faster loop and transports, measurably cutting token lag and TTFT
    through all three roles (``python -m bench.compare``; docs/performance.md), so ``auto`` prefers it.
    """
    raise_open_files_limit()
    run_on_loop(main, event_loop=event_loop)


def run_on_loop(main: Coroutine[Any, Any, T], *, event_loop: str = "auto") -> T:
    """``asyncio.run(main)`` on the chosen event loop; ``SystemExit`` for a loop that cannot be had."""
    try:
        factory = loop_factory(event_loop)
    except ValueError as exc:
        main.close()
        raise SystemExit(str(exc)) from None
    except ImportError:
        main.close()
        raise SystemExit("--event-loop uvloop needs the uvloop package (pip install uvloop)") from None
    with asyncio.Runner(loop_factory=factory) as runner:  # no factory: what asyncio.run does
        return runner.run(main)


def raise_open_files_limit() -> None:
    """Let this process open as many sockets as its hard limit allows (each SSE reader is one)."""
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else soft, hard))


async def wait_for_signal() -> signal.Signals:
    """Block until SIGINT or SIGTERM arrives; which one."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future[signal.Signals] = loop.create_future()

    def arrived(sig: signal.Signals) -> None:
        if not received.done():
            received.set_result(sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, arrived, sig)
    try:
        return await received
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)


def quiet_bad_requests(record: logging.LogRecord) -> bool:
    """A logging filter for ``aiohttp.server``: a request the HTTP parser refused (answered 400) is the client's
    fault, not the server's; aiohttp logs each as an ERROR with a traceback, so any client could flood the log.
    Such a record becomes one INFO line without the traceback (dropped unless INFO is enabled)."""
    exc = record.exc_info[1] if record.exc_info else None
    if not isinstance(exc, HttpProcessingError):
        return True
    record.msg, record.args, record.exc_info, record.exc_text = "refused a malformed request: %s", (exc,), None, None
    record.levelno, record.levelname = logging.INFO, "INFO"
    return logging.getLogger().isEnabledFor(logging.INFO)


def setup_logging(level: str = "INFO") -> None:
    """One line per record, with the role in the logger name."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger("aiohttp.server").addFilter(quiet_bad_requests)
