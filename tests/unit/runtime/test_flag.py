"""Spec of the wake-up flag: what asyncio.Event does for its users, in 48 bytes."""

from __future__ import annotations

import asyncio
import sys

import pytest

from tokenrelay.runtime.flag import Flag


async def test_a_wait_on_a_set_flag_returns_at_once() -> None:
    flag = Flag()
    flag.set()
    assert flag.is_set()
    assert await flag.wait() is True


async def test_set_wakes_every_waiter_and_clear_makes_the_next_wait_block() -> None:
    flag = Flag()
    waiters = [asyncio.create_task(flag.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    flag.set()
    assert await asyncio.gather(*waiters) == [True, True, True]
    flag.clear()
    assert not flag.is_set()
    late = asyncio.create_task(flag.wait())
    await asyncio.sleep(0)
    assert not late.done()
    flag.set()
    assert await late is True


async def test_setting_a_set_flag_again_changes_nothing() -> None:
    flag = Flag()
    flag.set()
    flag.set()
    assert flag.is_set()


async def test_a_cancelled_wait_leaves_nothing_behind_and_the_others_still_wake() -> None:
    flag = Flag()
    cancelled, kept = asyncio.create_task(flag.wait()), asyncio.create_task(flag.wait())
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert flag._waiters is not None and len(flag._waiters) == 1
    flag.set()
    assert await kept is True
    assert flag._waiters is None


async def test_a_wait_cut_short_by_a_timeout_leaves_nothing_behind() -> None:
    flag = Flag()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(flag.wait(), 0.001)
    assert flag._waiters is None


def test_a_flag_is_much_smaller_than_an_event() -> None:
    flag = Flag()
    assert not hasattr(flag, "__dict__")
    assert sys.getsizeof(flag) <= 64
