"""The bare forwarder: the least a NATS -> SSE hop can cost (two processes).

* ``--role publisher`` stands in for tokenrelay's runner.  On a ``bench.start`` request it
  generates the stream's tokens at the synthetic engine's pace and publishes each one on
  ``bench.stream.<id>`` already encoded as its SSE frame (orjson data, with ``ts``), then a
  ``stop`` frame.  ``bench.stop.<id>`` cancels a stream: a request gets the stop reply's body,
  a plain publish (a reader that left) just cancels.
* ``--role forwarder`` stands in for tokenrelay's streamer.  ``POST /v1/streams`` only records
  the stream; the reader's ``GET`` subscribes to ``bench.stream.<id>`` and flushes (so no token
  can be published before the subscription exists), writes ``start``, asks the publisher to
  start, and then writes each message's bytes as they come with a plain ``StreamResponse.write()``.
  Starting on the ``GET`` rather than the ``POST`` is what makes "nothing lost" hold without any
  history.  The flush costs one NATS round trip; on a single server the ``SUB`` would reach it
  before the start request anyway, but not across a cluster.

``--start-at post`` (the ``forwarder-post`` target of ``bench.compare``) starts each stream at its
``POST`` instead, as tokenrelay does: the ``POST`` asks a publisher to start (without waiting for
its answer) and answers ``201``; the forwarder holds one wildcard subscription to every stream's
frames and keeps a stream's frames from its ``POST`` on (at most ``MAX_HELD_BYTES``), so its ``GET``
writes what was published before it came and then the rest as it comes.  That is the least the
flow of tokenrelay's native API can cost (a ``POST``, then a ``GET``, generation starting at the
first, two NATS hops between them), with none of what tokenrelay adds: it is the floor of the
first-token target, as the default mode is the floor of a token's lag.

``--store`` (on the publisher; the ``forwarder-stored`` target) has every frame kept as it is published, in a
JetStream stream declared as tokenrelay declares its events stream by default (in memory, the same age and byte
bounds, direct gets allowed): what keeping each token for replay costs nats-server, with nothing reading it back.

Deliberately left out, because each costs something tokenrelay pays: history (JetStream), resume,
several readers per stream, coalescing, per-reader buffers and the slow-consumer policy (the only
bound is nats-py's per-subscription pending limit), heartbeats, cancel on disconnect after a grace
period (a reader that leaves cancels at once), lifecycle logs, metrics beyond the ones a load tool
samples.  A stop that lands between a reader's ``GET`` and the publisher's start answers 404.

    python -m bench.baselines.forwarder --role publisher --nats-url nats://127.0.0.1:4222 --port 8182
    python -m bench.baselines.forwarder --role forwarder --nats-url nats://127.0.0.1:4222 --port 8181
    python -m bench.baselines.forwarder --role forwarder --start-at post --nats-url nats://127.0.0.1:4222
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

import nats
import orjson
from aiohttp import web
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.api import DiscardPolicy, StreamConfig

from bench.baselines import (
    DEFAULT_TOKENS_PER_S,
    DEFAULT_TTFT_MS,
    MAX_PENDING_STREAMS,
    Baseline,
    Metrics,
    NewStream,
    Pacing,
    add_event_loop_argument,
    add_ops_routes,
    delta_data,
    error_frame,
    error_response,
    is_stream_id,
    json_response,
    paced_tokens,
    serve,
    sse_frame,
    start_data,
    stop_data,
)
from tokenrelay.runner.engines.steps import StepClock
from tokenrelay.runtime.config import DEFAULT_SYNTHETIC_STEP_MS, HistoryConfig
from tokenrelay.runtime.natsio import storage_type
from tokenrelay.runtime.service import run_role

START_SUBJECT = "bench.start"
STREAM_SUBJECTS = "bench.stream.*"
START_AT = ("get", "post")
"""When the forwarder asks a publisher to start a stream: at its reader's ``GET`` (default), or at its ``POST``."""
MAX_HELD_BYTES = 1024 * 1024
"""``--start-at post``: frames of one stream held and not yet written; past it the reader gets an ``error`` event."""
STOP_SUBJECTS = "bench.stop.*"
PUBLISHERS_QUEUE = "bench-publishers"
"""Queue group of the publishers, so several could share the starts (one is what the benchmarks run)."""
START_TIMEOUT_S = 5.0
"""How long the forwarder waits for a publisher to take a stream; then the reader gets an ``error`` event."""
STOP_TIMEOUT_S = 5.0
"""How long a stop waits for the publisher's reply; then it answers ``503 unavailable``."""
SUBSCRIPTION_PENDING_MSGS = 512 * 1024
SUBSCRIPTION_PENDING_BYTES = 128 * 1024 * 1024
"""nats-py's per-subscription bounds (its defaults, named): past them it drops messages and reports a slow consumer."""
STOP_PREFIX = b"event: stop\n"
"""How the forwarder recognises a stream's last frame without decoding it."""
DEFAULT_FORWARDER_PORT = 8181
DEFAULT_PUBLISHER_PORT = 8182

log = logging.getLogger("bench.baselines.forwarder")


def stream_subject(stream_id: str) -> str:
    """Where a stream's frames are published."""
    return f"bench.stream.{stream_id}"


STORED_FRAMES_STREAM = "BENCH_FRAMES"
"""The JetStream stream that keeps every frame with ``--store``."""


async def store_frames(nc: NatsClient) -> None:
    """Declare :data:`STORED_FRAMES_STREAM` over every stream's frames, bounded as tokenrelay's events stream."""
    history = HistoryConfig()
    config = StreamConfig(
        name=STORED_FRAMES_STREAM, subjects=[stream_subject("*")], storage=storage_type(history.storage),
        max_age=history.ttl_s, max_bytes=history.max_bytes, discard=DiscardPolicy.OLD, allow_direct=True,
    )  # fmt: skip
    await nc.jetstream().add_stream(config)


def stop_subject(stream_id: str) -> str:
    """Where a stream's stop is asked."""
    return f"bench.stop.{stream_id}"


# --- publisher ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Generation:
    """One stream being generated: its task and what it produced."""

    stream_id: str
    task: asyncio.Task[None] | None = None
    tokens: int = 0
    ttft_ms: float | None = None
    ended: bool = False
    """Its ``stop`` frame is published (no second one may follow)."""


@dataclass
class Publisher:
    """Generates streams on request and publishes their pre-encoded SSE frames."""

    nc: NatsClient
    pacing: Pacing
    generations: dict[str, Generation] = field(default_factory=dict)
    steps: StepClock = field(init=False)

    def __post_init__(self) -> None:
        self.steps = StepClock(self.pacing.step_ms / 1000)

    async def start(self) -> None:
        """Answer starts and stops; flushed, so a health check that follows means it is listening."""
        await self.nc.subscribe(START_SUBJECT, queue=PUBLISHERS_QUEUE, cb=self._on_start)
        await self.nc.subscribe(STOP_SUBJECTS, cb=self._on_stop)
        await self.nc.flush()

    async def _on_start(self, msg: Msg) -> None:
        request = orjson.loads(msg.data)
        generation = Generation(request["stream_id"])
        self.generations[generation.stream_id] = generation
        generation.task = asyncio.create_task(self._generate(generation, request["prompt"], request["max_tokens"]))
        await msg.respond(b"{}")

    async def _generate(self, generation: Generation, prompt: str, max_tokens: int) -> None:
        subject = stream_subject(generation.stream_id)
        started = time.perf_counter()
        try:
            async for text in paced_tokens(prompt, max_tokens, self.pacing, self.steps):
                if generation.tokens == 0:
                    generation.ttft_ms = (time.perf_counter() - started) * 1000
                generation.tokens += 1
                index = generation.tokens
                await self.nc.publish(subject, sse_frame("delta", f"e:{index}", delta_data(text, index)))
            await self._end(generation, "length")
        finally:
            self.generations.pop(generation.stream_id, None)

    async def _end(self, generation: Generation, finish_reason: str) -> None:
        generation.ended = True
        data = stop_data(finish_reason, generation.tokens, generation.ttft_ms)
        await self.nc.publish(stream_subject(generation.stream_id), sse_frame("stop", f"e:{generation.tokens}", data))

    async def _on_stop(self, msg: Msg) -> None:
        """Cancel the generation, publish its ``stop``; a request gets the body the forwarder answers."""
        generation = self.generations.get(msg.subject.rpartition(".")[2])
        if generation is None or generation.ended or generation.task is None:
            if msg.reply:
                await msg.respond(b"")  # unknown or already ended: the forwarder answers 404
            return
        generation.task.cancel()
        await asyncio.wait({generation.task})
        await self._end(generation, "cancelled")
        if msg.reply:
            body = {"id": generation.stream_id, "finish_reason": "cancelled", "tokens": generation.tokens}
            await msg.respond(orjson.dumps(body))


async def run_publisher(args: argparse.Namespace) -> None:
    """The publisher process: NATS subscriptions, then ``/healthz`` and ``/metrics``."""
    nc = await nats.connect(args.nats_url)
    if args.store:
        await store_frames(nc)
    publisher = Publisher(nc, Pacing(args.ttft_ms, args.tokens_per_s, args.step_ms))
    await publisher.start()
    app = web.Application()
    add_ops_routes(app, Metrics())
    try:
        await serve(app, args.host, args.port)
    finally:
        for generation in list(publisher.generations.values()):
            if generation.task is not None:
                generation.task.cancel()
        await nc.close()


# --- forwarder ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Held:
    """``--start-at post``: one stream's frames from its ``POST`` on, until its reader has written them."""

    frames: list[bytes] = field(default_factory=list)
    size: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    ended: bool = False
    """Its ``stop`` frame came."""
    failure: bytes | None = None
    """An ``error`` frame that ends the stream for its reader (no publisher took it, or it held too much)."""

    def add(self, frame: bytes) -> None:
        if self.failure is not None or self.ended:
            return
        if self.size + len(frame) > MAX_HELD_BYTES:
            self.fail("slow_consumer", f"more than {MAX_HELD_BYTES} bytes of frames held for the reader")
            return
        self.frames.append(frame)
        self.size += len(frame)
        self.ended = frame.startswith(STOP_PREFIX)
        self.wake.set()

    def fail(self, code: str, message: str) -> None:
        self.failure = error_frame(code, message)
        self.wake.set()

    def take(self) -> bytes:
        data = b"".join(self.frames)
        self.frames.clear()
        self.size = 0
        return data


class Forwarder(Baseline):
    """Records streams; each reader's ``GET`` subscribes and writes every message's bytes as they come."""

    def __init__(
        self, nc: NatsClient, metrics: Metrics, *, start_at: str = "get", max_pending_streams: int = MAX_PENDING_STREAMS
    ) -> None:
        super().__init__(metrics, max_pending_streams=max_pending_streams)
        self.nc = nc
        self.start_at = start_at
        self.held: dict[str, Held] = {}
        """``--start-at post``: every stream started and not finished with, by id."""
        self._starts: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """``--start-at post``: subscribe to every stream's frames (flushed: a health check that follows means
        it is listening)."""
        if self.start_at == "post":
            await self.nc.subscribe(
                STREAM_SUBJECTS, cb=self._on_frame,
                pending_msgs_limit=SUBSCRIPTION_PENDING_MSGS, pending_bytes_limit=SUBSCRIPTION_PENDING_BYTES,
            )  # fmt: skip
            await self.nc.flush()

    async def created(self, stream_id: str, stream: NewStream) -> None:
        """``--start-at post``: hold its frames from now on and ask a publisher to start it (its answer is not
        waited for: tokenrelay's gateway too offers the job beside its own work)."""
        if self.start_at != "post":
            return
        held = self.held[stream_id] = Held()
        task = asyncio.create_task(self._start_early(stream_id, stream, held))
        self._starts.add(task)
        task.add_done_callback(self._starts.discard)

    async def _start_early(self, stream_id: str, stream: NewStream, held: Held) -> None:
        body = {"stream_id": stream_id, "prompt": stream.prompt, "max_tokens": stream.max_tokens}
        try:
            await self.nc.request(START_SUBJECT, orjson.dumps(body), timeout=START_TIMEOUT_S)
        except (NatsError, TimeoutError) as exc:
            held.fail("unavailable", f"no publisher took the stream: {exc!r}")

    async def _on_frame(self, msg: Msg) -> None:
        held = self.held.get(msg.subject.rpartition(".")[2])
        if held is not None:
            held.add(msg.data)

    async def events(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/streams/{id}/events``: subscribe, flush, write ``start``, start the publisher, forward."""
        stream_id = request.match_info["id"]
        if self.start_at == "post":
            return await self._events_held(request, stream_id)
        stream = self.pending.pop(stream_id, None)
        if stream is None:
            return error_response(404, "not_found", "unknown stream (or it was already read)")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        # True once the ``stop`` frame went out; False if the reader left first.
        ended: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        async def forward(msg: Msg) -> None:
            try:
                await response.write(msg.data)
            except ConnectionResetError:
                if not ended.done():
                    ended.set_result(False)
            if msg.data.startswith(STOP_PREFIX) and not ended.done():
                ended.set_result(True)

        subscription = await self.nc.subscribe(
            stream_subject(stream_id), cb=forward,
            pending_msgs_limit=SUBSCRIPTION_PENDING_MSGS, pending_bytes_limit=SUBSCRIPTION_PENDING_BYTES,
        )  # fmt: skip
        finished = False
        try:
            await self.nc.flush()
            await response.prepare(request)
            await response.write(sse_frame("start", "e:0", start_data(stream_id, stream.created)))
            if not await self._start_publisher(stream_id, stream, response):
                return response
            self.metrics.readers_open.inc()  # once the publisher has it, so a stop from now on finds it
            try:
                finished = await ended
            finally:
                self.metrics.readers_open.dec()
        finally:
            await subscription.unsubscribe()
            if not finished:  # the reader left early: its generation is no longer wanted
                with contextlib.suppress(NatsError):
                    await self.nc.publish(stop_subject(stream_id), b"")
        return response

    async def _events_held(self, request: web.Request, stream_id: str) -> web.StreamResponse:
        """``--start-at post``: write ``start``, what was held, then each frame as it comes, until ``stop``."""
        stream = self.pending.pop(stream_id, None)
        held = self.held.get(stream_id)
        if stream is None or held is None:
            return error_response(404, "not_found", "unknown stream (or it was already read)")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        self.metrics.readers_open.inc()
        finished = False
        try:
            await response.prepare(request)
            data = sse_frame("start", "e:0", start_data(stream_id, stream.created))
            while True:
                held.wake.clear()
                data += held.take()
                if held.failure is not None:
                    await response.write(data + held.failure)
                    finished = True
                    return response
                if data:
                    await response.write(data)
                    data = b""
                if held.ended and not held.frames:
                    finished = True
                    return response
                await held.wake.wait()
        finally:
            self.metrics.readers_open.dec()
            self.held.pop(stream_id, None)
            if not finished:  # the reader left early: its generation is no longer wanted
                with contextlib.suppress(NatsError):
                    await self.nc.publish(stop_subject(stream_id), b"")

    async def _start_publisher(self, stream_id: str, stream: NewStream, response: web.StreamResponse) -> bool:
        body = {"stream_id": stream_id, "prompt": stream.prompt, "max_tokens": stream.max_tokens}
        try:
            await self.nc.request(START_SUBJECT, orjson.dumps(body), timeout=START_TIMEOUT_S)
        except (NatsError, TimeoutError) as exc:
            await response.write(error_frame("unavailable", f"no publisher took the stream: {exc!r}"))
            return False
        return True

    async def stop(self, request: web.Request) -> web.Response:
        """``POST /v1/streams/{id}/stop``: a stream nobody read yet ends here; else the publisher cancels it."""
        stream_id = request.match_info["id"]
        if self.pending.pop(stream_id, None) is not None:
            held = self.held.pop(stream_id, None)
            if held is None:  # not started: it ends here
                return json_response({"id": stream_id, "finish_reason": "cancelled", "tokens": 0})
            return await self._stop_unread(stream_id, held)
        if not is_stream_id(stream_id):
            return error_response(404, "not_found", "unknown stream")
        try:
            reply = await self.nc.request(stop_subject(stream_id), b"", timeout=STOP_TIMEOUT_S)
        except (NatsError, TimeoutError) as exc:
            return error_response(503, "unavailable", f"the publisher did not confirm the stop: {exc!r}")
        if not reply.data:
            return error_response(404, "not_found", "unknown or finished stream")
        return web.Response(body=reply.data, content_type="application/json")

    async def _stop_unread(self, stream_id: str, held: Held) -> web.Response:
        """``--start-at post``: stop a stream started at its ``POST`` that nobody read; its state at the stop."""
        try:
            reply = await self.nc.request(stop_subject(stream_id), b"", timeout=STOP_TIMEOUT_S)
        except (NatsError, TimeoutError) as exc:
            return error_response(503, "unavailable", f"the publisher did not confirm the stop: {exc!r}")
        if reply.data:
            return web.Response(body=reply.data, content_type="application/json")
        if not held.ended:  # the publisher never had it (its start failed)
            return json_response({"id": stream_id, "finish_reason": "cancelled", "tokens": 0})
        stop = orjson.loads(held.frames[-1].rpartition(b"data: ")[2])  # it ended before the stop: how it ended
        return json_response({"id": stream_id, "finish_reason": stop["finish_reason"], "tokens": stop["tokens"]})


async def run_forwarder(args: argparse.Namespace) -> None:
    """The forwarder process: connect to NATS, then serve HTTP."""
    nc = await nats.connect(args.nats_url)
    metrics = Metrics()
    app = web.Application()
    relay = Forwarder(nc, metrics, start_at=args.start_at)
    await relay.start()
    relay.routes(app)
    add_ops_routes(app, metrics)
    try:
        await serve(app, args.host, args.port, cancel_on_disconnect=True)
    finally:
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=("forwarder", "publisher"), required=True)
    parser.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, help=f"default {DEFAULT_FORWARDER_PORT} / {DEFAULT_PUBLISHER_PORT}")
    parser.add_argument(
        "--ttft-ms", type=float, default=DEFAULT_TTFT_MS, help="publisher: delay before the first token"
    )
    parser.add_argument("--tokens-per-s", type=float, default=DEFAULT_TOKENS_PER_S, help="publisher: pace after it")
    parser.add_argument(
        "--step-ms", type=float, default=DEFAULT_SYNTHETIC_STEP_MS, help="publisher: decode step shared by all streams"
    )
    parser.add_argument(
        "--start-at", choices=START_AT, default="get", help="forwarder: start a stream at its reader's GET or its POST"
    )
    parser.add_argument(
        "--store", action="store_true", help="publisher: keep every frame in JetStream, as tokenrelay keeps events"
    )
    parser.add_argument("--log-level", default="WARNING")
    add_event_loop_argument(parser)
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.role == "publisher":
        args.port = args.port or DEFAULT_PUBLISHER_PORT
        run_role(run_publisher(args), event_loop=args.event_loop)
    else:
        args.port = args.port or DEFAULT_FORWARDER_PORT
        run_role(run_forwarder(args), event_loop=args.event_loop)


if __name__ == "__main__":
    main()
