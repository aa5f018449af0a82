"""A load test's results as a text table, as JSON, and as SVG plots with one HTML page embedding them.

The JSON's top level is fixed (other tools read it)::

    {"config", "duration_s", "streams", "errors", "tokens", "ttft_ms", "token_lag_ms", "history_lag_ms",
     "token_lag_after_ramp_ms", "inter_token_ms", "start_ms", "rejected_ms", "instances", "samples"}

Latencies are ``{"p50", "p95", "p99", "max", "n"}`` in milliseconds (``null`` values when
``n`` is 0). ``streams`` partitions the streams started: ``started = completed + stopped +
rejected + failed + never_read``.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import orjson

from tokenrelay.loadtest import svg
from tokenrelay.loadtest.apis import Api
from tokenrelay.loadtest.metrics import InstanceStats
from tokenrelay.loadtest.result import RunResult
from tokenrelay.loadtest.stats import Binned, LatencyHistogram, Outcome

HISTOGRAM_BINS = 50
DISPLAY_PERCENTILE = 99.5
"""Histograms show values up to (a little above) this percentile; the rest is counted as 'not shown'."""
PLOT_FILES = ("ttft.svg", "lag.svg", "open_streams.svg", "rss.svg")
MIB = 2**20


def latency_rows(result: RunResult) -> list[tuple[str, str, LatencyHistogram]]:
    """``(JSON key, label, histogram)`` of every latency the report shows (the stop row is not in the JSON)."""
    t = result.totals
    return [
        ("ttft_ms", "TTFT (POST sent -> first delta)", t.ttft),
        ("token_lag_ms", "token lag (runner ts -> delta arrived; published after the GET)", t.token_lag),
        ("history_lag_ms", "history lag (the same, for deltas published before the GET)", t.history_lag),
        (
            "token_lag_after_ramp_ms",
            "token lag after the ramp (published once the last stream started)",
            t.after_ramp_lag,
        ),
        ("inter_token_ms", "inter-token gap (delta -> next delta)", t.inter_token),
        ("start_ms", "start (POST -> 201)" if result.config.api is Api.NATIVE else "start (POST -> 200)", t.start),
        ("rejected_ms", "rejected start (POST -> error)", t.rejected),
        ("", "stop (WS stop -> stopped)", t.stop),
    ]


def to_json(result: RunResult) -> dict[str, Any]:
    """The report as JSON-ready data (see the module docstring for its shape)."""
    t = result.totals
    per_s = t.delivered / result.duration_s if result.duration_s > 0 else 0.0
    out: dict[str, Any] = {
        "config": result.config.to_json(),
        "duration_s": result.duration_s,
        "streams": t.streams(),
        "errors": dict(sorted(t.errors.items())),
        "tokens": {"delivered": t.delivered, "lost": t.lost, "duplicated": t.duplicated, "per_s": per_s},
    }
    for key, _, histogram in latency_rows(result):
        if key:
            out[key] = histogram.summary()
    out["instances"] = {url: stats.to_json(t.delivered) for url, stats in result.instances.items()}
    samples = [sample for stats in result.instances.values() for sample in stats.series.points]
    out["samples"] = [sample.to_json() for sample in sorted(samples, key=lambda s: s.t)]
    return out


def write_json(result: RunResult, path: str | Path) -> None:
    """Write :func:`to_json` to ``path`` (indented), creating its folder if needed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(orjson.dumps(to_json(result), option=orjson.OPT_INDENT_2) + b"\n")


def _ms(value: float | int | None) -> str:
    return "-" if value is None else f"{value:,.3f}" if value < 1000 else f"{value:,.1f}"


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / MIB:,.1f} MiB"


def _optional(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def headline(result: RunResult) -> str:
    """One line: target, streams, time and the shape of the load."""
    c = result.config
    shape = [f"concurrency {c.max_open}"]
    if c.ramp_per_s:
        shape.append(f"ramp {c.ramp_per_s:g}/s")
    if c.duration_s:
        shape.append(f"duration {c.duration_s:g} s")
    interrupted = " (interrupted)" if result.interrupted else ""
    api = "" if c.api is Api.NATIVE else f" ({c.api.value} API, model {c.model})"
    return (
        f"tokenrelay loadtest: {c.gateway_url}{api}, {result.totals.started:,} streams in {result.duration_s:.1f} s"
        f"{interrupted} ({', '.join(shape)})"
    )


def totals_lines(result: RunResult) -> list[str]:
    """Streams, errors and tokens, one line each."""
    t = result.totals
    o = t.outcomes
    never_read = o[Outcome.NEVER_READ]
    lines = [
        f"streams  started {t.started:,} = completed {o[Outcome.COMPLETED]:,} + stopped {o[Outcome.STOPPED]:,}"
        f" + rejected {o[Outcome.REJECTED]:,} + failed {o[Outcome.FAILED]:,} + never read {never_read:,}",
    ]
    if never_read:
        lines.append(
            f"         never-read readers closed by the server before their stream ended: "
            f"{t.never_read_closed_by_server:,} of {never_read:,}"
        )
    errors = ", ".join(f"{code} {count:,}" for code, count in t.errors.most_common()) or "none"
    lines.append(f"errors   {errors}")
    per_s = t.delivered / result.duration_s if result.duration_s > 0 else 0.0
    lines.append(f"tokens   delivered {t.delivered:,} ({per_s:,.0f}/s), lost {t.lost:,}, duplicated {t.duplicated:,}")
    if result.config.api is not Api.NATIVE:
        lines.append(
            f"         the {result.config.api.value} API's chunks carry no index and no producer timestamp: "
            "lost and duplicated tokens are not checked, token lag is not measured"
        )
    share = result.own_cpu_s / result.duration_s * 100 if result.duration_s > 0 else 0.0
    lines.append(f"client   this process used {result.own_cpu_s:,.2f} CPU s ({share:.0f}% of one core)")
    return lines


def instance_cells(stats: InstanceStats, delivered: int) -> list[str]:
    """One instance's row: label, RSS at start and peak, CPU seconds and per token, readers open at most."""
    cpu = stats.cpu_s
    per_token = cpu * 1e6 / delivered if cpu is not None and delivered else None
    return [
        stats.label,
        _mib(stats.rss_start),
        _mib(stats.rss_max),
        _optional(cpu, ",.2f"),
        _optional(per_token, ",.1f"),
        _optional(stats.readers_open_max, ",.0f"),
    ]


INSTANCE_HEADER = ["instance", "RSS start", "RSS peak", "CPU s", "CPU µs/token", "readers open max"]


def format_text(result: RunResult) -> str:
    """The human report: totals, the latency table, and one row per instance."""
    lines = [headline(result), "", *totals_lines(result), ""]
    lines.append(f"{'(ms)':<40} {'p50':>10} {'p95':>10} {'p99':>10} {'max':>10} {'n':>9}")
    for _, label, h in latency_rows(result):
        s = h.summary()
        cells = "".join(f" {_ms(s[k]):>10}" for k in ("p50", "p95", "p99", "max"))
        lines.append(f"{label:<40}{cells} {h.n:>9,}")
    if result.instances:
        lines.append("")
        rows = [INSTANCE_HEADER] + [instance_cells(i, result.totals.delivered) for i in result.instances.values()]
        widths = [max(len(row[k]) for row in rows) for k in range(len(INSTANCE_HEADER))]
        for row in rows:
            cells = "".join(f"  {cell:>{width}}" for cell, width in zip(row[1:], widths[1:], strict=True))
            lines.append(f"{row[0]:<{widths[0]}}{cells}")
        lines.append("(CPU µs/token: the instance's CPU time over the tokens this load test received)")
    return "\n".join(lines)


def _histogram_svg(h: LatencyHistogram, *, title: str, x_label: str, y_label: str) -> str:
    if h.n == 0:
        return svg.histogram(Binned((), 0), title=title, subtitle="no values", x_label=x_label, y_label=y_label)
    p = h.percentile(DISPLAY_PERCENTILE) or 0.0
    upper = svg.nice_ceil(max(min(h.max_ms, p * 1.1), 1e-3))
    binned = h.binned(bins=HISTOGRAM_BINS, upper_ms=upper)
    s = h.summary()
    subtitle = f"n = {h.n:,}, p50 {svg.number(s['p50'] or 0)} ms, p99 {svg.number(s['p99'] or 0)} ms"
    subtitle += f", max {svg.number(h.max_ms)} ms"
    if binned.overflow:
        subtitle += f"; {binned.overflow:,} above {svg.number(upper)} ms not shown"
    markers = [(key, float(s[key] or 0)) for key in ("p50", "p95", "p99")]
    return svg.histogram(binned, title=title, subtitle=subtitle, x_label=x_label, y_label=y_label, markers=markers)


def plots(result: RunResult) -> dict[str, str]:
    """``{file name: SVG}`` for TTFT, token lag, open streams and RSS."""
    t = result.totals
    open_series = [svg.Series("open streams (load test)", [(p.t, p.open_streams) for p in result.timeline])]
    for stats in result.instances.values():
        points = [(s.t, s.readers_open) for s in stats.series.points if s.readers_open is not None]
        if points:
            open_series.append(svg.Series(f"SSE readers open ({stats.label})", points))
    rss_series = [
        svg.Series(stats.label, [(s.t, s.rss_bytes / MIB) for s in stats.series.points if s.rss_bytes is not None])
        for stats in result.instances.values()
    ]
    return {
        "ttft.svg": _histogram_svg(
            t.ttft, title="Time to first token", x_label="POST sent → first delta arrived (ms)", y_label="streams"
        ),
        "lag.svg": _histogram_svg(
            t.token_lag,
            title="Token lag (deltas published after the GET)",
            x_label="runner published → delta arrived (ms)",
            y_label="deltas",
        ),
        "open_streams.svg": svg.line_chart(
            open_series,
            title="Open streams",
            subtitle=headline(result).removeprefix("tokenrelay loadtest: "),
            x_label="time since start (s)",
            y_label="streams",
        ),
        "rss.svg": svg.line_chart(
            rss_series,
            title="Resident memory per instance",
            subtitle="process_resident_memory_bytes from each --metrics-url",
            x_label="time since start (s)",
            y_label="RSS (MiB)",
        ),
    }


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """
body { font: 14px/1.45 -apple-system, BlinkMacSystemFont, 'Segoe UI', Helvetica, Arial, sans-serif;
       color: #1f2328; max-width: 820px; margin: 32px auto; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 32px; }
.muted { color: #57606a; } pre { background: #f6f8fa; padding: 12px; overflow-x: auto; font-size: 12px; }
table { border-collapse: collapse; margin: 8px 0; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 12px; border-bottom: 1px solid #eaeef2; text-align: right; }
th:first-child, td:first-child { text-align: left; } th { font-weight: 600; border-bottom-color: #8c959f; }
figure { margin: 24px 0; } svg { max-width: 100%; height: auto; }
"""


def html_report(result: RunResult, charts: dict[str, str]) -> str:
    """One self-contained page: totals, the latency and instance tables, and every chart inline."""
    latency = []
    for _, label, h in latency_rows(result):
        s = h.summary()
        latency.append([label, *(_ms(s[k]) for k in ("p50", "p95", "p99", "max")), f"{h.n:,}"])
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>tokenrelay load test</title>',
        f"<style>{STYLE}</style></head><body>",
        "<h1>tokenrelay load test</h1>",
        f'<p class="muted">{html.escape(headline(result))}</p>',
        "<pre>" + html.escape("\n".join(totals_lines(result))) + "</pre>",
        "<h2>Latency (ms)</h2>",
        _html_table(["", "p50", "p95", "p99", "max", "n"], latency),
    ]
    if result.instances:
        rows = [instance_cells(i, result.totals.delivered) for i in result.instances.values()]
        parts += ["<h2>Instances</h2>", _html_table(INSTANCE_HEADER, rows)]
    parts.append("<h2>Charts</h2>")
    parts += [f"<figure>{charts[name]}</figure>" for name in PLOT_FILES if name in charts]
    config = orjson.dumps(result.config.to_json(), option=orjson.OPT_INDENT_2).decode()
    parts += ["<h2>Configuration</h2>", f"<pre>{html.escape(config)}</pre>", "</body></html>"]
    return "\n".join(parts) + "\n"


def write_report_dir(result: RunResult, directory: str | Path) -> list[Path]:
    """Write the SVG charts and ``report.html`` into ``directory`` (created if needed); return the paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    charts = plots(result)
    written = []
    for name, text in charts.items():
        (out / name).write_text(text, encoding="utf-8")
        written.append(out / name)
    (out / "report.html").write_text(html_report(result, charts), encoding="utf-8")
    written.append(out / "report.html")
    return written
