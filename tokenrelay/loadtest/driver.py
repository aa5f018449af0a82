"""The load generator: many concurrent streams against a running deployment, measured as users feel them.

One task per stream. With the native API: ``POST /v1/streams``, then either read the events as raw bytes through the
sans-I/O :class:`~tokenrelay.client.sse.SSEDecoder` (recording TTFT, token lag, gaps and token
accounting; some streams are stopped over one shared control WebSocket) or, for never-read
readers (:mod:`~tokenrelay.loadtest.never_read`), send the events request and never read a byte. With an
OpenAI- or Anthropic-compatible API: one ``POST`` whose answer is the stream (:mod:`~tokenrelay.loadtest.compat`).
Streams start at ``ramp_per_s`` up to ``concurrency`` open at once until ``streams`` were started or
``duration_s`` passed; in-flight streams then get ``drain_s`` to end before they are cut off.
Everything the run keeps is bounded (histograms, thinned time series, one tally per open stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import math
import resource
import signal
import sys
import time
from typing import TextIO
from urllib.parse import urlsplit

import aiohttp
import orjson

from tokenrelay.client.client import control_url_for
from tokenrelay.client.control import ControlChannel, expect
from tokenrelay.client.errors import ConnectionLost, ProtocolError
from tokenrelay.client.sse import SSEDecoder
from tokenrelay.loadtest.apis import API_PATHS, Api, auth_headers
from tokenrelay.loadtest.codes import error_code, http_error_code
from tokenrelay.loadtest.compat import CompatStreams
from tokenrelay.loadtest.metrics import MetricsSampler
from tokenrelay.loadtest.never_read import NeverReadReader
from tokenrelay.loadtest.plan import LoadTestConfig, Planner, StreamPlan
from tokenrelay.loadtest.result import RunResult, TimelinePoint
from tokenrelay.loadtest.stats import Outcome, RunTotals, SampleSeries, StreamTally
from tokenrelay.runtime.service import raise_open_files_limit
from tokenrelay.wire.errors import TokenRelayError

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.5
PLAIN_PROGRESS_EVERY = 10
"""When standard error is not a terminal, one progress line every this many intervals (5 s)."""
MAX_TIMELINE_POINTS = 4096


def source_addresses(gateway_url: str, count: int) -> list[str | None]:
    """Local addresses to spread connections over: ``127.0.0.1`` … ``127.0.0.<count>`` (loopback targets only)."""
    if count <= 1:
        return [None]
    host = urlsplit(gateway_url).hostname or ""
    try:
        loopback = ipaddress.ip_address(host) in ipaddress.ip_network("127.0.0.0/8")
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"--source-addresses needs a 127.x gateway address, not {host!r}")
    return [f"127.0.0.{k}" for k in range(1, count + 1)]


def process_cpu_s() -> float:
    """CPU seconds (user + system) this process has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class LoadTest:
    """One load-test run; :meth:`run` returns its :class:`RunResult`. ``progress`` gets the live line."""

    def __init__(self, config: LoadTestConfig, *, progress: TextIO | None = None) -> None:
        self.config = config
        self.totals = RunTotals()
        self._progress = None if config.quiet else progress
        self._planner = Planner(config)
        self._addresses = source_addresses(config.gateway_url, config.source_addresses)
        self._auth = auth_headers(config.api, config.api_key)
        self._post_timeout = aiohttp.ClientTimeout(total=config.request_timeout_s)
        self._streams_url = config.gateway_url.rstrip("/") + API_PATHS[Api.NATIVE]
        self._compat = (
            None
            if config.api is Api.NATIVE
            else CompatStreams(self.totals, api=config.api, base_url=config.gateway_url, model=config.model)
        )
        self._sessions: list[aiohttp.ClientSession] = []
        self._control: ControlChannel | None = None
        self._deadline: float | None = None
        self._scopes: set[asyncio.Timeout] = set()
        self._start_scope: asyncio.Timeout | None = None
        self._interrupted = False
        self._timeline: SampleSeries[TimelinePoint] = SampleSeries(max_points=MAX_TIMELINE_POINTS)
        self._t0 = 0.0
        self._ramped_at = math.inf
        """Wall-clock time from which no stream starts (deltas published after it count as after the ramp)."""

    async def run(self) -> RunResult:
        """Run the whole load test and return what it measured."""
        raise_open_files_limit()
        loop = asyncio.get_running_loop()
        self._t0 = time.perf_counter()
        cpu_at_start = process_cpu_s()
        sampler = MetricsSampler(
            self.config.metrics_urls,
            interval_s=self.config.sample_interval_s,
            timeout_s=self.config.request_timeout_s,
            headers=self._auth,
            started_at=self._t0,
        )
        sampling = asyncio.create_task(sampler.run(), name="loadtest-sampler")
        progress = asyncio.create_task(self._report_progress(), name="loadtest-progress")
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGINT, self.interrupt)
        try:
            async with contextlib.AsyncExitStack() as stack:
                for address in self._addresses:
                    self._sessions.append(await stack.enter_async_context(self._session(address)))
                if self._compat is None:  # stops go over tokenrelay's control WebSocket
                    self._control = self._control_channel()
                    stack.push_async_callback(self._control.close)
                await self._start_all()
            duration_s = time.perf_counter() - self._t0
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGINT)
            progress.cancel()
            sampler.stop()
            await asyncio.gather(progress, sampling, return_exceptions=True)
            self._end_progress()
        return RunResult(
            self.config,
            self.totals,
            duration_s,
            sampler.instances,
            self._timeline.points,
            self._interrupted,
            process_cpu_s() - cpu_at_start,
        )

    def interrupt(self) -> None:
        """Stop starting streams and cut off the open ones now (the report is still written)."""
        if self._interrupted:
            raise KeyboardInterrupt
        self._interrupted = True
        now = asyncio.get_running_loop().time()
        if self._start_scope is not None:
            self._start_scope.reschedule(now)
        self._set_deadline(now)

    def _control_channel(self) -> ControlChannel:
        # The channel's own timeouts are longer than the request timeout this driver puts
        # around each stop, so a slow answer is recorded as ``timeout``.
        return ControlChannel(
            control_url_for(self.config.gateway_url),
            headers=self._auth,
            open_timeout_s=2 * self.config.request_timeout_s,
            reply_timeout_s=2 * self.config.request_timeout_s,
        )

    def _session(self, address: str | None) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=0, local_addr=(address, 0) if address else None)
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.config.request_timeout_s, sock_read=self.config.read_timeout_s
        )
        return aiohttp.ClientSession(connector=connector, timeout=timeout, headers=self._auth)

    def _set_deadline(self, when: float) -> None:
        if self._deadline is not None and self._deadline <= when:
            return
        self._deadline = when
        for scope in self._scopes:
            scope.reschedule(when)

    async def _start_all(self) -> None:
        config, loop = self.config, asyncio.get_running_loop()
        begin = loop.time()
        start_deadline = begin + config.duration_s if config.duration_s else None
        if start_deadline is not None:
            self._set_deadline(start_deadline + config.drain_s)
        slots = asyncio.Semaphore(config.max_open)
        tasks: set[asyncio.Task[None]] = set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(start_deadline) as self._start_scope:
                for number in range(config.streams):
                    if config.ramp_per_s:
                        await asyncio.sleep(max(0.0, begin + number / config.ramp_per_s - loop.time()))
                    await slots.acquire()
                    task = asyncio.create_task(self._stream(self._planner.plan(number)))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    task.add_done_callback(lambda _: slots.release())
        self._ramped_at = time.time()  # all started, or --duration-s is over: no stream starts from now on
        self._start_scope = None
        if start_deadline is None:
            self._set_deadline(loop.time() + config.drain_s)
        await asyncio.gather(*tasks)

    async def _stream(self, plan: StreamPlan) -> None:
        totals = self.totals
        totals.stream_started()
        tally = StreamTally()  # left empty by the other APIs: their chunks carry no index to check
        holder = self._never_read_reader(plan) if plan.never_read else None
        outcome = Outcome.FAILED
        scope = asyncio.timeout_at(self._deadline)
        self._scopes.add(scope)
        try:
            async with scope:
                if self._compat is not None:
                    outcome = await self._compat.run(self._sessions[plan.number % len(self._sessions)], plan)
                else:
                    outcome = await self._start_and_read(plan, tally, holder)
        except TimeoutError:
            if scope.expired():
                totals.error("interrupted" if self._interrupted else "drain_timeout")
            else:
                totals.error("timeout")
            if holder is not None:  # cut off while holding its connection: still a reader that never read
                outcome = holder.outcome
        finally:
            self._scopes.discard(scope)
            totals.stream_ended(outcome, tally)

    async def _start_and_read(self, plan: StreamPlan, tally: StreamTally, holder: NeverReadReader | None) -> Outcome:
        session = self._sessions[plan.number % len(self._sessions)]
        body = orjson.dumps({"prompt": plan.prompt, "max_tokens": plan.max_tokens})
        headers = {"Content-Type": "application/json"}
        sent = time.perf_counter()
        try:
            async with session.post(
                self._streams_url, data=body, headers=headers, timeout=self._post_timeout
            ) as response:
                status, raw = response.status, await response.read()
            elapsed_ms = (time.perf_counter() - sent) * 1000
            if status != 201:
                self.totals.rejected.record(elapsed_ms)
                self.totals.error(http_error_code(status, raw))
                return Outcome.REJECTED
            created = orjson.loads(raw)
            stream_id, events_url = str(created["id"]), str(created["events_url"])
        except (aiohttp.ClientError, OSError, ValueError, KeyError, TypeError) as exc:
            self.totals.error(error_code(exc))
            return Outcome.FAILED
        self.totals.start.record(elapsed_ms)
        if holder is not None:
            return await holder.hold(events_url, lambda: self._finished(session, stream_id))
        return await self._read(session, events_url, _Reading(plan, stream_id, sent, tally))

    def _never_read_reader(self, plan: StreamPlan) -> NeverReadReader:
        local = self._addresses[plan.number % len(self._addresses)]
        return NeverReadReader(self.totals, headers=self._auth, local_address=local)

    async def _read(self, session: aiohttp.ClientSession, events_url: str, reading: _Reading) -> Outcome:
        try:
            reading.get_wall = time.time()
            async with session.get(events_url, headers={"Accept": "text/event-stream"}) as response:
                if response.status != 200:
                    self.totals.error(http_error_code(response.status, await response.read()))
                    return Outcome.FAILED
                finish_reason = await self._consume(response, reading)
            if finish_reason is None:
                return Outcome.FAILED
            return await self._conclude(reading, finish_reason)
        except (aiohttp.ClientError, OSError, ValueError, KeyError, TypeError, ProtocolError) as exc:
            self.totals.error(error_code(exc))
            return Outcome.FAILED
        finally:
            reading.drop_stop()

    async def _consume(self, response: aiohttp.ClientResponse, reading: _Reading) -> str | None:
        """Read events until the terminal one; the ``stop`` event's finish reason, or ``None`` after an error."""
        totals, tally, stop_after = self.totals, reading.tally, reading.plan.stop_after_tokens
        decoder = SSEDecoder()
        last_arrival: float | None = None
        async for chunk in response.content.iter_any():
            wall, arrival = time.time(), time.perf_counter()
            for event in decoder.feed(chunk):
                if event.event == "delta":
                    data = orjson.loads(event.data)
                    totals.delivered += tally.delta(data["index"])
                    ts = data.get("ts")  # absent from servers older than the lag stamp
                    if ts is not None:
                        # A merged delta carries its oldest token's stamp: one that joins history to live
                        # tokens counts as history.
                        lag_ms = (wall - ts) * 1000
                        if ts >= reading.get_wall:
                            totals.token_lag.record(lag_ms)
                            if ts >= self._ramped_at:
                                totals.after_ramp_lag.record(lag_ms)
                        else:
                            totals.history_lag.record(lag_ms)
                    if last_arrival is None:
                        totals.ttft.record((arrival - reading.sent) * 1000)
                    else:
                        totals.inter_token.record((arrival - last_arrival) * 1000)
                    last_arrival = arrival
                    if stop_after is not None and reading.stop is None and tally.delivered >= stop_after:
                        reading.stop = asyncio.create_task(self._stop(reading.stream_id))
                elif event.event == "stop":
                    data = orjson.loads(event.data)
                    tally.finish(int(data["tokens"]))
                    return str(data["finish_reason"])
                elif event.event == "error":
                    data = orjson.loads(event.data)
                    totals.error(str(data.get("code") or "internal"))
                    return None
        totals.error("connection_error")  # the body ended without a terminal event
        return None

    async def _conclude(self, reading: _Reading, finish_reason: str) -> Outcome:
        stopped_by_us = False
        if reading.stop is not None:
            try:
                stopped_by_us = await reading.stop
            except (TimeoutError, ConnectionLost, ProtocolError) as exc:
                self.totals.error(error_code(exc))
                return Outcome.FAILED
            except TokenRelayError as exc:  # the gateway's error reply
                self.totals.error(str(exc.code))
                return Outcome.FAILED
        if finish_reason in ("stop", "length"):
            return Outcome.COMPLETED
        if finish_reason == "cancelled" and stopped_by_us:
            return Outcome.STOPPED
        self.totals.error("cancelled" if finish_reason == "cancelled" else f"finish_reason_{finish_reason}")
        return Outcome.FAILED

    async def _stop(self, stream_id: str) -> bool:
        """Stop over the shared control socket; whether the stream was still running (``cancelled``)."""
        assert self._control is not None
        sent = time.perf_counter()
        async with asyncio.timeout(self.config.request_timeout_s):
            reply = expect(await self._control.request({"type": "stop", "stream_id": stream_id}), "stopped")
        self.totals.stop.record((time.perf_counter() - sent) * 1000)
        return reply.get("finish_reason") == "cancelled"

    async def _finished(self, session: aiohttp.ClientSession, stream_id: str) -> bool:
        """Whether the gateway says the stream finished (or cannot say: then stop waiting for it)."""
        url = f"{self._streams_url}/{stream_id}"
        try:
            async with session.get(url, timeout=self._post_timeout) as response:
                raw = await response.read()
                if response.status != 200:
                    self.totals.error(http_error_code(response.status, raw))
                    return True
                return bool(orjson.loads(raw).get("state") == "finished")
        except (aiohttp.ClientError, OSError, ValueError, AttributeError) as exc:
            self.totals.error(error_code(exc))
            return True

    async def _report_progress(self) -> None:
        ticks = itertools.count()
        tty = self._progress is not None and self._progress.isatty()
        last_delivered, last_t = 0, 0.0
        self._timeline.add(TimelinePoint(0.0, 0, 0))
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL_S)
            t = time.perf_counter() - self._t0
            totals = self.totals
            self._timeline.add(TimelinePoint(t, totals.open, totals.delivered))
            if self._progress is None or (not tty and next(ticks) % PLAIN_PROGRESS_EVERY):
                continue
            rate = (totals.delivered - last_delivered) / max(t - last_t, 1e-9)
            last_delivered, last_t = totals.delivered, t
            self._progress.write(("\r" if tty else "") + self._progress_line(t, rate) + ("" if tty else "\n"))
            self._progress.flush()

    def _progress_line(self, t: float, tokens_per_s: float) -> str:
        totals = self.totals
        lag = totals.token_lag.percentile(99)
        lag_text = "-" if lag is None else f"{lag:.1f} ms"
        return (
            f"{t:7.1f} s  open {totals.open:>6}  started {totals.started:>7}  "
            f"completed {totals.outcomes[Outcome.COMPLETED]:>7}  stopped {totals.outcomes[Outcome.STOPPED]:>6}  "
            f"errors {sum(totals.errors.values()):>6}  tokens/s {tokens_per_s:>9,.0f}  lag p99 {lag_text:>10}"
        )

    def _end_progress(self) -> None:
        if self._progress is not None and self._progress.isatty():
            self._progress.write("\n")
            self._progress.flush()


class _Reading:
    """One read stream's state while its events arrive."""

    __slots__ = ("get_wall", "plan", "sent", "stop", "stream_id", "tally")

    def __init__(self, plan: StreamPlan, stream_id: str, sent: float, tally: StreamTally) -> None:
        self.plan = plan
        self.stream_id = stream_id
        self.sent = sent
        """``time.perf_counter()`` when the ``POST`` was sent (TTFT counts from there)."""
        self.tally = tally
        self.stop: asyncio.Task[bool] | None = None
        self.get_wall = math.inf
        """``time.time()`` when the ``GET`` was sent: deltas stamped earlier came from history."""

    def drop_stop(self) -> None:
        """Cancel a stop still in flight; consume a failed one's exception (it was counted, or is moot)."""
        task = self.stop
        if task is None:
            return
        if not task.done():
            task.cancel()
        elif not task.cancelled():
            task.exception()


async def run_loadtest(config: LoadTestConfig, *, progress: TextIO | None = sys.stderr) -> RunResult:
    """Run one load test."""
    return await LoadTest(config, progress=progress).run()
