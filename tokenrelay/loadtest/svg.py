"""Small self-contained SVG charts (sans-I/O: data in, markup out): a histogram and a line chart.

No plotting library: each chart is one ``<svg>`` element with a title, axes with "nice" ticks
(1, 2 or 5 times a power of ten, or every power of ten on a logarithmic axis), light grid lines,
and a ``<title>`` tooltip on every bar.
Text is XML-escaped, so the output is well-formed XML and can be inlined into HTML as is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol
from xml.sax.saxutils import escape, quoteattr

from tokenrelay.loadtest.stats import Binned

WIDTH = 760
HEIGHT = 380
MARGIN_LEFT = 72
MARGIN_RIGHT = 28
MARGIN_TOP = 64
MARGIN_BOTTOM = 56
FONT = "-apple-system, BlinkMacSystemFont, 'Segoe UI', Helvetica, Arial, sans-serif"
INK = "#1f2328"
MUTED = "#57606a"
GRID = "#eaeef2"
AXIS = "#8c959f"
BAR = "#4e79a7"
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#59a14f", "#76b7b2", "#edc948", "#b07aa1", "#9c755f")
"""Tableau 10 colours: distinguishable, also in print and for most colour-blind readers."""
LEGEND_ROW_HEIGHT = 18
LEGEND_CHAR_WIDTH = 6.4
"""Approximate width of one 11 px character, for laying out legend entries."""
MARKER_COLOURS = {"p50": "#59a14f", "p95": "#f28e2b", "p99": "#e15759"}
REFERENCE = "#6e7781"
"""A dashed series' colour: grey, so a reference line never looks like one more measurement."""
REFERENCE_DASH = "6 4"
DOT_RADIUS = 3.5

Formatter = Callable[[float], str]


@dataclass(frozen=True, slots=True)
class Series:
    """One line of a line chart: ``(x, y)`` points in x order."""

    name: str
    points: Sequence[tuple[float, float]]
    dashed: bool = False
    """A reference (such as a multiple of a baseline) rather than a measurement: drawn dashed in grey, and it takes
    no colour from the palette, so the measured lines keep theirs."""


class Scale(Protocol):
    """Where a value lies along an axis."""

    def position(self, value: float, start: float, length: float) -> float:
        """The coordinate of ``value`` on an axis from ``start`` running ``length`` (negative: upwards)."""
        ...


@dataclass(frozen=True, slots=True)
class LinearScale:
    """0 at the start of the axis, ``upper`` at its end."""

    upper: float

    def position(self, value: float, start: float, length: float) -> float:
        """Proportional to ``value``."""
        return start + length * value / self.upper


@dataclass(frozen=True, slots=True)
class LogScale:
    """``lower`` at the start of the axis, ``upper`` at its end (both positive), powers of ten equally apart."""

    lower: float
    upper: float

    def position(self, value: float, start: float, length: float) -> float:
        """Proportional to ``log10(value)`` from ``log10(lower)``; ``value`` must be positive."""
        low = math.log10(self.lower)
        return start + length * (math.log10(value) - low) / (math.log10(self.upper) - low)


@dataclass(frozen=True, slots=True)
class CategoryScale:
    """Each of ``values`` in the middle of its own equal slot, in order (e.g. loads of 1, 50 and 200)."""

    values: tuple[float, ...]

    def position(self, value: float, start: float, length: float) -> float:
        """The middle of ``value``'s slot; ``value`` must be one of ``values``."""
        return start + length * (self.values.index(value) + 0.5) / len(self.values)


def nice_step(span: float, *, target_ticks: int = 5) -> float:
    """A tick step of 1, 2 or 5 times a power of ten that splits ``span`` into about ``target_ticks``."""
    if span <= 0 or not math.isfinite(span):
        return 1.0
    raw = span / target_ticks
    power = 10.0 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * power * (1 + 1e-9):
            return factor * power
    return 10 * power


def nice_ceil(value: float, *, target_ticks: int = 10) -> float:
    """``value`` rounded up to a multiple of ``nice_step(value, target_ticks=…)`` (an axis end)."""
    step = nice_step(value, target_ticks=target_ticks)
    return max(1, math.ceil(value / step - 1e-9)) * step


def nice_ticks(upper: float, *, target_ticks: int = 5) -> list[float]:
    """Ticks from 0 to the first tick at or above ``upper``."""
    step = nice_step(upper, target_ticks=target_ticks)
    count = max(1, math.ceil(upper / step - 1e-9))
    return [i * step for i in range(count + 1)]


def log_ticks(lower: float, upper: float) -> list[float]:
    """Every power of ten from the one at or below ``lower`` to the one at or above ``upper`` (both positive);
    at least two, so an axis always has a span."""
    if not 0 < lower <= upper or not math.isfinite(upper):
        raise ValueError(f"a logarithmic axis needs 0 < lower <= upper, not {lower!r} and {upper!r}")
    first = math.floor(math.log10(lower) + 1e-9)  # 1e-9: a power of ten is its own tick, not the one below
    last = max(first + 1, math.ceil(math.log10(upper) - 1e-9))
    return [10.0**k for k in range(first, last + 1)]


def number(value: float) -> str:
    """A short label: thousands separators, at most three significant decimals, no trailing zeros."""
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    decimals = max(0, 2 - math.floor(math.log10(abs(value))))
    return f"{value:,.{decimals}f}".rstrip("0").rstrip(".")


class _Canvas:
    """Collects SVG elements for one chart with a plot area and linear axes."""

    def __init__(self, title: str, subtitle: str) -> None:
        self.parts: list[str] = []
        self.left, self.right = MARGIN_LEFT, WIDTH - MARGIN_RIGHT
        self.top, self.bottom = MARGIN_TOP, HEIGHT - MARGIN_BOTTOM
        self.x_scale: Scale = LinearScale(1.0)
        self.y_scale: Scale = LinearScale(1.0)
        self.title = title
        self._text(20, 26, title, size=16, weight="600", colour=INK, anchor="start")
        if subtitle:
            self._text(20, 46, subtitle, size=12, colour=MUTED, anchor="start")

    def x(self, value: float) -> float:
        return self.x_scale.position(value, self.left, self.right - self.left)

    def y(self, value: float) -> float:
        return self.y_scale.position(value, self.bottom, -(self.bottom - self.top))

    def axes(
        self,
        x_ticks: list[float],
        y_ticks: list[float],
        x_label: str,
        y_label: str,
        y_fmt: Formatter,
        *,
        x_scale: Scale | None = None,
        y_scale: Scale | None = None,
    ) -> None:
        """Grid, ticks and labels; each scale not given is linear from 0 to the axis's last tick."""
        self.x_scale = x_scale or LinearScale(x_ticks[-1] or 1.0)
        self.y_scale = y_scale or LinearScale(y_ticks[-1] or 1.0)
        for tick in y_ticks:
            y = self.y(tick)
            colour = AXIS if tick == y_ticks[0] else GRID
            self.parts.append(_line(self.left, y, self.right, y, colour))
            self._text(self.left - 8, y + 4, y_fmt(tick), size=11, colour=MUTED, anchor="end")
        for tick in x_ticks:
            x = self.x(tick)
            self.parts.append(_line(x, self.bottom, x, self.bottom + 5, AXIS))
            self._text(x, self.bottom + 19, number(tick), size=11, colour=MUTED, anchor="middle")
        middle_x = (self.left + self.right) / 2
        self._text(middle_x, HEIGHT - 14, x_label, size=12, colour=MUTED, anchor="middle")
        middle_y = (self.top + self.bottom) / 2
        self.parts.append(
            f'<text x="18" y="{middle_y:.1f}" font-size="12" fill="{MUTED}" text-anchor="middle" '
            f'transform="rotate(-90 18 {middle_y:.1f})">{escape(y_label)}</text>'
        )

    def note(self, text: str) -> None:
        """A centred message in the plot area (e.g. "no data")."""
        mid_x, mid_y = (self.left + self.right) / 2, (self.top + self.bottom) / 2
        self._text(mid_x, mid_y, text, size=13, colour=MUTED, anchor="middle")

    def _text(
        self, x: float, y: float, text: str, *, size: int, colour: str, anchor: str, weight: str = "normal"
    ) -> None:
        self.parts.append(
            f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" font-weight="{weight}" fill="{colour}" '
            f'text-anchor="{anchor}">{escape(text)}</text>'
        )

    def render(self) -> str:
        head = (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family={quoteattr(FONT)} role="img">'
        )
        background = f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>'
        return "\n".join([head, f"<title>{escape(self.title)}</title>", background, *self.parts, "</svg>"]) + "\n"


def _line(x1: float, y1: float, x2: float, y2: float, colour: str, *, width: float = 1, dash: str = "") -> str:
    dashes = f' stroke-dasharray="{dash}"' if dash else ""
    return (
        f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{colour}" '
        f'stroke-width="{width}"{dashes}/>'
    )


def histogram(
    binned: Binned,
    *,
    title: str,
    subtitle: str,
    x_label: str,
    y_label: str = "count",
    markers: Sequence[tuple[str, float]] = (),
) -> str:
    """Bars of ``binned`` with a dashed vertical line per ``(label, value)`` marker (e.g. ``("p99", 12.5)``)."""
    canvas = _Canvas(title, subtitle)
    upper = binned.bins[-1].upper_ms if binned.bins else 1.0
    tallest = max((b.count for b in binned.bins), default=0)
    x_ticks = [tick for tick in nice_ticks(upper) if tick <= upper * (1 + 1e-9)]
    x_max = (upper or x_ticks[-1]) or 1.0
    canvas.axes(x_ticks, nice_ticks(max(tallest, 1)), x_label, y_label, number, x_scale=LinearScale(x_max))
    if tallest == 0:
        canvas.note("no data")
        return canvas.render()
    for b in binned.bins:
        if not b.count:
            continue
        x0, x1 = canvas.x(b.lower_ms), canvas.x(b.upper_ms)
        y = canvas.y(b.count)
        tip = f"{number(b.lower_ms)} to {number(b.upper_ms)}: {b.count:,}"
        canvas.parts.append(
            f'<rect x="{x0 + 0.5:.1f}" y="{y:.1f}" width="{max(x1 - x0 - 1, 1):.1f}" '
            f'height="{canvas.bottom - y:.1f}" fill="{BAR}" rx="1"><title>{escape(tip)}</title></rect>'
        )
    for k, (label, value) in enumerate(markers):
        if not 0 <= value <= x_max:
            continue
        x = canvas.x(value)
        colour = MARKER_COLOURS.get(label, PALETTE[k % len(PALETTE)])
        canvas.parts.append(_line(x, canvas.top, x, canvas.bottom, colour, width=1.5, dash="5 4"))
        anchor = "end" if x > canvas.right - 80 else "start"
        offset = -4 if anchor == "end" else 4
        canvas.parts.append(
            f'<text x="{x + offset:.1f}" y="{canvas.top + 12 + 14 * k:.1f}" font-size="11" fill="{colour}" '
            f'text-anchor="{anchor}" font-weight="600">{escape(f"{label} {number(value)}")}</text>'
        )
    return canvas.render()


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    subtitle: str,
    x_label: str,
    y_label: str,
    y_fmt: Formatter = number,
    y_log: bool = False,
    x_categories: bool = False,
) -> str:
    """One polyline per series, with a legend; the y axis starts at 0.

    ``y_log``: the y axis is logarithmic instead, with a tick at every power of ten spanning the data.
    ``x_categories``: the distinct x values are evenly spaced in order, each a tick labelled with its value, and
    every point gets a dot with its values as a tooltip (for a few loads such as 1, 50 and 200, not a time axis).
    A point that cannot be drawn (not finite, or not positive on a logarithmic axis) is skipped: its line breaks.
    """
    canvas = _Canvas(title, subtitle)
    colours = _colours(series)
    rows = _legend_rows([s.name for s in series], canvas.right - canvas.left)
    canvas.top += LEGEND_ROW_HEIGHT * len(rows)
    runs = [_runs(s.points, y_log=y_log) for s in series]
    drawn = [p for series_runs in runs for run in series_runs for p in run]
    x_ticks, x_scale = _x_axis([x for x, _ in drawn], categories=x_categories)
    y_ticks, y_scale = _y_axis([y for _, y in drawn], log=y_log)
    canvas.axes(x_ticks, y_ticks, x_label, y_label, y_fmt, x_scale=x_scale, y_scale=y_scale)
    if not drawn:
        canvas.note("no data")
        return canvas.render()
    for s, series_runs, colour in zip(series, runs, colours, strict=True):
        for run in series_runs or [[]]:  # a series with nothing to draw keeps an (empty) line with its name
            _polyline(canvas, s, run, colour)
        if x_categories:
            _dots(canvas, s.name, [p for run in series_runs for p in run], colour, y_fmt)
    _legend(canvas, rows, series, colours)
    return canvas.render()


def _colours(series: Sequence[Series]) -> list[str]:
    """Each series' colour: the palette in order, skipping dashed (reference) series, which are grey."""
    colours, k = [], 0
    for s in series:
        colours.append(REFERENCE if s.dashed else PALETTE[k % len(PALETTE)])
        k += not s.dashed
    return colours


def _runs(points: Sequence[tuple[float, float]], *, y_log: bool) -> list[list[tuple[float, float]]]:
    """``points`` split at those that cannot be drawn, which are left out; empty runs are dropped."""
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in points:
        if math.isfinite(x) and math.isfinite(y) and (y > 0 or not y_log):
            runs[-1].append((x, y))
        elif runs[-1]:
            runs.append([])
    return [run for run in runs if run]


def _x_axis(values: list[float], *, categories: bool) -> tuple[list[float], Scale | None]:
    """The x ticks, and the scale (``None``: linear from 0 to the last tick)."""
    if categories:
        distinct = sorted(set(values))
        return distinct or [0.0], CategoryScale(tuple(distinct) or (0.0,))
    return nice_ticks(max(values, default=0.0) or 1.0), None


def _y_axis(values: list[float], *, log: bool) -> tuple[list[float], Scale | None]:
    """The y ticks, and the scale (``None``: linear from 0 to the last tick)."""
    if log:
        ticks = log_ticks(min(values, default=1.0), max(values, default=1.0))
        return ticks, LogScale(ticks[0], ticks[-1])
    return nice_ticks(max(values, default=0.0) or nice_step(1.0)), None


def _polyline(canvas: _Canvas, s: Series, run: Sequence[tuple[float, float]], colour: str) -> None:
    """One unbroken run of ``s``'s points, named by its tooltip."""
    coordinates = " ".join(f"{canvas.x(x):.1f},{canvas.y(y):.1f}" for x, y in run)
    dash = f' stroke-dasharray="{REFERENCE_DASH}"' if s.dashed else ""
    canvas.parts.append(
        f'<polyline points="{coordinates}" fill="none" stroke="{colour}" stroke-width="2"{dash} '
        f'stroke-linejoin="round" stroke-linecap="round"><title>{escape(s.name)}</title></polyline>'
    )


def _dots(canvas: _Canvas, name: str, points: Sequence[tuple[float, float]], colour: str, y_fmt: Formatter) -> None:
    """A dot on each point, its values as its tooltip."""
    for x, y in points:
        tip = f"{name}: {number(x)}, {y_fmt(y)}"
        canvas.parts.append(
            f'<circle cx="{canvas.x(x):.1f}" cy="{canvas.y(y):.1f}" r="{DOT_RADIUS}" fill="{colour}">'
            f"<title>{escape(tip)}</title></circle>"
        )


def _legend_width(name: str) -> float:
    return 30 + LEGEND_CHAR_WIDTH * len(name)


def _legend_rows(names: list[str], width: float) -> list[list[tuple[int, str]]]:
    """Legend entries ``(series number, name)`` laid out in rows that fit ``width``."""
    rows: list[list[tuple[int, str]]] = [[]]
    used = 0.0
    for k, name in enumerate(names):
        needed = _legend_width(name)
        if rows[-1] and used + needed > width:
            rows.append([])
            used = 0.0
        rows[-1].append((k, name))
        used += needed
    return rows if rows[0] else []


def _legend(
    canvas: _Canvas, rows: list[list[tuple[int, str]]], series: Sequence[Series], colours: Sequence[str]
) -> None:
    """Between the subtitle and the plot area, so it never hides a line."""
    top = canvas.top - LEGEND_ROW_HEIGHT * len(rows) - 4
    for r, row in enumerate(rows):
        y = top + LEGEND_ROW_HEIGHT * r + LEGEND_ROW_HEIGHT / 2
        x = float(canvas.left)
        for k, name in row:
            dash = REFERENCE_DASH if series[k].dashed else ""
            canvas.parts.append(_line(x, y, x + 16, y, colours[k], width=2.5, dash=dash))
            canvas.parts.append(
                f'<text x="{x + 21:.1f}" y="{y + 4:.1f}" font-size="11" fill="{INK}">{escape(name)}</text>'
            )
            x += _legend_width(name)
