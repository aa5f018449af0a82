"""Shared ticks on the event loop's clock: many waiters, one timer.

Waiters that only need to wake "at the first tick at or after some time" do not each need a loop
timer.  :class:`Ticks` keeps them by tick index (tick ``k`` is at ``k * tick_s`` on the loop clock)
and holds one timer, for the earliest tick anyone waits on; when it fires it releases every waiter
of every tick that is due and arms the next.  A waiter that is cancelled leaves nothing behind, and
with nobody waiting no timer is held.

Used by the streamer's flush clock (readers holding a write back) and the synthetic engine's decode
steps (tokens due in the same step).
"""

from __future__ import annotations

import asyncio


class Ticks:
    """Waiters released at ticks ``k * tick_s`` of the loop clock, by one timer for the earliest one."""

    def __init__(self, tick_s: float) -> None:
        if tick_s < 0:
            raise ValueError("tick_s must be >= 0")
        self.tick_s = tick_s
        self._waiting: dict[int, list[asyncio.Future[None]]] = {}
        """Waiters by the tick they wait for."""
        self._timer: asyncio.TimerHandle | None = None
        self._timer_tick: int | None = None

    @property
    def waiting(self) -> int:
        """Waiters now."""
        return sum(len(futures) for futures in self._waiting.values())

    @property
    def ticks_pending(self) -> int:
        """Ticks somebody waits for now."""
        return len(self._waiting)

    @property
    def armed(self) -> bool:
        """Whether a loop timer is held now."""
        return self._timer is not None

    async def wait_for(self, tick: int) -> None:
        """Return when tick ``tick`` (at ``tick * tick_s``) has come."""
        loop = asyncio.get_running_loop()
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
        self._timer = loop.call_at(tick * self.tick_s, self._fire, loop, tick)

    def _fire(self, loop: asyncio.AbstractEventLoop, fired: int) -> None:
        self._timer = self._timer_tick = None
        for tick in sorted(t for t in self._waiting if t <= fired):
            for future in self._waiting.pop(tick):
                if not future.done():
                    future.set_result(None)
        if self._waiting:
            self._arm(loop, min(self._waiting))
