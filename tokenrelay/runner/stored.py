"""A stored response's events, held by the runner that generates its stream until the end, then kept.

A stored response (``POST /v1/responses`` with ``store``) keeps every event of its stream: the runner holds them as
it publishes them and hands them all to the response store before it publishes the end, so whoever sees the end
finds them.  Past :data:`~tokenrelay.runtime.responses.MAX_STORED_EVENTS_BYTES` nothing is kept.

A runner that continues a stream (its :class:`~tokenrelay.wire.messages.Continuation`) publishes from the fence on;
everything before it was published by the owners it took over from, and JetStream holds it.  A stored response
(``POST /v1/responses`` with ``store``) keeps every event of its stream, so the continuing runner reads those back
first.  What a newer generation cut off is void (:class:`~tokenrelay.wire.fencing.Fences`) and left out; a history
with a hole (expired, unreadable) gives nothing, never a partial response.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Iterable

from nats.aio.client import Client as NATS

from tokenrelay.runtime import natsio
from tokenrelay.runtime.responses import MAX_STORED_EVENTS_BYTES, EventsKeeper
from tokenrelay.wire import codec, subjects
from tokenrelay.wire.codec import CodecError
from tokenrelay.wire.fencing import Fences
from tokenrelay.wire.messages import StreamEnd, StreamError, StreamEvent, StreamFence

log = logging.getLogger(__name__)


def earlier_events(stored: Iterable[bytes], *, fence: int) -> list[bytes] | None:
    """The encoded events of ``seq`` 0 to ``fence - 1`` among ``stored`` (a stream's history in publish order), one
    per ``seq``, void ones left out; ``None`` when one of them is missing."""
    decoded = list[tuple[StreamEvent | StreamFence, bytes]]()
    for data in stored:
        try:
            decoded.append((codec.decode_event(data), data))
        except CodecError:
            continue  # a malformed or unknown event holds no place in the response
    fences = Fences.of(event for event, _ in decoded)
    kept: dict[int, bytes] = {}
    for event, data in decoded:  # only once every fence is known: a later one voids what came before it
        if isinstance(event, StreamFence):
            continue
        if 0 <= event.seq < fence and event.seq not in kept and not fences.void(getattr(event, "gen", 0), event.seq):
            kept[event.seq] = data
    if len(kept) != fence:
        return None
    return [kept[seq] for seq in range(fence)]


async def read_earlier_events(nc: NATS, stream_id: str, *, fence: int) -> list[bytes] | None:
    """:func:`earlier_events` of the stream's history in JetStream; ``None`` (logged) when it cannot be read whole."""
    try:
        stored = await natsio.direct_get(nc, subjects.EVENTS_STREAM, subjects.events(stream_id))
    except Exception as exc:
        log.warning("stream %s: its earlier events could not be read; the response is not kept: %r", stream_id, exc)
        return None
    events = earlier_events((data for _, data in stored), fence=fence)
    if events is None:
        log.warning("stream %s: its earlier events are not all in history; the response is not kept", stream_id)
    return events


class KeptEvents:
    """One stored response's events as its stream publishes them, kept at its end (a terminal event)."""

    def __init__(
        self, keeper: EventsKeeper, stream_id: str, *, earlier: Awaitable[list[bytes] | None] | None = None
    ) -> None:
        self._keeper = keeper
        self._stream_id = stream_id
        self._earlier = earlier
        """A moved stream's :func:`read_earlier_events`, which come first (``None``: the stream never moved)."""
        self._events: list[bytes] | None = []
        """``None`` once nothing is to be kept (too large, or kept already)."""
        self._bytes = 0

    async def add(self, event: StreamEvent, data: bytes) -> None:
        """Hold one published event (``data``, its encoding); at a terminal event keep them all."""
        if self._events is None:
            return
        self._events.append(data)
        if not self._fits(len(data)):
            return
        if isinstance(event, StreamEnd | StreamError):
            events, self._events = self._events, None
            if self._earlier is not None:
                earlier = await self._earlier
                if earlier is None or not self._fits(sum(map(len, earlier))):
                    return  # never a partial response (why is logged)
                events = earlier + events
            await self._keeper.keep(self._stream_id, events)

    def _fits(self, size: int) -> bool:
        """Count ``size`` more bytes; whether they all still fit (past the bound nothing is kept, logged)."""
        self._bytes += size
        if self._bytes <= MAX_STORED_EVENTS_BYTES:
            return True
        log.warning("stream %s: over %d bytes of events; the response is not kept", self._stream_id,
                    MAX_STORED_EVENTS_BYTES)  # fmt: skip
        self._events = None
        return False
