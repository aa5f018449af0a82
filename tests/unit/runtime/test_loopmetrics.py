"""The lock-free per-token metrics render exactly as prometheus_client's own would."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

from tokenrelay.runtime.loopmetrics import LoopHistogram, LoopMetrics

BUCKETS = (0.0005, 0.001, 0.01, 0.1, 1, 2.5, 10)


def _samples(registry: CollectorRegistry, name: str) -> list[str]:
    return [
        line
        for line in generate_latest(registry).decode().splitlines()
        if line.startswith(name) and "_created" not in line
    ]


def test_a_loop_histogram_exposes_the_same_buckets_count_and_sum_as_a_prometheus_histogram() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    hot = LoopMetrics(ours).histogram("lag_seconds", "lag", BUCKETS)
    reference = Histogram("lag_seconds", "lag", buckets=BUCKETS, registry=theirs)
    values = [random.Random(7).choice((0.0, 0.0005, 1.0, 10.0, 11.0)) for _ in range(50)]
    values += [random.Random(i).expovariate(10) for i in range(500)]
    for value in values:
        hot.observe(value)
        reference.observe(value)
    assert _samples(ours, "lag_seconds") == _samples(theirs, "lag_seconds")


def test_a_loop_counter_exposes_its_total_like_a_prometheus_counter() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    hot = LoopMetrics(ours).counter("tokens", "tokens made")
    reference = Counter("tokens", "tokens made", registry=theirs)
    for amount in (1, 1, 5, 0.5):
        hot.inc(amount)
        reference.inc(amount)
    assert _samples(ours, "tokens") == _samples(theirs, "tokens")


def test_a_value_on_a_bucket_bound_counts_in_that_bucket() -> None:
    histogram = LoopHistogram("h", "h", (1, 2))
    histogram.observe(1.0)
    histogram.observe(2.0)
    histogram.observe(2.5)
    assert histogram.cumulative() == [("1.0", 1), ("2.0", 2), ("+Inf", 3)]


@pytest.mark.parametrize("buckets", [(), (2, 1), (1, 1)])
def test_buckets_must_be_distinct_and_increasing(buckets: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="increasing"):
        LoopHistogram("h", "h", buckets)
