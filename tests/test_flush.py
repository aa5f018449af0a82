"""The shared flush clock: readers that must hold a write back share one timer, and none writes early."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from streamer.flush import TICKS_PER_INTERVAL, FlushClock


def _count_timers(loop: asyncio.AbstractEventLoop) -> list[float]:
    """Record the time of every ``call_at`` the loop is asked for from now on."""
    armed: list[float] = []
    call_at: Callable[..., asyncio.TimerHandle] = loop.call_at

    def counting(when: float, callback: Callable[..., Any], *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        armed.append(when)
        return call_at(when, callback, *args, **kwargs)

    loop.call_at = counting  # type: ignore[method-assign]
    return armed


def test_a_write_is_not_held_when_the_last_one_was_an_interval_ago_or_more() -> None:
    clock = FlushClock(0.010)
    assert clock.delay_s(last_write=1.0, now=1.010) == 0
    assert clock.delay_s(last_write=1.0, now=5.0) == 0
    assert clock.delay_s(last_write=1.0, now=1.004) == pytest.approx(0.006)


async def test_a_thousand_readers_due_within_one_tick_share_one_timer_and_none_returns_before_its_due_time() -> None:
    loop = asyncio.get_running_loop()
    clock = FlushClock(0.040)
    tick_s = 0.040 / TICKS_PER_INTERVAL
    base = (int(loop.time() / tick_s) + 20) * tick_s  # the start of a tick well ahead (200 ms: none is due yet)
    armed = _count_timers(loop)
    dues = [base + tick_s * i / 1000 for i in range(1, 1000)]  # all inside the tick that ends at base + tick_s
    returned: list[float] = []

    async def reader(due: float) -> None:
        await clock.wait_until(due)
        returned.append(loop.time())

    await asyncio.gather(*(reader(due) for due in dues))
    assert len(armed) == 1
    assert min(returned) >= max(dues)
    assert clock.waiting == 0


async def test_an_earlier_tick_rearms_the_timer_and_later_ticks_follow_in_order() -> None:
    loop = asyncio.get_running_loop()
    clock = FlushClock(0.020)
    order: list[str] = []

    async def reader(name: str, delay_s: float) -> None:
        await clock.wait_until(loop.time() + delay_s)
        order.append(name)

    await asyncio.gather(reader("late", 0.015), reader("early", 0.002), reader("middle", 0.008))
    assert order == ["early", "middle", "late"]


async def test_a_reader_due_now_or_in_the_past_is_not_held() -> None:
    loop = asyncio.get_running_loop()
    clock = FlushClock(0.010)
    armed = _count_timers(loop)
    await clock.wait_until(loop.time() - 1)
    assert armed == [] and clock.waiting == 0


async def test_a_cancelled_waiter_leaves_nothing_behind() -> None:
    loop = asyncio.get_running_loop()
    clock = FlushClock(1.0)
    waiter = asyncio.create_task(clock.wait_until(loop.time() + 0.5))
    await asyncio.sleep(0)
    assert clock.waiting == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert clock.waiting == 0


def test_a_flush_interval_of_zero_never_holds_a_write() -> None:
    clock = FlushClock(0.0)
    assert clock.delay_s(last_write=1.0, now=1.0) == 0


def test_a_negative_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        FlushClock(-0.001)
