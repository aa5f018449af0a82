"""What one load-test run hands to its report: the totals, the instances' samples and the run's own timeline."""

from __future__ import annotations

from dataclasses import dataclass

from tokenrelay.loadtest.metrics import InstanceStats
from tokenrelay.loadtest.plan import LoadTestConfig
from tokenrelay.loadtest.stats import RunTotals


@dataclass(frozen=True, slots=True)
class TimelinePoint:
    """The load test's own view at ``t`` seconds: streams open and tokens delivered so far."""

    t: float
    open_streams: int
    delivered: int


@dataclass
class RunResult:
    """Everything a report needs."""

    config: LoadTestConfig
    totals: RunTotals
    duration_s: float
    instances: dict[str, InstanceStats]
    timeline: list[TimelinePoint]
    interrupted: bool = False
    own_cpu_s: float = 0.0
    """CPU seconds the load test's own process used (is the load generator the bottleneck?)."""
