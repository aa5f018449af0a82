"""One timer for every reader that must wait before its next write (no timer per reader).

A reader writes at once unless its last write was less than ``interval_s`` ago; then it waits
until ``last_write + interval_s`` so what arrives meanwhile goes out merged in one write.  With
thousands of readers on fast streams, one ``sleep`` each would be thousands of timers a second.
Instead the readers that must wait join a shared tick: ticks fall on multiples of
``interval_s / TICKS_PER_INTERVAL`` of the loop clock, a reader joins the first tick at or after
its due time (so it never writes sooner than ``interval_s`` after its last write, and at most one
tick later than that), and one loop timer, for the earliest tick anyone waits on, wakes them all.

The interval adapts to load (:meth:`FlushClock.observe_lag`): while live events reach the streamer on
time it is the configured ``interval_s``; while they arrive late (the streamer, or the machine, cannot
keep up) it follows their average lateness, up to ``max_interval_s``.  A saturated streamer then makes
fewer, larger writes, and its CPU per token falls until it catches up: at 1,000 streams x 20 tokens/s on
two cores, a fixed 10 ms interval measured a token lag p99 of 4.5 s and 58 µs of streamer CPU per token,
a 100 ms one 2.4 s and 45 µs (``python -m bench.compare --scenario active``, three rounds each).
"""

from __future__ import annotations

import asyncio
import math

from tokenrelay.runtime.intervals import AdaptiveInterval
from tokenrelay.runtime.ticks import Ticks

TICKS_PER_INTERVAL = 4
"""Tick granularity as a fraction of the configured flush interval: a due write waits at most a quarter of it more."""
LAG_WEIGHT = 0.02
"""Weight of one live event's lateness in the running average the interval follows (about the last 50 events)."""


class FlushClock(AdaptiveInterval):
    """Shared wake-ups for readers holding back a write until ``interval_s`` after their last one.

    ``interval_s`` starts at the configured interval and moves between it and ``max_interval_s`` (the same
    by default: a fixed interval) with the lateness of live events (:meth:`observe_lag`).
    """

    def __init__(self, interval_s: float, *, max_interval_s: float | None = None) -> None:
        super().__init__(interval_s, max_interval_s=max_interval_s)
        self.lag_s = 0.0
        """The running average of how late live events arrive (seconds after they were published)."""
        self.observed = 0
        """Live events whose lateness was observed so far."""
        self.ticks = Ticks((self.base_interval_s or self.max_interval_s) / TICKS_PER_INTERVAL)
        """The readers waiting, by the tick they wait for."""

    def observe_lag(self, lag_s: float) -> None:
        """One live event arrived ``lag_s`` after it was published: the interval follows the average lateness.

        On time (an average below the configured interval) changes nothing.  Late, each reader's writes are
        held up to that average (at most ``max_interval_s``): a token then waits at most about as long
        again as it already did, and each write carries the tokens of that time, not one.

        Lateness is measured against the runner's wall clock: a runner on another host whose clock is behind
        this one's looks late by the difference, which can hold writes by at most ``max_interval_s`` (keep
        clocks in sync, or set the maximum to the configured interval); one ahead looks on time.
        """
        self.observed += 1
        self.lag_s += (max(lag_s, 0.0) - self.lag_s) * LAG_WEIGHT
        if self.adapts:
            self.follow(self.lag_s)

    @property
    def waiting(self) -> int:
        """Readers waiting for a tick now."""
        return self.ticks.waiting

    def delay_s(self, last_write: float, now: float) -> float:
        """How long a write that is ready at ``now`` must wait (0: write at once)."""
        return max(0.0, last_write + self.interval_s - now)

    async def wait_until(self, due: float) -> None:
        """Return at the first tick at or after ``due`` (loop clock)."""
        tick_s = self.ticks.tick_s
        if tick_s <= 0 or due <= asyncio.get_running_loop().time():
            return
        await self.ticks.wait_for(math.ceil(due / tick_s))


class LagReporter:
    """What a streamer tells the runners about its lateness, one decision per report interval (sans-I/O).

    Late (the running average above the configured flush interval, with live events since the last decision):
    report it.  On time again, or no live event since the last decision (an idle streamer is behind on
    nothing, though its average keeps the value of its last events): report 0 once, then nothing.
    """

    def __init__(self, flush: FlushClock) -> None:
        self._flush = flush
        self._seen = flush.observed
        self._late = False

    def next(self) -> float | None:
        """The lateness to report now in seconds (0: on time again), or ``None`` for no report."""
        flush = self._flush
        active, self._seen = flush.observed != self._seen, flush.observed
        if active and flush.lag_s > flush.base_interval_s:
            self._late = True
            return flush.lag_s
        if self._late:
            self._late = False
            return 0.0
        return None
