"""Serving one reader over HTTP, shared by the native SSE endpoint and the compatible APIs.

The application's keys (what :func:`~tokenrelay.streamer.app.make_app` puts in the application), the SSE
response headers, and the two ways a reader is served: streamed to its client (:func:`serve_reader`) or
gathered into one body (:func:`collect`).  Both join the reader to the hub, start its catch-up
(:class:`~tokenrelay.streamer.catchup.CatchUp`) and leave the hub when it ends.
"""

from __future__ import annotations

import asyncio
import socket

from aiohttp import web
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from tokenrelay.runtime.config import StreamerConfig
from tokenrelay.runtime.lifecycle import LifecycleEvent, log_event
from tokenrelay.streamer.catchup import CatchUp
from tokenrelay.streamer.flush import FlushClock
from tokenrelay.streamer.hub import Hub
from tokenrelay.streamer.metrics import StreamerMetrics
from tokenrelay.streamer.reader import Reader
from tokenrelay.streamer.writer import DirectWrite, Pump
from tokenrelay.wire.messages import StreamState

ROLE = "streamer"

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
    "Connection": "keep-alive",
}

CONFIG_KEY = web.AppKey("config", StreamerConfig)
NC_KEY = web.AppKey("nc", NATS)
KV_KEY = web.AppKey("kv", KeyValue)
HUB_KEY = web.AppKey("hub", Hub)
METRICS_KEY = web.AppKey("metrics", StreamerMetrics)
FLUSH_KEY = web.AppKey("flush", FlushClock)
CATCH_UP_KEY = web.AppKey("catch_up", CatchUp)


def _hold_unsent_in_the_reader(transport: asyncio.Transport | None, reader: Reader, config: StreamerConfig) -> None:
    """Let the reader abort its connection, and keep what its client has not taken in the reader's buffer."""
    if transport is None:
        return
    reader.abort = transport.abort
    # Pause (and make ``drain`` wait) as soon as the kernel refuses bytes: what a client has
    # not taken stays in the reader's buffer, where it is merged and counted against its limit.
    transport.set_write_buffer_limits(high=0)
    if config.socket_send_buffer_bytes > 0:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, config.socket_send_buffer_bytes)


async def serve_reader(
    request: web.Request, reader: Reader, state: StreamState, headers: dict[str, str], *, created: int | None = None
) -> web.StreamResponse:
    """Send one reader's events (history, then live) as a streaming response until its terminal event.

    ``state`` and ``created``: the stream's, from its record when it was read (see :meth:`CatchUp.start`).
    """
    app = request.app
    config, hub = app[CONFIG_KEY], app[HUB_KEY]
    response = web.StreamResponse(headers=headers)
    transport = request.transport
    _hold_unsent_in_the_reader(transport, reader, config)
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
        catching_up = app[CATCH_UP_KEY].start(reader, state, created=created)
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
            catching_up.cancel()
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
    catching_up = app[CATCH_UP_KEY].start(reader, state)
    try:
        while True:
            await reader.wake.wait()
            reader.wake.clear()
            out.append(reader.buffer.take())
            reader.written.set()
            if reader.buffer.closed and reader.buffer.buffered_bytes == 0:
                return b"".join(out)
    finally:
        catching_up.cancel()
        hub.detach(reader)
