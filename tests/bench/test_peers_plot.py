"""``bench.peers_plot`` draws a peers run's TTFT p50 against C, one line per target, from the summary's tables."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import orjson

from bench.peers import main
from bench.peers_plot import TITLE, run_date, subtitle, ttft_plot, ttft_series

SVG_NS = "{http://www.w3.org/2000/svg}"
OPTIONS = {"rounds": 3, "tokens": 40, "interval_ms": 20.0}


def summary(ttft: dict[int, dict[str, float | None]]) -> dict[str, Any]:
    """A summary with only what the plot reads: ``{C: {target: TTFT p50}}``."""
    tables = [
        {"concurrency": c, "rows": [{"target": target, "ttft_p50": ms} for target, ms in rows.items()]}
        for c, rows in ttft.items()
    ]
    return {"options": OPTIONS, "tables": tables}


def test_each_target_is_a_series_of_ttft_against_c_and_the_baseline_gets_a_dashed_multiple() -> None:
    tables = summary({1: {"direct": 1.5, "litellm": 15.0}, 200: {"direct": 86.0, "litellm": 4243.0}})["tables"]

    series = ttft_series(tables, baseline="direct")

    assert [(s.name, list(s.points), s.dashed) for s in series] == [
        ("direct", [(1.0, 1.5), (200.0, 86.0)], False),
        ("litellm", [(1.0, 15.0), (200.0, 4243.0)], False),
        ("3x direct", [(1.0, 4.5), (200.0, 258.0)], True),
    ]


def test_without_the_baseline_there_is_no_reference_line_and_unknown_figures_are_nan() -> None:
    tables = summary({1: {"litellm": None}, 50: {"litellm": 800.0}})["tables"]

    [series] = ttft_series(tables, baseline="direct")

    assert math.isnan(series.points[0][1]) and series.points[1] == (50.0, 800.0)


def test_the_run_date_comes_from_the_results_file_name() -> None:
    assert run_date(Path("bench/results/peers-20261205T215220.json")) == "2026-12-05"
    assert run_date(Path("mine.json")) is None


def test_the_subtitle_says_the_date_and_how_many_rounds_each_median_is_of() -> None:
    assert subtitle({"options": OPTIONS}, "2026-12-05").startswith("Run of 2026-12-05, medians of 3 rounds;")
    assert subtitle({"options": OPTIONS}, None).startswith("Medians of 3 rounds;")


def test_the_plot_is_titled_and_has_a_line_and_a_dot_per_target_and_load() -> None:
    text = ttft_plot(
        summary({1: {"direct": 1.5, "x": 10.0}, 50: {"direct": 20.0, "x": 90.0}}), baseline="direct", date=None
    )

    root = ET.fromstring(text)

    assert root.findtext(f"{SVG_NS}title") == TITLE
    assert len(list(root.iter(f"{SVG_NS}polyline"))) == 3
    assert len(list(root.iter(f"{SVG_NS}circle"))) == 6


def test_plot_from_redraws_an_earlier_results_file_without_running_anything(tmp_path: Path) -> None:
    results = tmp_path / "peers-20261205T215220.json"
    results.write_bytes(orjson.dumps(summary({1: {"direct": 1.5}, 50: {"direct": 20.0}})))

    main(["--plot-from", str(results), "--plot", str(tmp_path / "ttft.svg")])
    main(["--plot-from", str(results)])

    drawn = (tmp_path / "ttft.svg").read_text(encoding="utf-8")
    assert "Run of 2026-12-05" in drawn
    assert (tmp_path / "peers-20261205T215220.svg").read_text(encoding="utf-8") == drawn
