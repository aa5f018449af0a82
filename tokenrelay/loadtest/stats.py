"""What a load test measures, kept in bounded memory (sans-I/O: no sockets, no clocks, no ``await``).

* :class:`LatencyHistogram` — durations in a fixed log-linear histogram (HDR-style): recording is
  O(1) with no allocation, memory is a few tens of KiB whatever the run's length, percentiles are
  exact to 1 µs below 0.256 ms and within 0.4 % above; ``min``, ``max`` and ``n`` are exact.
* :class:`StreamTally` — one stream's token accounting from its ``delta`` indexes and final count.
* :class:`RunTotals` — the whole run: outcomes, errors by code, tokens, the histograms.
* :class:`SampleSeries` — a time series that thins itself (keeps every other point) when full.
"""

from __future__ import annotations

import enum
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

SUB_BUCKET_BITS = 7
"""Each power of two is split into 2**7 = 128 linear buckets: bucket width / value <= 1/128."""
SUB_BUCKETS = 1 << SUB_BUCKET_BITS
DEFAULT_MAX_VALUE_MS = 1e7
"""Largest distinct value (about 2.8 hours); larger ones land in the last bucket (``max`` stays exact)."""
DEFAULT_MAX_POINTS = 4096
"""Points a :class:`SampleSeries` keeps before it thins itself to half."""
PERCENTILES = (50, 95, 99)
MAX_ERROR_CODES = 64
"""Distinct error codes counted separately; a server inventing more cannot grow the counts without bound."""
MAX_ERROR_CODE_CHARS = 64


def _bucket_index(micros: int) -> int:
    # Values below 2 * SUB_BUCKETS µs get one bucket each; above, keep the top SUB_BUCKET_BITS + 1
    # bits: bucket = shift * SUB_BUCKETS + (micros >> shift), with (micros >> shift) in [128, 256).
    shift = max(0, micros.bit_length() - SUB_BUCKET_BITS - 1)
    return shift * SUB_BUCKETS + (micros >> shift)


def _bucket_bounds(index: int) -> tuple[int, int]:
    """The bucket's lowest value and its width, in µs."""
    shift = max(0, index // SUB_BUCKETS - 1)
    return (index - shift * SUB_BUCKETS) << shift, 1 << shift


@dataclass(frozen=True, slots=True)
class Bin:
    """One bar of a display histogram: values in ``[lower_ms, upper_ms)``."""

    lower_ms: float
    upper_ms: float
    count: int


@dataclass(frozen=True, slots=True)
class Binned:
    """A display histogram: equal-width bins from 0 to ``upper_ms``; ``overflow`` values lie above it."""

    bins: tuple[Bin, ...]
    overflow: int


class LatencyHistogram:
    """Durations in milliseconds, in bounded memory.

    ``max_value_ms`` is the largest value kept distinct; anything larger is counted in the last
    bucket (its percentile then reads as the exact ``max``). Negative values count as 0.
    """

    __slots__ = ("_counts", "_last", "max_ms", "min_ms", "n", "sum_ms")

    def __init__(self, *, max_value_ms: float = DEFAULT_MAX_VALUE_MS) -> None:
        self._last = _bucket_index(int(max_value_ms * 1000))
        self._counts = [0] * (self._last + 1)
        self.n = 0
        self.sum_ms = 0.0
        self.min_ms = math.inf
        self.max_ms = -math.inf

    def record(self, value_ms: float) -> None:
        """Count one duration."""
        value_ms = max(value_ms, 0.0)
        self._counts[min(_bucket_index(int(value_ms * 1000)), self._last)] += 1
        self.n += 1
        self.sum_ms += value_ms
        self.min_ms = min(self.min_ms, value_ms)
        self.max_ms = max(self.max_ms, value_ms)

    def percentile(self, p: float) -> float | None:
        """Nearest-rank percentile (``None`` without values): the middle of the bucket holding that rank
        (clamped to ``min``/``max``; the top rank is the exact ``max``)."""
        if self.n == 0:
            return None
        rank = max(1, math.ceil(p / 100 * self.n))
        if rank >= self.n:
            return self.max_ms
        seen = 0
        for middle_ms, count in self.buckets():
            seen += count
            if seen >= rank:
                return middle_ms
        return self.max_ms

    def summary(self) -> dict[str, float | int | None]:
        """``{"p50", "p95", "p99", "max", "n"}`` in ms (``None`` values when ``n`` is 0)."""
        out: dict[str, float | int | None] = {f"p{p}": self.percentile(p) for p in PERCENTILES}
        out["max"] = self.max_ms if self.n else None
        out["n"] = self.n
        return out

    def buckets(self) -> Iterator[tuple[float, int]]:
        """``(middle in ms, count)`` of every non-empty bucket, in ascending order."""
        for index, count in enumerate(self._counts):
            if not count:
                continue
            if index == self._last:  # holds everything above max_value_ms: only its maximum is known
                yield self.max_ms, count
                continue
            lower, width = _bucket_bounds(index)
            yield min(max((lower + (width - 1) / 2) / 1000, self.min_ms), self.max_ms), count

    def binned(self, *, bins: int, upper_ms: float) -> Binned:
        """Re-bin into ``bins`` equal-width bins over ``[0, upper_ms)`` (each bucket goes where its middle lies)."""
        width = upper_ms / bins
        counts = [0] * bins
        overflow = 0
        for middle, count in self.buckets():
            slot = int(middle / width)
            if slot < bins:
                counts[slot] += count
            else:
                overflow += count
        return Binned(tuple(Bin(i * width, (i + 1) * width, c) for i, c in enumerate(counts)), overflow)


class StreamTally:
    """One read stream's token accounting.

    Each ``delta`` carries ``index``, the number of tokens delivered so far; deltas may be merged,
    so an index may jump by more than one. A delta whose index is not above the highest seen
    repeats at least one token (counted as one duplicated token each). The terminal ``stop``
    event's ``tokens`` is what the stream produced: fewer delivered means lost tokens, more means
    duplicated ones.
    """

    __slots__ = ("deltas", "final_tokens", "highest_index", "repeats")

    def __init__(self) -> None:
        self.highest_index = 0
        self.deltas = 0
        self.repeats = 0
        self.final_tokens: int | None = None

    def delta(self, index: int) -> int:
        """Count one delta; return how many new tokens it delivered (0 for a repeat)."""
        self.deltas += 1
        if index <= self.highest_index:
            self.repeats += 1
            return 0
        new = index - self.highest_index
        self.highest_index = index
        return new

    def finish(self, tokens: int) -> None:
        """The terminal ``stop`` event's token count."""
        self.final_tokens = tokens

    @property
    def delivered(self) -> int:
        """Distinct tokens delivered (the highest index seen)."""
        return self.highest_index

    @property
    def lost(self) -> int:
        """Tokens the stream produced that never arrived (0 until the final count is known)."""
        if self.final_tokens is None:
            return 0
        return max(0, self.final_tokens - self.highest_index)

    @property
    def duplicated(self) -> int:
        """Tokens delivered more than once, or beyond what the stream says it produced."""
        beyond = 0 if self.final_tokens is None else max(0, self.highest_index - self.final_tokens)
        return self.repeats + beyond


class Outcome(enum.Enum):
    """How one stream ended for the load test; every started stream gets exactly one."""

    COMPLETED = "completed"
    """A ``stop`` event with finish reason ``stop`` or ``length`` (including a stop that came too late)."""
    STOPPED = "stopped"
    """Stopped over the control WebSocket: the ``stop`` event said ``cancelled``."""
    REJECTED = "rejected"
    """``POST /v1/streams`` answered with an error."""
    FAILED = "failed"
    """Anything else: an SSE ``error`` event, a failed stop, a connection error, a timeout."""
    NEVER_READ = "never_read"
    """A reader that sent its events request and then never read a byte, however it ended (one whose
    request did not go out failed)."""


class RunTotals:
    """The whole run's counters and histograms, fed by the driver as streams progress and end."""

    def __init__(self, *, max_value_ms: float = DEFAULT_MAX_VALUE_MS) -> None:
        self.started = 0
        self.open = 0
        self.outcomes: Counter[Outcome] = Counter()
        self.errors: Counter[str] = Counter()
        self.delivered = 0
        self.lost = 0
        self.duplicated = 0
        self.never_read_closed_by_server = 0
        self.ttft = LatencyHistogram(max_value_ms=max_value_ms)
        self.token_lag = LatencyHistogram(max_value_ms=max_value_ms)
        """Deltas published after the reader's ``GET`` was sent: how late the relay delivered them."""
        self.history_lag = LatencyHistogram(max_value_ms=max_value_ms)
        """Deltas published before the reader's ``GET`` was sent (they came from history): they waited for
        the reader to connect, so this counts the client's own delay, and TTFT already shows it."""
        self.after_ramp_lag = LatencyHistogram(max_value_ms=max_value_ms)
        """The deltas of :attr:`token_lag` published once the run's last stream had started: how late tokens
        are at full load, without the cost of streams starting (empty when streams start until the end)."""
        self.inter_token = LatencyHistogram(max_value_ms=max_value_ms)
        self.start = LatencyHistogram(max_value_ms=max_value_ms)
        self.rejected = LatencyHistogram(max_value_ms=max_value_ms)
        self.stop = LatencyHistogram(max_value_ms=max_value_ms)

    def stream_started(self) -> None:
        """A stream's ``POST`` is about to be sent."""
        self.started += 1
        self.open += 1

    def stream_ended(self, outcome: Outcome, tally: StreamTally | None = None) -> None:
        """A stream ended; ``tally`` (for streams that were read) adds its lost and duplicated tokens."""
        self.open -= 1
        self.outcomes[outcome] += 1
        if tally is not None:
            self.lost += tally.lost
            self.duplicated += tally.duplicated

    def error(self, code: str) -> None:
        """Count one error by its code (past ``MAX_ERROR_CODES`` distinct codes, new ones count as ``other``)."""
        code = code[:MAX_ERROR_CODE_CHARS]
        if code not in self.errors and len(self.errors) >= MAX_ERROR_CODES:
            code = "other"
        self.errors[code] += 1

    @property
    def ended(self) -> int:
        """Streams that have an outcome."""
        return sum(self.outcomes.values())

    def streams(self) -> dict[str, int]:
        """``{"started", "completed", "stopped", "rejected", "failed", "never_read"}``."""
        return {"started": self.started, **{outcome.value: self.outcomes[outcome] for outcome in Outcome}}


T = TypeVar("T")


class SampleSeries(Generic[T]):
    """Points in time order, at most ``max_points``: when full, every other point is dropped and
    from then on only every second offered point is kept (so the series spans the whole run)."""

    def __init__(self, *, max_points: int = DEFAULT_MAX_POINTS) -> None:
        if max_points < 2:
            raise ValueError(f"max_points must be at least 2, not {max_points}")
        self.max_points = max_points
        self.points: list[T] = []
        self._stride = 1
        self._offered = 0

    def add(self, point: T) -> None:
        """Offer one point."""
        keep = self._offered % self._stride == 0
        self._offered += 1
        if not keep:
            return
        if len(self.points) >= self.max_points:
            self.points = self.points[::2]
            self._stride *= 2
            if (self._offered - 1) % self._stride:
                return
        self.points.append(point)
