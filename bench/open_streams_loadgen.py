"""``bench.open_streams``'s load generator processes: each holds its share of the readers.

One process may hold only as many sockets as its open-files limit allows, so the readers are spread over
``--loadgen-processes`` of these.  The parent creates the streams and hands each process the readers to
open; they talk in JSON lines (parent -> process on stdin, process -> parent on stdout):

* ``{"op": "open", "url": ..., "count": n}`` — open ``n`` readers of this events URL (each process
  limits the ``GET``s in flight itself); ``{"op": "drain"}`` — answer ``{"op": "opened", ...}`` once
  every reader handed out so far is open or failed;
* ``{"op": "record"}`` — from now on, count tokens and lag (every reader is open);
* ``{"op": "report"}`` — stop counting, answer ``{"op": "report", ...}`` (see :meth:`Worker.report`);
* end of input — close every reader and exit.

A process also says ``{"op": "progress", "opened": ..., "failed": ...}`` every few seconds while opening.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import resource
import socket
import sys
from collections import Counter
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import orjson

from bench.open_streams_reader import EventsReader, ReaderCounters, ReaderFailed, error_code, request_bytes
from bench.stats import proc_rss_bytes

IN_FLIGHT_GETS = 128
"""Readers being set up at once per process at most (``GET`` until the ``start`` event)."""
FD_RESERVE = 64
"""Descriptors a load generator keeps free besides its readers (stdio, ``/proc`` reads, the event loop):
readers past ``RLIMIT_NOFILE`` minus this are not attempted and count as ``loadgen_fd_limit``."""
OPEN_TIMEOUT_S = 60.0
"""A reader not open (its ``start`` event arrived) this long after its connection was asked for fails as
``timeout``."""
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
"""Linux's option (``linux/in.h``) that defers a bound socket's local port to ``connect``."""
DRAIN_TIMEOUT_S = OPEN_TIMEOUT_S + 10.0
"""How long after the last reader was handed out the readers still not open are waited for; a server that stalls
would otherwise keep the readers queued behind its in-flight ones waiting one :data:`OPEN_TIMEOUT_S` after another."""
PROGRESS_EVERY_S = 5.0
"""How often a process says how many of its readers are open while it is opening them."""


def own_cpu_s() -> float:
    """CPU seconds this process has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def own_open_fds() -> int:
    """Descriptors this process has open now (0 if unknown)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def reader_budget() -> int:
    """How many more readers this process's open-files limit leaves room for."""
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit == resource.RLIM_INFINITY:
        return sys.maxsize
    return max(0, limit - own_open_fds() - FD_RESERVE)


async def connected_socket(host: str, port: int, local: str | None) -> socket.socket:
    """A TCP socket connected to ``host:port`` from ``local`` (any port of it).

    The local port is chosen at ``connect`` (``IP_BIND_ADDRESS_NO_PORT``), not at ``bind``: a ``bind`` to port 0
    needs a port that no other socket of that address holds (``TIME_WAIT`` ones included), whatever it is connected
    to, and 50,000 readers over three addresses ran out (``EADDRNOTAVAIL``) at about 9,400 per address.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        if local is not None:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((local, 0))
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return sock


class Worker:
    """One load generator process's readers, opened as the parent hands them out."""

    def __init__(self, addresses: list[str]) -> None:
        self.counters = ReaderCounters()
        self.readers: list[EventsReader] = []
        self.addresses = addresses
        self._budget = reader_budget()
        self._handed = 0
        self._slots = asyncio.Semaphore(IN_FLIGHT_GETS)
        self._tasks: set[asyncio.Task[None]] = set()
        self._cpu_at_record = 0.0

    def open(self, events_url: str, count: int) -> None:
        """Start opening ``count`` readers of ``events_url``; those past the descriptor budget fail at once."""
        for _ in range(count):
            number = self._handed
            self._handed += 1
            if number >= self._budget:
                self.counters.error("loadgen_fd_limit", f"RLIMIT_NOFILE minus {FD_RESERVE} kept free")
                continue
            task = asyncio.create_task(self._read(events_url, number))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def drain(self) -> dict[str, Any]:
        """Wait for every reader handed out so far to open or fail, at most :data:`DRAIN_TIMEOUT_S`; those still
        waiting then (for a slot or for the server) are given up as ``open_deadline``; the counts."""
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                while self._tasks:
                    await asyncio.gather(*self._tasks)
        except TimeoutError:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        return {"op": "opened", **self.progress()}

    def progress(self) -> dict[str, int]:
        """Readers open and failed so far."""
        return {"opened": self.counters.opened, "failed": sum(self.counters.errors.values())}

    def record(self) -> None:
        """Count tokens and lag from now on."""
        self._cpu_at_record = own_cpu_s()
        self.counters.recording = True

    def report(self) -> dict[str, Any]:
        """Stop counting; what this process saw (lag as ``[middle ms, count]`` buckets, to be merged)."""
        counters = self.counters
        counters.recording = False
        lag = counters.lag
        return {
            "op": "report",
            "handed": self._handed,
            "opened": counters.opened,
            "open_now": sum(1 for reader in self.readers if reader.is_open),
            "with_token_held": counters.with_token_held,
            "closed_early": counters.closed_early,
            "ended_early": counters.ended,
            "deltas_held": counters.deltas_held,
            "errors": dict(counters.errors),
            "error_examples": counters.error_examples,
            "terminal_events": dict(counters.terminal),
            "lag_buckets": [[middle, count] for middle, count in lag.buckets()],
            "lag_max_ms": lag.max_ms if lag.n else None,
            "cpu_s_held": own_cpu_s() - self._cpu_at_record,
            "rss_bytes": proc_rss_bytes(os.getpid()),
        }

    def close(self) -> None:
        """Abort every reader's connection."""
        self.counters.ending = True
        for reader in self.readers:
            if reader.transport is not None:
                reader.transport.abort()

    async def _read(self, events_url: str, number: int) -> None:
        try:
            async with self._slots:
                await self._connect(events_url, number)
        except asyncio.CancelledError:
            self.counters.error("open_deadline", f"not open {DRAIN_TIMEOUT_S:g} s after the last reader was handed out")
            raise

    async def _connect(self, events_url: str, number: int) -> None:
        """Open one reader of ``events_url`` and wait for its ``start`` event."""
        url = urlsplit(events_url)
        local = self.addresses[number % len(self.addresses)] if self.addresses else None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(OPEN_TIMEOUT_S):
                sock = await connected_socket(url.hostname or "127.0.0.1", url.port or 80, local)
                _, reader = await loop.create_connection(
                    lambda: EventsReader(request_bytes(events_url), self.counters), sock=sock
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


async def serve(addresses: list[str]) -> None:
    """Run one load generator on this process's stdin and stdout until its input ends."""
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader(limit=2**20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    worker = Worker(addresses)
    ticker = asyncio.create_task(_tick(worker))
    try:
        while line := await stdin.readline():
            answer = await _handle(worker, orjson.loads(line))
            if answer is not None:
                _say(answer)
    finally:
        ticker.cancel()
        worker.close()


async def _handle(worker: Worker, command: dict[str, Any]) -> dict[str, Any] | None:
    op = command["op"]
    if op == "open":
        worker.open(str(command["url"]), int(command["count"]))
    elif op == "drain":
        return await worker.drain()
    elif op == "record":
        worker.record()
    elif op == "report":
        return worker.report()
    else:
        raise ValueError(f"unknown load generator command {op!r}")
    return None


async def _tick(worker: Worker) -> None:
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        if worker.counters.recording:
            continue
        _say({"op": "progress", **worker.progress()})


def _say(message: dict[str, Any]) -> None:
    sys.stdout.buffer.write(orjson.dumps(message) + b"\n")
    sys.stdout.buffer.flush()


# -- the parent's side -------------------------------------------------------------------------


class Loadgen:
    """One load generator process, as the parent drives it."""

    def __init__(self, index: int, process: asyncio.subprocess.Process) -> None:
        self.index = index
        self.process = process
        self.progress: dict[str, int] = {"opened": 0, "failed": 0}
        self._answers: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=4)
        self._listener = asyncio.create_task(self._listen())

    @classmethod
    async def start(cls, index: int, addresses: list[str]) -> Loadgen:
        """Start ``python -m bench.open_streams_loadgen`` reading from ``addresses``."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.open_streams_loadgen",
            ",".join(addresses),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=2**24,
        )
        return cls(index, process)

    def send(self, command: dict[str, Any]) -> None:
        """Write one command (buffered; the process reads it when it can)."""
        assert self.process.stdin is not None
        self.process.stdin.write(orjson.dumps(command) + b"\n")

    async def ask(self, command: dict[str, Any]) -> dict[str, Any]:
        """Send a command that is answered and wait for its answer."""
        self.send(command)
        assert self.process.stdin is not None
        await self.process.stdin.drain()
        return await self._answers.get()

    async def stop(self) -> None:
        """End its input (it closes its readers and exits); kill it if it does not within 30 s."""
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.close()
        try:
            async with asyncio.timeout(30):
                await self.process.wait()
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        self._listener.cancel()

    async def _listen(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            message = orjson.loads(line)
            if message.get("op") == "progress":
                self.progress = {"opened": message["opened"], "failed": message["failed"]}
            else:
                await self._answers.put(message)


def addresses_of(index: int, processes: int, source_addresses: int) -> list[str]:
    """The source addresses (``127.0.0.k``) load generator ``index`` of ``processes`` connects from: every one
    when there are no more processes than addresses' worth of ports, else its share, round robin."""
    every = [f"127.0.0.{k}" for k in range(1, source_addresses + 1)]
    if processes <= source_addresses:
        return every[index::processes]
    return [every[index % source_addresses]]


def merge_reports(reports: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The load generators' reports as one: counts summed, errors merged, lag percentiles over all buckets."""
    reports = list(reports)
    out: dict[str, Any] = {}
    for key in ("handed", "opened", "open_now", "with_token_held", "closed_early", "ended_early", "deltas_held"):
        out[key] = sum(int(r[key]) for r in reports)
    for key in ("errors", "terminal_events"):
        out[key] = dict(sum((Counter(r[key]) for r in reports), Counter()))
    out["error_examples"] = {code: text for r in reports for code, text in r["error_examples"].items()}
    maxes = [float(r["lag_max_ms"]) for r in reports if r["lag_max_ms"] is not None]
    buckets = [(float(middle), int(count)) for r in reports for middle, count in r["lag_buckets"]]
    out["lag_ms"] = lag_summary(buckets, max(maxes) if maxes else None)
    out["cpu_s_held"] = [r["cpu_s_held"] for r in reports]
    out["rss_bytes"] = [r["rss_bytes"] for r in reports]
    return out


def lag_summary(buckets: list[tuple[float, int]], max_ms: float | None) -> dict[str, float | int | None]:
    """``{"p50", "p95", "p99", "max", "n"}`` (nearest rank) of ``(middle ms, count)`` buckets from several
    histograms; the top rank is ``max_ms``, as one histogram reads it."""
    ordered = sorted(buckets)
    n = sum(count for _, count in ordered)
    out: dict[str, float | int | None] = {}
    for p in (50, 95, 99):
        out[f"p{p}"] = _rank(ordered, n, p, max_ms)
    out["max"] = max_ms if n else None
    out["n"] = n
    return out


def _rank(ordered: list[tuple[float, int]], n: int, p: float, max_ms: float | None) -> float | None:
    if n == 0:
        return None
    rank = max(1, math.ceil(p / 100 * n))
    if rank >= n:
        return max_ms
    seen = 0
    for middle, count in ordered:
        seen += count
        if seen >= rank:
            return middle
    return max_ms


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve([a for a in sys.argv[1].split(",") if a] if len(sys.argv) > 1 else []))
