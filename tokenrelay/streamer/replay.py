"""Sans-I/O merge of replayed history and live events for one reader.

A reader subscribes to live events first, then reads history; the two overlap and may
arrive in any order.  :class:`Replay` releases events strictly in ``seq`` order, drops
duplicates, holds events that arrive ahead of a gap, and skips what the reader's cursor
says it already has.  It never guesses: a cursor from another history (epoch mismatch) or
one that does not fall on an event boundary is an error, and so is a gap that history
cannot fill.  An out-of-band terminal error (``seq`` -1, published when a runner is lost)
ends the reader wherever it is.  A stream that moved to another runner (``wire/fencing.py``) has events of
several generations: those an older generation published from a newer one's fence on are void, and dropped; an
event of the second or a later generation waits until every older generation's fence is known, so that what was
released before it can be checked (a reader that was sent void events ends as ``runner_lost``, never silently).
What it holds ahead of a gap is bounded by its reader, which
asks :func:`~tokenrelay.streamer.disconnect.decide` after every push (:attr:`Replay.held_events`,
:attr:`Replay.held_bytes`) and abandons the replay past the limits.
"""

from __future__ import annotations

import enum
import sys
from dataclasses import dataclass

from tokenrelay.wire.cursor import Cursor
from tokenrelay.wire.errors import ErrorCode
from tokenrelay.wire.fencing import MAX_GENERATIONS, Fences
from tokenrelay.wire.messages import (
    OUT_OF_BAND_SEQ,
    ReasoningDelta,
    ReceivedEvent,
    StreamDelta,
    StreamEnd,
    StreamError,
    StreamEvent,
    StreamFence,
    StreamStart,
    ToolCallDelta,
    UnknownEvent,
)

EVENT_OVERHEAD_BYTES = 256
"""What a held event costs beyond its text: the decoded object, its fields and its dict slot
(a decoded one-word ``StreamDelta`` measured ~280 B in all with tracemalloc)."""


CONTENT_EVENTS = (StreamDelta, ReasoningDelta, ToolCallDelta)
"""The events that carry tokens (text first: the common case is checked first)."""


def held_size(event: ReceivedEvent) -> int:
    """What holding ``event`` is counted as, in bytes."""
    if isinstance(event, StreamDelta | ReasoningDelta):
        return sys.getsizeof(event.text) + EVENT_OVERHEAD_BYTES
    if isinstance(event, ToolCallDelta):
        return sys.getsizeof(event.arguments) + EVENT_OVERHEAD_BYTES
    return EVENT_OVERHEAD_BYTES


class MergeState(enum.Enum):
    """Where one reader's merge stands; only an open one takes events."""

    OPEN = "open"
    FINISHED = "finished"
    """Its terminal event was released."""
    ABANDONED = "abandoned"
    """Its reader failed: what it held is dropped."""


_OPEN, _FINISHED, _ABANDONED = MergeState.OPEN, MergeState.FINISHED, MergeState.ABANDONED


@dataclass(frozen=True, slots=True)
class ReplayError:
    """The reader cannot be served from here on; send this as its terminal ``error``."""

    code: ErrorCode
    message: str


class Replay:
    """Orders one reader's events by ``seq`` from history and live delivery."""

    def __init__(self, *, epoch: str, resume: Cursor | None = None) -> None:
        self.epoch = epoch
        self.next_seq = 0
        self._state = _OPEN
        self._resume_offset = resume.offset if resume is not None else 0
        self._resumed = resume is not None
        self._held: dict[int, ReceivedEvent] = {}
        self._fences = Fences()
        self._last_gen = 0
        """The newest generation released."""
        self._gen_starts: list[tuple[int, int]] = []
        """``(seq, gen)`` of the first event released of each generation newer than all released before it.
        Released generations never go down (an older one's events past a known fence are void), so the generation
        released at a seq is that of the last start at or before it; one entry per move at most."""
        # Plain attributes, not properties: the reader reads both for every event it is given.
        self.held_events = 0
        """Events held ahead of a gap (kept by :meth:`push`)."""
        self.held_bytes = 0
        """Bytes (by :func:`held_size`) of the events held ahead of a gap (kept by :meth:`push`)."""

    @property
    def state(self) -> MergeState:
        """Whether it takes events (open), released its terminal event (finished) or was abandoned."""
        return self._state

    @property
    def finished(self) -> bool:
        """Its terminal event was released."""
        return self._state is _FINISHED

    @property
    def resume_offset(self) -> int | None:
        """Tokens the client already had when it resumed (``None`` for a reader from the start)."""
        return self._resume_offset if self._resumed else None

    def abandon(self) -> None:
        """The reader failed: drop what is held and take nothing more (a finished merge stays finished)."""
        if self._state is _OPEN:
            self._end(_ABANDONED)

    def _end(self, state: MergeState) -> None:
        """Leave ``open`` for good: nothing is held any more."""
        self._state = state
        self._held.clear()
        self.held_events = self.held_bytes = 0

    @property
    def waiting_on_gap(self) -> bool:
        """Events are held that cannot be released until earlier ones arrive."""
        return bool(self._held)

    def push(self, event: ReceivedEvent) -> list[StreamEvent] | ReplayError:
        """Take one event from history or live; return what may be sent now, in order."""
        if self._state is not _OPEN:
            return []
        if event.seq == OUT_OF_BAND_SEQ:
            if isinstance(event, StreamError):
                self._end(_FINISHED)
                return [event]
            return self._learn(event.gen, event.fence) if isinstance(event, StreamFence) else []
        gen = getattr(event, "gen", 0)  # a start has none: generation 0
        out: list[StreamEvent] = []
        if gen or self._fences.newest:  # a stream that moved: the one slower path
            if gen and not isinstance(event, StreamStart | StreamFence):
                learned = self._learn(gen, event.fence)
                if isinstance(learned, ReplayError):
                    return learned
                out = learned
            if self._fences.void(gen, event.seq):
                return out
        if event.seq < self.next_seq or event.seq in self._held:
            return out
        if event.seq == self.next_seq and not self._held and (gen < 2 or self._knows_fences_before(gen)):
            # In step (every live event of a caught-up reader): nothing to hold or reorder.
            self.next_seq += 1
            if gen > self._last_gen:
                self._released_generation(event.seq, gen)
            admitted = self._admit(event)
            if admitted is None:
                return out
            return admitted if isinstance(admitted, ReplayError) else [*out, admitted]
        self._held[event.seq] = event
        self.held_events += 1
        self.held_bytes += held_size(event)
        released = self._drain()
        return released if isinstance(released, ReplayError) else out + released

    def _drain(self) -> list[StreamEvent] | ReplayError:
        """Release what is held from ``next_seq`` on, up to a gap or to an event whose older generations' fences
        are not all known yet (the events released before it could not be told from a superseded owner's)."""
        out: list[StreamEvent] = []
        while self._state is _OPEN and self.next_seq in self._held:
            ready = self._held[self.next_seq]
            ready_gen = getattr(ready, "gen", 0)
            if ready_gen >= 2 and not self._knows_fences_before(ready_gen):
                break
            del self._held[self.next_seq]
            self.held_events -= 1
            self.held_bytes -= held_size(ready)
            self.next_seq += 1
            if ready_gen > self._last_gen:
                self._released_generation(ready.seq, ready_gen)
            admitted = self._admit(ready)
            if isinstance(admitted, ReplayError):
                return admitted
            if admitted is not None:
                out.append(admitted)
        return out

    def _learn(self, gen: int, fence: int) -> list[StreamEvent] | ReplayError:
        """A generation's fence: what is held of older generations from there on is dropped, and what waited for
        this fence is released.  When this reader was already sent an older generation's events past the fence (a
        superseded owner published them in the moment before the cut-off was read), it cannot go on without
        repeating or contradicting them: it ends."""
        if not self._fences.learn(gen, fence):
            return []
        if self.next_seq > fence and self._gen_released_at(fence) < gen:
            self._end(_ABANDONED)
            return ReplayError(ErrorCode.RUNNER_LOST, "the stream moved to another runner past what this reader got")
        for seq in [seq for seq, held in self._held.items() if self._fences.void(getattr(held, "gen", 0), seq)]:
            dropped = self._held.pop(seq)
            self.held_events -= 1
            self.held_bytes -= held_size(dropped)
        return self._drain()

    def _knows_fences_before(self, gen: int) -> bool:
        """Whether the fences of every generation before ``gen`` (from 1, up to :data:`MAX_GENERATIONS`) are known:
        only then can the events released before ``gen``'s fence be checked, so ``gen``'s wait until then."""
        return all(self._fences.fence_of(older) is not None for older in range(1, min(gen, MAX_GENERATIONS + 1)))

    def _released_generation(self, seq: int, gen: int) -> None:
        """Event ``seq`` is the first released of generation ``gen``, newer than any released before it."""
        self._last_gen = gen
        self._gen_starts.append((seq, gen))

    def _gen_released_at(self, seq: int) -> int:
        """The generation of the event released at ``seq`` (which was released).  Not merely the last one's: a
        newer generation learned first may have been released after an older one's events past this fence."""
        released = 0
        for start, gen in self._gen_starts:
            if start > seq:
                break
            released = gen
        return released

    def _admit(self, event: ReceivedEvent) -> StreamEvent | ReplayError | None:
        if isinstance(event, UnknownEvent):
            return None  # a newer process's kind of event: its seq is seen, and there is nothing of it to send
        if isinstance(event, StreamStart):
            if event.epoch != self.epoch:
                return ReplayError(ErrorCode.RESUME_UNAVAILABLE, "the stream's history was replaced")
            return None if self._resumed else event
        if isinstance(event, CONTENT_EVENTS):
            # Every kind of content counts its tokens in ``index``: a cursor inside reasoning or inside a tool
            # call's arguments resumes right after the event it names, as one inside the text does.
            if event.index <= self._resume_offset:
                return None
            if event.index - event.count < self._resume_offset:
                return ReplayError(ErrorCode.BAD_REQUEST, "the cursor is not a position this stream issued")
            return event
        assert isinstance(event, StreamEnd | StreamError)
        if event.tokens < self._resume_offset:
            return ReplayError(ErrorCode.BAD_REQUEST, "the cursor is past the end of the stream")
        self._end(_FINISHED)
        return event
