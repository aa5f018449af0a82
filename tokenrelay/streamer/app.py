"""The streamer's HTTP shell: ``GET /v1/streams/{id}/events`` as Server-Sent Events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import time

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_writer import StreamWriter
from aiohttp.typedefs import Middleware
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from tokenrelay.runtime import natsio
from tokenrelay.runtime.auth import check_owner
from tokenrelay.runtime.config import StreamerConfig
from tokenrelay.runtime.lifecycle import LifecycleEvent, log_event
from tokenrelay.runtime.natsdirect import LIVE_CLIENT
from tokenrelay.runtime.service import (
    add_ops_routes,
    auth_middleware,
    errors_middleware,
    request_tenant,
    serve,
    token_grant,
)
from tokenrelay.runtime.tokens import Scope
from tokenrelay.streamer import cors, history
from tokenrelay.streamer.chunked import http_chunk
from tokenrelay.streamer.flush import FlushClock, LagReporter
from tokenrelay.streamer.hub import Clock, Hub, Reader
from tokenrelay.streamer.metrics import StreamerMetrics
from tokenrelay.wire import codec, subjects
from tokenrelay.wire.cursor import Cursor, CursorError
from tokenrelay.wire.errors import BadRequest, ErrorCode, ResumeUnavailable
from tokenrelay.wire.messages import LAG_REPORT_INTERVAL_S, StreamerLag, StreamState

log = logging.getLogger(__name__)

ROLE = "streamer"

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
    "Connection": "keep-alive",
}
GAP_RETRY_DELAYS_S = (0.002, 0.01, 0.05, 0.25)
"""Live events held behind a gap wait for history to store what was published just before the reader
subscribed: history is read again after each of these delays (0.31 s in all), then the gap is history
that is gone.  JetStream stores a message a moment after it is published (well under a millisecond when
idle), so the first retry usually fills it; few retries, because each read makes the broker walk the
stream's interleaved messages from the reader's stream's first one (it was nine reads at 1, 2, 4, … ms,
and at 1,000 streams the broker spent 167 µs of CPU per token)."""
HISTORY_SETTLE_S = 0.05
"""After this long, every event published before a reader subscribed is in JetStream."""

EVENTS_RESOURCE = "/v1/streams/{id}/events"

CONFIG_KEY = web.AppKey("config", StreamerConfig)
NC_KEY = web.AppKey("nc", NATS)
KV_KEY = web.AppKey("kv", KeyValue)
HUB_KEY = web.AppKey("hub", Hub)
METRICS_KEY = web.AppKey("metrics", StreamerMetrics)
FLUSH_KEY = web.AppKey("flush", FlushClock)


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
    epoch = hub.starts.epoch(stream_id, hub.clock()) if hub.starts is not None and tenant is None else None
    if epoch is not None:
        state = StreamState.RUNNING
        app[METRICS_KEY].reader_lookups.labels(source="start_event").inc()
    else:
        record = await natsio.load_record(app[KV_KEY], stream_id)
        check_owner(record.owner, tenant)
        epoch, state = record.epoch, record.state
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
    return await serve_reader(request, reader, state, SSE_HEADERS)


async def serve_reader(
    request: web.Request, reader: Reader, state: StreamState, headers: dict[str, str]
) -> web.StreamResponse:
    """Send one reader's events (history, then live) as a streaming response until its terminal event."""
    app = request.app
    config, hub = app[CONFIG_KEY], app[HUB_KEY]
    response = web.StreamResponse(headers=headers)
    transport = request.transport
    reader.abort = transport.abort if transport is not None else None
    if transport is not None:
        # Pause (and make ``drain`` wait) as soon as the kernel refuses bytes: what a client has
        # not taken stays in the reader's buffer, where it is merged and counted against its limit.
        transport.set_write_buffer_limits(high=0)
    if transport is not None and config.socket_send_buffer_bytes > 0:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, config.socket_send_buffer_bytes)
    metrics = app[METRICS_KEY]
    metrics.readers.inc()
    log_event(
        LifecycleEvent.READER_OPENED, ROLE, reader.stream_id,
        resumable=reader.resumable, resume_offset=reader.replay.resume_offset,
    )  # fmt: skip
    outcome = "client_left"
    try:
        await hub.attach(reader)
        # History is asked for before the headers go out: the runner answers while they are written.
        replay = asyncio.create_task(replay_history(app, reader, state))
        try:
            writer = await response.prepare(request)
            if writer is None:  # only for a response already finished, which this one is not
                raise ConnectionResetError("the response was closed before streaming")
            out = DirectWrite.of(writer, transport)
            await Pump(
                reader, response, writer, metrics, flush=app[FLUSH_KEY], clock=hub.clock,
                out=out, write_from_callback=config.direct_writes,
            ).run()  # fmt: skip
        finally:
            replay.cancel()
        outcome = "finished"
    except ConnectionResetError:
        pass
    finally:
        hub.detach(reader)
        code = reader.buffer.close_code
        if code is not None:
            outcome = "error"
            metrics.reader_errors.labels(code=code).inc()
            metrics.errors.labels(code=code).inc()
            if code == ErrorCode.SLOW_CONSUMER:
                metrics.slow_consumer_disconnects.inc()
        log_event(
            LifecycleEvent.READER_CLOSED, ROLE, reader.stream_id,
            outcome=outcome, error_code=code, live_events=reader.live_events,
        )  # fmt: skip
    return response


async def collect(app: web.Application, reader: Reader, state: StreamState) -> bytes:
    """Everything a reader's framing produces, gathered in memory until its terminal event (no client socket)."""
    hub = app[HUB_KEY]
    out: list[bytes] = []
    await hub.attach(reader)
    replay = asyncio.create_task(replay_history(app, reader, state))
    try:
        while True:
            await reader.wake.wait()
            reader.wake.clear()
            out.append(reader.buffer.take())
            reader.written.set()
            if reader.buffer.closed and reader.buffer.buffered_bytes == 0:
                return b"".join(out)
    finally:
        replay.cancel()
        hub.detach(reader)


async def read_history(app: web.Application, reader: Reader) -> history.Source | None:
    """Feed the reader its stream's past events (a page per write); where they came from, or ``None`` (it failed).

    Paced by the client: before each event, wait while half the reader's buffer limit is
    unsent, so a late reader of a long stream holds one page of history, not all of it, and
    is never closed as a slow consumer just because history is faster than live tokens.
    """
    clock = app[HUB_KEY].clock
    read = history.HistoryRead(
        app[NC_KEY], reader.stream_id, from_seq=reader.replay.next_seq, batch=app[CONFIG_KEY].history_batch_messages
    )
    try:
        async with contextlib.aclosing(read.pages()) as pages:
            async for page in pages:
                for event in page:
                    await reader.room()
                    if reader.buffer.closed:
                        reader.ready()  # its terminal frame goes out
                        return None
                    reader.deliver(event, clock(), notify=False)
                reader.ready()  # the page goes out as one write
    except history.HistoryError as exc:
        reader.fail(str(ErrorCode.UNAVAILABLE), str(exc), clock())
        return None
    except asyncio.CancelledError:
        # A reader whose page carried its terminal event is done: its handler cancels this read while it asks
        # for one more page.  What it read was served all the same.
        if read.source is not None:
            _count_fetch(app, read.source)
        raise
    assert read.source is not None
    _count_fetch(app, read.source)
    return read.source


def _count_fetch(app: web.Application, source: history.Source) -> None:
    app[METRICS_KEY].history_fetches.labels(source=str(source)).inc()


def _history_gone(app: web.Application, reader: Reader) -> None:
    reader.fail(str(ErrorCode.RESUME_UNAVAILABLE), "the stream's history is no longer available", app[HUB_KEY].clock())


async def catch_up(app: web.Application, reader: Reader) -> history.Source | None:
    """Feed the reader what was published before it subscribed, and prove there is no gap.

    Returns where the last read came from, or ``None`` when the reader failed.
    """
    retries = iter(GAP_RETRY_DELAYS_S)
    while (source := await read_history(app, reader)) is not None:
        if reader.buffer.closed or not reader.replay.waiting_on_gap:
            return source
        delay_s = next(retries, None)
        if delay_s is None:
            _history_gone(app, reader)
            return None
        await asyncio.sleep(delay_s)
    return None


async def replay_history(app: web.Application, reader: Reader, state: StreamState) -> None:
    """Catch the reader up from history while the writer sends, then settle (runs beside :meth:`Pump.run`).

    History its runner served is complete (everything after it reaches the subscription live): no settling.
    Neither is a reader's first events from memory, when whole: then history is read only for a gap that a
    later live event shows.
    """
    if reader.whole_from_memory:
        await reader.gap.wait()
        await catch_up(app, reader)
        return
    if await catch_up(app, reader) is history.Source.JETSTREAM:
        await settle_history(app, reader, state)


async def settle_history(app: web.Application, reader: Reader, state: StreamState) -> None:
    """Read history once more shortly after subscribing, unless live events already reached the reader in order.

    JetStream stores a message a moment after it is published.  An event published just before
    this reader's subscription can be missing from the first history read *and* never arrive live;
    if it was the stream's last event the reader would wait forever.  By ``HISTORY_SETTLE_S`` after
    subscribing, everything published before the subscription is stored.  A live event held behind
    a gap ends the wait at once: the gap is read again (with :func:`catch_up`'s retries) right away.
    """
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(reader.gap.wait(), HISTORY_SETTLE_S)
    if reader.buffer.closed or reader.replay.finished:
        return
    if reader.replay.waiting_on_gap:
        # Live events arrived after the first read, behind events that were not stored yet when it ran:
        # nothing else would ever fill that gap, and the reader would wait forever.  Read it now.
        await catch_up(app, reader)
        return
    if reader.live_events:
        return
    if await read_history(app, reader) is None:
        return
    nothing_stored = reader.replay.next_seq == 0 and state is StreamState.FINISHED
    if not reader.buffer.closed and (reader.replay.waiting_on_gap or nothing_stored):
        _history_gone(app, reader)


class DirectWrite:
    """Writes of one SSE response straight to its transport, from whatever stack has the bytes.

    :meth:`write` frames the HTTP/1.1 chunk itself and hands it to the transport: cheaper than aiohttp's
    ``response.write()`` for every write of :meth:`Pump.run`, and, being no coroutine, callable from a NATS
    callback (:meth:`Pump.write_now`, ``--direct-writes``) while the transport holds nothing unsent, so the
    writer task is woken only to wait for a slow client.
    """

    def __init__(self, transport: asyncio.Transport, *, chunked: bool) -> None:
        self._transport = transport
        self._chunked = chunked

    @classmethod
    def of(cls, writer: AbstractStreamWriter, transport: asyncio.Transport | None) -> DirectWrite | None:
        """For a prepared response on aiohttp's own writer (``None`` otherwise: use ``response.write``).

        ``transport`` is not checked with ``isinstance``: uvloop's transports do not subclass asyncio's.
        """
        if not isinstance(writer, StreamWriter) or transport is None:
            return None
        writer.send_headers()  # aiohttp may hold the headers back for the first body write; they go first
        return cls(transport, chunked=writer.chunked)

    @property
    def idle(self) -> bool:
        """The transport is open and the kernel has taken everything written to it."""
        return not self._transport.is_closing() and self._transport.get_write_buffer_size() == 0

    def write(self, data: bytes) -> None:
        """Hand ``data`` to the transport, framed as aiohttp frames a body write."""
        self._transport.write(http_chunk(data) if self._chunked else data)


class Pump:
    """Writes what one reader has queued until its terminal event (:meth:`run`).

    An event is written at once unless the last write of tokens was less than ``flush.interval_s``
    ago; then the rest of the interval (to the shared clock's next tick) collects more, and they go
    out merged in one write.  Writes without tokens (``start``, a ping) start no interval: the first
    token a moment after ``start`` is not held back by it.  A write is complete when the kernel has
    every byte of it (``drain``); until then its size counts against the reader's buffer limit and
    the write timeout runs.

    With ``out`` (aiohttp's own writer on a transport), every write is one HTTP/1.1 chunk handed to the
    transport, not a ``response.write()``.  With ``write_from_callback`` as well, while :meth:`run` is
    parked, an event that may go out at once is written by :meth:`write_now` from the stack of whoever
    queued it (:meth:`Reader.ready`); :meth:`run` wakes for the rest: a write the kernel did not take
    whole, a flush wait, the terminal event.
    """

    def __init__(
        self,
        reader: Reader,
        response: web.StreamResponse,
        writer: AbstractStreamWriter,
        metrics: StreamerMetrics,
        *,
        flush: FlushClock,
        clock: Clock,
        out: DirectWrite | None = None,
        write_from_callback: bool = False,
    ) -> None:
        self._reader = reader
        self._response = response
        self._writer = writer
        self._metrics = metrics
        self._flush = flush
        self._clock = clock
        self._out = out
        self._direct = out if write_from_callback else None
        self._loop = asyncio.get_running_loop()
        self._last_write = -math.inf

    def _count(self, data: bytes, live_tokens: int, oldest_live_ts: float | None) -> None:
        self._metrics.writes.inc()
        self._metrics.bytes_sent.inc(len(data))
        if oldest_live_ts is not None:
            self._metrics.tokens_delivered.inc(live_tokens)
            self._metrics.token_lag_seconds.observe(max(0.0, time.time() - oldest_live_ts))

    def write_now(self) -> bool:
        """Write what is queued from the caller's stack; ``False``: :meth:`run` must (it is woken)."""
        reader, direct, now = self._reader, self._direct, self._loop.time()
        buffer = reader.buffer
        if direct is None or buffer.closed or not direct.idle or self._flush.delay_s(self._last_write, now) > 0:
            return False
        live_tokens, oldest_live_ts, tokens = buffer.live_tokens, buffer.oldest_live_ts, buffer.tokens_pending
        data = buffer.take()
        if data:
            direct.write(data)
            if tokens:
                self._last_write = now
            self._count(data, live_tokens, oldest_live_ts)
            if not direct.idle:  # the client is slow: run() waits for the kernel to take the rest
                buffer.in_flight_bytes = len(data)
                reader.writing_since = self._clock()
                return False
        reader.written.set()
        return True

    async def run(self) -> None:
        """Write until the terminal event is out."""
        reader, buffer, writer, flush = self._reader, self._reader.buffer, self._writer, self._flush
        while True:
            reader.write_now = self.write_now if self._direct is not None else None
            try:
                await reader.wake.wait()
            finally:
                reader.write_now = None
            reader.wake.clear()
            if buffer.in_flight_bytes:  # a direct write the kernel has not taken whole
                await writer.drain()
                self._written()
            if not buffer.closed and flush.delay_s(self._last_write, self._loop.time()) > 0:
                await flush.wait_until(self._last_write + flush.interval_s)  # one shared timer, not one per reader
            live_tokens, oldest_live_ts, tokens = buffer.live_tokens, buffer.oldest_live_ts, buffer.tokens_pending
            final = buffer.closed  # what is taken now ends with the terminal event
            data = buffer.take()
            if data:
                reader.writing_since = self._clock()
                buffer.in_flight_bytes = len(data)
                # A plain write of frames encoded once per event and shared by every reader, not
                # aiohttp-sse's send(): `python -m bench.sse_write` measured 8.2 µs of server CPU per event
                # for the shared frame, 14.1 µs encoding per event, 28.6 µs for send() (3.5x).  And the
                # frame goes to the transport as one HTTP/1.1 chunk rather than through response.write():
                # 6.5 against 9.5 µs per event in the same benchmark (its `chunk` endpoint).
                if final:
                    # The terminal event and the body's last-chunk in one write: a client that stops reading at
                    # the terminal event has the whole response, so it keeps the connection for its next request
                    # (written apart, the last-chunk came after it had left, and the connection was closed).
                    await self._response.write_eof(data)
                elif self._out is not None:
                    self._out.write(data)
                else:
                    await self._response.write(data)
                await writer.drain()
                self._written()
                if tokens:
                    self._last_write = self._loop.time()
                self._count(data, live_tokens, oldest_live_ts)
            if buffer.closed and buffer.buffered_bytes == 0:
                return

    def _written(self) -> None:
        self._reader.buffer.in_flight_bytes = 0
        self._reader.writing_since = None
        self._reader.written.set()


def make_app(
    config: StreamerConfig,
    *,
    nc: NATS,
    kv: KeyValue,
    metrics: StreamerMetrics | None = None,
    live_nc: NATS | None = None,
    node_id: str | None = None,
) -> web.Application:
    """The streamer application over open NATS connections.

    ``nc`` (and ``kv`` on it) carries requests: records, history reads, the compatible APIs'
    admission.  ``live_nc`` carries the live subscriptions; a connection of its own keeps the
    replies to those requests from queueing behind a backlog of live events when the streamer
    is saturated (they timed out there, and new readers got ``unavailable``).  Default: ``nc``.
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
    app = web.Application(middlewares=middlewares)
    app[CONFIG_KEY], app[NC_KEY], app[KV_KEY], app[HUB_KEY], app[METRICS_KEY] = config, nc, kv, hub, metrics
    app[FLUSH_KEY] = flush
    app.router.add_get(EVENTS_RESOURCE, events)
    cors.install(app, cors.CorsPolicy(config.cors_allow_origins))
    from tokenrelay.streamer.compat import http as compat_http

    compat_http.add_routes(app)
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
    js = nc.jetstream()
    await natsio.ensure_events_stream(js, config.history)
    kv = await natsio.ensure_streams_bucket(js, config.history)
    try:
        app = make_app(config, nc=nc, kv=kv, live_nc=live_nc, node_id=node_id)
        await serve(
            app, config.host, config.port, name="streamer", cancel_on_disconnect=True,
            reuse_port=config.reuse_port, process_port=config.process_port,
        )  # fmt: skip
    finally:
        await live_nc.drain()
        await nc.drain()
