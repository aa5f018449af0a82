"""Decode steps shared by every stream of one engine, as a batching inference engine makes them.

A batching engine (vLLM, TGI) does not wake once per token per sequence: one decode step
produces the next token of every running sequence at the same instant.  :class:`StepClock`
gives the synthetic engine that shape.  A token due at time ``t`` is released at the first
step boundary at or after ``t`` (boundaries are multiples of ``step_s`` on the loop's clock),
and every token due in the same step is released together, in one pass of the event loop (one loop timer
serves all steps waited for: :class:`~tokenrelay.runtime.ticks.Ticks`).
The runner then publishes that step's events together, and nats-py's flusher sends them in one
socket write instead of one per token.  The schedule stays anchored to each stream's start, so
the rate does not drift; a token is late by less than ``step_s``.

With ``step_s == 0`` every token is released at its own time (one timer per token), as before.

:func:`step_of` is the pure part: which step releases a token due at ``due_s``.
"""

from __future__ import annotations

import asyncio
import math

from tokenrelay.runtime.ticks import Ticks

STEP_EPSILON_S = 1e-9
"""A due time this close above a boundary belongs to that boundary (float noise in ``start + i * interval``)."""


def step_of(due_s: float, step_s: float) -> int:
    """Index of the first step boundary at or after ``due_s`` (boundary ``k`` is at ``k * step_s``)."""
    if step_s <= 0:
        raise ValueError("step_s must be > 0")
    return math.ceil(due_s / step_s - STEP_EPSILON_S)


class StepClock:
    """Releases waiters at shared step boundaries (:class:`~tokenrelay.runtime.ticks.Ticks`): no timer per token."""

    def __init__(self, step_s: float) -> None:
        if step_s < 0:
            raise ValueError("step_s must be >= 0")
        self.step_s = step_s
        self._ticks = Ticks(step_s)

    @property
    def steps_pending(self) -> int:
        """Steps somebody waits for now (for tests)."""
        return self._ticks.ticks_pending

    @property
    def waiting(self) -> int:
        """Tokens waiting for a step now (for tests)."""
        return self._ticks.waiting

    async def until(self, due_s: float) -> None:
        """Return at the step that releases ``due_s`` (loop time); always yields once, so a cancel can land."""
        loop = asyncio.get_running_loop()
        if self.step_s == 0:
            await asyncio.sleep(max(0.0, due_s - loop.time()))
            return
        step = step_of(due_s, self.step_s)
        if step * self.step_s <= loop.time():
            await asyncio.sleep(0)  # due already: no timer, but a pending cancel still lands here
            return
        await self._ticks.wait_for(step)
