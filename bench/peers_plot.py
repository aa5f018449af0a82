"""The peers benchmark's plot: TTFT p50 against the load C, one line per target, on a logarithmic scale.

The summary in (as ``bench.peers`` returns it, or as its results file holds it), SVG out; a target's figure that is
unknown (NaN, or ``null`` in a results file) leaves a break in its line.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from tokenrelay.loadtest import svg

TITLE = "Time to first token, C simultaneous streams"
X_LABEL = "C: streams started at once"
Y_LABEL = "TTFT p50 (ms, log scale)"
REFERENCE_MULTIPLE = 3
"""A dashed line at this multiple of the baseline's TTFT: how far each target is from it, at a glance."""
RUN_STAMP = re.compile(r"(\d{4})(\d{2})(\d{2})T\d{6}")
"""The timestamp in a results file's name (``peers-20261205T215220.json``)."""


def run_date(path: Path) -> str | None:
    """The date (``2026-12-05``) in a results file's name; ``None`` when the name has none."""
    match = RUN_STAMP.search(path.name)
    return "-".join(match.groups()) if match else None


def ttft_ms(row: dict[str, Any]) -> float:
    """A table row's TTFT p50; NaN when unknown."""
    value = row["ttft_p50"]
    return math.nan if value is None else float(value)


def ttft_series(tables: list[dict[str, Any]], *, baseline: str) -> list[svg.Series]:
    """One series per target, in the tables' row order, then a dashed one at ``REFERENCE_MULTIPLE`` times the
    ``baseline`` target's (if it ran)."""
    points: dict[str, list[tuple[float, float]]] = {}
    for table in tables:
        for row in table["rows"]:
            points.setdefault(row["target"], []).append((float(table["concurrency"]), ttft_ms(row)))
    series = [svg.Series(target, own) for target, own in points.items()]
    if baseline in points:
        reference = [(c, REFERENCE_MULTIPLE * ms) for c, ms in points[baseline]]
        series.append(svg.Series(f"{REFERENCE_MULTIPLE}x {baseline}", reference, dashed=True))
    return series


def subtitle(summary: dict[str, Any], date: str | None) -> str:
    """The run's date (when known) and what each point is."""
    options = summary["options"]
    what = (
        f"medians of {options['rounds']} rounds; each stream {options['tokens']} tokens "
        f"{options['interval_ms']:g} ms apart from the same fake upstream"
    )
    return f"Run of {date}, {what}" if date else what[0].upper() + what[1:]


def ttft_plot(summary: dict[str, Any], *, baseline: str, date: str | None) -> str:
    """The SVG: TTFT p50 against C for every target of ``summary``."""
    return svg.line_chart(
        ttft_series(summary["tables"], baseline=baseline),
        title=TITLE,
        subtitle=subtitle(summary, date),
        x_label=X_LABEL,
        y_label=Y_LABEL,
        y_log=True,
        x_categories=True,
    )
