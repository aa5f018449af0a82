"""Open streams per streamer: the memory each reader of a slow stream costs, against a bare idle SSE connection.

Each run starts a fresh nats-server per phase; the phases run one after the other:

* ``forwarder`` — the bare NATS -> SSE forwarder (:mod:`bench.baselines.forwarder`) whose publisher
  never sends a token (``--baseline-tokens-per-s 0``, the default): ``--readers`` idle SSE connections,
  each with its NATS subscription.  This is the "bare idle SSE connection".
* ``tokenrelay`` — gateway, one streamer and ``--runners`` runners: streams generated at ``--tokens-per-s``
  (1 token/s: slow streams; ``max_tokens`` is so large that none ends during a run), each read by
  ``--readers-per-stream`` SSE connections (default 1), ``--readers`` connections in all.

In both phases readers are opened at ``--ramp-per-s`` (``POST /v1/streams``, then the ``GET`` of its
events, kept open until the phase ends) and held for ``--hold-s`` once all are open.  The server's RSS
(``process_resident_memory_bytes`` on its ``/metrics``, i.e. ``VmRSS``) is sampled before the first
reader and every ``--sample-s`` while holding.  RSS per reader = (the highest RSS while holding - the
RSS before) / the readers the server counted open (``tokenrelay_streamer_readers_open``) in that sample.
Token lag (the runner's ``ts`` on each delta -> its arrival here; same machine clock) is recorded only
while holding.  The readers are this script's own: raw asyncio protocols that decode the SSE bytes as
they come (a few KiB each, no task per connection), so the load generator stays small next to what it
measures; its own CPU and RSS are reported too, with every server process's CPU while holding.

Every reader holds a socket in the streamer and one here.  When ``--readers`` does not fit the open-files
limit (``ulimit -n``, which the servers inherit), the script says so before it starts, attempts only the
readers that fit and counts the rest as ``loadgen_fd_limit`` errors instead of crashing; readers the
server cannot take fail with their own codes (``timeout``, ``events_http_503``, ...).

    python -m bench.open_streams --readers 10000 --ramp-per-s 200 --hold-s 60 --runs 3
    python -m bench.open_streams --readers 20000 --hold-s 20 --runs 1   # the stretch (needs ulimit -n > 20,200)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import math
import os
import resource
import statistics
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from bench.baselines.common import forwarder
from bench.stats import proc_cpu_s, proc_rss_bytes, write_json
from tokenrelay.client.errors import ProtocolError
from tokenrelay.client.sse import ServerSentEvent, SSEDecoder
from tokenrelay.loadtest.metrics import CPU_SECONDS, READERS_OPEN, RSS_BYTES, parse_metrics
from tokenrelay.loadtest.stats import LatencyHistogram
from tokenrelay.testing.procs import nats_server, system

PHASES = ("forwarder", "tokenrelay")
FD_MARGIN = 64
"""Descriptors a server needs besides its readers' sockets (NATS, listening socket, files, the event loop)."""
IDLE_TTFT_MS = 1e9
"""The forwarder's publisher waits this long before a first token: its readers stay idle."""
STREAM_MAX_TOKENS = 1_000_000
"""Every stream's ``max_tokens``: none ends during a run, whatever the ramp's real pace; closing the readers
ends them (the streamer cancels a generation its readers left)."""
LOG_LINES_KEPT = 20
IN_FLIGHT_OPENS = 128
"""Readers being set up at once at most (``POST`` + ``GET`` until the ``start`` event)."""
LOADGEN_FD_RESERVE = IN_FLIGHT_OPENS + FD_MARGIN
"""Descriptors this process keeps free besides its readers (the ``POST`` pool, ``/metrics``, ``/proc`` reads):
readers past ``RLIMIT_NOFILE`` minus this are not attempted and count as ``loadgen_fd_limit``."""
OPEN_TIMEOUT_S = 60.0
"""A reader not open (its ``start`` event arrived) this long after its ``POST`` was sent fails as ``timeout``."""
STARTUP_SETTLE_S = 1.0
"""Pause after the servers are healthy, before the RSS before any reader is read."""
PROGRESS_EVERY_S = 5.0


# -- /proc and /metrics ------------------------------------------------------------------------


def proc_open_files_limit(pid: int) -> int | None:
    """The soft ``Max open files`` of a process (``None`` if unknown or unlimited)."""
    try:
        limits = Path(f"/proc/{pid}/limits").read_text()
    except OSError:
        return None
    for line in limits.splitlines():
        if line.startswith("Max open files"):
            soft = line.split()[3]
            return int(soft) if soft.isdigit() else None
    return None


def own_open_fds() -> int:
    """Descriptors this process has open now (0 if unknown)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def own_cpu_s() -> float:
    """CPU seconds this process has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raise_open_files_limit() -> int:
    """Raise this process's soft open-files limit to its hard limit (children inherit it); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        if hard != resource.RLIM_INFINITY and soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft if soft != resource.RLIM_INFINITY else sys.maxsize


async def scrape(session: aiohttp.ClientSession, base_url: str) -> dict[str, float]:
    """RSS, CPU seconds and open readers from a server's ``/metrics`` (empty if it cannot be read)."""
    try:
        async with session.get(f"{base_url}/metrics") as response:
            text = await response.text()
    except (aiohttp.ClientError, OSError, TimeoutError):
        return {}
    return parse_metrics(text, (RSS_BYTES, CPU_SECONDS, READERS_OPEN))


def error_code(exc: BaseException) -> str:
    """A short code for a reader that could not open: the errno's name (``emfile``), ``timeout``, …"""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, OSError) and exc.errno is not None and exc.errno in errno.errorcode:
        return errno.errorcode[exc.errno].lower()
    if isinstance(exc, (ProtocolError, ValueError, KeyError)):
        return "protocol_error"
    return type(exc).__name__


# -- the readers: raw HTTP/1.1 + SSE, decoded as bytes arrive (sans-I/O parser, asyncio protocol) ------


class HttpEventStream:
    """An HTTP/1.1 response, fed as bytes arrive: the status, then the body (chunked or not) decoded as SSE.

    Sans-I/O; ``feed`` returns the events completed so far.  ``ProtocolError`` for a head that is not HTTP.
    """

    __slots__ = ("_buffer", "_chunk_left", "_chunked", "_crlf_due", "decoder", "ended", "status")

    MAX_HEAD_BYTES = 16384

    def __init__(self) -> None:
        self.status: int | None = None
        self.ended = False
        """The chunked body's last chunk arrived."""
        self.decoder = SSEDecoder()
        self._buffer = bytearray()
        self._chunked = False
        self._chunk_left = 0
        self._crlf_due = False

    def feed(self, data: bytes) -> list[ServerSentEvent]:
        """The SSE events these bytes complete."""
        if self.status is None:
            self._buffer += data
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > self.MAX_HEAD_BYTES:
                    raise ProtocolError("response head too long")
                return []
            self._parse_head(bytes(self._buffer[:end]))
            data = bytes(self._buffer[end + 4 :])
            self._buffer.clear()
        body = self._dechunk(data) if self._chunked else data
        return self.decoder.feed(body) if body else []

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        self.status = int(parts[1])
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"transfer-encoding" and b"chunked" in value.lower():
                self._chunked = True

    def _dechunk(self, data: bytes) -> bytes:
        buffer = self._buffer
        buffer += data
        out = bytearray()
        while not self.ended:
            if self._chunk_left:
                take = min(self._chunk_left, len(buffer))
                out += buffer[:take]
                del buffer[:take]
                self._chunk_left -= take
                if self._chunk_left:
                    break
                self._crlf_due = True
            if self._crlf_due:
                if len(buffer) < 2:
                    break
                del buffer[:2]
                self._crlf_due = False
            end = buffer.find(b"\r\n")
            if end < 0:
                break
            try:
                size = int(bytes(buffer[:end]).split(b";", 1)[0], 16)
            except ValueError:
                raise ProtocolError("bad chunk size") from None
            del buffer[: end + 2]
            if size == 0:
                self.ended = True
            self._chunk_left = size
        return bytes(out)


class ReaderFailed(Exception):
    """A reader that could not open, with the code it is counted under."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(message or code)
        self.code = code


@dataclass
class PhaseCounters:
    """What all readers of one phase share: counts, errors, and the lag while holding."""

    opened: int = 0
    closed_early: int = 0
    """Readers that were open and whose connection ended while the phase still wanted them open."""
    ended: int = 0
    """Readers that were open and got their stream's terminal event (``stop`` or ``error``) before the phase ended."""
    deltas: int = 0
    deltas_held: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    error_examples: dict[str, str] = field(default_factory=dict)
    """The first message seen for each error code."""
    terminal: Counter[str] = field(default_factory=Counter)
    """Terminal events (``stop``/``error``, with its code) that arrived before the phase ended."""
    recording: bool = False
    lag: LatencyHistogram = field(default_factory=LatencyHistogram)
    ending: bool = False

    def error(self, code: str, message: str = "") -> None:
        """Count one error; keep its first message."""
        self.errors[code] += 1
        self.error_examples.setdefault(code, message[:300])


class EventsReader(asyncio.Protocol):
    """One SSE connection: sends the ``GET``, decodes what arrives, records lag while the phase holds.

    ``opened`` resolves when the ``start`` event arrives, or fails with :class:`ReaderFailed`.
    """

    __slots__ = ("_counters", "_parser", "_request", "is_open", "opened", "transport")

    def __init__(self, request: bytes, counters: PhaseCounters) -> None:
        self._request = request
        self._counters = counters
        self._parser = HttpEventStream()
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.is_open = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        try:
            self._received(data, time.time())
        except Exception as exc:  # a bug here must fail this reader, not vanish into the transport
            self._fail("reader_exception", f"{type(exc).__name__}: {exc}")

    def _received(self, data: bytes, wall: float) -> None:
        counters = self._counters
        try:
            events = self._parser.feed(data)
        except ProtocolError as exc:
            self._fail("sse_parse_error", str(exc))
            return
        status = self._parser.status
        if status is not None and status != 200:
            self._fail(f"events_http_{status}", data.decode(errors="replace").rpartition("\r\n\r\n")[2])
            return
        for event in events:
            if event.event == "delta":
                counters.deltas += 1
                if counters.recording:
                    counters.deltas_held += 1
                    ts = orjson.loads(event.data).get("ts")
                    if ts is not None:
                        counters.lag.record((wall - ts) * 1000)
            elif event.event == "start":
                if not self.opened.done():
                    self.is_open = True
                    self.opened.set_result(None)
            elif event.event in ("stop", "error"):
                code = orjson.loads(event.data).get("code") if event.event == "error" else None
                counters.terminal[f"{event.event}:{code}" if code else event.event] += 1
                if self.is_open:
                    self.is_open = False
                    counters.ended += 1
                elif not self.opened.done():
                    self._fail(f"{event.event}_before_start:{code}", event.data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self._settle(ReaderFailed("closed_before_start", repr(exc) if exc else "the server closed the connection"))
        elif self.is_open and not self._counters.ending:
            self._counters.closed_early += 1
            self.is_open = False

    def _fail(self, code: str, message: str = "") -> None:
        if self.opened.done():
            self._counters.error(code, message)
        else:
            self._settle(ReaderFailed(code, message))
        self.is_open = False
        if self.transport is not None:
            self.transport.abort()

    def _settle(self, exc: ReaderFailed) -> None:
        self.opened.set_exception(exc)
        self.opened.exception()  # retrieved here: the opener reports it


def request_bytes(events_url: str) -> bytes:
    """The raw ``GET`` of an events URL."""
    url = urlsplit(events_url)
    target = url.path + (f"?{url.query}" if url.query else "")
    return f"GET {target} HTTP/1.1\r\nHost: {url.netloc}\r\nAccept: text/event-stream\r\n\r\n".encode()


# -- one phase -----------------------------------------------------------------------------------


@dataclass
class Target:
    """The server under test: where streams are created, whose ``/metrics`` to read, which pids to watch."""

    name: str
    create_url: str
    metrics_url: str
    pids: dict[str, int]
    """Processes whose CPU (and RSS) is reported, by role (``streamer``, ``runner-0``, ``nats``, …)."""
    readers_per_stream: int = 1
    log_dir: str | None = None
    """Where the servers' logs are (``<role>.log``), read for warnings and tracebacks at the end."""


class Phase:
    """Open ``readers`` readers at ``ramp_per_s``, hold them ``hold_s``, and measure."""

    def __init__(self, target: Target, args: argparse.Namespace) -> None:
        self.target = target
        self.args = args
        self.counters = PhaseCounters()
        self.readers: list[EventsReader] = []
        self.addresses = [f"127.0.0.{k}" for k in range(1, args.source_addresses + 1)]

    async def run(self) -> dict[str, Any]:
        args, target, counters = self.args, self.target, self.counters
        timeout = aiohttp.ClientTimeout(total=30)
        connector = aiohttp.TCPConnector(limit=IN_FLIGHT_OPENS)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            await asyncio.sleep(STARTUP_SETTLE_S)
            before = await scrape(session, target.metrics_url)
            own_rss_before = proc_rss_bytes(os.getpid())
            t0 = time.perf_counter()
            await self._open_all(session)
            ramp_s = time.perf_counter() - t0
            await asyncio.sleep(args.settle_s)
            pids_cpu_before = {role: proc_cpu_s(pid) for role, pid in target.pids.items()}
            at_hold = await scrape(session, target.metrics_url)
            own_before = own_cpu_s()
            counters.recording = True
            samples = await self._hold(session)
            counters.recording = False
            own_cpu = own_cpu_s() - own_before
            pids_cpu = {role: _minus(proc_cpu_s(pid), pids_cpu_before[role]) for role, pid in target.pids.items()}
            pids_rss = {role: proc_rss_bytes(pid) for role, pid in target.pids.items()}
            own_rss = proc_rss_bytes(os.getpid())
            open_at_end = sum(1 for reader in self.readers if reader.is_open)
            counters.ending = True
            for reader in self.readers:
                if reader.transport is not None:
                    reader.transport.abort()
        rss_before = before.get(RSS_BYTES)
        at_max = max((s for s in samples if s.get("rss_bytes") is not None), key=lambda s: s["rss_bytes"], default=None)
        rss_full = None if at_max is None else at_max["rss_bytes"]
        gauge = [s["readers_open"] for s in samples if s.get("readers_open") is not None]
        readers_gauge = min(gauge) if gauge else None
        # Divided by the readers the server itself counted when its RSS was highest (ours if it does not say).
        readers_at_max = (at_max or {}).get("readers_open") or counters.opened
        per_reader = None
        if rss_before is not None and rss_full is not None and readers_at_max:
            per_reader = (rss_full - rss_before) / readers_at_max
        server_cpu = _minus(samples[-1].get("cpu_s") if samples else None, at_hold.get(CPU_SECONDS))
        hold_s = samples[-1]["t"] if samples else 0.0
        return {
            "target": target.name,
            "readers_requested": args.readers,
            "readers_opened": counters.opened,
            "readers_open_at_end": open_at_end,
            "readers_open_gauge_min": readers_gauge,
            "closed_early": counters.closed_early,
            "ended_early": counters.ended,
            "errors": dict(counters.errors),
            "terminal_events": dict(counters.terminal),
            "ramp_s": ramp_s,
            "hold_s": hold_s,
            "rss_before_bytes": rss_before,
            "rss_full_bytes": rss_full,
            "rss_per_reader_bytes": per_reader,
            "readers_at_rss_max": readers_at_max,
            "lag_ms": counters.lag.summary(),
            "deltas_held": counters.deltas_held,
            "tokens_per_s_held": counters.deltas_held / hold_s if hold_s else None,
            "server_cpu_s_held": server_cpu,
            "server_cpu_cores_held": server_cpu / hold_s if server_cpu is not None and hold_s else None,
            "process_cpu_s_held": pids_cpu,
            "process_rss_bytes_end": pids_rss,
            "loadgen_cpu_s_held": own_cpu,
            "loadgen_rss_bytes": {"before": own_rss_before, "end": own_rss},
            "error_examples": counters.error_examples,
            "readers_per_stream": target.readers_per_stream,
            "log_problems": log_problems(target.log_dir),
            "samples": samples,
        }

    async def _open_all(self, session: aiohttp.ClientSession) -> None:
        loop = asyncio.get_running_loop()
        begin = last_progress = loop.time()
        per_stream = self.target.readers_per_stream
        slots = asyncio.Semaphore(max(1, IN_FLIGHT_OPENS // per_stream))
        tasks: set[asyncio.Task[None]] = set()
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        budget = sys.maxsize if limit == resource.RLIM_INFINITY else limit - own_open_fds() - LOADGEN_FD_RESERVE
        readers = min(self.args.readers, max(0, budget))
        if readers < self.args.readers:
            self._progress(
                f"this process's open-files limit ({limit}) leaves room for {readers} readers: "
                f"the other {self.args.readers - readers} count as loadgen_fd_limit"
            )
            self.counters.error(
                "loadgen_fd_limit", f"RLIMIT_NOFILE {limit} minus {LOADGEN_FD_RESERVE} kept free by the load generator"
            )
            self.counters.errors["loadgen_fd_limit"] += self.args.readers - readers - 1
        for first in range(0, readers, per_stream):
            await asyncio.sleep(max(0.0, begin + first / self.args.ramp_per_s - loop.time()))
            await slots.acquire()
            task = asyncio.create_task(self._open(session, first, min(per_stream, readers - first)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            task.add_done_callback(lambda _: slots.release())
            if loop.time() - last_progress >= PROGRESS_EVERY_S:
                last_progress = loop.time()
                self._progress(f"opening: {self.counters.opened} open, {sum(self.counters.errors.values())} failed")
        await asyncio.gather(*tasks)
        self._progress(f"opened {self.counters.opened} of {self.args.readers} in {loop.time() - begin:.1f} s")

    async def _open(self, session: aiohttp.ClientSession, first: int, readers: int) -> None:
        """Create one stream and open ``readers`` readers of it (numbered from ``first``)."""
        body = orjson.dumps({"prompt": f"open streams {first}", "max_tokens": STREAM_MAX_TOKENS})
        try:
            async with asyncio.timeout(OPEN_TIMEOUT_S):
                async with session.post(
                    self.target.create_url, data=body, headers={"Content-Type": "application/json"}
                ) as response:
                    raw = await response.read()
                if response.status != 201:
                    for _ in range(readers):
                        self.counters.error(f"create_http_{response.status}", raw.decode(errors="replace"))
                    return
                events_url = str(orjson.loads(raw)["events_url"])
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError) as exc:
            for _ in range(readers):
                self.counters.error(f"create_{error_code(exc)}", repr(exc))
            return
        await asyncio.gather(*(self._read(events_url, first + k) for k in range(readers)))

    async def _read(self, events_url: str, number: int) -> None:
        """Open one reader of ``events_url`` and wait for its ``start`` event."""
        url = urlsplit(events_url)
        local = self.addresses[number % len(self.addresses)] if len(self.addresses) > 1 else None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(OPEN_TIMEOUT_S):
                _, reader = await loop.create_connection(
                    lambda: EventsReader(request_bytes(events_url), self.counters),
                    url.hostname or "127.0.0.1",
                    url.port or 80,
                    local_addr=(local, 0) if local else None,
                )
                self.readers.append(reader)
                await reader.opened
        except ReaderFailed as exc:
            self.counters.error(exc.code, str(exc))
            return
        except (OSError, TimeoutError) as exc:
            self.counters.error(error_code(exc), repr(exc))
            return
        self.counters.opened += 1

    async def _hold(self, session: aiohttp.ClientSession) -> list[dict[str, Any]]:
        args, target = self.args, self.target
        begin = time.perf_counter()
        samples: list[dict[str, Any]] = []
        while True:
            t = time.perf_counter() - begin
            values = await scrape(session, target.metrics_url)
            samples.append(
                {
                    "t": round(t, 3),
                    "rss_bytes": values.get(RSS_BYTES),
                    "cpu_s": values.get(CPU_SECONDS),
                    "readers_open": values.get(READERS_OPEN),
                    "deltas_held": self.counters.deltas_held,
                }
            )
            if t >= args.hold_s:
                return samples
            await asyncio.sleep(min(args.sample_s, max(0.0, args.hold_s - (time.perf_counter() - begin))))

    def _progress(self, text: str) -> None:
        print(f"  [{self.target.name}] {text}", file=sys.stderr, flush=True)


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def log_problems(log_dir: str | None) -> dict[str, dict[str, Any]]:
    """Per server log: how many lines hold ``WARNING``, ``ERROR`` or ``Traceback``, and the first few of them."""
    out: dict[str, dict[str, Any]] = {}
    if log_dir is None:
        return out
    for path in sorted(Path(log_dir).glob("*.log")):
        lines = [
            line
            for line in path.read_text(errors="replace").splitlines()
            if "WARNING" in line or "ERROR" in line or "Traceback" in line
        ]
        if lines:
            out[path.stem] = {"count": len(lines), "first": [line[:300] for line in lines[:LOG_LINES_KEPT]]}
    return out


# -- the two targets -----------------------------------------------------------------------------


@contextlib.contextmanager
def tokenrelay_target(nats_url: str, nats_pid: int, args: argparse.Namespace) -> Iterator[Target]:
    """Gateway, one streamer and ``--runners`` runners at ``--tokens-per-s``."""
    runner_args = [
        "--max-concurrency", str(args.readers + 16),
        "--synthetic-tokens-per-s", str(args.tokens_per_s),
        "--synthetic-length-tokens", str(STREAM_MAX_TOKENS),
    ]  # fmt: skip
    gateway_args = ["--max-tokens-limit", str(STREAM_MAX_TOKENS), "--max-queued-streams", str(IN_FLIGHT_OPENS * 8)]
    with system(nats_url, runners=args.runners, runner_args=runner_args, gateway_args=gateway_args) as sut:
        pids = {"streamer": sut.streamer.process.pid, "gateway": sut.gateway.process.pid, "nats": nats_pid}
        pids |= {runner.name: runner.process.pid for runner in sut.runners}
        yield Target(
            "tokenrelay",
            f"{sut.gateway_url}/v1/streams",
            sut.streamer_url,
            pids,
            readers_per_stream=args.readers_per_stream,
            log_dir=sut.log_dir,
        )


@contextlib.contextmanager
def forwarder_target(nats_url: str, nats_pid: int, args: argparse.Namespace) -> Iterator[Target]:
    """The bare forwarder; its publisher idle (``--baseline-tokens-per-s 0``) or at that pace."""
    rate = args.baseline_tokens_per_s
    ttft_ms = IDLE_TTFT_MS if rate == 0 else 0.0
    with forwarder(nats_url, ttft_ms=ttft_ms, tokens_per_s=rate or 1.0) as url:
        yield Target("forwarder", f"{url}/v1/streams", url, {"nats": nats_pid})


@contextlib.asynccontextmanager
async def started(phase: str, args: argparse.Namespace) -> AsyncIterator[Target]:
    """A fresh nats-server and the phase's servers; stopped afterwards."""
    with nats_server() as broker:
        make = tokenrelay_target if phase == "tokenrelay" else forwarder_target
        with make(broker.url, broker.process.pid, args) as target:
            yield target


async def run_once(args: argparse.Namespace) -> dict[str, Any]:
    """One run: every phase on fresh processes, then the ratio of RSS per reader."""
    out: dict[str, Any] = {}
    for phase in args.phases:
        async with started(phase, args) as target:
            result = await Phase(target, args).run()
            if phase == "tokenrelay":
                result["streamer_open_files_limit"] = proc_open_files_limit(target.pids["streamer"])
            out[phase] = result
        await asyncio.sleep(1.0)  # let the closed connections' sockets go
    if "forwarder" in out and "tokenrelay" in out:
        ours, bare = out["tokenrelay"]["rss_per_reader_bytes"], out["forwarder"]["rss_per_reader_bytes"]
        out["rss_per_reader_ratio"] = ours / bare if ours is not None and bare else None
    return out


# -- report --------------------------------------------------------------------------------------


def fd_check(args: argparse.Namespace, limit: int) -> dict[str, Any]:
    """Whether the open-files limit (this process's, which the servers inherit) fits ``--readers``."""
    needed = args.readers + LOADGEN_FD_RESERVE
    ports = _ephemeral_ports()
    per_address = math.ceil(args.readers / args.source_addresses)
    check: dict[str, Any] = {
        "open_files_limit": limit,
        "needed_per_process": needed,
        "fits": needed <= limit,
        "readers_that_fit": max(0, limit - LOADGEN_FD_RESERVE),
        "ephemeral_ports": ports,
    }
    if needed > limit:
        print(
            f"WARNING: {args.readers} readers need about {needed} open files in this load generator (one socket "
            f"each, plus {LOADGEN_FD_RESERVE}) and about {args.readers + FD_MARGIN} in the server, but the "
            f"open-files limit (ulimit -n, inherited by the servers) is {limit}: at most ~{check['readers_that_fit']} "
            "readers are attempted; the rest are reported as 'loadgen_fd_limit' errors (and any the server cannot "
            "accept as 'timeout' or a connection error). Raise the hard limit (ulimit -Hn) to run this size.",
            file=sys.stderr,
            flush=True,
        )
    if ports is not None and per_address > ports:
        print(
            f"WARNING: {per_address} connections from one address exceed the {ports} ephemeral ports; "
            f"pass --source-addresses {math.ceil(args.readers / ports)} or more.",
            file=sys.stderr,
            flush=True,
        )
    return check


def _ephemeral_ports() -> int | None:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    except (OSError, ValueError):
        return None
    return int(high) - int(low) + 1


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def medians(runs: list[dict[str, Any]], phases: list[str]) -> dict[str, Any]:
    """Per phase, the median over runs of each scalar and of each lag percentile."""
    out: dict[str, Any] = {}
    scalars = (
        "readers_opened", "readers_open_at_end", "readers_open_gauge_min", "closed_early", "ramp_s", "hold_s",
        "rss_before_bytes", "rss_full_bytes", "rss_per_reader_bytes", "tokens_per_s_held", "server_cpu_cores_held",
        "loadgen_cpu_s_held",
    )  # fmt: skip
    for phase in phases:
        results = [run[phase] for run in runs]
        med: dict[str, Any] = {key: _median([r[key] for r in results]) for key in scalars}
        med["lag_ms"] = {key: _median([r["lag_ms"][key] for r in results]) for key in ("p50", "p95", "p99", "max", "n")}
        med["errors"] = sum((Counter(r["errors"]) for r in results), Counter())
        med["error_examples"] = {k: v for r in results for k, v in r["error_examples"].items()}
        med["terminal_events"] = sum((Counter(r["terminal_events"]) for r in results), Counter())
        med["log_problems"] = sum(
            (Counter({role: p["count"] for role, p in r["log_problems"].items()}) for r in results), Counter()
        )
        roles = results[0]["process_cpu_s_held"].keys()
        med["process_cpu_cores_held"] = {
            role: _median(
                [
                    r["process_cpu_s_held"][role] / r["hold_s"]
                    if r["process_cpu_s_held"].get(role) is not None and r["hold_s"]
                    else None
                    for r in results
                ]
            )
            for role in roles
        }
        med["process_rss_bytes_end"] = {
            role: _median([r["process_rss_bytes_end"].get(role) for r in results]) for role in roles
        }
        med["loadgen_rss_bytes_end"] = _median([r["loadgen_rss_bytes"]["end"] for r in results])
        med["loadgen_cpu_cores_held"] = _median(
            [r["loadgen_cpu_s_held"] / r["hold_s"] if r["hold_s"] else None for r in results]
        )
        out[phase] = med
    if all("rss_per_reader_ratio" in run for run in runs):
        out["rss_per_reader_ratio"] = _median([run["rss_per_reader_ratio"] for run in runs])
    return out


def _kib(value: float | None) -> str:
    return "-" if value is None else f"{value / 1024:,.1f} KiB"


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.1f} MiB"


def _num(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def format_table(med: dict[str, Any], args: argparse.Namespace) -> str:
    """The medians as a fixed-width table, with the targets."""
    phases = [p for p in PHASES if p in med]
    width = 44
    lines = [
        f"open streams: {args.readers:,} readers opened at {args.ramp_per_s:g}/s, held {args.hold_s:g} s; "
        f"tokenrelay streams at {args.tokens_per_s:g} tokens/s, {args.readers_per_stream} reader(s) each, "
        f"{args.runners} runner(s); "
        f"median of {args.runs} run(s)",
        f"{'':<{width}}" + "".join(f"{p:>18}" for p in phases),
    ]

    def row(label: str, render: Any) -> None:
        lines.append(f"{label:<{width}}" + "".join(f"{render(med[p]):>18}" for p in phases))

    row("readers open (ours, after the hold)", lambda m: _num(m["readers_open_at_end"]))
    row("readers open (server gauge, min while held)", lambda m: _num(m["readers_open_gauge_min"]))
    row("reader errors (all runs)", lambda m: _num(sum(m["errors"].values())))
    row("ramp (s)", lambda m: _num(m["ramp_s"], ".1f"))
    row("server RSS before any reader", lambda m: _mib(m["rss_before_bytes"]))
    row("server RSS at full count (max while held)", lambda m: _mib(m["rss_full_bytes"]))
    row("RSS per reader", lambda m: _kib(m["rss_per_reader_bytes"]))
    row("token lag p50 while held (ms)", lambda m: _num(m["lag_ms"]["p50"], ",.1f"))
    row("token lag p99 while held (ms)", lambda m: _num(m["lag_ms"]["p99"], ",.1f"))
    row(
        f"tokens/s delivered while held (of {args.readers * args.tokens_per_s:,.0f})",
        lambda m: _num(m["tokens_per_s_held"]),
    )
    row("server CPU while held (cores)", lambda m: _num(m["server_cpu_cores_held"], ".2f"))
    row("load generator CPU while held (cores)", lambda m: _num(m["loadgen_cpu_cores_held"], ".2f"))
    if "tokenrelay" in med:
        cores = med["tokenrelay"]["process_cpu_cores_held"]
        others = ", ".join(f"{role} {_num(value, '.2f')}" for role, value in cores.items())
        lines.append(f"tokenrelay CPU while held, cores: {others}")
        rss = med["tokenrelay"]["process_rss_bytes_end"]
        sizes = ", ".join(f"{role} {_mib(value)}" for role, value in rss.items())
        lines.append(
            f"tokenrelay RSS after the hold: {sizes}; load generator {_mib(med['tokenrelay']['loadgen_rss_bytes_end'])}"
        )
    ratio = med.get("rss_per_reader_ratio")
    if ratio is not None:
        ours = med["tokenrelay"]["rss_per_reader_bytes"]
        lines.append(
            f"RSS per reader: tokenrelay {_kib(ours)} = {ratio:.2f}x the bare forwarder's idle SSE connection "
            f"(targets: <= 25 KB = 24.4 KiB per reader: {'met' if ours <= 25_000 else 'NOT met'}; "
            f"<= 2.5x: {'met' if ratio <= 2.5 else 'NOT met'})"
        )
    fds = med.get("fd_check")
    if fds is not None and not fds["fits"]:
        lines.append(
            f"open-files limit {fds['open_files_limit']:,} < the ~{fds['needed_per_process']:,} this size needs "
            f"(the load generator; the server a little less): only ~{fds['readers_that_fit']:,} readers could open"
        )
    for phase in phases:
        m = med[phase]
        if m["errors"]:
            lines.append(f"{phase} reader errors by code: {dict(m['errors'])}")
            lines += [f"  {code}: {example}" for code, example in m["error_examples"].items()]
        if m["terminal_events"]:
            lines.append(f"{phase} streams that ended while they should have stayed open: {dict(m['terminal_events'])}")
        if m["log_problems"]:
            lines.append(f"{phase} server log lines with WARNING/ERROR/Traceback: {dict(m['log_problems'])}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """Every option, documented."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.open_streams",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--readers", type=int, default=10_000, help="SSE readers to hold open, one per stream (default: %(default)s)")
    add(
        "--ramp-per-s",
        type=float,
        default=200.0,
        help="readers opened per second (POST, then GET of its events) (default: %(default)s)",
    )
    add(
        "--hold-s",
        type=float,
        default=60.0,
        help="seconds all readers are held open and measured (default: %(default)s)",
    )
    add(
        "--settle-s",
        type=float,
        default=3.0,
        help="pause between the last reader opening and the hold, not measured (default: %(default)s)",
    )
    add(
        "--sample-s",
        type=float,
        default=1.0,
        help="how often the server's /metrics is read while holding (default: %(default)s)",
    )
    add("--tokens-per-s", type=float, default=1.0, help="tokenrelay: each stream's pace (default: %(default)s)")
    add(
        "--readers-per-stream",
        type=int,
        default=1,
        help="tokenrelay: readers of each stream (fewer streams for the runners and NATS; the streamer still "
        "writes to every reader); the forwarder reads each stream once, so its phase always uses 1 "
        "(default: %(default)s)",
    )
    add(
        "--runners",
        type=int,
        default=1,
        help="tokenrelay: runner processes, each with --max-concurrency readers + 16 (default: %(default)s)",
    )
    add(
        "--baseline-tokens-per-s",
        type=float,
        default=0.0,
        help="forwarder: its streams' pace; 0 = idle, no token ever (the bare idle SSE connection) "
        "(default: %(default)s)",
    )
    add(
        "--source-addresses",
        type=int,
        default=1,
        metavar="K",
        help="spread the readers' connections over 127.0.0.1 ... 127.0.0.K, for more connections than one "
        "address has ephemeral ports (default: %(default)s)",
    )
    add(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated phases to run, from {', '.join(PHASES)} (default: %(default)s)",
    )
    add(
        "--runs",
        type=int,
        default=3,
        help="independent runs, fresh processes each; the table is their median (default: %(default)s)",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parsed and checked options (``phases`` becomes a list)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.phases = [p for p in args.phases.split(",") if p]
    if not args.phases or any(p not in PHASES for p in args.phases):
        parser.error(f"--phases takes a comma-separated list of {', '.join(PHASES)}")
    for name in ("readers", "runs", "runners", "source_addresses", "readers_per_stream"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("ramp_per_s", "hold_s", "sample_s", "tokens_per_s"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.settle_s < 0 or args.baseline_tokens_per_s < 0:
        parser.error("--settle-s and --baseline-tokens-per-s must not be negative")
    if args.source_addresses > 254:
        parser.error("--source-addresses must be at most 254")
    return args


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the table; write and return the JSON."""
    args = parse_args(argv)
    limit = raise_open_files_limit()
    fds = fd_check(args, limit)
    runs: list[dict[str, Any]] = []
    for run in range(args.runs):
        result = await run_once(args)
        runs.append(result)
        summary = "; ".join(
            f"{phase}: {r['readers_opened']} open, RSS/reader {_kib(r['rss_per_reader_bytes'])}, "
            f"lag p99 {_num(r['lag_ms']['p99'], ',.1f')} ms"
            for phase, r in ((phase, result[phase]) for phase in args.phases)
        )
        print(f"run {run + 1}: {summary}", flush=True)
    med = medians(runs, args.phases)
    med["fd_check"] = fds
    print()
    print(format_table(med, args))
    data = {"args": vars(args), "fd_check": fds, "runs": runs, "medians": med}
    print(f"wrote {write_json('open_streams', data)}")
    return data


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
