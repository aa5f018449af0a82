"""The line chart's logarithmic y axis, evenly spaced x categories and dashed reference series."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest

from tokenrelay.loadtest import svg

SVG_NS = "{http://www.w3.org/2000/svg}"


def parse_svg(text: str) -> ET.Element:
    root = ET.fromstring(text)
    assert root.tag == f"{SVG_NS}svg"
    return root


def log_chart(*series: svg.Series, x_categories: bool = False) -> ET.Element:
    text = svg.line_chart(
        series, title="TTFT <&>", subtitle="", x_label="C", y_label="ms", y_log=True, x_categories=x_categories
    )
    return parse_svg(text)


def tick_labels(root: ET.Element, anchor: str) -> dict[str, ET.Element]:
    """The tick labels of one axis: the y axis's are right-aligned, the x axis's centred (as is its title)."""
    return {t.text or "": t for t in root.iter(f"{SVG_NS}text") if t.get("text-anchor") == anchor}


def label_y(root: ET.Element, label: str) -> float:
    """The y of the y axis's tick labelled ``label`` (the label's baseline sits 4 px below its tick)."""
    return float(tick_labels(root, "end")[label].attrib["y"]) - 4


def label_x(root: ET.Element, label: str) -> float:
    """The x of the x axis's tick labelled ``label``."""
    return float(tick_labels(root, "middle")[label].attrib["x"])


def polylines(root: ET.Element) -> list[list[tuple[float, float]]]:
    return [
        [(float(x), float(y)) for x, y in (pair.split(",") for pair in line.attrib["points"].split())]
        for line in root.iter(f"{SVG_NS}polyline")
    ]


@pytest.mark.parametrize(
    ("lower", "upper", "ticks"),
    [
        (1.53, 4243.0, [1, 10, 100, 1_000, 10_000]),
        (20.0, 90.0, [10, 100]),
        (10.0, 1_000.0, [10, 100, 1_000]),
        (100.0, 100.0, [100, 1_000]),
        (0.05, 3.0, [0.01, 0.1, 1, 10]),
    ],
)
def test_log_ticks_are_every_power_of_ten_spanning_the_data_and_at_least_two(
    lower: float, upper: float, ticks: list[float]
) -> None:
    assert svg.log_ticks(lower, upper) == pytest.approx(ticks)


@pytest.mark.parametrize(("lower", "upper"), [(0.0, 10.0), (-1.0, 10.0), (10.0, 1.0), (1.0, math.inf)])
def test_log_ticks_refuse_a_range_that_is_not_positive_and_ordered(lower: float, upper: float) -> None:
    with pytest.raises(ValueError, match="logarithmic"):
        svg.log_ticks(lower, upper)


def test_log_axis_labels_each_decade_with_a_short_number() -> None:
    root = log_chart(svg.Series("litellm", [(1, 14.8), (50, 841.7), (200, 4243.5)]))

    assert list(tick_labels(root, "end")) == ["10", "100", "1,000", "10,000"]


def test_a_point_at_a_decade_lies_on_that_decades_tick_and_decades_are_equally_apart() -> None:
    root = log_chart(svg.Series("a", [(0, 10.0), (1, 1_000.0), (2, 100_000.0)]))

    [[(_, y10), (_, y1000), (_, y100000)]] = polylines(root)

    assert y10 == pytest.approx(label_y(root, "10"), abs=0.11)
    assert y1000 == pytest.approx(label_y(root, "1,000"), abs=0.11)
    assert y100000 == pytest.approx(label_y(root, "100,000"), abs=0.11)
    assert y10 - y1000 == pytest.approx(y1000 - y100000, abs=0.2)
    assert label_y(root, "10") - label_y(root, "100") == pytest.approx(label_y(root, "100") - label_y(root, "1,000"))


def test_log_axis_skips_points_that_are_not_positive_or_not_finite_and_breaks_the_line_there() -> None:
    series = svg.Series("a", [(0, 5.0), (1, 50.0), (2, 0.0), (3, -1.0), (4, math.nan), (5, 500.0), (6, 5_000.0)])

    text = svg.line_chart([series], title="t", subtitle="", x_label="x", y_label="y", y_log=True)
    root = parse_svg(text)

    assert [len(run) for run in polylines(root)] == [2, 2]
    assert "nan" not in text
    assert label_y(root, "1") > label_y(root, "10,000")  # the axis spans the drawn points only


def test_log_chart_with_no_positive_value_is_well_formed_and_says_no_data() -> None:
    root = log_chart(svg.Series("a", [(0, 0.0), (1, -3.0)]), svg.Series("b", []))

    assert "no data" in [t.text for t in root.iter(f"{SVG_NS}text")]


def test_x_categories_are_evenly_spaced_in_order_and_labelled_with_their_values() -> None:
    root = log_chart(svg.Series("a", [(1, 2.0), (50, 20.0), (200, 90.0)]), x_categories=True)

    x1, x50, x200 = (label_x(root, label) for label in ("1", "50", "200"))

    assert x1 < x50 < x200
    assert x50 - x1 == pytest.approx(x200 - x50)
    [[(px1, _), (px50, _), (px200, _)]] = polylines(root)
    assert (px1, px50, px200) == pytest.approx((x1, x50, x200), abs=0.11)


def test_x_categories_put_a_dot_with_its_values_as_tooltip_on_every_point() -> None:
    root = log_chart(svg.Series("a <b>", [(1, 2.0), (50, 20.0)]), svg.Series("c", [(50, 30.0)]), x_categories=True)

    tips = [c.findtext(f"{SVG_NS}title") for c in root.iter(f"{SVG_NS}circle")]

    assert tips == ["a <b>: 1, 2", "a <b>: 50, 20", "c: 50, 30"]


def test_a_dashed_series_is_grey_and_leaves_the_palette_to_the_measured_ones() -> None:
    series = [svg.Series("a", [(1, 2.0)]), svg.Series("3x a", [(1, 6.0)], dashed=True), svg.Series("b", [(1, 3.0)])]

    root = log_chart(*series, x_categories=True)

    lines = list(root.iter(f"{SVG_NS}polyline"))
    assert [line.attrib["stroke"] for line in lines] == [svg.PALETTE[0], svg.REFERENCE, svg.PALETTE[1]]
    assert [line.get("stroke-dasharray") for line in lines] == [None, svg.REFERENCE_DASH, None]
    legend_dashes = [
        line.get("stroke-dasharray") for line in root.iter(f"{SVG_NS}line") if line.get("stroke-width") == "2.5"
    ]
    assert legend_dashes == [None, svg.REFERENCE_DASH, None]


def test_without_the_options_the_y_axis_is_linear_from_zero() -> None:
    root = parse_svg(
        svg.line_chart([svg.Series("a", [(0, 0.0), (1, 10.0)])], title="t", subtitle="", x_label="x", y_label="y")
    )

    [[(_, y0), (_, y10)]] = polylines(root)

    assert y0 == pytest.approx(label_y(root, "0"), abs=0.11)
    assert y10 == pytest.approx(label_y(root, "10"), abs=0.11)
