"""One history per stream per streamer, shared by its readers: the third reader of a stream reads none of its own.

Every reader that joins a stream already running reads the stream's past (:mod:`~tokenrelay.streamer.history`):
a request to its runner or direct gets from JetStream.  Five thousand readers of one stream meant five thousand
reads of the same events: with 50,000 readers on one host more than 8,000 of them went unanswered within 2 s
and those readers ended ``unavailable``.  The streamer already holds what they would read: the same events went
by live, and one reader's history read returned the rest.

:class:`SharedHistory` is that memory for one stream, sans-I/O.  It is opened when a stream's second reader
joins here (a stream read once keeps nothing) and it holds one run of events, ``seq`` 0, 1, 2, ... with no hole,
built from two sources:

* the **live** events that reach the streamer from then on, in ``seq`` order; the first may come after a hole (the
  events published before the sharing opened), and those past the hole wait in a tail;
* the **history pages** the stream's readers read anyway (from ``seq`` 0 on): they extend the run, fill the hole
  and join the tail to it.  A page that skips ahead (a resume's read) is left for a later read.

Once an event came live and every event up to it is held, the history is **whole**: every later event comes live.
A reader joining then is handed it as it joins (no await in between, so every later event reaches it live) and
reads nothing, as a reader whose first events its runner served.  Live events must keep coming one ``seq`` after
the other: a gap, a fence or an event of a later generation (the stream moved) ends the sharing for good; so does
an outage of the live connection, which the hub watches.  Bounded per stream (``max_stream_bytes``) and in all
(:class:`SharedHistoryBudget`): past either the stream's readers read history on their own, as before.
"""

from __future__ import annotations

import enum

from tokenrelay.wire.messages import ReceivedEvent, StreamFence

DEFAULT_MAX_STREAM_BYTES = 512 * 1024
"""Encoded bytes a stream's shared history may hold (~4,000 one-token deltas); it must stay under half a reader's
buffer limit (1 MiB by default) for a joining reader to take it at once."""
DEFAULT_MAX_TOTAL_BYTES = 64 * 1024 * 1024
"""Encoded bytes the shared histories of all streams may hold together."""


class Sharing(enum.Enum):
    """Where one stream's shared history stands."""

    FILLING = "filling"
    """Live events are kept; the head has not reached the tail's first event yet (or none came live yet)."""
    WHOLE = "whole"
    """Every event from ``seq`` 0 on: a joining reader is handed it."""
    ENDED = "ended"
    """A gap, a move, an outage or a bound: nothing is kept any more; readers read history on their own."""


class SharedHistoryBudget:
    """Bytes of shared history all streams of one streamer hold, against ``max_total_bytes``."""

    def __init__(self, max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES) -> None:
        if max_total_bytes < 0:
            raise ValueError("max_total_bytes must be >= 0")
        self.max_total_bytes = max_total_bytes
        self.total_bytes = 0

    def take(self, size: int) -> bool:
        """Reserve ``size`` bytes; ``False`` (nothing reserved) past the bound."""
        if self.total_bytes + size > self.max_total_bytes:
            return False
        self.total_bytes += size
        return True

    def give_back(self, size: int) -> None:
        self.total_bytes -= size


def _moved(event: ReceivedEvent) -> bool:
    """A fence, or an event of a later generation: the stream moved, its history is no longer one run."""
    return isinstance(event, StreamFence) or getattr(event, "gen", 0) != 0


class SharedHistory:
    """One stream's events from ``seq`` 0 on, as its readers here saw them go by and read them."""

    def __init__(self, budget: SharedHistoryBudget, *, max_stream_bytes: int = DEFAULT_MAX_STREAM_BYTES) -> None:
        if max_stream_bytes < 0:
            raise ValueError("max_stream_bytes must be >= 0")
        self._budget = budget
        self._max_stream_bytes = max_stream_bytes
        self._run: list[ReceivedEvent] = []
        """Events ``seq`` 0, 1, 2, ... with no hole."""
        self._tail: list[ReceivedEvent] = []
        """Live events past a hole after :attr:`_run`, from ``seq`` :attr:`_tail_from` on, with no hole."""
        self._tail_from = 0
        self._last_live: int | None = None
        """The ``seq`` of the last event that came live (``None``: none yet)."""
        self.size = 0
        """Encoded bytes held (those taken from history pages are the pages' share, an estimate)."""
        self._state = Sharing.FILLING

    @property
    def state(self) -> Sharing:
        return self._state

    @property
    def events(self) -> list[ReceivedEvent]:
        """Every event from ``seq`` 0 on, in order (only while :attr:`state` is ``WHOLE``)."""
        if self._state is not Sharing.WHOLE:
            raise RuntimeError(f"a shared history that is {self._state.value} is not whole")
        return self._run

    def live(self, event: ReceivedEvent, size: int) -> None:
        """An event that reached this streamer live (``size``: its encoded bytes).

        Live events come in ``seq`` order: one that is not the next after the last is a gap (or a repeat), and what
        is held could lack an event for good.
        """
        if self._state is Sharing.ENDED:
            return
        if _moved(event) or (self._last_live is not None and event.seq != self._last_live + 1):
            self.end()
            return
        self._last_live = event.seq
        run = len(self._run)
        if event.seq < run:
            pass  # a history read held it already
        elif self._tail:
            if not self._hold(size):
                return
            self._tail.append(event)
        elif event.seq == run:
            if not self._hold(size):
                return
            self._run.append(event)
        else:  # a hole before it: history reads fill it
            if not self._hold(size):
                return
            self._tail, self._tail_from = [event], event.seq
        self._check_whole()

    def read(self, events: list[ReceivedEvent], size: int) -> None:
        """A page of history one of this stream's readers read (``size``: the page's encoded bytes)."""
        if self._state is Sharing.ENDED or not events:
            return
        per_event = max(1, size // len(events))
        for event in events:
            if _moved(event):
                self.end()
                return
            run = len(self._run)
            if event.seq < run:
                continue  # held already
            if event.seq > run:
                break  # this page skips ahead (a resume's read): a later read fills the hole
            if not self._hold(per_event):
                return
            self._run.append(event)
            if self._tail and len(self._run) == self._tail_from:
                self._run.extend(self._tail)
                self._tail = []
        self._check_whole()

    def end(self) -> None:
        """Keep nothing more, and give back what was held (idempotent)."""
        if self._state is Sharing.ENDED:
            return
        self._state = Sharing.ENDED
        self._budget.give_back(self.size)
        self.size = 0
        self._run, self._tail = [], []

    def _hold(self, size: int) -> bool:
        if self.size + size > self._max_stream_bytes or not self._budget.take(size):
            self.end()
            return False
        self.size += size
        return True

    def _check_whole(self) -> None:
        """Whole once an event came live and every event up to it is held: every later one comes live."""
        if self._state is Sharing.FILLING and self._last_live is not None and self._last_live < len(self._run):
            self._state = Sharing.WHOLE
