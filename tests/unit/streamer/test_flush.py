"""The shared flush clock: readers that must hold a write back share one timer, and none writes early."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from tokenrelay.streamer.flush import LAG_WEIGHT, TICKS_PER_INTERVAL, FlushClock


def _count_timers(loop: asyncio.AbstractEventLoop) -> list[float]:
    """Record the time of every ``call_at`` the loop is asked for from now on."""
    armed: list[float] = []
    call_at: Callable[..., asyncio.TimerHandle] = loop.call_at

    def counting(when: float, callback: Callable[..., Any], *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        armed.append(when)
        return call_at(when, callback, *args, **kwargs)

    loop.call_at = counting  # type: ignore[method-assign,assignment]
    return armed


def test_a_write_is_not_held_when_the_last_one_was_an_interval_ago_or_more() -> None:
    clock = FlushClock(0.010)
    assert clock.delay_s(last_write=1.0, now=1.010) == 0
    assert clock.delay_s(last_write=1.0, now=5.0) == 0
    assert clock.delay_s(last_write=1.0, now=1.004) == pytest.approx(0.006)


async def test_a_thousand_readers_due_within_one_tick_share_one_timer() -> None:
    loop = asyncio.get_running_loop()
    clock = FlushClock(0.040)
    tick_s = 0.040 / TICKS_PER_INTERVAL
    base = (int(loop.time() / tick_s) + 90_000) * tick_s  # a tick an hour ahead: nothing fires during the test
    armed = _count_timers(loop)
    readers = [
        asyncio.create_task(clock.wait_until(base + tick_s * i / 1000)) for i in range(1, 1000)
    ]  # all inside the tick that ends at base + tick_s
    for _ in range(3):
        await asyncio.sleep(0)
    assert len(armed) == 1 and armed[0] == pytest.approx(base + tick_s)
    assert clock.waiting == 999 and not any(reader.done() for reader in readers)
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    assert clock.waiting == 0 and not clock.ticks.armed


async def test_no_reader_returns_before_its_due_time() -> None:
    loop = asyncio.get_running_loop()
    clock = FlushClock(0.020)
    dues = [loop.time() + delay_s for delay_s in (0.003, 0.011, 0.017, 0.029)]
    returned = await asyncio.gather(*(_returned_at(clock, due) for due in dues))
    assert all(at >= due for at, due in zip(returned, dues, strict=True))


async def _returned_at(clock: FlushClock, due: float) -> float:
    await clock.wait_until(due)
    return asyncio.get_running_loop().time()


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


# The interval adapts to how late live events arrive


def test_the_interval_stays_at_the_configured_one_while_events_arrive_on_time() -> None:
    clock = FlushClock(0.010, max_interval_s=0.100)
    for _ in range(1000):
        clock.observe_lag(0.002)
    assert clock.interval_s == 0.010


def test_the_interval_follows_late_events_up_to_the_maximum_and_back_down() -> None:
    clock = FlushClock(0.010, max_interval_s=0.100)
    for _ in range(500):
        clock.observe_lag(0.040)
    assert clock.interval_s == pytest.approx(0.040, rel=0.01)  # held about as long as tokens already waited
    for _ in range(500):
        clock.observe_lag(5.0)
    assert clock.interval_s == 0.100  # never more than the maximum
    for _ in range(1000):
        clock.observe_lag(0.001)
    assert clock.interval_s == 0.010  # caught up: back to the configured interval


def test_one_late_event_moves_the_interval_by_a_fraction_of_its_lateness() -> None:
    clock = FlushClock(0.0, max_interval_s=0.100)
    clock.observe_lag(1.0)
    assert clock.interval_s == pytest.approx(LAG_WEIGHT * 1.0)
    assert clock.delay_s(last_write=1.0, now=1.0) == pytest.approx(LAG_WEIGHT)


def test_a_negative_lag_from_a_clock_ahead_counts_as_on_time() -> None:
    clock = FlushClock(0.010, max_interval_s=0.100)
    clock.observe_lag(-3.0)
    assert clock.lag_s == 0 and clock.interval_s == 0.010


def test_without_a_maximum_above_it_the_interval_is_fixed() -> None:
    clock = FlushClock(0.010)
    for _ in range(500):
        clock.observe_lag(1.0)
    assert clock.interval_s == 0.010
    with pytest.raises(ValueError, match="max_interval_s"):
        FlushClock(0.010, max_interval_s=0.005)


async def test_a_reader_waiting_on_a_grown_interval_is_woken_by_the_shared_tick() -> None:
    loop = asyncio.get_running_loop()
    clock = FlushClock(0.0, max_interval_s=0.040)  # no configured interval: ticks of a quarter of the maximum
    for _ in range(500):
        clock.observe_lag(1.0)
    due = loop.time() + clock.interval_s
    at = await _returned_at(clock, due)
    assert at >= due
