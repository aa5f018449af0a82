"""The load test's sans-I/O parts: histograms, token accounting, plans, /metrics parsing, SVG and JSON."""

from __future__ import annotations

import itertools
import math
import random
import xml.etree.ElementTree as ET
from collections import Counter

import orjson
import pytest

from tokenrelay.loadtest import report, svg
from tokenrelay.loadtest.codes import http_error_code
from tokenrelay.loadtest.driver import source_addresses
from tokenrelay.loadtest.metrics import InstanceStats, metrics_endpoint, parse_metrics, role_of
from tokenrelay.loadtest.plan import LoadTestConfig, Mix, Planner, parse_int_mix, prompt_mix
from tokenrelay.loadtest.result import RunResult, TimelinePoint
from tokenrelay.loadtest.stats import (
    MAX_ERROR_CODES,
    LatencyHistogram,
    Outcome,
    RunTotals,
    SampleSeries,
    StreamTally,
)

SVG_NS = "{http://www.w3.org/2000/svg}"


def nearest_rank(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


# LatencyHistogram


def test_histogram_percentiles_match_nearest_rank_within_its_resolution() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(2, 1.2) for _ in range(20_000)]
    histogram = LatencyHistogram()
    for value in values:
        histogram.record(value)
    for p in (50, 95, 99, 99.9):
        exact = nearest_rank(values, p)
        assert histogram.percentile(p) == pytest.approx(exact, rel=1 / 128)


def test_histogram_is_exact_to_the_microsecond_below_a_quarter_millisecond() -> None:
    histogram = LatencyHistogram()
    for micros in range(1, 201):
        histogram.record(micros / 1000)
    assert histogram.percentile(50) == pytest.approx(0.100)
    assert histogram.percentile(99) == pytest.approx(0.198)


def test_histogram_min_max_and_count_are_exact() -> None:
    histogram = LatencyHistogram()
    for value in (3.25, 1234.5678, 0.5):
        histogram.record(value)
    assert (histogram.n, histogram.min_ms, histogram.max_ms) == (3, 0.5, 1234.5678)
    assert histogram.percentile(100) == 1234.5678


def test_histogram_summary_of_no_values_is_null_with_n_zero() -> None:
    assert LatencyHistogram().summary() == {"p50": None, "p95": None, "p99": None, "max": None, "n": 0}


def test_histogram_summary_has_p50_p95_p99_max_and_n() -> None:
    histogram = LatencyHistogram()
    for value in range(1, 101):
        histogram.record(float(value))
    summary = histogram.summary()
    assert list(summary) == ["p50", "p95", "p99", "max", "n"]
    assert summary["p50"] == pytest.approx(50, rel=1 / 128)
    assert summary["p99"] == pytest.approx(99, rel=1 / 128)
    assert (summary["max"], summary["n"]) == (100.0, 100)


def test_histogram_counts_values_above_its_range_in_the_last_bucket_and_keeps_the_exact_max() -> None:
    histogram = LatencyHistogram(max_value_ms=1000)
    histogram.record(10.0)
    histogram.record(5_000_000.0)
    assert histogram.n == 2
    assert histogram.percentile(100) == 5_000_000.0
    assert histogram.percentile(50) == pytest.approx(10.0, rel=1 / 128)


def test_histogram_counts_negative_durations_as_zero() -> None:
    histogram = LatencyHistogram()
    histogram.record(-3.0)
    assert (histogram.min_ms, histogram.percentile(50)) == (0.0, 0.0)


def test_histogram_binning_puts_every_value_in_a_bin_or_the_overflow() -> None:
    histogram = LatencyHistogram()
    for value in (0.5, 1.5, 1.6, 9.9, 10.1, 250.0):
        histogram.record(value)
    binned = histogram.binned(bins=10, upper_ms=10.0)
    assert [b.count for b in binned.bins] == [1, 2, 0, 0, 0, 0, 0, 0, 0, 1]
    assert binned.overflow == 2
    assert (binned.bins[0].lower_ms, binned.bins[0].upper_ms, binned.bins[-1].upper_ms) == (0.0, 1.0, 10.0)
    assert sum(b.count for b in binned.bins) + binned.overflow == histogram.n


# StreamTally


def test_tally_of_increasing_indexes_ending_at_the_final_count_has_nothing_lost_or_duplicated() -> None:
    tally = StreamTally()
    new = [tally.delta(index) for index in (1, 2, 5, 9)]  # 3..5 and 6..9 were merged deltas
    tally.finish(9)
    assert new == [1, 1, 3, 4]
    assert (tally.delivered, tally.lost, tally.duplicated) == (9, 0, 0)


def test_tally_counts_tokens_missing_before_the_stop_event_as_lost() -> None:
    tally = StreamTally()
    for index in (1, 2, 3):
        tally.delta(index)
    tally.finish(7)
    assert (tally.lost, tally.duplicated) == (4, 0)


def test_tally_counts_a_repeated_or_backward_index_as_a_duplicated_token() -> None:
    tally = StreamTally()
    new = [tally.delta(index) for index in (1, 2, 3, 2, 3, 4)]
    tally.finish(4)
    assert new == [1, 1, 1, 0, 0, 1]
    assert (tally.delivered, tally.lost, tally.duplicated) == (4, 0, 2)


def test_tally_counts_indexes_beyond_the_final_count_as_duplicated() -> None:
    tally = StreamTally()
    tally.delta(6)
    tally.finish(5)
    assert (tally.lost, tally.duplicated) == (0, 1)


def test_tally_without_a_final_count_reports_nothing_lost() -> None:
    tally = StreamTally()
    tally.delta(3)
    assert (tally.delivered, tally.lost, tally.duplicated) == (3, 0, 0)


def test_run_totals_partition_started_streams_by_outcome_and_add_up_tally_errors() -> None:
    totals = RunTotals()
    bad = StreamTally()
    bad.delta(2)
    bad.delta(2)
    bad.finish(5)
    for outcome in (Outcome.COMPLETED, Outcome.STOPPED, Outcome.REJECTED, Outcome.FAILED, Outcome.NEVER_READ):
        totals.stream_started()
        totals.stream_ended(outcome, bad if outcome is Outcome.COMPLETED else None)
    streams = totals.streams()
    assert streams == {"started": 5, "completed": 1, "stopped": 1, "rejected": 1, "failed": 1, "never_read": 1}
    assert (totals.open, totals.lost, totals.duplicated) == (0, 3, 1)


def test_run_totals_count_errors_by_code_and_lump_codes_past_the_limit_as_other() -> None:
    totals = RunTotals()
    for k in range(MAX_ERROR_CODES + 10):
        totals.error(f"code_{k}")
    totals.error("code_0")
    assert totals.errors["code_0"] == 2
    assert totals.errors["other"] == 10
    assert len(totals.errors) == MAX_ERROR_CODES + 1


# SampleSeries


def test_sample_series_thins_itself_to_span_the_whole_run_in_bounded_points() -> None:
    series: SampleSeries[int] = SampleSeries(max_points=8)
    for i in range(100):
        series.add(i)
    assert len(series.points) <= 8
    assert series.points[0] == 0
    assert series.points == sorted(series.points)
    assert series.points[-1] >= 100 - 100 // 8 * 2
    steps = {b - a for a, b in itertools.pairwise(series.points)}
    assert len(steps) == 1


# Mixes and plans


def test_int_mix_without_weights_is_round_robin() -> None:
    mix = parse_int_mix("16,64,256")
    assert [mix.pick(i) for i in range(6)] == [16, 64, 256, 16, 64, 256]


def test_int_mix_with_weights_is_smooth_weighted_round_robin() -> None:
    mix = parse_int_mix("10:5,20:1,30:1")
    cycle = [mix.pick(i) for i in range(7)]
    assert Counter(cycle) == {10: 5, 20: 1, 30: 1}
    assert cycle == [10, 10, 20, 10, 30, 10, 10]
    assert mix.pick(7) == cycle[0]


@pytest.mark.parametrize("text", ["", "a", "10:0", "10:x", "1:20000"])
def test_int_mix_rejects_malformed_values_and_weights(text: str) -> None:
    with pytest.raises(ValueError):
        parse_int_mix(text)


def test_prompt_mix_weighs_a_prompt_given_twice_twice() -> None:
    mix = prompt_mix(["a", "b", "a"])
    assert Counter(mix.pick(i) for i in range(3)) == {"a": 2, "b": 1}


def test_planner_picks_exact_fractions_of_never_read_and_stopped_streams() -> None:
    config = LoadTestConfig(streams=500, stop_fraction=0.2, never_read_fraction=0.1, max_tokens=parse_int_mix("50"))
    planner = Planner(config)
    plans = [planner.plan(i) for i in range(500)]
    assert sum(p.never_read for p in plans) == 50
    assert sum(p.stop_after_tokens is not None for p in plans) == 100
    assert not any(p.never_read and p.stop_after_tokens is not None for p in plans)
    assert all(1 <= (p.stop_after_tokens or 1) <= 49 for p in plans)


def test_planner_is_deterministic_for_a_seed_and_numbers_prompts() -> None:
    config = LoadTestConfig(stop_fraction=0.5, prompts=prompt_mix(["p{i}"]), seed=3)
    first, second = Planner(config), Planner(config)
    assert [first.plan(i) for i in range(20)] == [second.plan(i) for i in range(20)]
    assert first.plan(20).prompt == "p20"


@pytest.mark.parametrize(
    "options",
    [
        {"streams": 0},
        {"stop_fraction": 1.5},
        {"stop_fraction": 0.6, "never_read_fraction": 0.6},
        {"source_addresses": 300},
        {"sample_interval_s": 0},
    ],
)
def test_config_rejects_inconsistent_options(options: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        LoadTestConfig(**options)  # type: ignore[arg-type]


def test_config_json_never_contains_the_api_key() -> None:
    config = LoadTestConfig(api_key="secret-key", max_tokens=Mix([(16, 3), (64, 1)]))
    data = config.to_json()
    assert "secret-key" not in orjson.dumps(data).decode()
    assert data["max_tokens"] == [{"value": 16, "weight": 3}, {"value": 64, "weight": 1}]
    assert data["concurrency"] == config.streams


def test_source_addresses_are_127_0_0_k_and_only_for_loopback_targets() -> None:
    assert source_addresses("http://127.0.0.1:8080", 1) == [None]
    assert source_addresses("http://127.0.0.1:8080", 3) == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    with pytest.raises(ValueError):
        source_addresses("http://example.com:8080", 2)


def test_http_error_code_comes_from_the_body_or_the_status() -> None:
    body = b'{"error": {"code": "overloaded", "message": "busy"}}'
    assert http_error_code(503, body) == "overloaded"
    assert http_error_code(502, b"<html>bad gateway</html>") == "http_502"


# /metrics


METRICS = """\
# HELP process_resident_memory_bytes Resident memory size in bytes.
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 5.1234816e+07
process_cpu_seconds_total 1.25
tokenrelay_streamer_readers_open 42.0
tokenrelay_streamer_readers_opened_total 99.0
tokenrelay_gateway_control_sockets_open{gateway="a"} 2.0
tokenrelay_gateway_control_sockets_open{gateway="b"} 1.0 1700000000000
"""


def test_parse_metrics_reads_the_followed_gauges_and_sums_label_sets() -> None:
    values = parse_metrics(METRICS)
    assert values == {
        "process_resident_memory_bytes": 51234816.0,
        "process_cpu_seconds_total": 1.25,
        "tokenrelay_streamer_readers_open": 42.0,
        "tokenrelay_gateway_control_sockets_open": 3.0,
    }


def test_parse_metrics_leaves_out_what_an_instance_does_not_expose() -> None:
    assert parse_metrics("process_cpu_seconds_total 2\n") == {"process_cpu_seconds_total": 2.0}


def test_role_and_endpoint_of_an_instance() -> None:
    assert role_of(METRICS) == "streamer"
    assert role_of("process_cpu_seconds_total 1\n") is None
    assert metrics_endpoint("http://127.0.0.1:8081/") == "http://127.0.0.1:8081/metrics"
    assert metrics_endpoint("http://127.0.0.1:9000/metrics") == "http://127.0.0.1:9000/metrics"


def test_instance_stats_keep_start_peak_and_cpu_used() -> None:
    stats = InstanceStats("http://127.0.0.1:8081", max_points=4)
    for t, rss, cpu in ((0.0, 100.0, 1.0), (1.0, 300.0, 1.5), (2.0, 200.0, 3.0)):
        stats.add(t, {"process_resident_memory_bytes": rss, "process_cpu_seconds_total": cpu})
    data = stats.to_json(tokens_delivered=1000)
    assert (data["rss_bytes_start"], data["rss_bytes_max"], data["cpu_s"]) == (100, 300, 2.0)
    assert data["cpu_us_per_token"] == pytest.approx(2000.0)
    assert data["readers_open_max"] is None


# SVG and reports


def parse_svg(text: str) -> ET.Element:
    root = ET.fromstring(text)
    assert root.tag == f"{SVG_NS}svg"
    return root


def test_histogram_svg_is_well_formed_xml_with_one_bar_per_non_empty_bin() -> None:
    histogram = LatencyHistogram()
    for value in (1.0, 1.2, 5.0, 5.5, 5.7):
        histogram.record(value)
    binned = histogram.binned(bins=10, upper_ms=10.0)
    text = svg.histogram(binned, title="TTFT <&>", subtitle="n = 5", x_label="ms", markers=[("p50", 5.0), ("p99", 5.7)])
    root = parse_svg(text)
    bars = [r for r in root.iter(f"{SVG_NS}rect") if r.find(f"{SVG_NS}title") is not None]
    assert len(bars) == 2
    texts = [t.text for t in root.iter(f"{SVG_NS}text")]
    assert "TTFT <&>" in texts
    assert "p99 5.7" in texts


def test_line_chart_svg_is_well_formed_xml_with_a_line_and_legend_entry_per_series() -> None:
    series = [svg.Series("open", [(0, 0), (1, 10), (2, 5)]), svg.Series("readers <x>", [(0, 1), (2, 3)])]
    root = parse_svg(svg.line_chart(series, title="Open", subtitle="", x_label="s", y_label="streams"))
    assert len(list(root.iter(f"{SVG_NS}polyline"))) == 2
    assert "readers <x>" in [t.text for t in root.iter(f"{SVG_NS}text")]


def test_charts_without_data_are_well_formed_and_say_so() -> None:
    empty_hist = svg.histogram(LatencyHistogram().binned(bins=5, upper_ms=1.0), title="t", subtitle="", x_label="x")
    empty_line = svg.line_chart([svg.Series("a", [])], title="t", subtitle="", x_label="x", y_label="y")
    for text in (empty_hist, empty_line):
        assert "no data" in [t.text for t in parse_svg(text).iter(f"{SVG_NS}text")]


@pytest.mark.parametrize(("upper", "ticks"), [(7.3, [0, 2, 4, 6, 8]), (100, [0, 20, 40, 60, 80, 100]), (0.42, None)])
def test_nice_ticks_are_round_numbers_from_zero_past_the_upper_value(upper: float, ticks: list[float] | None) -> None:
    found = svg.nice_ticks(upper)
    assert found[0] == 0 and found[-1] >= upper
    if ticks is not None:
        assert found == pytest.approx(ticks)


def sample_result() -> RunResult:
    totals = RunTotals()
    for ms in (50.0, 52.0, 60.0):
        totals.stream_started()
        totals.start.record(2.0)
        totals.ttft.record(ms)
        totals.token_lag.record(ms / 20)
        totals.inter_token.record(ms / 2)
        tally = StreamTally()
        tally.delta(10)
        tally.finish(10)
        totals.delivered += 10
        totals.stream_ended(Outcome.COMPLETED, tally)
    totals.stream_started()
    totals.rejected.record(1.5)
    totals.error("bad_request")
    totals.stream_ended(Outcome.REJECTED)
    streamer = InstanceStats("http://127.0.0.1:8081", max_points=16)
    streamer.role = "streamer"
    for t in range(3):
        streamer.add(
            float(t),
            {
                "process_resident_memory_bytes": 1e8 + t,
                "process_cpu_seconds_total": t,
                "tokenrelay_streamer_readers_open": 3,
            },
        )
    timeline = [TimelinePoint(0.5 * i, i % 3, 10 * i) for i in range(5)]
    return RunResult(LoadTestConfig(), totals, 2.5, {streamer.url: streamer}, timeline)


def test_report_json_has_the_agreed_top_level_shape() -> None:
    data = orjson.loads(orjson.dumps(report.to_json(sample_result())))
    assert list(data) == [
        "config", "duration_s", "streams", "errors", "tokens", "ttft_ms", "token_lag_ms", "history_lag_ms",
        "token_lag_after_ramp_ms", "inter_token_ms", "start_ms", "rejected_ms", "instances", "samples",
    ]  # fmt: skip
    assert data["streams"] == {"started": 4, "completed": 3, "stopped": 0, "rejected": 1, "failed": 0, "never_read": 0}
    assert data["errors"] == {"bad_request": 1}
    assert data["tokens"] == {"delivered": 30, "lost": 0, "duplicated": 0, "per_s": 12.0}
    assert set(data["ttft_ms"]) == {"p50", "p95", "p99", "max", "n"}
    assert data["rejected_ms"]["n"] == 1
    instance = data["instances"]["http://127.0.0.1:8081"]
    assert {"rss_bytes_max", "rss_bytes_start", "cpu_s", "readers_open_max"} <= set(instance)
    assert {"t", "url", "readers_open", "rss_bytes", "cpu_s"} <= set(data["samples"][0])


def test_report_plots_are_well_formed_svg_and_the_page_embeds_them() -> None:
    result = sample_result()
    charts = report.plots(result)
    assert sorted(charts) == sorted(report.PLOT_FILES)
    for text in charts.values():
        parse_svg(text)
    page = report.html_report(result, charts)
    assert page.count("<svg ") == 4
    assert "TTFT (POST sent -&gt; first delta)" in page


def test_text_report_shows_the_partition_the_errors_and_the_latency_table() -> None:
    text = report.format_text(sample_result())
    assert "started 4 = completed 3 + stopped 0 + rejected 1 + failed 0 + never read 0" in text
    assert "bad_request 1" in text
    assert "TTFT (POST sent -> first delta)" in text
    assert "streamer 127.0.0.1:8081" in text
