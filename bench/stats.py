"""Percentiles, tables and JSON output shared by the benchmarks."""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from tokenrelay.loadtest.driver import run_loadtest
from tokenrelay.loadtest.plan import LoadTestConfig
from tokenrelay.loadtest.result import RunResult
from tokenrelay.runtime.service import run_on_loop

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
PERCENTILES = (50, 95, 99)
RESULTS_DIR = Path(__file__).parent / "results"


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (no interpolation); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max and the count."""
    out = {f"p{p}": percentile(values, p) for p in PERCENTILES}
    out["max"] = max(values) if values else math.nan
    out["n"] = len(values)
    return out


def median_of_runs(runs: Sequence[dict[str, float]]) -> dict[str, float]:
    """For each statistic, the median over runs."""
    keys = runs[0].keys()
    return {k: statistics.median(r[k] for r in runs) for k in keys}


def table(title: str, rows: Sequence[tuple[str, dict[str, float]]], *, unit: str = "ms") -> str:
    """A fixed-width table of summaries."""
    header = f"{'':<44} {'p50':>9} {'p95':>9} {'p99':>9} {'max':>9} {'n':>7}"
    lines = [title, header]
    for name, s in rows:
        lines.append(f"{name:<44} {s['p50']:>9.3f} {s['p95']:>9.3f} {s['p99']:>9.3f} {s['max']:>9.3f} {int(s['n']):>7}")
    lines.append(f"(values in {unit})")
    return "\n".join(lines)


def write_json(name: str, data: dict[str, Any]) -> Path:
    """Write results to ``bench/results/<name>-<timestamp>.json`` and return the path."""
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    return path


def proc_rss_bytes(pid: int) -> int | None:
    """``VmRSS`` of a process in bytes (``None`` if it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds a process has used (``None`` if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def aligned(rows: Sequence[Sequence[str]]) -> str:
    """Rows of cells as text lines: the first column left-aligned, the others right-aligned, each column as wide as
    its widest cell, two spaces apart."""
    widths = [max(len(cells[k]) for cells in rows) for k in range(len(rows[0]))]
    out = []
    for cells in rows:
        rest = "  ".join(f"{cell:>{width}}" for cell, width in zip(cells[1:], widths[1:], strict=True))
        out.append(f"{cells[0]:<{widths[0]}}  {rest}")
    return "\n".join(out)


def run_load(config: LoadTestConfig) -> RunResult:
    """One load test in this process, on the event loop ``config`` names, printing no progress."""
    return run_on_loop(run_loadtest(config, progress=None), event_loop=config.event_loop)
