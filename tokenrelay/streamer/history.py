"""Reading one stream's past events (late readers and resumes): from its runner, else from JetStream.

The runner generating a stream (or one that finished it moments ago) answers from memory on
``tokenrelay.stream.<id>.replay`` (:mod:`tokenrelay.wire.replay`); that reply is complete, so the
reader needs no second look.  Otherwise (no responders, the runner let the stream go, or it did
not answer in time) :func:`tokenrelay.runtime.natsio.direct_get_pages` pages through JetStream with
batched direct gets; no consumer is created per reader.
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections.abc import AsyncGenerator, Callable, Iterable

from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from tokenrelay.runtime import natsio
from tokenrelay.wire import codec, replay, subjects
from tokenrelay.wire.codec import CodecError, UnknownMessageType
from tokenrelay.wire.messages import ReceivedEvent, ReplayRequest, UnknownEvent

log = logging.getLogger(__name__)

HistoryError = natsio.DirectGetError
RUNNER_REPLY_TIMEOUT_S = 1.0
"""A runner that has not answered a replay page in this long is passed over for JetStream."""


class Source(enum.StrEnum):
    """Where a history read was served from."""

    RUNNER = "runner"
    """Complete: every event published before the request (the reader's subscription sees the rest live)."""
    JETSTREAM = "jetstream"
    """What was stored when read: an event published a moment before may not be stored yet."""


class _NotHeld(Exception):
    """The runner does not hold this stream (or did not answer): read JetStream."""


class HistoryRead:
    """One read of a stream's history, ``batch`` events a page: iterate :meth:`pages`, then look at :attr:`source`."""

    def __init__(
        self, nc: NATS, stream_id: str, *, from_seq: int = 0, batch: int, unknown: Callable[[str], None]
    ) -> None:
        self._nc = nc
        self._stream_id = stream_id
        self._from_seq = from_seq
        self._batch = batch
        self._unknown = unknown
        """Told the type of each event of an unknown type read (it is skipped, its ``seq`` kept as seen)."""
        self.source: Source | None = None
        """Where the whole read came from, once :meth:`pages` is exhausted."""
        self.page_bytes = 0
        """The encoded bytes of the page :meth:`pages` yielded last."""

    async def pages(self) -> AsyncGenerator[list[ReceivedEvent]]:
        """The events in publish order from ``from_seq`` on (JetStream: from the start), malformed ones skipped
        and those of an unknown type as :class:`~tokenrelay.wire.messages.UnknownEvent`.

        Use under :func:`contextlib.aclosing` when you may stop early.
        """
        runner = self._runner_pages()
        async with contextlib.aclosing(runner):
            try:
                async for page in runner:
                    yield page
                self.source = Source.RUNNER
                return
            except _NotHeld:
                pass  # what the runner sent is kept (the reader drops repeats by seq); JetStream has it all
        self.source = Source.JETSTREAM
        stored = natsio.direct_get_pages(
            self._nc, subjects.EVENTS_STREAM, subjects.events(self._stream_id), batch=self._batch
        )
        async with contextlib.aclosing(stored):
            async for raw in stored:
                yield self._decode(data for _, data in raw)

    async def _runner_pages(self) -> AsyncGenerator[list[ReceivedEvent]]:
        """Pages from the runner (empty ones left out); :class:`_NotHeld` when it cannot serve them all."""
        from_seq = self._from_seq
        subject = subjects.replay(self._stream_id)
        while True:
            request = codec.encode(ReplayRequest(stream_id=self._stream_id, from_seq=from_seq, max_events=self._batch))
            try:
                reply = await self._nc.request(subject, request, timeout=RUNNER_REPLY_TIMEOUT_S)
                page = replay.decode_page(reply.data)
            except NoRespondersError:
                raise _NotHeld from None
            except NatsTimeoutError:
                log.info("stream %s: its runner did not answer a replay in time; reading JetStream", self._stream_id)
                raise _NotHeld from None
            except CodecError as exc:
                log.warning("stream %s: malformed replay page: %s", self._stream_id, exc)
                raise _NotHeld from None
            if not page.header.held:
                raise _NotHeld
            events = self._decode(page.events)
            if events:
                yield events
            if not page.header.more or not events:
                return
            from_seq = events[-1].seq + 1

    def _decode(self, raw: Iterable[bytes]) -> list[ReceivedEvent]:
        events: list[ReceivedEvent] = []
        self.page_bytes = 0
        for data in raw:
            self.page_bytes += len(data)
            try:
                event = codec.decode_received_event(data)
            except UnknownMessageType as exc:  # no seq: it holds no place in the stream
                self._unknown(exc.tag)
                continue
            except CodecError as exc:
                log.warning("skipping malformed stored event: %s", exc)
                continue
            if isinstance(event, UnknownEvent):
                self._unknown(event.tag)
            events.append(event)
        return events
