"""tokenrelay against its baselines, driven by the same load in the same run, reported as ratios.

Targets, each started fresh for every load and stopped after it, each on a nats-server of its own (started for
that measurement: a shared one would spend the next measurement's CPU ageing out the last one's stored history):

* ``tokenrelay`` — gateway, streamer and runner processes (synthetic engine, no TTFT delay, a
  natural text length past any ``max_tokens``, runner concurrency and gateway queue sized so
  admission rejects nothing); the relay process is the streamer;
* ``forwarder``  — the bare forwarder (``bench.baselines.forwarder``): a publisher process
  publishes pre-encoded SSE frames on NATS, a forwarder process writes them; the relay process is
  the forwarder;
* ``naive``      — the naive relay (``bench.baselines.naive_relay``): one aiohttp process that
  generates and sends with aiohttp-sse; the relay process is that process;
* ``forwarder-post`` — the bare forwarder started at the ``POST`` (``--start-at post``), as tokenrelay
  starts a stream: the least tokenrelay's flow (a ``POST``, then a ``GET``, two NATS hops between
  them) can cost, so the floor of the first-token target (the forwarder's token lag is the floor of
  the others); the relay process is the forwarder;
* ``forwarder-stored`` — the bare forwarder whose publisher has every frame kept in JetStream as tokenrelay keeps
  its events (``--store``): what storing each token for replay adds (nats-server's CPU, mostly) with nothing else
  tokenrelay does; the relay process is the forwarder.

Every load is ``tokenrelay.loadtest`` run in this process (``run_loadtest``), with the same
configuration for every target: no stops and no never-read readers (the baselines have no control
WebSocket). It runs in-process rather than as a ``tokenrelay loadtest --json`` subprocess because
the driver returns its typed ``RunResult`` (including the generator's own CPU seconds), this
process is idle while a load runs, and there is no second interpreter to start and JSON to parse.

Scenarios (``--scenario``):

* ``active``      — ``--streams`` streams at ``--ramp-per-s`` up to ``--concurrency`` open, each
  ``--max-tokens`` tokens at ``--tokens-per-s`` (defaults: 1,000 streams x 20 tokens/s,
  200 tokens each, so ~10 s per stream). Token lag (the generator's ``ts`` on each delta -> its
  arrival), TTFT, tokens lost and duplicated, errors, the relay process's CPU per delivered token,
  the CPU per token of all the target's processes and of the nats-server, and the load
  generator's own CPU (near 100 % of one core means the generator, not the target, was the limit);
* ``first-token`` — a light load (``--first-token-*``: 200 streams, 4 at a time, 4 tokens each)
  so no latency is queueing: each target's TTFT (POST sent -> first delta), and the forwarder's
  one-token latency, its token lag at this load.

Each round runs every scenario and, within it, every target in turn (tokenrelay, forwarder,
naive, forwarder-post, forwarder-stored, then the next round). Ratios divide a target's figure by the forwarder's in
the same round (the forwarder's own too where a row divides by another of its figures: its TTFT by
its token lag); the table shows the median over rounds of each figure and of each ratio. Targets:
active p99 token lag <= 3x the forwarder's, streamer CPU per token <= 1.5x the forwarder's,
0 tokens lost or duplicated, first-token TTFT p50 <= 3x the forwarder's token lag p50. The naive
relay's, forwarder-post's and forwarder-stored's ratios are there for reference. Every round's raw load-test JSON
per target and the summary go to ``bench/results/compare-<timestamp>.json``.

    python -m bench.compare --runs 3
    python -m bench.compare --runs 1 --scenario active
    python -m bench.compare --runs 3 --scenario first-token --targets tokenrelay,forwarder
    python -m bench.compare --streams 200 --ramp-per-s 100 --max-tokens 40 --runs 1 \\
        --runner-args='--publish-interval-ms 0'
"""

from __future__ import annotations

import argparse
import contextlib
import math
import shlex
import statistics
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TextIO

from bench.baselines.common import forwarder_processes, naive_relay
from bench.stats import aligned, proc_cpu_s, run_load, write_json
from tokenrelay.loadtest.command import non_negative_float, positive_int
from tokenrelay.loadtest.plan import DEFAULT_DRAIN_S, DEFAULT_SAMPLE_INTERVAL_S, LoadTestConfig, parse_int_mix
from tokenrelay.loadtest.report import to_json
from tokenrelay.runtime.config import DEFAULT_SYNTHETIC_STEP_MS
from tokenrelay.runtime.service import EVENT_LOOPS
from tokenrelay.testing.procs import NatsServer, nats_server, system

TARGETS = ("tokenrelay", "forwarder", "naive", "forwarder-post", "forwarder-stored")
SCENARIOS = ("active", "first-token")
BASELINE = "forwarder"
"""The target every ratio divides by."""
SYNTHETIC_LENGTH_TOKENS = 1_000_000
"""tokenrelay's synthetic text length: past any ``max_tokens``, so every stream ends at its ``max_tokens``."""
HEADROOM_STREAMS = 16
"""Added to the runner's concurrency and the gateway's queue bound on top of the streams open at once."""


@dataclass(frozen=True, slots=True)
class Load:
    """One scenario's load: the same for every target."""

    streams: int
    concurrency: int
    """Streams open at once at most."""
    ramp_per_s: float
    """New streams per second (0: as fast as ``concurrency`` allows)."""
    max_tokens: int
    tokens_per_s: float
    """The generator's pace after the first token, per stream (0: as fast as it goes)."""

    @property
    def expected_tokens(self) -> int:
        """Tokens every target must deliver: each stream's ``max_tokens``."""
        return self.streams * self.max_tokens


@dataclass(frozen=True)
class CompareOptions:
    """What :func:`compare` runs."""

    loads: dict[str, Load]
    """Scenario name -> its load; the scenarios run in this order."""
    targets: tuple[str, ...] = TARGETS
    runs: int = 1
    sample_interval_s: float = DEFAULT_SAMPLE_INTERVAL_S
    drain_s: float = DEFAULT_DRAIN_S
    source_addresses: int = 1
    runner_args: tuple[str, ...] = ()
    streamer_args: tuple[str, ...] = ()
    gateway_args: tuple[str, ...] = ()
    event_loop: str = "asyncio"
    """Every process of every target runs on this loop (tokenrelay's own default is uvloop when installed)."""
    loadgen_event_loop: str = "auto"
    """The load generator's own loop, the same for every target."""
    streamers: int = 1
    """tokenrelay's streamer processes; more than one share a port (``--reuse-port``)."""
    step_ms: float = DEFAULT_SYNTHETIC_STEP_MS
    """The synthetic engine's decode step, the same in tokenrelay's runner and both baselines' generators."""

    def to_json(self) -> dict[str, Any]:
        """The options as JSON-ready data."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Deployment:
    """A started target: where the load goes and which processes it runs."""

    base_url: str
    processes: dict[str, str]
    """Process name -> base URL serving its ``/metrics``."""
    relay: str | tuple[str, ...]
    """The name(s) of the process(es) that write SSE to the readers."""
    broker_pid: int | None
    """The nats-server's PID when the target goes through NATS (its CPU is counted too)."""


# --- running -------------------------------------------------------------------------------------


@contextlib.contextmanager
def deploy(target: str, load: Load, broker: NatsServer, options: CompareOptions) -> Iterator[Deployment]:
    """Start ``target`` paced for ``load``; stop it afterwards."""
    if target == "tokenrelay":
        with _tokenrelay(load, broker, options) as deployment:
            yield deployment
    elif target in ("forwarder", "forwarder-post", "forwarder-stored"):
        pacing = forwarder_processes(
            broker.url,
            ttft_ms=0,
            tokens_per_s=load.tokens_per_s,
            step_ms=options.step_ms,
            event_loop=options.event_loop,
            start_at="post" if target == "forwarder-post" else "get",
            store=target == "forwarder-stored",
        )
        with pacing as urls:
            processes = {"forwarder": urls.url, "publisher": urls.publisher_url}
            yield Deployment(urls.url, processes, "forwarder", broker.process.pid)
    elif target == "naive":
        naive = naive_relay(
            ttft_ms=0, tokens_per_s=load.tokens_per_s, step_ms=options.step_ms, event_loop=options.event_loop
        )
        with naive as url:
            yield Deployment(url, {"naive": url}, "naive", None)
    else:
        raise ValueError(f"unknown target {target!r} (not one of {', '.join(TARGETS)})")


@contextlib.contextmanager
def _tokenrelay(load: Load, broker: NatsServer, options: CompareOptions) -> Iterator[Deployment]:
    capacity = str(load.concurrency + HEADROOM_STREAMS)
    loop = ("--event-loop", options.event_loop)
    runner_args = [
        *loop,
        "--synthetic-ttft-ms", "0",
        "--synthetic-tokens-per-s", str(load.tokens_per_s),
        "--synthetic-step-ms", str(options.step_ms),
        "--synthetic-length-tokens", str(SYNTHETIC_LENGTH_TOKENS),
        "--max-concurrency", capacity,
        *options.runner_args,
    ]  # fmt: skip
    gateway_args = [
        *loop,
        "--max-queued-streams", capacity,
        "--max-tokens-limit", str(max(load.max_tokens, SYNTHETIC_LENGTH_TOKENS)),
        *options.gateway_args,
    ]  # fmt: skip
    streamer_args = [*loop, *options.streamer_args]
    shared = options.streamers > 1
    with system(
        broker.url, runner_args=runner_args, streamer_args=streamer_args, gateway_args=gateway_args,
        streamers=options.streamers, share_streamer_port=shared,
    ) as sut:  # fmt: skip
        streamers = {s.name: s.url for s in sut.streamers} if shared else {"streamer": sut.streamer_url}
        processes = {**streamers, "runner": sut.runners[0].url, "gateway": sut.gateway_url}
        yield Deployment(sut.gateway_url, processes, tuple(streamers), broker.process.pid)


def load_config(deployment: Deployment, load: Load, options: CompareOptions) -> LoadTestConfig:
    """The load test of ``load`` against a deployment, sampling each of its processes' ``/metrics``."""
    return LoadTestConfig(
        gateway_url=deployment.base_url,
        streams=load.streams,
        concurrency=load.concurrency,
        ramp_per_s=load.ramp_per_s,
        drain_s=options.drain_s,
        max_tokens=parse_int_mix(str(load.max_tokens)),
        metrics_urls=tuple(deployment.processes.values()),
        sample_interval_s=options.sample_interval_s,
        source_addresses=options.source_addresses,
        quiet=True,
        event_loop=options.loadgen_event_loop,
    )


def measure(target: str, load: Load, broker: NatsServer, options: CompareOptions) -> dict[str, Any]:
    """Start ``target``, run ``load`` against it, stop it; the load test's JSON plus what this bench adds."""
    with deploy(target, load, broker, options) as deployment:
        pid = deployment.broker_pid
        broker_before = (proc_cpu_s(pid) or 0.0) if pid is not None else 0.0
        config = load_config(deployment, load, options)
        result = run_load(config)
        broker_cpu_s = (proc_cpu_s(pid) or 0.0) - broker_before if pid is not None else None
    return {
        "target": target,
        "processes": deployment.processes,
        "relay": deployment.relay,
        "nats_cpu_s": broker_cpu_s,
        "loadgen_cpu_s": result.own_cpu_s,
        "loadtest": to_json(result),
    }


@contextlib.contextmanager
def _broker_for(shared: NatsServer | None) -> Iterator[NatsServer]:
    """``shared``, or a nats-server started for one measurement."""
    if shared is not None:
        yield shared
        return
    with nats_server() as fresh:
        yield fresh


def compare(
    options: CompareOptions, *, broker: NatsServer | None = None, progress: TextIO | None = sys.stdout
) -> dict[str, Any]:
    """Run every round, scenario and target; the summary (every round's raw results, figures, table rows).

    ``broker``: an already running nats-server every measurement uses (default: a fresh one for each).
    """
    rounds: list[dict[str, dict[str, dict[str, Any]]]] = []
    for number in range(1, options.runs + 1):
        measured: dict[str, dict[str, dict[str, Any]]] = {}
        for scenario, load in options.loads.items():
            measured[scenario] = {}
            for target in options.targets:
                with _broker_for(broker) as used:
                    raw = measure(target, load, used, options)
                measured[scenario][target] = raw
                if progress is not None:
                    print(
                        f"round {number} {scenario:>11} {target:>10}: {progress_line(raw)}", file=progress, flush=True
                    )
        rounds.append(measured)
    return summarize(options, rounds)


# --- figures, ratios and the table (no I/O) ------------------------------------------------------


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _per_token_us(cpu_s: float, delivered: int) -> float:
    return cpu_s * 1e6 / delivered if delivered else math.nan


def figures(raw: dict[str, Any]) -> dict[str, float]:
    """The flat figures of one measurement (NaN where unknown): latencies in ms, CPU in µs per delivered token."""
    report = raw["loadtest"]
    tokens, delivered = report["tokens"], report["tokens"]["delivered"]
    cpu = {name: _number(report["instances"].get(url, {}).get("cpu_s")) for name, url in raw["processes"].items()}
    nats_cpu = _number(raw["nats_cpu_s"])  # NaN: the target does not use NATS
    all_cpu = sum(cpu.values()) + (nats_cpu if math.isfinite(nats_cpu) else 0.0)
    out = {
        f"{prefix}_{p}": _number(report[key][p])
        for prefix, key in (("lag", "token_lag_ms"), ("ttft", "ttft_ms"))
        for p in ("p50", "p95", "p99", "max")
    }
    out |= {
        "delivered": float(delivered),
        "missing": float(max(0, expected_tokens(report) - delivered)),
        "lost_duplicated": float(tokens["lost"] + tokens["duplicated"]),
        "completed": float(report["streams"]["completed"]),
        "errors": float(sum(report["errors"].values())),
        "relay_cpu_us_per_token": _per_token_us(sum(cpu[name] for name in _names(raw["relay"])), delivered),
        "processes_cpu_us_per_token": _per_token_us(sum(cpu.values()), delivered),
        "nats_cpu_us_per_token": _per_token_us(nats_cpu, delivered),
        "all_cpu_us_per_token": _per_token_us(all_cpu, delivered),
        "loadgen_cpu_pct": 100 * raw["loadgen_cpu_s"] / report["duration_s"] if report["duration_s"] else math.nan,
        "duration_s": float(report["duration_s"]),
        "readers_peak": peak_readers(raw),
        # Deltas published before their reader's GET (tokenrelay starts generating at the POST; the baselines
        # at the GET, so they have none): they waited for the reader, which TTFT already counts.
        "history_lag_p99": _number(report.get("history_lag_ms", {}).get("p99")),
        # Deltas published once the load generator had started its last stream: the load at full size, without
        # the CPU that starting streams takes (not a target: the p99 target counts every delta).
        "lag_after_ramp_p99": _number(report.get("token_lag_after_ramp_ms", {}).get("p99")),
    }
    return out


def peak_readers(raw: dict[str, Any]) -> float:
    """The most SSE readers the relay processes held at once, by their sampled ``/metrics`` (NaN: none sampled).

    A relay that cannot keep up starts streams late, so it never holds the whole load at once and its run
    lasts longer: its token lag is then measured under a lighter load than the others'.  This shows it.
    """
    relay_urls = {raw["processes"][name] for name in _names(raw["relay"])}
    open_at: dict[float, float] = {}
    for sample in raw["loadtest"].get("samples", ()):
        if sample["url"] in relay_urls and sample.get("readers_open") is not None:
            open_at[sample["t"]] = open_at.get(sample["t"], 0.0) + sample["readers_open"]
    return max(open_at.values(), default=math.nan)


def _names(relay: str | list[str] | tuple[str, ...]) -> list[str]:
    return [relay] if isinstance(relay, str) else list(relay)


def expected_tokens(report: dict[str, Any]) -> int:
    """Tokens a load should deliver: ``max_tokens`` of every stream started (the mix is one value here)."""
    mix = report["config"]["max_tokens"]
    return int(report["streams"]["started"] * mix[0]["value"]) if len(mix) == 1 else 0


def median(values: Sequence[float]) -> float:
    """The median of the finite values; NaN when there are none."""
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``; NaN when either is unknown or the denominator is not positive."""
    if not (math.isfinite(numerator) and math.isfinite(denominator)) or denominator <= 0:
        return math.nan
    return numerator / denominator


@dataclass(frozen=True, slots=True)
class Row:
    """One table row: a figure per target, optionally a ratio against the forwarder and a bound to meet."""

    label: str
    key: str
    unit: str
    """``ms``, ``us``, ``s``, ``count`` or ``pct``: how values are printed."""
    vs: str | None = None
    """The forwarder's figure each round's ratio divides by (``None``: no ratio)."""
    at_most: float | None = None
    """The target: tokenrelay's ratio (rows with ``vs``) or value at most this (``None``: no target)."""
    total: bool = False
    """Sum over rounds instead of the median (counts that must stay 0)."""

    @property
    def target(self) -> str:
        """The target as the table prints it."""
        if self.at_most is None:
            return ""
        return f"<= {self.at_most:g}x" if self.vs is not None else f"<= {self.at_most:g}"


ROWS: dict[str, tuple[Row, ...]] = {
    "active": (
        Row("token lag p50", "lag_p50", "ms", vs="lag_p50"),
        Row("token lag p95", "lag_p95", "ms", vs="lag_p95"),
        Row("token lag p99", "lag_p99", "ms", vs="lag_p99", at_most=3),
        Row("token lag max", "lag_max", "ms", vs="lag_max"),
        Row("token lag p99 after the ramp", "lag_after_ramp_p99", "ms", vs="lag_after_ramp_p99"),
        Row("history deltas: lag p99", "history_lag_p99", "ms"),
        Row("TTFT p50", "ttft_p50", "ms", vs="ttft_p50"),
        Row("TTFT p99", "ttft_p99", "ms", vs="ttft_p99"),
        Row("tokens delivered", "delivered", "count"),
        Row("streams open at once, peak", "readers_peak", "count"),
        Row("run length", "duration_s", "s"),
        Row("tokens not delivered", "missing", "count", at_most=0, total=True),
        Row("tokens lost + duplicated", "lost_duplicated", "count", at_most=0, total=True),
        Row("errors", "errors", "count", total=True),
        Row("relay process CPU µs/token", "relay_cpu_us_per_token", "us", vs="relay_cpu_us_per_token", at_most=1.5),
        Row("its processes' CPU µs/token", "processes_cpu_us_per_token", "us", vs="processes_cpu_us_per_token"),
        Row("nats-server CPU µs/token", "nats_cpu_us_per_token", "us"),
        Row("all CPU µs/token (incl. nats)", "all_cpu_us_per_token", "us", vs="all_cpu_us_per_token"),
        Row("load generator CPU (% of a core)", "loadgen_cpu_pct", "pct"),
    ),
    "first-token": (
        Row("TTFT p50 (÷ fwd lag p50)", "ttft_p50", "ms", vs="lag_p50", at_most=3),
        Row("TTFT p99 (÷ fwd lag p99)", "ttft_p99", "ms", vs="lag_p99"),
        Row("token lag p50", "lag_p50", "ms", vs="lag_p50"),
        Row("token lag p99", "lag_p99", "ms", vs="lag_p99"),
        Row("tokens not delivered", "missing", "count", at_most=0, total=True),
        Row("tokens lost + duplicated", "lost_duplicated", "count", at_most=0, total=True),
        Row("errors", "errors", "count", total=True),
        Row("load generator CPU (% of a core)", "loadgen_cpu_pct", "pct"),
    ),
}
"""Each scenario's table rows, in order."""


def summarize(options: CompareOptions, rounds: list[dict[str, dict[str, dict[str, Any]]]]) -> dict[str, Any]:
    """Per-round figures, then each row's aggregate per target and median ratio against the forwarder."""
    per_round = [
        {scenario: {target: figures(raw) for target, raw in by_target.items()} for scenario, by_target in r.items()}
        for r in rounds
    ]
    table_rows = [
        summarize_row(scenario, row, per_round, options.targets) for scenario in options.loads for row in ROWS[scenario]
    ]
    return {
        "options": options.to_json(),
        "rounds": rounds,
        "figures": per_round,
        "rows": table_rows,
    }


def summarize_row(
    scenario: str, row: Row, per_round: list[dict[str, dict[str, dict[str, float]]]], targets: Sequence[str]
) -> dict[str, Any]:
    """One row's aggregate per target, its median ratios against the forwarder, and whether tokenrelay met it."""
    values: dict[str, float] = {}
    ratios: dict[str, float] = {}
    for target in targets:
        series = [r[scenario][target][row.key] for r in per_round]
        values[target] = math.fsum(series) if row.total else median(series)
        own = target == BASELINE and row.vs == row.key  # the forwarder against itself: no ratio
        if row.vs is not None and not own and BASELINE in targets:
            ratios[target] = median(
                [ratio(r[scenario][target][row.key], r[scenario][BASELINE][row.vs]) for r in per_round]
            )
    met: bool | None = None
    if row.at_most is not None and "tokenrelay" in targets:
        judged = ratios.get("tokenrelay", math.nan) if row.vs is not None else values["tokenrelay"]
        met = judged <= row.at_most if math.isfinite(judged) else None
    return {
        "scenario": scenario,
        "label": row.label,
        "key": row.key,
        "unit": row.unit,
        "values": values,
        "ratios": ratios,
        "ratio_of": row.vs,
        "target": row.target,
        "met": met,
    }


def _cell(value: float, unit: str) -> str:
    if not math.isfinite(value):
        return "-"
    if unit == "ms":
        return f"{value:,.2f}" if value < 1000 else f"{value:,.0f}"
    if unit == "us":
        return f"{value:,.1f}"
    if unit == "pct":
        return f"{value:.0f}%"
    if unit == "s":
        return f"{value:,.1f} s"
    return f"{value:,.0f}"


def format_table(summary: dict[str, Any]) -> str:
    """metric | each target | each target ÷ fwd | target | met?"""
    header = ["metric", *TARGETS, *(f"{t} ÷ fwd" for t in TARGETS), "target", "met?"]
    lines: list[list[str]] = []
    for row in summary["rows"]:
        cells = [f"{row['scenario']}: {row['label']}"]
        cells += [_cell(row["values"].get(t, math.nan), row["unit"]) for t in TARGETS]
        for target in TARGETS:
            r = row["ratios"].get(target, math.nan)
            cells.append(f"{r:.2f}x" if math.isfinite(r) else "")
        cells += [row["target"], {True: "yes", False: "NO", None: ""}[row["met"]]]
        lines.append(cells)
    return aligned([header, *lines])


def progress_line(raw: dict[str, Any]) -> str:
    """One measurement in a line."""
    f = figures(raw)
    return (
        f"{f['delivered']:,.0f} tokens in {f['duration_s']:.1f} s, at most {f['readers_peak']:,.0f} streams open, "
        f"lost+dup {f['lost_duplicated']:.0f}, "
        f"errors {f['errors']:.0f}; lag p50 {f['lag_p50']:.2f} p99 {f['lag_p99']:.2f} ms; "
        f"TTFT p50 {f['ttft_p50']:.2f} ms; relay {f['relay_cpu_us_per_token']:.1f} µs/token; "
        f"load generator {f['loadgen_cpu_pct']:.0f}% of a core"
    )


# --- command line --------------------------------------------------------------------------------


def _csv(choices: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(name.strip() for name in text.split(",") if name.strip())
        if not names or any(name not in choices for name in names):
            raise argparse.ArgumentTypeError(f"{text!r}: a comma-separated subset of {','.join(choices)}")
        return names

    return parse


def parser() -> argparse.ArgumentParser:
    """Every option, with its default."""
    p = argparse.ArgumentParser(
        prog="python -m bench.compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", type=positive_int, default=3, help="rounds; the table shows medians (default: 3)")
    p.add_argument(
        "--targets",
        type=_csv(TARGETS),
        default=TARGETS,
        metavar="LIST",
        help=f"comma-separated subset of {','.join(TARGETS)}, run in this order each round; "
        "the ratios need the forwarder (default: all)",
    )
    p.add_argument("--scenario", choices=(*SCENARIOS, "all"), default="all", help="the load(s) to run (default: all)")
    active = p.add_argument_group("active scenario (the target load)")
    add = active.add_argument
    add("--streams", type=positive_int, default=1000, metavar="N", help="streams in total (default: 1000)")
    add("--concurrency", type=positive_int, default=None, metavar="N", help="open at once (default: --streams)")
    add("--ramp-per-s", type=non_negative_float, default=200.0, metavar="RATE", help="new streams/s (default: 200)")
    add("--max-tokens", type=positive_int, default=200, metavar="T", help="tokens per stream (default: 200)")
    add(
        "--tokens-per-s",
        type=non_negative_float,
        default=20.0,
        metavar="RATE",
        help="every target's generation pace per stream after the first token (default: 20)",
    )
    first = p.add_argument_group("first-token scenario (light, so latency is not queueing)")
    add = first.add_argument
    add("--first-token-streams", type=positive_int, default=200, metavar="N", help="(default: 200)")
    add("--first-token-concurrency", type=positive_int, default=4, metavar="N", help="(default: 4)")
    add(
        "--first-token-ramp-per-s",
        type=non_negative_float,
        default=0.0,
        metavar="RATE",
        help="(default: 0 = as fast as the concurrency allows)",
    )
    add("--first-token-max-tokens", type=positive_int, default=4, metavar="T", help="(default: 4)")
    add("--first-token-tokens-per-s", type=non_negative_float, default=50.0, metavar="RATE", help="(default: 50)")
    rest = p.add_argument_group("load test and tokenrelay")
    add = rest.add_argument
    add(
        "--sample-interval-s",
        type=float,
        default=DEFAULT_SAMPLE_INTERVAL_S,
        metavar="SECONDS",
        help=f"how often every process's /metrics is sampled (default: {DEFAULT_SAMPLE_INTERVAL_S:g})",
    )
    add(
        "--drain-s",
        type=non_negative_float,
        default=DEFAULT_DRAIN_S,
        metavar="SECONDS",
        help=f"once every stream started, open ones get this long before they are cut off "
        f"(default: {DEFAULT_DRAIN_S:g})",
    )
    add(
        "--source-addresses",
        type=positive_int,
        default=1,
        metavar="K",
        help="spread the load's connections over 127.0.0.1 .. 127.0.0.K (default: 1)",
    )
    add(
        "--event-loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="event loop of every process of every target, to compare like with like (default: asyncio; "
        "tokenrelay's own default is uvloop where installed)",
    )
    add(
        "--streamers",
        type=positive_int,
        default=1,
        metavar="N",
        help="tokenrelay's streamer processes, sharing one port as with 'tokenrelay up --streamers N'; their CPU is "
        "summed as the relay's (default: 1)",
    )
    add(
        "--step-ms",
        type=non_negative_float,
        default=DEFAULT_SYNTHETIC_STEP_MS,
        metavar="MS",
        help="decode step of the synthetic generators, the same for every target: tokens after the first are "
        f"released together at its boundaries, as a batching engine makes them; 0: a timer per token "
        f"(default: {DEFAULT_SYNTHETIC_STEP_MS:g})",
    )
    add(
        "--loadgen-event-loop",
        choices=EVENT_LOOPS,
        default="auto",
        help="the load generator's own event loop, the same for every target; auto: uvloop where installed "
        "(default: auto)",
    )
    for role in ("runner", "streamer", "gateway"):
        add(
            f"--{role}-args",
            default="",
            metavar="ARGS",
            help=f"extra arguments for tokenrelay's {role}, one shell-quoted string given with '=' "
            f"(--{role}-args='--log-level INFO'); they come last, so they override this bench's",
        )
    return p


def options_from_args(args: argparse.Namespace) -> CompareOptions:
    """The comparison that parsed arguments ask for."""
    loads = {
        "active": Load(
            args.streams, args.concurrency or args.streams, args.ramp_per_s, args.max_tokens, args.tokens_per_s
        ),
        "first-token": Load(
            args.first_token_streams,
            args.first_token_concurrency,
            args.first_token_ramp_per_s,
            args.first_token_max_tokens,
            args.first_token_tokens_per_s,
        ),
    }
    chosen = SCENARIOS if args.scenario == "all" else (args.scenario,)
    return CompareOptions(
        loads={name: loads[name] for name in chosen},
        targets=args.targets,
        runs=args.runs,
        sample_interval_s=args.sample_interval_s,
        drain_s=args.drain_s,
        source_addresses=args.source_addresses,
        runner_args=tuple(shlex.split(args.runner_args)),
        streamer_args=tuple(shlex.split(args.streamer_args)),
        gateway_args=tuple(shlex.split(args.gateway_args)),
        event_loop=args.event_loop,
        loadgen_event_loop=args.loadgen_event_loop,
        streamers=args.streamers,
        step_ms=args.step_ms,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Run the comparison, print the table, write the JSON."""
    options = options_from_args(parser().parse_args(argv))
    summary = compare(options)
    print()
    print(
        f"median of {options.runs} round(s); ratios: each round's target figure ÷ the forwarder's in that round, "
        "then the median"
    )
    for name, load in options.loads.items():
        print(
            f"{name}: {load.streams:,} streams, {load.concurrency:,} at once, ramp {load.ramp_per_s:g}/s, "
            f"{load.max_tokens} tokens at {load.tokens_per_s:g}/s"
        )
    print(format_table(summary))
    print(f"wrote {write_json('compare', summary)}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
