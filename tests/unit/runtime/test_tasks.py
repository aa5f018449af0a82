"""Spec of a component's background tasks: held until done, cancelled or awaited at close."""

from __future__ import annotations

import asyncio

from tokenrelay.runtime.tasks import TaskSet


async def test_a_spawned_task_runs_to_the_end_though_nobody_holds_it() -> None:
    tasks, done = TaskSet(), asyncio.Event()

    async def work() -> None:
        await asyncio.sleep(0.01)
        done.set()

    tasks.spawn(work(), name="work")
    await asyncio.wait_for(done.wait(), 5)


async def test_cancel_stops_every_running_task() -> None:
    tasks, cancelled = TaskSet(), asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    tasks.spawn(forever())
    await asyncio.sleep(0)
    tasks.cancel()
    await asyncio.wait_for(cancelled.wait(), 5)


async def test_wait_returns_when_every_task_has_finished_and_does_not_raise_their_errors() -> None:
    tasks, finished = TaskSet(), []

    async def ok() -> None:
        await asyncio.sleep(0.01)
        finished.append("ok")

    async def fails() -> None:
        raise RuntimeError("boom")

    tasks.spawn(ok())
    tasks.spawn(fails())
    await asyncio.wait_for(tasks.wait(), 5)
    assert finished == ["ok"]
    await tasks.wait()  # nothing left: returns at once
