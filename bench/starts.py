"""What starting a stream costs each process: CPU per start, and TTFT, under bursts of simultaneous starts.

One system (an embedded nats-server, or with ``--nats-nodes 3`` a three-node cluster whose replicated history and
records the roles use as a deployment would; a gateway, a streamer and one runner whose synthetic engine sends its
first token at once, then ``--tokens`` tokens at ``--tokens-per-s``) takes ``--bursts`` bursts of ``--burst`` streams
started at the same instant, each read to its end: through tokenrelay's own API (``POST /v1/streams``, then the
events) or, with ``--api openai``, through the streamer's OpenAI-compatible API. Before and after each burst the CPU
time of every process is read from ``/proc``; their difference over the burst's streams is the CPU per start (the
whole stream: its start, its tokens and its end, and whatever the process did meanwhile). The table shows each burst
and the median.

``--profile DIR`` runs the gateway, the streamer and the runner under cProfile during the bursts (not while they
start): a ``sitecustomize`` laid on the roles' ``PYTHONPATH`` turns the profiler on at SIGUSR1 and writes
``DIR/<role>.prof`` at SIGUSR2. The top functions of each, by cumulative and by own time, are printed. The profiler
slows every Python call, so CPU figures of a profiled run only rank the costs: measure without it.

    python -m bench.starts
    python -m bench.starts --burst 200 --bursts 5 --api openai
    python -m bench.starts --bursts 2 --profile /tmp/starts-profile
    python -m bench.starts --nats-nodes 3
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import math
import os
import pstats
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from bench.stats import proc_cpu_s, run_load, write_json
from tokenrelay.loadtest.apis import Api
from tokenrelay.loadtest.command import positive_int
from tokenrelay.loadtest.plan import LoadTestConfig, parse_int_mix
from tokenrelay.loadtest.report import to_json
from tokenrelay.testing.cluster import nats_cluster
from tokenrelay.testing.procs import System, nats_server, system, wait_until
from tokenrelay.testing.synthetic import synthetic_args

ROLES = ("gateway", "streamer", "runner")
"""The Python processes (profiled with ``--profile``); nats-server is measured too."""
PROCESSES = (*ROLES, "nats-server")
DEFAULT_BURST = 200
DEFAULT_BURSTS = 5
DEFAULT_TOKENS = 40
DEFAULT_TOKENS_PER_S = 50.0
RUNNER_CONCURRENCY = 512
"""The runner takes this many streams at once and the gateway queues as many: no burst waits for admission."""
WARMUP_STREAMS = 4
"""Streams sent before the first burst (connections, lazy imports), not counted."""
SETTLE_S = 0.5
"""Pause after each burst before the CPU is read again: what a stream's end leaves to do is counted with it."""
DRAIN_S = 60.0
"""Streams still open this long after their burst started are cut off (counted as errors)."""
PROFILE_ENV = "TOKENRELAY_BENCH_PROFILE_DIR"
"""Set for the roles of a profiled run: where ``<role>.prof`` goes."""
PROFILE_WRITE_TIMEOUT_S = 30.0
TOP_FUNCTIONS = 25
SITECUSTOMIZE = "from bench.starts import install_profiler\n\ninstall_profiler()\n"


@dataclass(frozen=True)
class StartsOptions:
    """What :func:`starts` runs."""

    burst: int = DEFAULT_BURST
    """Streams started at once, each read to its end."""
    bursts: int = DEFAULT_BURSTS
    api: Api = Api.NATIVE
    tokens: int = DEFAULT_TOKENS
    """Tokens of every stream."""
    tokens_per_s: float = DEFAULT_TOKENS_PER_S
    profile_dir: str | None = None
    """Profile the roles into this folder (``None``: no profiler)."""
    nats_nodes: int = 1
    """1: one embedded nats-server; more: a cluster of that many (the history and records replicated on up to 3)."""

    def to_json(self) -> dict[str, Any]:
        """The options as JSON-ready data."""
        return asdict(self) | {"api": self.api.value}


# --- the profiler inside each role ---------------------------------------------------------------


def install_profiler() -> None:
    """In a role started with ``PROFILE_ENV`` set: profile from SIGUSR1 until SIGUSR2, then write the profile as
    ``<folder>/<pid>.prof``. Anywhere else it does nothing."""
    folder = os.environ.get(PROFILE_ENV)
    if not folder:
        return
    profiler = cProfile.Profile()

    def start(_: int, __: FrameType | None) -> None:
        profiler.enable()

    def write(_: int, __: FrameType | None) -> None:
        profiler.disable()
        path = Path(folder, f"{os.getpid()}.prof")
        profiler.dump_stats(f"{path}.part")
        os.replace(f"{path}.part", path)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, write)


@contextlib.contextmanager
def profiled_env(profile_dir: str | None) -> Iterator[Mapping[str, str] | None]:
    """The environment that makes roles load :func:`install_profiler` (``None`` without a profile folder)."""
    if profile_dir is None:
        yield None
        return
    Path(profile_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tokenrelay-bench-site-") as site:
        Path(site, "sitecustomize.py").write_text(SITECUSTOMIZE)
        root = str(Path(__file__).resolve().parents[1])
        path = os.pathsep.join(p for p in (site, root, os.environ.get("PYTHONPATH", "")) if p)
        yield {"PYTHONPATH": path, PROFILE_ENV: str(Path(profile_dir).resolve())}


def signal_roles(pids: Mapping[str, int], sig: signal.Signals) -> None:
    """Send ``sig`` to each role."""
    for pid in pids.values():
        os.kill(pid, sig)


def collect_profiles(pids: Mapping[str, int], profile_dir: str) -> dict[str, Path]:
    """Ask each role to write its profile; wait for the files and name them by role."""
    signal_roles(pids, signal.SIGUSR2)
    written = {role: Path(profile_dir, f"{pid}.prof") for role, pid in pids.items()}
    wait_until(
        lambda: all(p.exists() for p in written.values()), timeout_s=PROFILE_WRITE_TIMEOUT_S, what="the profiles"
    )
    named = {}
    for role, path in written.items():
        named[role] = path.replace(Path(profile_dir, f"{role}.prof"))
    return named


def top_functions(path: Path, sort: str, count: int = TOP_FUNCTIONS) -> str:
    """The ``count`` first functions of a profile by ``sort`` (``cumulative`` or ``tottime``), as pstats prints."""
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.strip_dirs().sort_stats(sort).print_stats(count)
    text = out.getvalue()
    return text[text.find("   ncalls") :] if "   ncalls" in text else text


# --- running -------------------------------------------------------------------------------------


def runner_args(options: StartsOptions) -> list[str]:
    """A runner whose first token comes at once, then ``tokens`` in all at ``tokens_per_s``."""
    synthetic = synthetic_args(tokens_per_s=options.tokens_per_s, length_tokens=options.tokens)
    return [*synthetic, "--max-concurrency", str(RUNNER_CONCURRENCY)]


def load_config(sut: System, streams: int, options: StartsOptions) -> LoadTestConfig:
    """``streams`` streams started at once, over the native API (the gateway) or the streamer's OpenAI API."""
    base_url = sut.gateway_url if options.api is Api.NATIVE else sut.streamer_url
    return LoadTestConfig(
        gateway_url=base_url,
        api=options.api,
        streams=streams,
        concurrency=streams,
        drain_s=DRAIN_S,
        max_tokens=parse_int_mix(str(options.tokens)),
        quiet=True,
    )


def cpu_of(pids: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """CPU seconds each named group of processes has used so far (a cluster's nats-servers are one group)."""
    out = {}
    for name, group in pids.items():
        total = 0.0
        for pid in group:
            cpu = proc_cpu_s(pid)
            if cpu is None:
                raise RuntimeError(f"{name} (pid {pid}) is gone")
            total += cpu
        out[name] = total
    return out


@contextlib.contextmanager
def broker(nodes: int) -> Iterator[tuple[str, list[int]]]:
    """One embedded nats-server, or a cluster of ``nodes``: its URL (every node's) and its processes."""
    if nodes == 1:
        with nats_server() as server:
            yield server.url, [server.process.pid]
        return
    with nats_cluster(nodes) as cluster:
        yield cluster.url, [node.process.pid for node in cluster.nodes if node.process is not None]


def burst(sut: System, pids: Mapping[str, Sequence[int]], options: StartsOptions) -> dict[str, Any]:
    """One burst: its TTFT, errors and each process's CPU µs per start (and the load generator's own)."""
    before = cpu_of(pids)
    result = run_load(load_config(sut, options.burst, options))
    time.sleep(SETTLE_S)
    after = cpu_of(pids)
    report = to_json(result)
    cpu_s = {name: after[name] - before[name] for name in pids} | {"loadgen": result.own_cpu_s}
    return {
        "cpu_s": cpu_s,
        "us_per_start": {name: s / options.burst * 1e6 for name, s in cpu_s.items()},
        "ttft_ms": {"p50": report["ttft_ms"]["p50"], "p99": report["ttft_ms"]["p99"]},
        "completed": report["streams"]["completed"],
        "errors": report["errors"],
    }


def starts(options: StartsOptions, *, progress: TextIO | None = None) -> dict[str, Any]:
    """Start the system, warm it, run every burst (profiled if asked); the summary."""
    out = progress if progress is not None else sys.stdout
    with broker(options.nats_nodes) as (nats_url, nats_pids), profiled_env(options.profile_dir) as env:
        gateway_args = ["--max-queued-streams", str(RUNNER_CONCURRENCY)]
        with system(nats_url, runner_args=runner_args(options), gateway_args=gateway_args, env=env) as sut:
            roles = {"gateway": sut.gateway.process.pid, "streamer": sut.streamer.process.pid}
            roles["runner"] = sut.runners[0].process.pid
            pids = {name: [pid] for name, pid in roles.items()} | {"nats-server": nats_pids}
            run_load(load_config(sut, WARMUP_STREAMS, options))
            if options.profile_dir is not None:
                signal_roles(roles, signal.SIGUSR1)
            bursts = []
            for number in range(1, options.bursts + 1):
                bursts.append(burst(sut, pids, options))
                print(f"burst {number}: {burst_line(bursts[-1])}", file=out, flush=True)
            profiles = collect_profiles(roles, options.profile_dir) if options.profile_dir is not None else {}
    summary = summarize(options, bursts)
    summary["processes"] = {name: len(group) for name, group in pids.items()}
    summary["profiles"] = {role: str(path) for role, path in profiles.items()}
    return summary


# --- figures and tables (no I/O) -----------------------------------------------------------------


def summarize(options: StartsOptions, bursts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Every burst's figures; for each figure the median over bursts; and the CPU of all bursts over all their
    starts (finer than one burst's: ``/proc`` counts CPU in clock ticks, 10 ms on most systems)."""
    names = bursts[0]["us_per_start"].keys()
    median_us = {name: statistics.median(b["us_per_start"][name] for b in bursts) for name in names}
    median_ttft = {p: statistics.median(b["ttft_ms"][p] for b in bursts) for p in ("p50", "p99")}
    starts = options.burst * len(bursts)
    total_us = {name: math.fsum(b["cpu_s"][name] for b in bursts) / starts * 1e6 for name in names}
    return {
        "options": options.to_json(),
        "bursts": list(bursts),
        "median": {"us_per_start": median_us, "ttft_ms": median_ttft},
        "all": {"us_per_start": total_us},
    }


def burst_line(b: Mapping[str, Any]) -> str:
    """One burst in a line."""
    cpu = ", ".join(f"{name} {us:,.0f}" for name, us in b["us_per_start"].items())
    ttft = b["ttft_ms"]
    errors = sum(b["errors"].values())
    return f"CPU µs/start: {cpu}; TTFT p50 {ttft['p50']:.1f} p99 {ttft['p99']:.1f} ms; errors {errors}"


def format_table(summary: Mapping[str, Any]) -> str:
    """A row per burst, one of medians and one of all bursts' CPU over all their starts: CPU µs per start of each
    process, TTFT p50 and p99 in ms."""
    names = list(summary["median"]["us_per_start"])
    header = ["", *(f"{n} µs" for n in names), "TTFT p50 ms", "TTFT p99 ms"]
    rows = [(f"burst {i}", b["us_per_start"], b["ttft_ms"]) for i, b in enumerate(summary["bursts"], 1)]
    rows.append(("median", summary["median"]["us_per_start"], summary["median"]["ttft_ms"]))
    lines = [header] + [
        [label, *(f"{us[n]:,.0f}" for n in names), f"{ttft['p50']:.1f}", f"{ttft['p99']:.1f}"]
        for label, us, ttft in rows
    ]
    lines.append(["all bursts", *(f"{summary['all']['us_per_start'][n]:,.0f}" for n in names), "", ""])
    widths = [max(len(line[k]) for line in lines) for k in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True)) for line in lines)


def title(options: StartsOptions) -> str:
    """What the table measured, in a line."""
    profiled = " (profiled: CPU figures inflated)" if options.profile_dir is not None else ""
    nodes = "one nats-server" if options.nats_nodes == 1 else f"a {options.nats_nodes}-node NATS cluster"
    return (
        f"{options.bursts} burst(s) of {options.burst} streams at once over the {options.api.value} API, "
        f"{options.tokens} tokens at {options.tokens_per_s:g}/s each, on {nodes}{profiled}"
    )


# --- command line --------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    """Every option, with its default."""
    p = argparse.ArgumentParser(
        prog="python -m bench.starts", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = p.add_argument
    add("--burst", type=positive_int, default=DEFAULT_BURST, help=f"streams at once (default: {DEFAULT_BURST})")
    add("--bursts", type=positive_int, default=DEFAULT_BURSTS, help=f"bursts measured (default: {DEFAULT_BURSTS})")
    add("--api", choices=[Api.NATIVE.value, Api.OPENAI.value], default=Api.NATIVE.value, help="(default: native)")
    add("--tokens", type=positive_int, default=DEFAULT_TOKENS, help=f"tokens per stream (default: {DEFAULT_TOKENS})")
    add(
        "--tokens-per-s",
        type=float,
        default=DEFAULT_TOKENS_PER_S,
        help=f"the synthetic engine's pace (default: {DEFAULT_TOKENS_PER_S:g})",
    )
    add("--profile", metavar="DIR", default=None, help="profile the roles during the bursts into DIR/<role>.prof")
    add(
        "--nats-nodes",
        type=positive_int,
        default=1,
        help="1: one embedded nats-server; 3: a three-node cluster (the nats-server column sums its nodes) "
        "(default: 1)",
    )
    return p


def options_from_args(args: argparse.Namespace) -> StartsOptions:
    """The run that parsed arguments ask for."""
    return StartsOptions(
        burst=args.burst,
        bursts=args.bursts,
        api=Api(args.api),
        tokens=args.tokens,
        tokens_per_s=args.tokens_per_s,
        profile_dir=args.profile,
        nats_nodes=args.nats_nodes,
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the bursts, print the table (and the profiles' top functions), write the JSON; the summary."""
    options = options_from_args(parser().parse_args(argv))
    summary = starts(options)
    print(f"\n{title(options)}\n{format_table(summary)}")
    for role, path in summary["profiles"].items():
        for sort in ("cumulative", "tottime"):
            print(f"\n{role}: top {TOP_FUNCTIONS} by {sort}\n{top_functions(Path(path), sort)}")
    print(f"wrote {write_json('starts', summary)}")
    return summary


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
