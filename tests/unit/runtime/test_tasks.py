"""Spec of a component's background tasks: held until done, cancelled or awaited at close."""

from __future__ import annotations

import asyncio

from tokenrelay.runtime.tasks import TaskSet


async def test_a_spawned_task_runs_to_the_end_though_nobody_holds_it() -> None:
    tasks, release, done = TaskSet(), asyncio.Event(), asyncio.Event()

    async def work() -> None:
        await release.wait()
        done.set()

    tasks.spawn(work(), name="work")
    # Released after the task's first step: it suspends once, and must be resumed, not just started.
    asyncio.get_running_loop().call_soon(release.set)
    await asyncio.wait_for(done.wait(), 5)


async def test_cancel_stops_every_running_task() -> None:
    tasks, started, cancelled = TaskSet(), asyncio.Event(), asyncio.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    tasks.spawn(forever())
    await started.wait()
    tasks.cancel()
    await asyncio.wait_for(cancelled.wait(), 5)


async def test_wait_returns_when_every_task_has_finished_and_does_not_raise_their_errors() -> None:
    tasks, release, finished = TaskSet(), asyncio.Event(), []

    async def ok() -> None:
        await release.wait()
        finished.append("ok")

    async def fails() -> None:
        raise RuntimeError("boom")

    tasks.spawn(ok())
    tasks.spawn(fails())
    # Released only once wait() is waiting: wait() must wait for a task that is not done yet.
    asyncio.get_running_loop().call_soon(release.set)
    await asyncio.wait_for(tasks.wait(), 5)
    assert finished == ["ok"]
    await tasks.wait()  # nothing left: returns at once
