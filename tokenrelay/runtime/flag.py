"""A wake-up flag for objects kept per connection: :class:`asyncio.Event`'s use without its memory.

An ``asyncio.Event`` holds an instance dictionary and an empty ``collections.deque`` of waiters: 1,112 bytes
on CPython 3.11, before anyone waits.  A streamer keeps three per SSE reader (wake its writer, a write
completed, a gap showed), 3.3 KiB of each reader's ~18 KiB.  :class:`Flag` keeps a boolean and a list made
only while someone waits (48 bytes).  Same meaning: :meth:`set` wakes every waiter, :meth:`clear` makes later
waits block, a cancelled wait leaves nothing behind.  Not thread-safe, like the event it replaces.
"""

from __future__ import annotations

import asyncio
from typing import Literal


class Flag:
    """Set, clear, test and wait, as :class:`asyncio.Event`."""

    __slots__ = ("_value", "_waiters")

    def __init__(self) -> None:
        self._value = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        """Set it and wake every waiter (a waiter whose wait was cancelled is passed over)."""
        if self._value:
            return
        self._value = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> Literal[True]:
        """Return at once if set, else once :meth:`set` is called."""
        if self._value:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = [waiter]
        else:
            self._waiters.append(waiter)
        try:
            await waiter
            return True
        finally:
            waiters = self._waiters
            if waiters is not None and waiter in waiters:  # cancelled before it was set
                waiters.remove(waiter)
                if not waiters:
                    self._waiters = None
