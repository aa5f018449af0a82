"""tokenrelay against what users would put in front of an inference server instead, in one run.

Every target streams the same answers from the same fake OpenAI-compatible upstream (``bench.peers_upstream``: the
first token at once, then ``--tokens`` tokens ``--interval-ms`` apart), and takes the same load: for each
``--concurrency`` C, ``tokenrelay loadtest`` (run in this process, as ``bench.compare`` does) starts C streams at the
same instant and reads them to the end. Targets:

* ``direct``            — the load straight at the fake upstream (``--api openai``): what the others add to;
* ``litellm``           — LiteLLM's proxy (``litellm[proxy]``, installed on first use into ``bench/.venvs/litellm``,
  never a dependency of tokenrelay; see ``bench.peers_litellm``) with its defaults, in front of the fake upstream;
* ``tokenrelay-openai`` — a tokenrelay system (nats-server, gateway, streamer, one runner with the ``openai`` engine
  in front of the fake upstream) read through its streamer's OpenAI-compatible API;
* ``tokenrelay-native`` — the same system with the synthetic engine paced as the fake upstream, read through
  tokenrelay's own API (a ``POST``, then the events).

Each target is started fresh for every measurement, sent one stream to warm it (connections, lazy imports), then
measured. A round measures every C and, within it, every target in turn; ``--rounds`` rounds alternate so. Per
target and C: TTFT p50 and p99 (request sent -> first token), the gap between tokens p50 and p99, streams completed
and errors; and against ``direct`` in the same round: TTFT p50 ratio, gap p99 ratio, and the TTFT added over direct
in ms. The tables show the median over rounds (errors and streams summed); each round's raw load-test JSON and the
summary go to ``bench/results/peers-<timestamp>.json``.

With ``--plot FILE`` the run also draws TTFT p50 against C, one line per target, on a log scale
(``bench.peers_plot``); ``--plot-from`` redraws that plot from an earlier run's results file and runs nothing.

    python -m bench.peers
    python -m bench.peers --rounds 1 --concurrency 1,50 --targets direct,tokenrelay-openai
    python -m bench.peers --plot-from bench/results/peers-<timestamp>.json --plot docs/peers-ttft.svg
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import orjson

from bench.peers_litellm import litellm_proxy
from bench.peers_plot import run_date, ttft_plot
from bench.peers_upstream import DEFAULT_INTERVAL_MS, DEFAULT_TOKENS, fake_upstream
from bench.stats import aligned, run_load, write_json
from tokenrelay.loadtest.apis import Api
from tokenrelay.loadtest.command import non_negative_float, positive_int
from tokenrelay.loadtest.plan import DEFAULT_DRAIN_S, LoadTestConfig, parse_int_mix
from tokenrelay.loadtest.report import to_json
from tokenrelay.runtime.service import EVENT_LOOPS
from tokenrelay.testing.procs import NatsServer, System, nats_server, system
from tokenrelay.testing.synthetic import synthetic_args

TARGETS = ("direct", "litellm", "tokenrelay-openai", "tokenrelay-native")
BASELINE = "direct"
"""The target every ratio divides by."""
MODEL = "fake-model"
"""The model every OpenAI request names, and the one tokenrelay's runner serves from the fake upstream."""
DEFAULT_CONCURRENCY = (1, 50, 200)
DEFAULT_ROUNDS = 3
MIN_RUNNER_CONCURRENCY = 256
"""tokenrelay's runner takes at least this many streams at once, so admission never queues the load."""
WARMUP_STREAMS = 1
"""Streams sent to a freshly started target before it is measured (not counted)."""


@dataclass(frozen=True)
class PeersOptions:
    """What :func:`peers` runs."""

    targets: tuple[str, ...] = TARGETS
    concurrency: tuple[int, ...] = DEFAULT_CONCURRENCY
    """Each load: this many streams started at once."""
    rounds: int = DEFAULT_ROUNDS
    tokens: int = DEFAULT_TOKENS
    """Tokens of every answer."""
    interval_ms: float = DEFAULT_INTERVAL_MS
    """Between an answer's tokens, after the first (which comes at once)."""
    drain_s: float = DEFAULT_DRAIN_S
    """Streams still open this long after the last one started are cut off (counted as errors)."""
    loadgen_event_loop: str = "auto"
    """The load generator's own loop, the same for every target."""

    def to_json(self) -> dict[str, Any]:
        """The options as JSON-ready data."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Deployment:
    """A started target: where the load goes and over which API."""

    base_url: str
    api: Api
    model: str = MODEL
    api_key: str | None = None


# --- running -------------------------------------------------------------------------------------


@contextlib.contextmanager
def deploy(target: str, concurrency: int, broker: NatsServer, options: PeersOptions) -> Iterator[Deployment]:
    """Start ``target`` (and the fake upstream it reads, if any); stop both afterwards."""
    if target == "tokenrelay-native":
        with tokenrelay_system(broker, paced_runner_args(options), concurrency) as sut:
            yield Deployment(sut.gateway_url, Api.NATIVE)
        return
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r} (not one of {', '.join(TARGETS)})")
    with fake_upstream(tokens=options.tokens, interval_ms=options.interval_ms) as upstream:
        if target == "direct":
            yield Deployment(upstream.removesuffix("/v1"), Api.OPENAI)
        elif target == "litellm":
            with litellm_proxy(upstream, MODEL) as (url, key):
                yield Deployment(url, Api.OPENAI, api_key=key)
        else:
            with tokenrelay_system(broker, openai_engine_args(upstream), concurrency) as sut:
                yield Deployment(sut.streamer_url, Api.OPENAI)


def paced_runner_args(options: PeersOptions) -> list[str]:
    """A runner whose synthetic engine is paced as the fake upstream: first token at once, then ``tokens`` in all
    ``interval_ms`` apart."""
    tokens_per_s = 1000 / options.interval_ms if options.interval_ms else 0.0  # 0: as fast as it goes
    return synthetic_args(tokens_per_s=tokens_per_s, length_tokens=options.tokens)


def openai_engine_args(upstream_url: str) -> list[str]:
    """A runner that streams ``MODEL`` from the fake upstream."""
    return ["--engine", "openai", "--upstream-url", upstream_url, "--upstream-model", MODEL, "--model", MODEL]


@contextlib.contextmanager
def tokenrelay_system(broker: NatsServer, runner_args: Sequence[str], concurrency: int) -> Iterator[System]:
    """Gateway, streamer and one runner on ``broker``, sized so ``concurrency`` streams are admitted at once."""
    capacity = str(max(MIN_RUNNER_CONCURRENCY, concurrency))
    gateway_args = ["--max-queued-streams", capacity]
    with system(broker.url, runner_args=[*runner_args, "--max-concurrency", capacity], gateway_args=gateway_args) as s:
        yield s


def load_config(deployment: Deployment, streams: int, options: PeersOptions) -> LoadTestConfig:
    """``streams`` streams started at once against ``deployment``, each asking for ``options.tokens`` tokens."""
    return LoadTestConfig(
        gateway_url=deployment.base_url,
        api=deployment.api,
        model=deployment.model,
        api_key=deployment.api_key,
        streams=streams,
        concurrency=streams,
        ramp_per_s=0.0,
        drain_s=options.drain_s,
        max_tokens=parse_int_mix(str(options.tokens)),
        quiet=True,
        event_loop=options.loadgen_event_loop,
    )


def run_load_json(config: LoadTestConfig) -> dict[str, Any]:
    """Run one load test in this process; its JSON report."""
    return to_json(run_load(config))


def measure(target: str, concurrency: int, broker: NatsServer, options: PeersOptions) -> dict[str, Any]:
    """Start ``target``, warm it, run ``concurrency`` streams at once against it, stop it; the load test's JSON."""
    with deploy(target, concurrency, broker, options) as deployment:
        run_load(load_config(deployment, WARMUP_STREAMS, options))
        return run_load_json(load_config(deployment, concurrency, options))


def peers(
    options: PeersOptions, *, broker: NatsServer | None = None, progress: TextIO | None = sys.stdout
) -> dict[str, Any]:
    """Run every round, load and target; the summary (every measurement's raw report, figures and tables).

    ``broker``: an already running nats-server for tokenrelay's targets (default: start one for the whole run).
    """
    if broker is None:
        with nats_server() as started:
            return peers(options, broker=started, progress=progress)
    measurements: list[dict[str, Any]] = []
    for number in range(1, options.rounds + 1):
        for concurrency in options.concurrency:
            for target in options.targets:
                report = measure(target, concurrency, broker, options)
                measurements.append({"round": number, "concurrency": concurrency, "target": target, "loadtest": report})
                if progress is not None:
                    line = progress_line(figures(report))
                    print(f"round {number} C={concurrency:<4} {target:>17}: {line}", file=progress, flush=True)
    return summarize(options, measurements)


# --- figures, ratios and tables (no I/O) ---------------------------------------------------------


FIGURES = ("ttft_p50", "ttft_p99", "gap_p50", "gap_p99")
"""The latencies of a measurement, in ms: the tables show each one's median over rounds."""
COUNTS = ("streams", "completed", "errors")
"""The counts of a measurement: the tables show each one's total over rounds."""


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def figures(report: dict[str, Any]) -> dict[str, float]:
    """The flat figures of one load test's report (NaN where unknown): latencies in ms, then counts."""
    out = {
        f"{name}_{p}": _number(report[key][p])
        for name, key in (("ttft", "ttft_ms"), ("gap", "inter_token_ms"))
        for p in ("p50", "p99")
    }
    return out | {
        "streams": float(report["streams"]["started"]),
        "completed": float(report["streams"]["completed"]),
        "errors": float(sum(report["errors"].values())),
    }


def ratio(value: float, base: float) -> float:
    """``value / base``; NaN when either is unknown or ``base`` is not positive."""
    return value / base if math.isfinite(value) and math.isfinite(base) and base > 0 else math.nan


def median(values: Sequence[float]) -> float:
    """The median of the known values; NaN when none is known."""
    known = [v for v in values if math.isfinite(v)]
    return statistics.median(known) if known else math.nan


def summarize_target(
    target: str, own: Sequence[dict[str, float]], base: Sequence[dict[str, float]] | None
) -> dict[str, Any]:
    """One table row: ``target``'s medians and totals over rounds, and its median ratios against ``base`` (the
    baseline's figures of the same rounds, in the same order; ``None`` without a baseline, or for the baseline)."""
    row: dict[str, Any] = {"target": target}
    row |= {key: median([f[key] for f in own]) for key in FIGURES}
    row |= {key: math.fsum(f[key] for f in own) for key in COUNTS}
    pairs = list(zip(own, base, strict=True)) if base is not None else []
    row["ttft_p50_ratio"] = median([ratio(f["ttft_p50"], b["ttft_p50"]) for f, b in pairs])
    row["gap_p99_ratio"] = median([ratio(f["gap_p99"], b["gap_p99"]) for f, b in pairs])
    row["ttft_added_ms"] = median([f["ttft_p50"] - b["ttft_p50"] for f, b in pairs])
    return row


def summarize(options: PeersOptions, measurements: list[dict[str, Any]]) -> dict[str, Any]:
    """Each measurement's figures, then one table per concurrency: a row per target, in the options' order."""
    for m in measurements:
        m["figures"] = figures(m["loadtest"])
    tables = []
    for concurrency in options.concurrency:
        by_target = {
            target: [m["figures"] for m in measurements if (m["concurrency"], m["target"]) == (concurrency, target)]
            for target in options.targets
        }
        base = by_target.get(BASELINE)
        rows = [
            summarize_target(target, own, base if target != BASELINE else None) for target, own in by_target.items()
        ]
        tables.append({"concurrency": concurrency, "rows": rows})
    return {"options": options.to_json(), "measurements": measurements, "tables": tables}


Column = tuple[str, str, Callable[[dict[str, Any]], str]]

COLUMNS: tuple[Column, ...] = (
    ("TTFT p50", "ms", lambda r: _ms(r["ttft_p50"])),
    ("TTFT p99", "ms", lambda r: _ms(r["ttft_p99"])),
    ("gap p50", "ms", lambda r: _ms(r["gap_p50"])),
    ("gap p99", "ms", lambda r: _ms(r["gap_p99"])),
    ("completed", "", lambda r: f"{r['completed']:,.0f}/{r['streams']:,.0f}"),
    ("errors", "", lambda r: f"{r['errors']:,.0f}"),
    ("TTFT p50 ÷ direct", "", lambda r: _times(r["ttft_p50_ratio"])),
    ("gap p99 ÷ direct", "", lambda r: _times(r["gap_p99_ratio"])),
    ("TTFT added", "ms", lambda r: _ms(r["ttft_added_ms"], signed=True)),
)
"""Each table's columns after the target: heading, unit, and the cell of a row."""


def _ms(value: float, *, signed: bool = False) -> str:
    if not math.isfinite(value):
        return "-"
    return f"{value:+,.2f}" if signed else f"{value:,.2f}"


def _times(value: float) -> str:
    return f"{value:.2f}x" if math.isfinite(value) else "-"


def format_table(table: dict[str, Any]) -> str:
    """One concurrency's table: a heading line, then one line per target."""
    header = ["target", *(f"{name} ({unit})" if unit else name for name, unit, _ in COLUMNS)]
    lines = [[row["target"], *(cell(row) for _, _, cell in COLUMNS)] for row in table["rows"]]
    return aligned([header, *lines])


def format_tables(summary: dict[str, Any]) -> str:
    """Every concurrency's table, each under a line that says its load."""
    options = summary["options"]
    blocks = []
    for table in summary["tables"]:
        c = table["concurrency"]
        title = (
            f"C={c}: {c} stream(s) started at once, {options['tokens']} tokens {options['interval_ms']:g} ms apart; "
            f"median of {options['rounds']} round(s), streams and errors summed"
        )
        blocks.append(f"{title}\n{format_table(table)}")
    return "\n\n".join(blocks)


def progress_line(f: dict[str, float]) -> str:
    """One measurement in a line."""
    return (
        f"{f['completed']:.0f}/{f['streams']:.0f} completed, errors {f['errors']:.0f}; "
        f"TTFT p50 {f['ttft_p50']:.2f} p99 {f['ttft_p99']:.2f} ms; gap p50 {f['gap_p50']:.2f} p99 {f['gap_p99']:.2f} ms"
    )


# --- command line --------------------------------------------------------------------------------


def _csv(parse: Callable[[str], Any], what: str) -> Callable[[str], tuple[Any, ...]]:
    def parse_list(text: str) -> tuple[Any, ...]:
        try:
            items = tuple(parse(item.strip()) for item in text.split(",") if item.strip())
        except (ValueError, argparse.ArgumentTypeError):
            items = ()
        if not items or len(set(items)) != len(items):
            raise argparse.ArgumentTypeError(f"{text!r}: a comma-separated list of {what}, each once")
        return items

    return parse_list


def _target(name: str) -> str:
    if name not in TARGETS:
        raise ValueError(name)
    return name


def parser() -> argparse.ArgumentParser:
    """Every option, with its default."""
    p = argparse.ArgumentParser(
        prog="python -m bench.peers", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = p.add_argument
    add(
        "--targets",
        type=_csv(_target, f"targets of {','.join(TARGETS)}"),
        default=TARGETS,
        metavar="LIST",
        help=f"run in this order each round; the ratios need {BASELINE} (default: {','.join(TARGETS)})",
    )
    add(
        "--concurrency",
        type=_csv(positive_int, "positive integers"),
        default=DEFAULT_CONCURRENCY,
        metavar="LIST",
        help="the loads: for each C, C streams started at once (default: 1,50,200)",
    )
    add("--rounds", type=positive_int, default=DEFAULT_ROUNDS, help="the tables show medians (default: 3)")
    add("--tokens", type=positive_int, default=DEFAULT_TOKENS, help="tokens of every answer (default: 40)")
    add(
        "--interval-ms",
        type=non_negative_float,
        default=DEFAULT_INTERVAL_MS,
        metavar="MS",
        help="between an answer's tokens; the first comes at once (default: 20)",
    )
    add(
        "--drain-s",
        type=non_negative_float,
        default=DEFAULT_DRAIN_S,
        metavar="SECONDS",
        help=f"streams still open this long after the last one started are cut off (default: {DEFAULT_DRAIN_S:g})",
    )
    add(
        "--loadgen-event-loop",
        choices=EVENT_LOOPS,
        default="auto",
        help="the load generator's own event loop; auto: uvloop where installed (default: auto)",
    )
    add("--plot", type=Path, metavar="FILE", help="also draw TTFT p50 against C, per target, into this SVG")
    add(
        "--plot-from",
        type=Path,
        metavar="RESULTS",
        help="run nothing: redraw the plot from this results file (into --plot, default: beside it, as .svg)",
    )
    return p


def options_from_args(args: argparse.Namespace) -> PeersOptions:
    """The run that parsed arguments ask for."""
    return PeersOptions(
        targets=args.targets,
        concurrency=args.concurrency,
        rounds=args.rounds,
        tokens=args.tokens,
        interval_ms=args.interval_ms,
        drain_s=args.drain_s,
        loadgen_event_loop=args.loadgen_event_loop,
    )


def write_plot(summary: dict[str, Any], path: Path, *, date: str | None) -> Path:
    """Draw ``summary``'s TTFT plot into ``path``, and return ``path``."""
    path.write_text(ttft_plot(summary, baseline=BASELINE, date=date), encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> None:
    """Run every target, print one table per concurrency, write the JSON (and the plot with ``--plot``); with
    ``--plot-from``, only redraw the plot of an earlier run."""
    args = parser().parse_args(argv)
    if args.plot_from is not None:
        summary = orjson.loads(args.plot_from.read_bytes())
        plot = args.plot or args.plot_from.with_suffix(".svg")
        print(f"wrote {write_plot(summary, plot, date=run_date(args.plot_from))}")
        return
    summary = peers(options_from_args(args))
    print()
    print(format_tables(summary))
    results = write_json("peers", summary)
    print(f"wrote {results}")
    if args.plot is not None:
        print(f"wrote {write_plot(summary, args.plot, date=run_date(results))}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
