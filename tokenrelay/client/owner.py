"""What a :class:`~tokenrelay.client.stream.Stream` needs of the client that made it.

A stream forwards its commands (stop, feedback) to its client and reads through the client's HTTP
connection pool; it knows the client only as a :class:`StreamOwner`, so imports go one way:
``client`` imports ``stream``, and both import this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import aiohttp


@dataclass(frozen=True, slots=True)
class Stopped:
    """The gateway's answer to a stop: the stream's final state once generation halted.

    ``halted_ts`` is the wall-clock time the engine stopped (``None`` if it had already finished).
    """

    stream_id: str
    tokens: int
    finish_reason: str | None
    halted_ts: float | None


class StreamOwner(Protocol):
    """The client a stream belongs to (:class:`~tokenrelay.client.Client` is one)."""

    async def stop(self, stream_id: str) -> Stopped:
        """Stop a stream; returns once the runner confirmed that generation halted."""
        ...

    async def feedback(self, stream_id: str, rating: Literal["up", "down"], comment: str | None = None) -> None:
        """Rate a stream; returns once the gateway stored it."""
        ...

    async def http_session(self) -> aiohttp.ClientSession:
        """The HTTP connection pool that the stream's SSE connections use."""
        ...
