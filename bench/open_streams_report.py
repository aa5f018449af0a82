"""``bench.open_streams``'s summaries: what it reads besides the readers (logs, heartbeats, limits), medians, table."""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
from nats.aio.msg import Msg

from bench.open_streams_loadgen import FD_RESERVE, IN_FLIGHT_GETS
from tokenrelay.wire.codec import decode_as
from tokenrelay.wire.messages import RunnerHeartbeat
from tokenrelay.wire.subjects import RUNNER_HEARTBEAT

PHASES = ("forwarder", "tokenrelay")
SERVER_FD_MARGIN = 64
"""Descriptors a server needs besides its readers' sockets (NATS, listening sockets, files, the event loop)."""
LOG_LINES_KEPT = 20
ACCEPT_PAUSE = "accept failed"
"""What a streamer logs each time it pauses accepting (out of descriptors or memory)."""
NATS_MAX_PAYLOAD_BYTES = 2**20
"""nats-server's default ``max_payload``: a larger heartbeat could not be published."""


def streamer_summary(
    role: str, before: dict[str, dict[str, float | None]], samples: list[dict[str, Any]]
) -> dict[str, Any]:
    """One streamer's RSS before and at its highest while holding, the readers it counted then, its CPU."""
    held = [s["streamers"][role] for s in samples]
    peak = max((v for v in held if v["rss_bytes"] is not None), key=lambda v: v["rss_bytes"], default=None)
    rss_before = before[role]["rss_bytes"]
    rss_peak = None if peak is None else peak["rss_bytes"]
    opened = [v["readers_open"] for v in held if v["readers_open"] is not None]
    first_cpu, last_cpu = (held[0]["cpu_s"], held[-1]["cpu_s"]) if held else (None, None)
    return {
        "rss_before_bytes": rss_before,
        "rss_peak_bytes": rss_peak,
        "rss_growth_bytes": None if rss_before is None or rss_peak is None else rss_peak - rss_before,
        "readers_at_rss_peak": None if peak is None else peak["readers_open"],
        "readers_open_min": min(opened) if opened else None,
        "cpu_s_held": None if first_cpu is None or last_cpu is None else last_cpu - first_cpu,
    }


@contextlib.asynccontextmanager
async def heartbeat_watch(nats_url: str | None) -> AsyncIterator[dict[str, Any]]:
    """The runners' heartbeats on ``nats_url`` while inside: how many, and the largest's size in bytes, its
    page count and the streams it listed (nothing read when ``nats_url`` is ``None``)."""
    seen: dict[str, Any] = {"count": 0, "max_bytes": None, "max_pages": None, "listed_streams": None, "active": None}
    if nats_url is None:
        yield seen
        return

    async def heard(msg: Msg) -> None:
        seen["count"] += 1
        size = len(msg.data)
        if seen["max_bytes"] is None or size > seen["max_bytes"]:
            beat = decode_as(msg.data, RunnerHeartbeat)
            seen.update(max_bytes=size, max_pages=beat.pages, listed_streams=len(beat.streams))
            seen["active"] = beat.active

    client = await nats.connect(nats_url)
    try:
        await client.subscribe(RUNNER_HEARTBEAT, cb=heard)
        yield seen
    finally:
        await client.close()


def log_problems(log_dir: str | None) -> dict[str, dict[str, Any]]:
    """Per server log: how many lines hold ``WARNING``, ``ERROR`` or ``Traceback``, how many are accept pauses,
    and the first few of them."""
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
            out[path.stem] = {
                "count": len(lines),
                "accept_pauses": sum(1 for line in lines if ACCEPT_PAUSE in line),
                "first": [line[:300] for line in lines[:LOG_LINES_KEPT]],
            }
    return out


def fd_check(args: argparse.Namespace, limit: int) -> dict[str, Any]:
    """Whether the open-files limit (every process's: the servers and load generators inherit it) fits the run."""
    per_loadgen = math.ceil(args.readers / args.loadgen_processes) + FD_RESERVE + IN_FLIGHT_GETS
    per_streamer = math.ceil(args.readers / args.streamers) + SERVER_FD_MARGIN
    ports = _ephemeral_ports()
    per_address = math.ceil(args.readers / args.source_addresses)
    check: dict[str, Any] = {
        "open_files_limit": limit,
        "needed_per_loadgen": per_loadgen,
        "needed_per_streamer": per_streamer,
        "fits": max(per_loadgen, per_streamer) <= limit,
        "ephemeral_ports": ports,
        "ports_fit": ports is None or per_address <= ports,
    }
    if per_loadgen > limit:
        _warn(
            f"{args.readers} readers over {args.loadgen_processes} load generator(s) need ~{per_loadgen} open files "
            f"each, over the open-files limit {limit}: pass --loadgen-processes "
            f"{math.ceil(args.readers / (limit - FD_RESERVE - IN_FLIGHT_GETS))} or more; the readers past a "
            "process's limit count as 'loadgen_fd_limit'."
        )
    if per_streamer > limit:
        _warn(
            f"{args.readers} readers over {args.streamers} streamer(s) need ~{per_streamer} open files each, over "
            f"the open-files limit {limit}: the readers a streamer cannot accept are refused (see the errors "
            "counted for the streamers and their accept pauses)."
        )
    if not check["ports_fit"]:
        _warn(
            f"{per_address} connections from one address exceed the {ports} ephemeral ports; "
            f"pass --source-addresses {math.ceil(args.readers / ports)} or more."
        )
    return check


def _warn(text: str) -> None:
    print(f"WARNING: {text}", file=sys.stderr, flush=True)


def _ephemeral_ports() -> int | None:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    except (OSError, ValueError):
        return None
    return int(high) - int(low) + 1


def _median(values: list[Any]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


SCALARS = (
    "readers_requested", "readers_opened", "readers_open_at_end", "readers_open_gauge_min", "readers_with_token_held",
    "token_pct", "readers_at_rss_max", "closed_early", "ramp_s", "hold_s", "rss_before_bytes", "rss_full_bytes",
    "rss_growth_bytes", "rss_per_reader_bytes", "tokens_per_s_held", "server_cpu_cores_held", "loadgen_cpu_s_held",
)  # fmt: skip


def medians(runs: list[dict[str, Any]], phases: list[str]) -> dict[str, Any]:
    """Per phase, the median over runs of each scalar and lag percentile; errors and log lines summed."""
    out: dict[str, Any] = {}
    for phase in phases:
        results = [run[phase] for run in runs]
        med: dict[str, Any] = {key: _median([r[key] for r in results]) for key in SCALARS}
        med["lag_ms"] = {key: _median([r["lag_ms"][key] for r in results]) for key in ("p50", "p95", "p99", "max", "n")}
        for key in ("errors", "errors_by_source", "terminal_events"):
            med[key] = dict(sum((Counter(r[key]) for r in results), Counter()))
        med["error_examples"] = {k: v for r in results for k, v in r["error_examples"].items()}
        med["log_problems"] = dict(
            sum((Counter({role: p["count"] for role, p in r["log_problems"].items()}) for r in results), Counter())
        )
        med["accept_pauses"] = dict(
            sum(
                (Counter({role: p["accept_pauses"] for role, p in r["log_problems"].items()}) for r in results),
                Counter(),
            )
        )
        med["streamers"] = {
            role: {key: _median([r["streamers"][role][key] for r in results]) for key in results[0]["streamers"][role]}
            for role in results[0]["streamers"]
        }
        med["heartbeat_max_bytes"] = max((r["heartbeat"]["max_bytes"] or 0 for r in results), default=0) or None
        med["heartbeat"] = [r["heartbeat"] for r in results]
        med["server_counters"] = [r["server_counters"] for r in results]
        med["readers_at_rss_max_counted_by"] = sorted({r["readers_at_rss_max_counted_by"] for r in results})
        med["loadgen_cpu_cores_held"] = _median(
            [r["loadgen_cpu_s_held"] / r["hold_s"] if r["hold_s"] else None for r in results]
        )
        med["process_cpu_cores_held"] = {
            role: _median([_per_s(r["process_cpu_s_held"].get(role), r["hold_s"]) for r in results])
            for role in results[0]["process_cpu_s_held"]
        }
        out[phase] = med
    if all("rss_per_reader_ratio" in run for run in runs):
        out["rss_per_reader_ratio"] = _median([run["rss_per_reader_ratio"] for run in runs])
    return out


def _per_s(value: float | None, seconds: float) -> float | None:
    return None if value is None or not seconds else value / seconds


def _kib(value: float | None) -> str:
    return "-" if value is None else f"{value / 1024:,.1f} KiB"


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.1f} MiB"


def _num(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def format_table(med: dict[str, Any], args: argparse.Namespace) -> str:
    """The medians as a fixed-width table, with the targets."""
    phases = [p for p in PHASES if p in med]
    width = 46
    lines = [
        f"open streams: {args.readers:,} tokenrelay readers ({args.readers_per_stream} per stream) on "
        f"{args.streamers} streamer(s), {args.runners} runner(s), opened at {args.ramp_per_s:g}/s by "
        f"{args.loadgen_processes} load generator(s) from {args.source_addresses} address(es), held "
        f"{args.hold_s:g} s, streams at {args.tokens_per_s:g} tokens/s; median of {args.runs} run(s)",
        f"{'':<{width}}" + "".join(f"{p:>18}" for p in phases),
    ]

    def row(label: str, render: Any) -> None:
        lines.append(f"{label:<{width}}" + "".join(f"{render(med[p]):>18}" for p in phases))

    row("readers asked", lambda m: _num(m["readers_requested"]))
    row("readers open (ours, after the hold)", lambda m: _num(m["readers_open_at_end"]))
    row("readers open (servers' gauges, min held)", lambda m: _num(m["readers_open_gauge_min"]))
    row("readers that got a token while held", lambda m: _num(m["readers_with_token_held"]))
    row("  of those asked (%)", lambda m: _num(m["token_pct"], ".1f"))
    row("reader errors (all runs)", lambda m: _num(sum(m["errors"].values())))
    row("ramp (s)", lambda m: _num(m["ramp_s"], ".1f"))
    row("server RSS before any reader (sum)", lambda m: _mib(m["rss_before_bytes"]))
    row("server RSS growth (sum of peaks - before)", lambda m: _mib(m["rss_growth_bytes"]))
    row("RSS growth per reader", lambda m: _kib(m["rss_per_reader_bytes"]))
    row("  over readers (at the RSS peaks)", lambda m: _num(m["readers_at_rss_max"]))
    row("token lag p50 while held (ms)", lambda m: _num(m["lag_ms"]["p50"], ",.1f"))
    row("token lag p99 while held (ms)", lambda m: _num(m["lag_ms"]["p99"], ",.1f"))
    row("tokens/s delivered while held", lambda m: _num(m["tokens_per_s_held"]))
    row("server CPU while held (cores, sum)", lambda m: _num(m["server_cpu_cores_held"], ".2f"))
    row("load generators' CPU while held (cores)", lambda m: _num(m["loadgen_cpu_cores_held"], ".2f"))
    if "tokenrelay" in med:
        lines += _tokenrelay_lines(med["tokenrelay"])
    ratio = med.get("rss_per_reader_ratio")
    if ratio is not None:
        ours = med["tokenrelay"]["rss_per_reader_bytes"]
        lines.append(
            f"RSS per reader: tokenrelay {_kib(ours)} = {ratio:.2f}x the bare forwarder's idle SSE connection "
            f"(target <= 16 KiB per reader: {'met' if ours <= 16 * 1024 else 'NOT met'})"
        )
    for phase in phases:
        lines += _problem_lines(phase, med[phase])
    return "\n".join(lines)


def _tokenrelay_lines(m: dict[str, Any]) -> list[str]:
    lines = [f"readers at the RSS peaks counted by: {', '.join(m['readers_at_rss_max_counted_by'])}"]
    for role, s in m["streamers"].items():
        lines.append(
            f"{role}: readers open (min held) {_num(s['readers_open_min'])}, RSS {_mib(s['rss_before_bytes'])} -> "
            f"{_mib(s['rss_peak_bytes'])} (+{_mib(s['rss_growth_bytes'])}, {_num(s['readers_at_rss_peak'])} readers "
            f"then), CPU held {_num(s['cpu_s_held'], '.1f')} s"
        )
    for counters in m["server_counters"]:
        lines.append("server counters at the end: " + ", ".join(f"{k} {_num(v)}" for k, v in counters.items()))
    cores = ", ".join(f"{role} {_num(value, '.2f')}" for role, value in m["process_cpu_cores_held"].items())
    lines.append(f"tokenrelay CPU while held, cores: {cores}")
    size = m["heartbeat_max_bytes"]
    if size is not None:
        beat = max(m["heartbeat"], key=lambda h: h["max_bytes"] or 0)
        lines.append(
            f"largest runner heartbeat: {size:,} bytes ({beat['listed_streams']} streams listed, {beat['max_pages']} "
            f"page(s), {beat['active']} active; NATS max_payload {NATS_MAX_PAYLOAD_BYTES:,})"
        )
    return lines


def _cancels(counters: dict[str, float | None]) -> dict[str, float | None]:
    return {name: value for name, value in counters.items() if "cancels" in name}


def _problem_lines(phase: str, m: dict[str, Any]) -> list[str]:
    lines = []
    if m["errors"]:
        lines.append(f"{phase} reader errors by who refused: {m['errors_by_source']}; by code: {m['errors']}")
        lines += [f"  {code}: {example}" for code, example in m["error_examples"].items()]
    if any(m["accept_pauses"].values()):
        lines.append(f"{phase} accept pauses (out of descriptors) logged: {m['accept_pauses']}")
    if m["terminal_events"]:
        lines.append(f"{phase} readers whose stream ended while it should have stayed open: {m['terminal_events']}")
        lines.append(f"  cancel counters, per run: {[_cancels(c) for c in m['server_counters']]}")
    if m["log_problems"]:
        lines.append(f"{phase} server log lines with WARNING/ERROR/Traceback: {m['log_problems']}")
    return lines
