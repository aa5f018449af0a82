"""Sans-I/O merge of replayed history and live events for one reader.

A reader subscribes to live events first, then reads history; the two overlap and may
arrive in any order.  :class:`Replay` releases events strictly in ``seq`` order, drops
duplicates, holds events that arrive ahead of a gap, and skips what the reader's cursor
says it already has.  It never guesses: a cursor from another history (epoch mismatch) or
one that does not fall on an event boundary is an error, and so is a gap that history
cannot fill.  An out-of-band terminal error (``seq`` -1, published when a runner is lost)
ends the reader wherever it is.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from tokenrelay.wire.cursor import Cursor
from tokenrelay.wire.errors import ErrorCode
from tokenrelay.wire.messages import OUT_OF_BAND_SEQ, StreamDelta, StreamEnd, StreamError, StreamEvent, StreamStart

DEFAULT_MAX_HELD_EVENTS = 4096
EVENT_OVERHEAD_BYTES = 256
"""What a held event costs beyond its text: the decoded object, its fields and its dict slot
(a decoded one-word ``StreamDelta`` measured ~280 B in all with tracemalloc)."""


def held_size(event: StreamEvent) -> int:
    """What holding ``event`` is counted as, in bytes."""
    if isinstance(event, StreamDelta):
        return sys.getsizeof(event.text) + EVENT_OVERHEAD_BYTES
    return EVENT_OVERHEAD_BYTES


@dataclass(frozen=True, slots=True)
class ReplayError:
    """The reader cannot be served from here on; send this as its terminal ``error``."""

    code: ErrorCode
    message: str


class Replay:
    """Orders one reader's events by ``seq`` from history and live delivery.

    ``max_held_events`` bounds events held ahead of a gap; beyond it the reader fails
    with ``slow_consumer`` (it can resume from its cursor).
    """

    def __init__(
        self, *, epoch: str, resume: Cursor | None = None, max_held_events: int = DEFAULT_MAX_HELD_EVENTS
    ) -> None:
        self.epoch = epoch
        self.next_seq = 0
        self.finished = False
        self._resume_offset = resume.offset if resume is not None else 0
        self._resumed = resume is not None
        self._held: dict[int, StreamEvent] = {}
        self._held_bytes = 0
        self._max_held = max_held_events
        self._abandoned = False

    @property
    def held_bytes(self) -> int:
        """Bytes (by :func:`held_size`) of the events held ahead of a gap."""
        return self._held_bytes

    @property
    def resume_offset(self) -> int | None:
        """Tokens the client already had when it resumed (``None`` for a reader from the start)."""
        return self._resume_offset if self._resumed else None

    def abandon(self) -> None:
        """The reader failed: drop what is held and take nothing more (``finished`` is left as it was)."""
        self._abandoned = True
        self._release_all()

    def _release_all(self) -> None:
        self._held.clear()
        self._held_bytes = 0

    @property
    def waiting_on_gap(self) -> bool:
        """Events are held that cannot be released until earlier ones arrive."""
        return bool(self._held)

    def push(self, event: StreamEvent) -> list[StreamEvent] | ReplayError:
        """Take one event from history or live; return what may be sent now, in order."""
        if event.seq == OUT_OF_BAND_SEQ and isinstance(event, StreamError) and not self.finished:
            self.finished = True
            self._release_all()
            return [event]
        if self.finished or self._abandoned or event.seq < self.next_seq or event.seq in self._held:
            return []
        if event.seq == self.next_seq and not self._held:
            # In step (every live event of a caught-up reader): nothing to hold or reorder.
            self.next_seq += 1
            admitted = self._admit(event)
            if admitted is None:
                return []
            return admitted if isinstance(admitted, ReplayError) else [admitted]
        if event.seq != self.next_seq and len(self._held) >= self._max_held:
            return ReplayError(ErrorCode.SLOW_CONSUMER, "too many events held while catching up")
        self._held[event.seq] = event
        self._held_bytes += held_size(event)
        out: list[StreamEvent] = []
        while not self.finished and self.next_seq in self._held:
            ready = self._held.pop(self.next_seq)
            self._held_bytes -= held_size(ready)
            self.next_seq += 1
            admitted = self._admit(ready)
            if isinstance(admitted, ReplayError):
                return admitted
            if admitted is not None:
                out.append(admitted)
        return out

    def _admit(self, event: StreamEvent) -> StreamEvent | ReplayError | None:
        if isinstance(event, StreamStart):
            if event.epoch != self.epoch:
                return ReplayError(ErrorCode.RESUME_UNAVAILABLE, "the stream's history was replaced")
            return None if self._resumed else event
        if isinstance(event, StreamDelta):
            if event.index <= self._resume_offset:
                return None
            if event.index - event.count < self._resume_offset:
                return ReplayError(ErrorCode.BAD_REQUEST, "the cursor is not a position this stream issued")
            return event
        assert isinstance(event, StreamEnd | StreamError)
        if event.tokens < self._resume_offset:
            return ReplayError(ErrorCode.BAD_REQUEST, "the cursor is past the end of the stream")
        self.finished = True
        self._release_all()
        return event
