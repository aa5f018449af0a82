"""Counters and histograms for the per-token path, kept as plain numbers on the event loop.

prometheus_client's ``Counter.inc`` and ``Histogram.observe`` take a lock on every call; the
streamer updated four of them per write and spent more time there than in framing the event
(``python -m bench.hot_path``).  Every role updates its metrics from
one thread, the event loop's, and ``/metrics`` is rendered on that same loop, so the hot ones
need no lock: :class:`LoopMetrics` holds plain numbers and turns them into Prometheus families
at scrape time.  Only use them from the event loop.
"""

from __future__ import annotations

import bisect
import math
import typing
from collections.abc import Callable, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

_go_float = typing.cast(Callable[[float], str], floatToGoString)  # untyped upstream


class LoopCounter:
    """A monotonically increasing number (exposed as ``<name>_total``)."""

    __slots__ = ("documentation", "name", "value")

    def __init__(self, name: str, documentation: str) -> None:
        self.name = name
        self.documentation = documentation
        self.value: float = 0

    def inc(self, amount: float = 1) -> None:
        """Add ``amount`` (≥ 0)."""
        self.value += amount


class LoopHistogram:
    """Observations counted into fixed buckets (upper bounds, inclusive, as Prometheus ``le``)."""

    __slots__ = ("bounds", "counts", "documentation", "name", "sum")

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        if list(buckets) != sorted(set(buckets)) or not buckets:
            raise ValueError("buckets must be distinct and increasing")
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(float(b) for b in buckets if b != math.inf)
        self.counts = [0] * (len(self.bounds) + 1)
        """Per bucket, not cumulative; the last one is ``+Inf``."""
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        """``[(le, count of observations ≤ le)]`` ending with ``+Inf``, as the exposition format wants."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += count
            out.append((_go_float(bound), running))
        return out


class LoopMetrics(Collector):
    """The lock-free metrics of one process, registered once as a collector of ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._counters: list[LoopCounter] = []
        self._histograms: list[LoopHistogram] = []
        registry.register(self)

    def counter(self, name: str, documentation: str) -> LoopCounter:
        """A new counter exposed by this collector."""
        counter = LoopCounter(name, documentation)
        self._counters.append(counter)
        return counter

    def histogram(self, name: str, documentation: str, buckets: Sequence[float]) -> LoopHistogram:
        """A new histogram exposed by this collector."""
        histogram = LoopHistogram(name, documentation, buckets)
        self._histograms.append(histogram)
        return histogram

    def collect(self) -> Iterator[Metric]:
        for counter in self._counters:
            family = CounterMetricFamily(counter.name, counter.documentation)
            family.add_metric([], counter.value)
            yield family
        for histogram in self._histograms:
            yield HistogramMetricFamily(
                histogram.name, histogram.documentation, buckets=histogram.cumulative(), sum_value=histogram.sum
            )
