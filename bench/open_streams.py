"""Open streams per streamer: the memory each reader of a slow stream costs, against a bare idle SSE connection.

Each run starts a fresh nats-server per phase; the phases run one after the other:

* ``forwarder`` — the bare NATS -> SSE forwarder (:mod:`bench.baselines.forwarder`) whose publisher
  never sends a token (``--baseline-tokens-per-s 0``, the default): ``--baseline-readers`` idle SSE
  connections, each with its NATS subscription.  This is the "bare idle SSE connection".  It is one
  process, so it holds at most what its open-files limit allows.
* ``tokenrelay`` — gateway, ``--streamers`` streamer processes (sharing one port with ``SO_REUSEPORT``
  when more than one) and ``--runners`` runners: streams generated at ``--tokens-per-s`` (1 token/s: slow
  streams; ``max_tokens`` is so large that none ends during a run), each read by ``--readers-per-stream``
  SSE connections, ``--readers`` connections in all (``--readers 50000 --readers-per-stream 5000``: 10
  streams of 5,000 readers; ``--readers-per-stream 1``: one stream per reader).

In both phases this process creates the streams (``POST /v1/streams``) and hands their readers, at
``--ramp-per-s``, to ``--loadgen-processes`` load generator processes (:mod:`bench.open_streams_loadgen`),
each connecting from its share of ``--source-addresses``: one process's open-files limit no longer bounds
the readers.  Once all are open they are held ``--hold-s``.  Every server's RSS, CPU and open readers are
read from its own ``/metrics`` (RSS and CPU from ``/proc`` while it is out of descriptors and cannot answer)
before the first reader and every ``--sample-s`` while holding.  RSS per
reader = the sum over the streamers of (each one's highest RSS while holding - its RSS before) / the
readers they counted open (``tokenrelay_streamer_readers_open``) at those highest samples.  A reader "got a
token" when at least one delta reached it while holding; token lag (the runner's ``ts`` on each delta -> its
arrival; same machine clock) is recorded only while holding.  Errors are counted by code and by who refused
(the gateway, a streamer, or the load generator itself); each streamer's log is searched for accept pauses
(``accept failed``: it ran out of descriptors) and other warnings.  The runners' heartbeats on
``tokenrelay.runners.heartbeat`` are read on the bench's NATS and the largest one's size recorded.

    python -m bench.open_streams --readers 20000 --loadgen-processes 2 --source-addresses 2 --runs 1
    python -m bench.open_streams --readers 50000 --streamers 3 --readers-per-stream 5000 \\
        --loadgen-processes 3 --source-addresses 3 --phases tokenrelay --runs 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import resource
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from bench.open_streams_loadgen import Loadgen, addresses_of, merge_reports
from bench.open_streams_reader import error_code, error_source
from bench.open_streams_report import (
    PHASES,
    fd_check,
    format_table,
    heartbeat_watch,
    log_problems,
    medians,
    streamer_summary,
)
from bench.open_streams_targets import STREAM_MAX_TOKENS, Target, proc_open_files_limit, started
from bench.stats import proc_cpu_s, proc_rss_bytes, write_json
from tokenrelay.loadtest.metrics import CPU_SECONDS, READERS_OPEN, RSS_BYTES, parse_metrics

IN_FLIGHT_POSTS = 64
"""Streams being created at once at most."""
POST_TIMEOUT_S = 60.0
"""A stream not created this long after its ``POST`` was sent fails its readers as ``create_timeout``."""
HAND_OUT_EVERY_S = 0.05
"""Readers are handed to the load generators in batches of this many seconds of the ramp."""
SCRAPE_TIMEOUT_S = 2.0
"""A ``/metrics`` read that takes longer counts as unanswered (a streamer out of descriptors leaves it queued)."""
STARTUP_SETTLE_S = 1.0
"""Pause after the servers are healthy, before the RSS before any reader is read."""
PROGRESS_EVERY_S = 5.0


async def scrape(session: aiohttp.ClientSession, base_url: str) -> dict[str, float]:
    """RSS, CPU seconds and open readers from a server's ``/metrics`` (empty if it cannot be read)."""
    return parse_metrics(await _metrics_text(session, base_url), (RSS_BYTES, CPU_SECONDS, READERS_OPEN))


async def scrape_all(session: aiohttp.ClientSession, target: Target) -> dict[str, dict[str, float | None]]:
    """Every streamer's RSS, CPU seconds and open readers, by role.

    A streamer out of descriptors cannot accept the ``/metrics`` request: its RSS and CPU are then read from
    ``/proc`` (the same ``VmRSS`` and CPU time its metrics report; this machine runs it) and its readers are
    ``None``.
    """
    values = await asyncio.gather(*(scrape(session, url) for url in target.metrics_urls.values()))
    out: dict[str, dict[str, float | None]] = {}
    for role, v in zip(target.metrics_urls, values, strict=True):
        pid = target.pids.get(role)
        rss, cpu = v.get(RSS_BYTES), v.get(CPU_SECONDS)
        if rss is None and pid is not None:
            rss, cpu = _float(proc_rss_bytes(pid)), proc_cpu_s(pid)
        out[role] = {"rss_bytes": rss, "cpu_s": cpu, "readers_open": v.get(READERS_OPEN), "from_proc": not v}
    return out


def _float(value: int | None) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True, slots=True)
class Handout:
    """Where a stream's readers go: the load generators in turn, at the ramp's pace from ``begin`` (loop time)."""

    loadgens: list[Loadgen]
    turn: Iterator[int]
    begin: float


UNREAD_CANCELS = "tokenrelay_gateway_unread_cancels_total"
STREAMER_COUNTERS = (
    "tokenrelay_streamer_disconnect_cancels_total",
    "tokenrelay_streamer_history_fetches_total",
    "tokenrelay_streamer_reader_lookups_total",
    "tokenrelay_streamer_history_reads_skipped_total",
    "tokenrelay_streamer_slow_consumer_disconnects_total",
)
"""Streamer counters summed over the streamers at the end of the hold: why generations were cancelled, and what
each reader's join cost (record reads, history reads)."""


async def server_counters(session: aiohttp.ClientSession, target: Target) -> dict[str, float | None]:
    """Generations cancelled by the gateway (no streamer said it had a reader within its probe's timeout), and
    :data:`STREAMER_COUNTERS` summed over the streamers that answered."""
    gateway = await _metrics_text(session, target.gateway_url) if target.gateway_url else ""
    texts = await asyncio.gather(*(_metrics_text(session, url) for url in target.metrics_urls.values()))
    out: dict[str, float | None] = {UNREAD_CANCELS: parse_metrics(gateway, (UNREAD_CANCELS,)).get(UNREAD_CANCELS)}
    for name in STREAMER_COUNTERS:
        found = [parse_metrics(text, (name,)).get(name) for text in texts]
        out[name] = sum(v for v in found if v is not None) if any(v is not None for v in found) else None
    return out


async def _metrics_text(session: aiohttp.ClientSession, base_url: str) -> str:
    """A server's ``/metrics`` text ("" if it does not answer within :data:`SCRAPE_TIMEOUT_S`)."""
    try:
        async with session.get(
            f"{base_url}/metrics", timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_S)
        ) as response:
            return await response.text()
    except (aiohttp.ClientError, OSError, TimeoutError):
        return ""


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


class Phase:
    """Open the target's readers at ``ramp_per_s`` through the load generators, hold them, and measure."""

    def __init__(self, target: Target, args: argparse.Namespace) -> None:
        self.target = target
        self.args = args
        self.create_errors: Counter[str] = Counter()
        self.create_examples: dict[str, str] = {}
        self.handed = 0

    async def run(self) -> dict[str, Any]:
        """The phase's figures (see :func:`bench.open_streams_report.format_table` for what is shown)."""
        args, target = self.args, self.target
        k = args.loadgen_processes
        loadgens = [await Loadgen.start(i, addresses_of(i, k, args.source_addresses)) for i in range(k)]
        try:
            async with heartbeat_watch(target.nats_url if target.name == "tokenrelay" else None) as heartbeats:
                timeout = aiohttp.ClientTimeout(total=30)
                connector = aiohttp.TCPConnector(limit=IN_FLIGHT_POSTS)
                async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
                    return await self._measure(session, loadgens, heartbeats)
        finally:
            await asyncio.gather(*(loadgen.stop() for loadgen in loadgens))

    async def _measure(
        self, session: aiohttp.ClientSession, loadgens: list[Loadgen], heartbeats: dict[str, Any]
    ) -> dict[str, Any]:
        args, target = self.args, self.target
        await asyncio.sleep(STARTUP_SETTLE_S)
        before = await scrape_all(session, target)
        t0 = time.perf_counter()
        ticker = asyncio.create_task(self._tick(loadgens))
        try:
            await self._open_all(session, loadgens)
            opened = await asyncio.gather(*(loadgen.ask({"op": "drain"}) for loadgen in loadgens))
        finally:
            ticker.cancel()
        ramp_s = time.perf_counter() - t0
        self._progress(f"opened {sum(o['opened'] for o in opened)} of {target.readers} in {ramp_s:.1f} s")
        await asyncio.sleep(args.settle_s)
        pids_cpu_before = {role: proc_cpu_s(pid) for role, pid in target.pids.items()}
        for loadgen in loadgens:
            loadgen.send({"op": "record"})
        samples = await self._hold(session)
        reports = await asyncio.gather(*(loadgen.ask({"op": "report"}) for loadgen in loadgens))
        counters = await server_counters(session, target)
        pids_cpu = {role: _minus(proc_cpu_s(pid), pids_cpu_before[role]) for role, pid in target.pids.items()}
        pids_rss = {role: proc_rss_bytes(pid) for role, pid in target.pids.items()}
        cpu_rss: dict[str, dict[str, Any]] = {"cpu": pids_cpu, "rss": pids_rss}
        return self._result(
            before,
            samples,
            merge_reports(reports),
            ramp_s=ramp_s,
            pids=cpu_rss,
            heartbeats=heartbeats,
            counters=counters,
        )

    def _result(
        self,
        before: dict[str, dict[str, float | None]],
        samples: list[dict[str, Any]],
        loads: dict[str, Any],
        *,
        ramp_s: float,
        pids: dict[str, dict[str, Any]],
        heartbeats: dict[str, Any],
        counters: dict[str, float | None],
    ) -> dict[str, Any]:
        target = self.target
        hold_s = samples[-1]["t"] if samples else 0.0
        per_streamer = {role: streamer_summary(role, before, samples) for role in target.metrics_urls}
        growth = [s["rss_growth_bytes"] for s in per_streamer.values()]
        counted = [s["readers_at_rss_peak"] for s in per_streamer.values()]
        # Divided by the readers the streamers counted at their peaks; by ours when one could not say (out of
        # descriptors, it could not answer /metrics).
        gauged = bool(counted) and all(c is not None for c in counted)
        readers_at_peak = int(sum(counted)) if gauged else loads["open_now"]
        growth_sum = sum(growth) if growth and all(g is not None for g in growth) else None
        gauge = [
            sum(v["readers_open"] for v in s["streamers"].values())
            for s in samples
            if all(v["readers_open"] is not None for v in s["streamers"].values())
        ]
        errors = Counter(loads["errors"]) + self.create_errors
        by_source: Counter[str] = Counter()
        for code, count in errors.items():
            by_source[error_source(code)] += count
        cpu = _total(s["cpu_s_held"] for s in per_streamer.values())
        return {
            "target": target.name,
            "readers_requested": target.readers,
            "readers_opened": loads["opened"],
            "readers_open_at_end": loads["open_now"],
            "readers_open_gauge_min": min(gauge) if gauge else None,
            "readers_with_token_held": loads["with_token_held"],
            "token_pct": 100 * loads["with_token_held"] / target.readers if target.readers else None,
            "closed_early": loads["closed_early"],
            "ended_early": loads["ended_early"],
            "errors": dict(errors),
            "errors_by_source": dict(by_source),
            "error_examples": self.create_examples | loads["error_examples"],
            "terminal_events": loads["terminal_events"],
            "ramp_s": ramp_s,
            "hold_s": hold_s,
            "rss_before_bytes": _total(s["rss_before_bytes"] for s in per_streamer.values()),
            "rss_full_bytes": _total(s["rss_peak_bytes"] for s in per_streamer.values()),
            "rss_growth_bytes": growth_sum,
            "rss_per_reader_bytes": growth_sum / readers_at_peak
            if growth_sum is not None and readers_at_peak
            else None,
            "readers_at_rss_max": readers_at_peak,
            "readers_at_rss_max_counted_by": "streamers" if gauged else "load generators, after the hold",
            "streamers": per_streamer,
            "lag_ms": loads["lag_ms"],
            "deltas_held": loads["deltas_held"],
            "tokens_per_s_held": loads["deltas_held"] / hold_s if hold_s else None,
            "server_cpu_s_held": cpu,
            "server_cpu_cores_held": cpu / hold_s if cpu is not None and hold_s else None,
            "process_cpu_s_held": pids["cpu"],
            "process_rss_bytes_end": pids["rss"],
            "loadgen_cpu_s_held": sum(loads["cpu_s_held"]),
            "loadgen_rss_bytes": loads["rss_bytes"],
            "readers_per_stream": target.readers_per_stream,
            "streams": math.ceil(target.readers / target.readers_per_stream),
            "heartbeat": heartbeats,
            "server_counters": counters,
            "log_problems": log_problems(target.log_dir),
            "samples": samples,
        }

    async def _open_all(self, session: aiohttp.ClientSession, loadgens: list[Loadgen]) -> None:
        """Create the streams at the ramp's pace and hand their readers out as the ramp reaches them."""
        loop = asyncio.get_running_loop()
        begin = loop.time()
        per_stream, readers = self.target.readers_per_stream, self.target.readers
        posts = asyncio.Semaphore(IN_FLIGHT_POSTS)
        hand_out = Handout(loadgens, itertools.count(), begin)
        tasks: set[asyncio.Task[None]] = set()
        for first in range(0, readers, per_stream):
            await asyncio.sleep(max(0.0, begin + first / self.args.ramp_per_s - loop.time()))
            await posts.acquire()
            count = min(per_stream, readers - first)
            task = asyncio.create_task(self._stream(session, posts, hand_out, first=first, count=count))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        while tasks:
            await asyncio.gather(*tasks)

    async def _stream(
        self,
        session: aiohttp.ClientSession,
        posts: asyncio.Semaphore,
        hand_out: Handout,
        *,
        first: int,
        count: int,
    ) -> None:
        """Create one stream and hand its ``count`` readers (numbered from ``first``) out, batch by batch."""
        try:
            events_url = await self._create(session, first)
        finally:
            posts.release()
        if events_url is None:
            return
        loop = asyncio.get_running_loop()
        batch = max(1, int(self.args.ramp_per_s * HAND_OUT_EVERY_S))
        for offset in range(0, count, batch):
            await asyncio.sleep(max(0.0, hand_out.begin + (first + offset) / self.args.ramp_per_s - loop.time()))
            loadgen = hand_out.loadgens[next(hand_out.turn) % len(hand_out.loadgens)]
            loadgen.send({"op": "open", "url": events_url, "count": min(batch, count - offset)})
            self.handed += min(batch, count - offset)
            assert loadgen.process.stdin is not None
            await loadgen.process.stdin.drain()

    async def _create(self, session: aiohttp.ClientSession, first: int) -> str | None:
        """``POST`` one stream; its events URL, or ``None`` with its readers counted as ``create_*`` errors."""
        count = min(self.target.readers_per_stream, self.target.readers - first)
        body = orjson.dumps({"prompt": f"open streams {first}", "max_tokens": STREAM_MAX_TOKENS})
        try:
            async with asyncio.timeout(POST_TIMEOUT_S):
                async with session.post(
                    self.target.create_url, data=body, headers={"Content-Type": "application/json"}
                ) as response:
                    raw = await response.read()
            if response.status == 201:
                return str(orjson.loads(raw)["events_url"])
            code, text = f"create_http_{response.status}", raw.decode(errors="replace")
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError) as exc:
            code, text = f"create_{error_code(exc)}", repr(exc)
        self.create_errors[code] += count
        self.create_examples.setdefault(code, text[:300])
        return None

    async def _hold(self, session: aiohttp.ClientSession) -> list[dict[str, Any]]:
        args = self.args
        begin = time.perf_counter()
        samples: list[dict[str, Any]] = []
        while True:
            t = time.perf_counter() - begin
            samples.append({"t": round(t, 3), "streamers": await scrape_all(session, self.target)})
            if t >= args.hold_s:
                return samples
            await asyncio.sleep(min(args.sample_s, max(0.0, args.hold_s - (time.perf_counter() - begin))))

    async def _tick(self, loadgens: list[Loadgen]) -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            opened = sum(loadgen.progress["opened"] for loadgen in loadgens)
            failed = sum(loadgen.progress["failed"] for loadgen in loadgens) + sum(self.create_errors.values())
            self._progress(f"opening: {self.handed} handed out, {opened} open, {failed} failed")

    def _progress(self, text: str) -> None:
        print(f"  [{self.target.name}] {text}", file=sys.stderr, flush=True)


def _total(values: Any) -> float | None:
    present = list(values)
    return None if not present or any(v is None for v in present) else float(sum(present))


async def run_once(args: argparse.Namespace) -> dict[str, Any]:
    """One run: every phase on fresh processes, then the ratio of RSS per reader."""
    out: dict[str, Any] = {}
    for phase in args.phases:
        async with started(phase, args) as target:
            result = await Phase(target, args).run()
            if phase == "tokenrelay":
                result["streamer_open_files_limit"] = proc_open_files_limit(target.pids["streamer-0"])
            out[phase] = result
        await asyncio.sleep(1.0)  # let the closed connections' sockets go
    if "forwarder" in out and "tokenrelay" in out:
        ours, bare = out["tokenrelay"]["rss_per_reader_bytes"], out["forwarder"]["rss_per_reader_bytes"]
        out["rss_per_reader_ratio"] = ours / bare if ours is not None and bare else None
    return out


# -- options and the whole run -----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Every option, documented."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.open_streams", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--readers", type=int, default=10_000, help="tokenrelay: SSE readers to hold open (default: %(default)s)")
    add("--ramp-per-s", type=float, default=200.0, help="readers opened per second (default: %(default)s)")
    add("--hold-s", type=float, default=60.0, help="seconds all readers are held and measured (default: %(default)s)")
    add("--settle-s", type=float, default=3.0, help="pause after the ramp, not measured (default: %(default)s)")
    add("--sample-s", type=float, default=1.0, help="how often /metrics is read while holding (default: %(default)s)")
    add("--tokens-per-s", type=float, default=1.0, help="tokenrelay: each stream's pace (default: %(default)s)")
    add(
        "--readers-per-stream",
        type=int,
        default=1,
        help="tokenrelay: readers of each stream (fewer streams for the runners and NATS; the streamers still "
        "write to every reader); the forwarder reads each stream once (default: %(default)s)",
    )
    add("--runners", type=int, default=1, help="tokenrelay: runner processes (default: %(default)s)")
    add(
        "--streamers",
        type=int,
        default=1,
        help="tokenrelay: streamer processes; more than one share one port (SO_REUSEPORT) and each is measured "
        "on its own /metrics port (default: %(default)s)",
    )
    add(
        "--unread-grace-s",
        type=float,
        default=None,
        help="tokenrelay: the gateway's --unread-grace-s (0: it never cancels a stream it thinks unread; default: "
        "the gateway's own)",
    )
    add(
        "--loadgen-processes",
        type=int,
        default=1,
        metavar="K",
        help="processes the readers are spread over (each may hold only its open-files limit's worth of "
        "sockets) (default: %(default)s)",
    )
    add(
        "--baseline-readers",
        type=int,
        default=0,
        help="forwarder: idle readers (0: --readers, capped to what one process's open-files limit holds) "
        "(default: %(default)s)",
    )
    add(
        "--baseline-tokens-per-s",
        type=float,
        default=0.0,
        help="forwarder: its streams' pace; 0 = idle, no token ever (default: %(default)s)",
    )
    add(
        "--source-addresses",
        type=int,
        default=1,
        metavar="S",
        help="spread the readers' connections over 127.0.0.1 ... 127.0.0.S (each address has its own ephemeral "
        "ports), shared out among the load generator processes (default: %(default)s)",
    )
    add("--phases", default=",".join(PHASES), help=f"comma-separated, from {', '.join(PHASES)} (default: %(default)s)")
    add("--runs", type=int, default=3, help="independent runs; the table is their median (default: %(default)s)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parsed and checked options (``phases`` becomes a list)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.phases = [p for p in args.phases.split(",") if p]
    if not args.phases or any(p not in PHASES for p in args.phases):
        parser.error(f"--phases takes a comma-separated list of {', '.join(PHASES)}")
    at_least_one = ("readers", "runs", "runners", "streamers", "loadgen_processes", "source_addresses")
    for name in (*at_least_one, "readers_per_stream"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("ramp_per_s", "hold_s", "sample_s", "tokens_per_s"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.settle_s < 0 or args.baseline_tokens_per_s < 0 or args.baseline_readers < 0:
        parser.error("--settle-s, --baseline-readers and --baseline-tokens-per-s must not be negative")
    if args.source_addresses > 254:
        parser.error("--source-addresses must be at most 254")
    return args


def raise_open_files_limit() -> int:
    """Raise this process's soft open-files limit to its hard limit (children inherit it); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        if hard != resource.RLIM_INFINITY and soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft if soft != resource.RLIM_INFINITY else sys.maxsize


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
            f"{phase}: {r['readers_opened']} open, {r['readers_with_token_held']} got a token, "
            f"RSS/reader {_kib(r['rss_per_reader_bytes'])}"
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


def _kib(value: float | None) -> str:
    return "-" if value is None else f"{value / 1024:,.1f} KiB"


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
