"""One timer for every reader that must wait before its next write (no timer per reader).

A reader writes at once unless its last write was less than ``interval_s`` ago; then it waits
until ``last_write + interval_s`` so what arrives meanwhile goes out merged in one write.  With
thousands of readers on fast streams, one ``sleep`` each would be thousands of timers a second.
Instead the readers that must wait join a shared tick: ticks fall on multiples of
``interval_s / TICKS_PER_INTERVAL`` of the loop clock, a reader joins the first tick at or after
its due time (so it never writes sooner than ``interval_s`` after its last write, and at most one
tick later than that), and one loop timer, for the earliest tick anyone waits on, wakes them all.
"""

from __future__ import annotations

import asyncio
import math

TICKS_PER_INTERVAL = 4
"""Tick granularity as a fraction of the flush interval: a due write waits at most ``interval_s / 4`` more."""


class FlushClock:
    """Shared wake-ups for readers holding back a write until ``interval_s`` after their last one."""

    def __init__(self, interval_s: float) -> None:
        if interval_s < 0:
            raise ValueError("interval_s must be >= 0")
        self.interval_s = interval_s
        self._tick_s = interval_s / TICKS_PER_INTERVAL
        self._waiting: dict[int, list[asyncio.Future[None]]] = {}
        """Readers by the tick (index on the loop clock) they wait for."""
        self._timer: asyncio.TimerHandle | None = None
        self._timer_tick: int | None = None

    @property
    def waiting(self) -> int:
        """Readers waiting for a tick now."""
        return sum(len(futures) for futures in self._waiting.values())

    def delay_s(self, last_write: float, now: float) -> float:
        """How long a write that is ready at ``now`` must wait (0: write at once)."""
        return max(0.0, last_write + self.interval_s - now)

    async def wait_until(self, due: float) -> None:
        """Return at the first tick at or after ``due`` (loop clock)."""
        loop = asyncio.get_running_loop()
        if self._tick_s <= 0 or due <= loop.time():
            return
        tick = math.ceil(due / self._tick_s)
        future = loop.create_future()
        self._waiting.setdefault(tick, []).append(future)
        if self._timer_tick is None or tick < self._timer_tick:
            self._arm(loop, tick)
        try:
            await future
        finally:
            futures = self._waiting.get(tick)
            if futures is not None and future in futures:  # cancelled while waiting: leave no dead entry
                futures.remove(future)
                if not futures:
                    del self._waiting[tick]
                if not self._waiting and self._timer is not None:  # nobody waits: hold no timer
                    self._timer.cancel()
                    self._timer = self._timer_tick = None

    def _arm(self, loop: asyncio.AbstractEventLoop, tick: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_tick = tick
        self._timer = loop.call_at(tick * self._tick_s, self._fire, loop, tick)

    def _fire(self, loop: asyncio.AbstractEventLoop, fired: int) -> None:
        self._timer = self._timer_tick = None
        for tick in sorted(t for t in self._waiting if t <= fired):
            for future in self._waiting.pop(tick):
                if not future.done():
                    future.set_result(None)
        if self._waiting:
            self._arm(loop, min(self._waiting))
