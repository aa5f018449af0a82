"""The streamer's HTTP shell: ``GET /v1/streams/{id}/events`` as Server-Sent Events, and the application around it.

This module parses the request (cursor, tenant, the stream's epoch) and hands the reader to
:func:`~tokenrelay.streamer.serving.serve_reader`; :func:`make_app` puts the hub, the history catch-up and the
compatible APIs' routes together, and :func:`run` serves them.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from aiohttp import web
from aiohttp.typedefs import Middleware
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from tokenrelay.runtime import natsio
from tokenrelay.runtime.auth import check_owner
from tokenrelay.runtime.config import StreamerConfig
from tokenrelay.runtime.natsdirect import LIVE_CLIENT
from tokenrelay.runtime.payloads import PayloadStore
from tokenrelay.runtime.service import (
    add_ops_routes,
    auth_middleware,
    errors_middleware,
    request_tenant,
    serve,
    token_grant,
)
from tokenrelay.runtime.tokens import Scope
from tokenrelay.streamer import cors
from tokenrelay.streamer.catchup import CatchUp
from tokenrelay.streamer.compat import http as compat_http
from tokenrelay.streamer.compat import responses_http
from tokenrelay.streamer.flush import FlushClock, LagReporter
from tokenrelay.streamer.hub import Hub
from tokenrelay.streamer.metrics import StreamerMetrics
from tokenrelay.streamer.reader import Reader
from tokenrelay.streamer.serving import (
    CATCH_UP_KEY,
    CONFIG_KEY,
    FLUSH_KEY,
    HUB_KEY,
    KV_KEY,
    METRICS_KEY,
    NC_KEY,
    SSE_HEADERS,
    serve_reader,
)
from tokenrelay.wire import codec, subjects
from tokenrelay.wire.cursor import Cursor, CursorError
from tokenrelay.wire.errors import BadRequest, ErrorCode, ResumeUnavailable
from tokenrelay.wire.messages import LAG_REPORT_INTERVAL_S, StreamerLag, StreamState

log = logging.getLogger(__name__)

EVENTS_RESOURCE = "/v1/streams/{id}/events"


def parse_cursor(request: web.Request) -> Cursor | None:
    """The resume cursor from ``Last-Event-ID`` or ``?last_event_id=`` (header wins)."""
    text = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    if not text:
        return None
    try:
        return Cursor.parse(text)
    except CursorError as exc:
        raise BadRequest(str(exc)) from None


def reader_tenant(request: web.Request, stream_id: str) -> str | None:
    """Who reads ``stream_id``: the API key's tenant (the stream must be its own), or ``None`` when no keys are
    configured or the request carries a valid ``events`` token for exactly this stream (``unauthorized`` if not)."""
    tenant = request_tenant(request)
    config = request.app[CONFIG_KEY]
    if tenant is not None or config.api_keys is None:
        return tenant
    token_grant(request, config.tokens, Scope.EVENTS, subject=stream_id)
    return None


async def events(request: web.Request) -> web.StreamResponse:
    """Stream one generation's events as SSE, from the start or after the client's cursor."""
    app = request.app
    config, hub = app[CONFIG_KEY], app[HUB_KEY]
    stream_id = request.match_info["id"]
    tenant = reader_tenant(request, stream_id)
    cursor = parse_cursor(request)
    # A stream seen starting here and still running needs no record read (``streamer/starts.py``); a reader with
    # an API key does, as only the record names the owner its tenant must be.
    # Nor does one of a stream read here whose shared history is whole (``streamer/shared_history.py``).
    epoch, source, created = None, "record", None
    if tenant is None:
        if hub.starts is not None and (epoch := hub.starts.epoch(stream_id, hub.clock())) is not None:
            source = "start_event"
        elif (epoch := hub.shared_epoch(stream_id)) is not None:
            source = "shared_history"
    if epoch is not None:
        state = StreamState.RUNNING
        app[METRICS_KEY].reader_lookups.labels(source=source).inc()
    else:
        record = await natsio.load_record(app[KV_KEY], stream_id)
        check_owner(record.owner, tenant)
        epoch, state, created = record.epoch, record.state, record.created
        app[METRICS_KEY].reader_lookups.labels(source="record").inc()
    if cursor is not None and cursor.epoch != epoch:
        raise ResumeUnavailable("the cursor belongs to a history that is gone")
    reader = Reader(
        stream_id,
        epoch=epoch,
        resume=cursor,
        max_buffered_bytes=config.max_reader_buffer_bytes,
        now=hub.clock(),
    )
    return await serve_reader(request, reader, state, SSE_HEADERS, created=created)


def make_app(
    config: StreamerConfig,
    *,
    nc: NATS,
    kv: KeyValue,
    metrics: StreamerMetrics | None = None,
    live_nc: NATS | None = None,
    node_id: str | None = None,
    payloads: PayloadStore | None = None,
) -> web.Application:
    """The streamer application over open NATS connections.

    ``nc`` (and ``kv`` on it) carries requests: records, history reads, the compatible APIs'
    admission.  ``live_nc`` carries the live subscriptions; a connection of its own keeps the
    replies to those requests from queueing behind a backlog of live events when the streamer
    is saturated (they timed out there, and new readers got ``unavailable``).  Default: ``nc``.
    ``payloads``: where a compatible-API request larger than the broker's ``max_payload`` is left for the gateway
    (``None``: such a request is ``payload_too_large``).
    """
    metrics = metrics or StreamerMetrics()
    live = live_nc or nc
    flush = FlushClock(config.flush_interval_ms / 1000, max_interval_s=config.max_flush_interval_ms / 1000)
    metrics.flush_interval_seconds.set_function(lambda: flush.interval_s)
    hub = Hub(
        live,
        heartbeat_s=config.heartbeat_s,
        metrics=metrics,
        write_timeout_s=config.write_timeout_s,
        disconnect_grace_s=config.disconnect_grace_s,
        cancel_timeout_s=config.cancel_timeout_s,
        max_readers_per_stream=config.max_readers_per_stream,
        live_subscription=config.live_subscription,
        flush=flush,
    )
    middlewares: list[Middleware] = [errors_middleware]
    if config.api_keys is not None:
        middlewares.append(auth_middleware(config.api_keys, token_resources={EVENTS_RESOURCE}))
    app = web.Application(middlewares=middlewares, client_max_size=config.max_body_bytes)
    app[CONFIG_KEY], app[NC_KEY], app[KV_KEY], app[HUB_KEY], app[METRICS_KEY] = config, nc, kv, hub, metrics
    app[FLUSH_KEY] = flush
    if payloads is not None:
        app[compat_http.PAYLOADS_KEY] = payloads
    metrics.shared_history_bytes.set_function(lambda: hub.shared_history.total_bytes)
    app[CATCH_UP_KEY] = CatchUp(
        nc,
        clock=hub.clock,
        metrics=metrics,
        shared=hub.history_read,
        live_outages=hub.live_outages,
        unseen=hub.unseen,
        batch_messages=config.history_batch_messages,
    )
    app.router.add_get(EVENTS_RESOURCE, events)
    cors.install(app, cors.CorsPolicy(config.cors_allow_origins))
    compat_http.add_routes(app)
    responses_http.add_routes(app)
    add_ops_routes(
        app,
        metrics.registry,
        lambda: None if nc.is_connected and live.is_connected else "not connected to NATS",
        errors=metrics.errors,
    )

    reporter, streamer_id = LagReporter(flush), node_id or subjects.new_node_id("streamer")
    reporting: list[asyncio.Task[None]] = []

    async def on_startup(_: web.Application) -> None:
        await hub.start()
        reporting.append(asyncio.create_task(report_lag(nc, reporter, streamer_id)))

    async def on_shutdown(_: web.Application) -> None:
        for task in reporting:
            task.cancel()
        await hub.shutdown(str(ErrorCode.SHUTTING_DOWN), "the streamer is shutting down; resume elsewhere")

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    return app


async def report_lag(nc: NATS, reporter: LagReporter, streamer_id: str) -> None:
    """Tell the runners how late live events reach this streamer while they do (``runner/pace.py``)."""
    while True:
        await asyncio.sleep(LAG_REPORT_INTERVAL_S)
        lag_s = reporter.next()
        if lag_s is None or not nc.is_connected:
            continue
        try:
            await nc.publish(subjects.STREAMER_LAG, codec.encode(StreamerLag(streamer_id=streamer_id, lag_s=lag_s)))
        except Exception as exc:  # a report is advice: the next one goes out a moment later
            log.debug("lag report not sent: %s", exc)


async def run(config: StreamerConfig) -> None:
    """Run one streamer until SIGINT/SIGTERM."""
    node_id = subjects.new_node_id("streamer")
    nc = await natsio.connect(config.nats_url, name=node_id)
    live_nc = await natsio.connect(config.nats_url, name=f"{node_id}-live", client=LIVE_CLIENT)
    config = replace(config, history=natsio.replicated(nc, config.history))
    js = nc.jetstream()
    await natsio.ensure_events_stream(js, config.history)
    kv = await natsio.ensure_streams_bucket(js, config.history)
    store = await natsio.ensure_payload_store(js, config.history)
    try:
        app = make_app(config, nc=nc, kv=kv, live_nc=live_nc, node_id=node_id, payloads=store)
        await serve(
            app, config.host, config.port, name="streamer", cancel_on_disconnect=True,
            reuse_port=config.reuse_port, process_port=config.process_port,
        )  # fmt: skip
    finally:
        await live_nc.drain()
        await nc.drain()
