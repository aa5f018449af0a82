"""Tasks a role starts and does not await: held here until they finish (the event loop keeps only weak references)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class TaskSet:
    """Background tasks of one component: start them with :meth:`spawn`; :meth:`cancel` or :meth:`wait` at close."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None], *, name: str | None = None) -> None:
        """Run ``coro`` in a task of its own, referenced until it is done."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel(self) -> None:
        """Cancel every task still running."""
        for task in list(self._tasks):
            task.cancel()

    async def wait(self) -> None:
        """Wait until every task still running has finished (their exceptions are not raised here)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
