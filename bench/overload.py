"""Overload: offered twice the capacity, rejected requests are answered at once and accepted streams keep flowing.

Capacity C = ``--runners`` x ``--max-concurrency`` + ``--max-queued-streams``: what the gateway's
admission bounds.  A ``POST /v1/streams`` is refused with ``503 overloaded`` and ``Retry-After`` when the
gateway already holds ``--max-queued-streams`` streams that no runner has taken yet; a runner refuses jobs
past its ``--max-concurrency`` (the gateway then keeps the stream queued and offers it again, with backoff,
for up to ``--queue-timeout-s``, after which it ends with an ``overloaded`` error event).  So at most
C streams are admitted at once: the runners' slots plus the queue.

Each phase starts a fresh system (nats-server, gateway, one streamer, ``--runners`` runners) and runs
``factor x C`` users for ``--duration-s`` (``--factors 1,2``: at capacity, then at twice it).  Every user is
a closed loop: ``POST /v1/streams`` (``--tokens`` tokens at ``--tokens-per-s``); if it is accepted, read the
stream's events to the end, then start the next one at once; if it is refused, wait what ``Retry-After``
says (times a random 1 ... 1 + ``--retry-jitter``), then try again.  Measured per phase:

* rejection latency (``POST`` sent -> ``503`` answered), and whether every rejection carried code
  ``overloaded`` and a ``Retry-After`` header;
* accepted streams: TTFT (``POST`` sent -> first delta), token lag (the runner's ``ts`` on each delta ->
  its arrival; same machine clock), lost and duplicated tokens (each ``delta``'s ``index`` against the
  ``stop`` event's count), error events by code;
* the gateway's queue and the runners' active streams (sampled from ``/metrics``), i.e. whether admission
  kept to C;
* every process still alive with the PID it started with, and tracebacks in its log.

Even at 1x some ``POST``s are refused: a user whose stream just ended asks again at once, before a queued
stream has taken the runner slot it freed.  Refusals of the phase's first second (every user's first
``POST``, all at once) are also reported apart from the later ones.  The table compares the 2x phase with
the 1x phase of the same run (median of ``--runs`` runs).

    python -m bench.overload --max-concurrency 150 --max-queued-streams 50 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.baselines.common import refuser
from bench.open_streams_report import log_problems
from bench.stats import proc_cpu_s, write_json
from tokenrelay.client.errors import ProtocolError
from tokenrelay.client.sse import SSEDecoder
from tokenrelay.loadtest.metrics import parse_metrics
from tokenrelay.loadtest.stats import LatencyHistogram, StreamTally
from tokenrelay.runtime.service import EVENT_LOOPS, run_on_loop
from tokenrelay.testing.procs import nats_server, pid_alive, system

QUEUED = "tokenrelay_gateway_streams_queued"
ACTIVE = "tokenrelay_runner_active_streams"
REQUEST_TIMEOUT_S = 30.0
READ_TIMEOUT_S = 60.0
ERROR_PAUSE_S = 1.0
"""A user whose request failed otherwise (not a 503) waits this long before the next one."""
SYSTEM_SETTLE_S = 1.0
BURST_S = 1.0
"""Refusals of ``POST``s sent this early in a phase (every user's first, all at once) are also reported apart."""
LATENCIES = ("rejected_ms", "rejected_burst_ms", "rejected_later_ms", "accepted_ms", "ttft_ms", "token_lag_ms")
FLOOR_LATENCIES = ("rejected_ms", "rejected_burst_ms", "rejected_later_ms")


@dataclass
class PhaseTotals:
    """One phase's counts and histograms, shared by its users."""

    offered: int = 0
    accepted: int = 0
    rejected: int = 0
    rejected_overloaded: int = 0
    rejected_with_retry_after: int = 0
    retry_after_values: Counter[str] = field(default_factory=Counter)
    other_responses: Counter[str] = field(default_factory=Counter)
    """Answers to ``POST`` that were neither 201 nor 503, and client-side failures, by code."""
    completed: int = 0
    stream_errors: Counter[str] = field(default_factory=Counter)
    """Accepted streams that did not end with ``stop``: the error event's code, or a client-side code."""
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    in_flight: int = 0
    in_flight_max: int = 0
    """Accepted streams between their 201 and their terminal event, as this client saw them."""
    rejected_ms: LatencyHistogram = field(default_factory=LatencyHistogram)
    rejected_burst_ms: LatencyHistogram = field(default_factory=LatencyHistogram)
    """Refusals of ``POST``s sent in the phase's first ``BURST_S`` (when all users start at once)."""
    rejected_later_ms: LatencyHistogram = field(default_factory=LatencyHistogram)
    accepted_ms: LatencyHistogram = field(default_factory=LatencyHistogram)
    ttft_ms: LatencyHistogram = field(default_factory=LatencyHistogram)
    token_lag_ms: LatencyHistogram = field(default_factory=LatencyHistogram)


class Phase:
    """``users`` closed-loop users against one system for ``duration_s``."""

    def __init__(
        self, args: argparse.Namespace, gateway_url: str, users: int, seed: int, *, duration_s: float | None = None
    ) -> None:
        self.args = args
        self.duration_s: float = args.duration_s if duration_s is None else duration_s
        self.users = users
        self.totals = PhaseTotals()
        self.streams_url = f"{gateway_url}/v1/streams"
        self.rng = random.Random(seed)
        self.end = 0.0
        self.started = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.end = loop.time() + self.duration_s
        self.started = time.perf_counter()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=REQUEST_TIMEOUT_S, sock_read=READ_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
            users = [asyncio.create_task(self._user(session, k)) for k in range(self.users)]
            await asyncio.gather(*users)

    async def _user(self, session: aiohttp.ClientSession, k: int) -> None:
        loop = asyncio.get_running_loop()
        if self.args.ramp_s:
            await asyncio.sleep(self.args.ramp_s * k / self.users)
        attempt = 0
        while loop.time() < self.end:
            pause = await self._attempt(session, f"overload user {k} stream {attempt}")
            attempt += 1
            if pause:
                await asyncio.sleep(min(pause, max(0.0, self.end - loop.time())))

    async def _attempt(self, session: aiohttp.ClientSession, prompt: str) -> float:
        """One ``POST`` (and, if accepted, the stream read to its end); the pause before the next one."""
        totals = self.totals
        totals.offered += 1
        body = orjson.dumps({"prompt": prompt, "max_tokens": self.args.tokens})
        sent = time.perf_counter()
        try:
            async with session.post(
                self.streams_url,
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
            ) as response:
                status, headers, raw = response.status, response.headers, await response.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            totals.other_responses[_client_code(exc)] += 1
            return ERROR_PAUSE_S
        elapsed_ms = (time.perf_counter() - sent) * 1000
        if status == 201:
            totals.accepted += 1
            totals.accepted_ms.record(elapsed_ms)
            await self._read(session, orjson.loads(raw)["events_url"], sent)
            return 0.0
        code = _error_code(raw)
        if status != 503:
            totals.other_responses[f"http_{status}:{code}"] += 1
            return ERROR_PAUSE_S
        totals.rejected += 1
        totals.rejected_ms.record(elapsed_ms)
        in_burst = sent - self.started < BURST_S
        (totals.rejected_burst_ms if in_burst else totals.rejected_later_ms).record(elapsed_ms)
        if code == "overloaded":
            totals.rejected_overloaded += 1
        retry_after = headers.get("Retry-After")
        totals.retry_after_values[str(retry_after)] += 1
        wait_s = ERROR_PAUSE_S
        if retry_after is not None and retry_after.isdigit():
            totals.rejected_with_retry_after += 1
            wait_s = float(retry_after)
        return wait_s * self.rng.uniform(1.0, 1.0 + self.args.retry_jitter)

    async def _read(self, session: aiohttp.ClientSession, events_url: str, sent: float) -> None:
        totals, tally, decoder = self.totals, StreamTally(), SSEDecoder()
        totals.in_flight += 1
        totals.in_flight_max = max(totals.in_flight_max, totals.in_flight)
        outcome = "connection_error"
        try:
            async with session.get(events_url, headers={"Accept": "text/event-stream"}) as response:
                if response.status != 200:
                    outcome = f"events_http_{response.status}"
                    return
                first = True
                async for chunk in response.content.iter_any():
                    wall = time.time()
                    for event in decoder.feed(chunk):
                        data = orjson.loads(event.data) if event.event in ("delta", "stop", "error") else None
                        if event.event == "delta":
                            assert data is not None
                            if first:
                                totals.ttft_ms.record((time.perf_counter() - sent) * 1000)
                                first = False
                            totals.delivered += tally.delta(int(data["index"]))
                            if data.get("ts") is not None:
                                totals.token_lag_ms.record((wall - data["ts"]) * 1000)
                        elif event.event == "stop":
                            assert data is not None
                            tally.finish(int(data["tokens"]))
                            outcome = "completed"
                            return
                        elif event.event == "error":
                            assert data is not None
                            outcome = str(data.get("code") or "internal")
                            return
        except (aiohttp.ClientError, OSError, TimeoutError, ProtocolError, ValueError, KeyError) as exc:
            outcome = _client_code(exc)
        finally:
            totals.in_flight -= 1
            totals.lost += tally.lost
            totals.duplicated += tally.duplicated
            if outcome == "completed":
                totals.completed += 1
            else:
                totals.stream_errors[outcome] += 1


def _client_code(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, (ProtocolError, ValueError, KeyError)):
        return "protocol_error"
    return "connection_error"


def _error_code(raw: bytes) -> str:
    with contextlib.suppress(orjson.JSONDecodeError, AttributeError, TypeError):
        code = orjson.loads(raw)["error"]["code"]
        if isinstance(code, str):
            return code
    return "no_code"


@dataclass
class Gauges:
    """The gateway's queue and the runners' active streams, sampled while the phase runs."""

    queued_max: float = 0.0
    active_max: float = 0.0
    admitted_max: float = 0.0
    """The largest queued + active seen in one sample."""
    samples: int = 0
    failed: int = 0


async def sample_gauges(gateway_url: str, runner_urls: list[str], interval_s: float, gauges: Gauges) -> None:
    """Until cancelled: read the gateway's queue and every runner's active streams every ``interval_s``."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while True:
            try:
                queued = (await _scrape(session, gateway_url, QUEUED)) or 0.0
                active = sum([(await _scrape(session, url, ACTIVE)) or 0.0 for url in runner_urls])
            except (aiohttp.ClientError, OSError, TimeoutError):
                gauges.failed += 1
            else:
                gauges.samples += 1
                gauges.queued_max = max(gauges.queued_max, queued)
                gauges.active_max = max(gauges.active_max, active)
                gauges.admitted_max = max(gauges.admitted_max, queued + active)
            await asyncio.sleep(interval_s)


async def _scrape(session: aiohttp.ClientSession, url: str, name: str) -> float | None:
    async with session.get(f"{url}/metrics") as response:
        return parse_metrics(await response.text(), (name,)).get(name)


def tracebacks(log_dir: str) -> dict[str, int]:
    """``Traceback`` lines in each role's log."""
    out: dict[str, int] = {}
    for path in sorted(Path(log_dir).glob("*.log")):
        out[path.stem] = path.read_text(errors="replace").count("Traceback")
    return out


def _capacity(args: argparse.Namespace) -> int:
    """C: the runners' slots plus the gateway's queue."""
    return int(args.runners * args.max_concurrency + args.max_queued_streams)


def _users(args: argparse.Namespace, factor: float) -> int:
    """The closed-loop users of a phase at ``factor x C``."""
    return max(1, round(factor * _capacity(args)))


async def run_phase(args: argparse.Namespace, factor: float, seed: int) -> dict[str, Any]:
    """A fresh system, ``factor x C`` users for ``--duration-s``; what they measured and the system's state."""
    capacity = _capacity(args)
    users = _users(args, factor)
    runner_args = [
        "--max-concurrency", str(args.max_concurrency),
        "--synthetic-tokens-per-s", str(args.tokens_per_s),
        "--synthetic-ttft-ms", str(args.ttft_ms),
        "--synthetic-length-tokens", str(max(100_000, args.tokens)),
    ]  # fmt: skip
    gateway_args = [
        "--max-queued-streams", str(args.max_queued_streams),
        "--queue-timeout-s", str(args.queue_timeout_s),
        "--max-tokens-limit", str(max(32768, args.tokens)),
    ]  # fmt: skip
    with (
        nats_server() as broker,
        system(broker.url, runners=args.runners, runner_args=runner_args, gateway_args=gateway_args) as sut,
    ):
        roles = [sut.gateway, *sut.streamers, *sut.runners]
        pids = {role.name: role.process.pid for role in roles} | {"nats": broker.process.pid}
        await asyncio.sleep(SYSTEM_SETTLE_S)
        cpu_before = {name: proc_cpu_s(pid) for name, pid in pids.items()}
        gauges = Gauges()
        sampler = asyncio.create_task(
            sample_gauges(sut.gateway_url, [r.url for r in sut.runners], args.sample_s, gauges)
        )
        phase = Phase(args, sut.gateway_url, users, seed)
        started = time.perf_counter()
        try:
            await asyncio.wait_for(phase.run(), args.duration_s + args.drain_s)
            cut_off = False
        except TimeoutError:
            cut_off = True
        finally:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
        elapsed_s = time.perf_counter() - started
        cpu = {name: _minus(proc_cpu_s(pid), cpu_before[name]) for name, pid in pids.items()}
        exited = {role.name: role.process.poll() for role in roles if role.process.poll() is not None}
        if broker.process.poll() is not None:
            exited["nats"] = broker.process.poll()
        alive = {name: pid_alive(pid) for name, pid in pids.items()}
        logged = tracebacks(sut.log_dir)
        problems = log_problems(sut.log_dir)
    t = phase.totals
    return {
        "factor": factor,
        "capacity": capacity,
        "users": users,
        "elapsed_s": elapsed_s,
        "cut_off_after_drain": cut_off,
        "offered": t.offered,
        "accepted": t.accepted,
        "rejected": t.rejected,
        "rejected_overloaded": t.rejected_overloaded,
        "rejected_with_retry_after": t.rejected_with_retry_after,
        "retry_after_values": dict(t.retry_after_values),
        "other_responses": dict(t.other_responses),
        "completed": t.completed,
        "stream_errors": dict(t.stream_errors),
        "tokens": {"delivered": t.delivered, "lost": t.lost, "duplicated": t.duplicated},
        "in_flight_max": t.in_flight_max,
        "gateway_queued_max": gauges.queued_max,
        "runner_active_max": gauges.active_max,
        "admitted_max": gauges.admitted_max,
        "gauge_samples": gauges.samples,
        **{name: getattr(t, name).summary() for name in LATENCIES},
        "pids": pids,
        "exited": exited,
        "all_alive": not exited and all(alive.values()),
        "tracebacks_logged": logged,
        "log_problems": problems,
        "process_cpu_s": cpu,
    }


async def run_floor(args: argparse.Namespace, factor: float, seed: int) -> dict[str, Any]:
    """The same ``factor x C`` users against the refuser (every ``POST`` answered 503 at once) for
    ``--floor-duration-s``: the rejection latency that the load generator and the machine alone cost."""
    users = _users(args, factor)
    with refuser() as url:
        await asyncio.sleep(SYSTEM_SETTLE_S)
        phase = Phase(args, url, users, seed, duration_s=args.floor_duration_s)
        await phase.run()
    t = phase.totals
    return {
        "factor": factor,
        "users": users,
        "offered": t.offered,
        "rejected": t.rejected,
        **{name: getattr(t, name).summary() for name in FLOOR_LATENCIES},
    }


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def medians(runs: list[dict[str, Any]], factors: list[float]) -> dict[str, Any]:
    """Per factor, the median over runs of each latency percentile and count; sums for the invariants."""
    out: dict[str, Any] = {}
    for factor in factors:
        results = [run[_key(factor)] for run in runs]
        med: dict[str, Any] = {
            name: {p: _median([r[name][p] for r in results]) for p in ("p50", "p95", "p99", "max", "n")}
            for name in LATENCIES
        }
        for name in ("offered", "accepted", "rejected", "completed", "admitted_max", "gateway_queued_max",
                     "runner_active_max", "in_flight_max"):  # fmt: skip
            med[name] = _median([r[name] for r in results])
        med["capacity"] = results[0]["capacity"]
        med["users"] = results[0]["users"]
        med["rejected_total"] = sum(r["rejected"] for r in results)
        med["rejected_not_overloaded"] = sum(r["rejected"] - r["rejected_overloaded"] for r in results)
        med["rejected_without_retry_after"] = sum(r["rejected"] - r["rejected_with_retry_after"] for r in results)
        med["stream_errors"] = dict(sum((Counter(r["stream_errors"]) for r in results), Counter()))
        med["other_responses"] = dict(sum((Counter(r["other_responses"]) for r in results), Counter()))
        med["lost"] = sum(r["tokens"]["lost"] for r in results)
        med["duplicated"] = sum(r["tokens"]["duplicated"] for r in results)
        med["all_alive"] = all(r["all_alive"] for r in results)
        med["tracebacks"] = sum(sum(r["tracebacks_logged"].values()) for r in results)
        med["process_cpu_cores"] = {
            name: _median(
                [
                    r["process_cpu_s"][name] / r["elapsed_s"] if r["process_cpu_s"].get(name) is not None else None
                    for r in results
                ]
            )
            for name in results[0]["process_cpu_s"]
        }
        out[_key(factor)] = med
    floors = [run["floor"] for run in runs if "floor" in run]
    if floors:
        out["floor"] = {
            name: {p: _median([f[name][p] for f in floors]) for p in ("p50", "p95", "p99", "max", "n")}
            for name in FLOOR_LATENCIES
        } | {"users": floors[0]["users"], "factor": floors[0]["factor"]}
    return out


def _key(factor: float) -> str:
    return f"{factor:g}x"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _cores(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def format_table(med: dict[str, Any], args: argparse.Namespace) -> str:
    """The medians as fixed-width tables, with the targets."""
    keys = [key for key in med if key != "floor"]
    floor = med.get("floor")
    first = med[keys[0]]
    lines = [
        f"overload: C = {args.runners} runner(s) x {args.max_concurrency} + {args.max_queued_streams} queued = "
        f"{first['capacity']}; {args.tokens} tokens at {args.tokens_per_s:g} tokens/s per stream; "
        f"{args.duration_s:g} s per phase; median of {args.runs} run(s)",
        f"{'':<34}{'':>7}{'p50':>10}{'p95':>10}{'p99':>10}{'max':>10}{'n':>9}",
    ]
    labels = {
        "rejected_ms": "rejected: POST -> 503",
        "rejected_burst_ms": f"  of POSTs in the first {BURST_S:g} s",
        "rejected_later_ms": "  of later POSTs",
        "accepted_ms": "accepted: POST -> 201",
        "ttft_ms": "accepted: TTFT",
        "token_lag_ms": "accepted: token lag",
    }
    for name in LATENCIES:
        rows = [(key, med[key][name]) for key in keys]
        if floor is not None and name in FLOOR_LATENCIES:
            rows.append(("floor", floor[name]))
        for key, s in rows:
            n = "-" if s["n"] is None else f"{s['n']:,.0f}"
            lines.append(
                f"{labels[name]:<34}{key:>7}{_ms(s['p50']):>10}{_ms(s['p95']):>10}{_ms(s['p99']):>10}"
                f"{_ms(s['max']):>10}{n:>9}"
            )
    lines.append("(latencies in ms)")
    if floor is not None:
        lines.append(
            f"floor: {floor['users']:,} users against a server that answers every POST 503 at once "
            "(bench/baselines/refuser.py), same load generator, same run"
        )
    lines.append("")
    lines.append(f"{'':<44}" + "".join(f"{key:>12}" for key in keys))

    def row(label: str, render: Any) -> None:
        lines.append(f"{label:<44}" + "".join(f"{render(med[key]):>12}" for key in keys))

    row("users (closed loop)", lambda m: f"{m['users']:,}")
    row("POSTs offered", lambda m: f"{m['offered']:,.0f}")
    row("accepted / rejected", lambda m: f"{m['accepted']:,.0f}/{m['rejected']:,.0f}")
    row("accepted streams completed", lambda m: f"{m['completed']:,.0f}")
    row("admitted at once, max (queued + active)", lambda m: f"{m['admitted_max']:,.0f}")
    row("gateway queue, max", lambda m: f"{m['gateway_queued_max']:,.0f}")
    row("rejections not 'overloaded' (all runs)", lambda m: f"{m['rejected_not_overloaded']:,}")
    row("rejections without Retry-After (all runs)", lambda m: f"{m['rejected_without_retry_after']:,}")
    row("lost / duplicated tokens (all runs)", lambda m: f"{m['lost']}/{m['duplicated']}")
    row("stream errors (all runs)", lambda m: f"{sum(m['stream_errors'].values()):,}")
    row("every process alive, same PID", lambda m: "yes" if m["all_alive"] else "NO")
    row("tracebacks in logs (all runs)", lambda m: f"{m['tracebacks']}")
    for name in ("gateway", "streamer-0", "runner-0", "nats"):
        row(f"{name} CPU (cores)", lambda m, n=name: _cores(m["process_cpu_cores"].get(n)))
    for key in keys:
        if med[key]["stream_errors"]:
            lines.append(f"{key} stream errors by code: {med[key]['stream_errors']}")
        if med[key]["other_responses"]:
            lines.append(f"{key} other answers by code: {med[key]['other_responses']}")
    if "1x" in med and "2x" in med:
        one, two = med["1x"], med["2x"]
        rej_p99 = two["rejected_ms"]["p99"]
        verdict = "-" if rej_p99 is None else ("met" if rej_p99 <= 100 else "NOT met")
        later = two["rejected_later_ms"]["p99"]
        lines.append(
            f"2x: rejection p99 {_ms(rej_p99)} ms (target <= 100 ms: {verdict}); "
            f"{_ms(two['rejected_burst_ms']['p99'])} ms for the first {BURST_S:g} s's burst, {_ms(later)} ms after it"
        )
        if floor is not None:
            parts = (("all", "rejected_ms"), ("burst", "rejected_burst_ms"), ("later", "rejected_later_ms"))
            ratios = ", ".join(f"{label} {_ms(_ratio(two[n]['p99'], floor[n]['p99']))}x" for label, n in parts)
            lines.append(f"2x / floor: rejection p99 {ratios}")
        lag = _ratio(two["token_lag_ms"]["p99"], one["token_lag_ms"]["p99"])
        ttft = _ratio(two["ttft_ms"]["p99"], one["ttft_ms"]["p99"])
        lines.append(
            f"2x / 1x: accepted token lag p99 {_ms(lag)}x, TTFT p99 {_ms(ttft)}x; "
            f"admitted at once {two['admitted_max']:,.0f} of C = {two['capacity']}"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """Every option, documented."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.overload", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--runners", type=int, default=1, help="runner processes (default: %(default)s)")
    add("--max-concurrency", type=int, default=150, help="each runner's --max-concurrency (default: %(default)s)")
    add("--max-queued-streams", type=int, default=50, help="the gateway's --max-queued-streams (default: %(default)s)")
    add(
        "--queue-timeout-s",
        type=float,
        default=10.0,
        help="the gateway's --queue-timeout-s: a queued stream no runner takes this long ends as overloaded "
        "(default: %(default)s)",
    )
    add(
        "--factors",
        default="1,2",
        help="offered load of each phase, as multiples of C (users = factor x C) (default: %(default)s)",
    )
    add("--duration-s", type=float, default=20.0, help="seconds users start streams, per phase (default: %(default)s)")
    add(
        "--drain-s",
        type=float,
        default=30.0,
        help="after --duration-s, streams still open get this long to end (default: %(default)s)",
    )
    add(
        "--ramp-s",
        type=float,
        default=0.0,
        help="users start spread over this many seconds; 0 = all at once (default: %(default)s)",
    )
    add("--tokens", type=int, default=40, help="max_tokens of every stream (default: %(default)s)")
    add(
        "--tokens-per-s", type=float, default=10.0, help="the synthetic engine's pace per stream (default: %(default)s)"
    )
    add(
        "--ttft-ms",
        type=float,
        default=50.0,
        help="the synthetic engine's delay before a first token (default: %(default)s)",
    )
    add(
        "--retry-jitter",
        type=float,
        default=0.5,
        help="a refused user waits Retry-After x a random 1 ... 1 + this before it tries again (default: %(default)s)",
    )
    add(
        "--sample-s",
        type=float,
        default=0.25,
        help="how often the queue and active gauges are read (default: %(default)s)",
    )
    add(
        "--floor-duration-s",
        type=float,
        default=3.0,
        help="after each run's phases, the largest factor's users run this long against a server that refuses "
        "every POST at once (the floor of rejection latency); 0 = skip (default: %(default)s)",
    )
    add(
        "--loadgen-event-loop",
        choices=EVENT_LOOPS,
        default="auto",
        help="this benchmark's own event loop (its users); auto: uvloop where installed (default: %(default)s)",
    )
    add(
        "--runs",
        type=int,
        default=3,
        help="independent runs, fresh processes each phase; the table is their median (default: %(default)s)",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parsed and checked options (``factors`` becomes a list of floats)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.factors = [float(f) for f in args.factors.split(",") if f]
    except ValueError:
        parser.error("--factors takes comma-separated numbers, e.g. 1,2")
    if not args.factors or any(f <= 0 for f in args.factors):
        parser.error("--factors must be positive numbers")
    for name in ("runners", "max_concurrency", "tokens", "runs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("max_queued_streams",):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must not be negative")
    for name in ("duration_s", "tokens_per_s", "sample_s", "queue_timeout_s"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    for name in ("drain_s", "ramp_s", "retry_jitter", "ttft_ms", "floor_duration_s"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must not be negative")
    return args


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the tables; write and return the JSON."""
    args = parse_args(argv)
    runs: list[dict[str, Any]] = []
    for run in range(args.runs):
        result: dict[str, Any] = {}
        for factor in args.factors:
            phase = await run_phase(args, factor, seed=run * 1000 + round(factor * 10))
            result[_key(factor)] = phase
            print(
                f"run {run + 1} {_key(factor):>4}: {phase['users']} users, accepted {phase['accepted']}, "
                f"rejected {phase['rejected']} (p99 {_ms(phase['rejected_ms']['p99'])} ms), "
                f"lag p99 {_ms(phase['token_lag_ms']['p99'])} ms, admitted max {phase['admitted_max']:.0f}, "
                f"alive {phase['all_alive']}",
                file=sys.stderr,
                flush=True,
            )
        if args.floor_duration_s > 0:
            floor = await run_floor(args, max(args.factors), seed=run * 1000 + 999)
            result["floor"] = floor
            print(
                f"run {run + 1} floor: {floor['users']} users against the refuser, rejected {floor['rejected']} "
                f"(burst p99 {_ms(floor['rejected_burst_ms']['p99'])} ms)",
                file=sys.stderr,
                flush=True,
            )
        runs.append(result)
    med = medians(runs, args.factors)
    print(format_table(med, args))
    print(f"wrote {write_json('overload', {'args': vars(args), 'runs': runs, 'medians': med})}")
    return {"args": vars(args), "runs": runs, "medians": med}


if __name__ == "__main__":
    event_loop = parse_args().loadgen_event_loop  # first: --help exits here, before any coroutine exists
    with contextlib.suppress(KeyboardInterrupt):
        run_on_loop(main(), event_loop=event_loop)
