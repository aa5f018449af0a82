"""Where one SSE reader stands, and which moves between those places are legal (sans-I/O).

- ``catching_up``: its history is read and merged with live events; a live event ahead of a gap is held.
  Every reader starts here, unless the streamer's memory held its stream whole since the start.
- ``live``: caught up; its events arrive live and in order.  A live event held behind a gap (a lost event)
  moves it back to ``catching_up``.
- ``finishing``: the stream's terminal event (``end``, or the stream's own ``error``) is queued; the writer
  sends what is left.
- ``failing``: the streamer ended it with an ``error`` event (a :class:`~tokenrelay.streamer.disconnect.Disconnect`,
  history that is gone, a shutdown); the writer sends it.
- ``closed``: it left the hub (its terminal event was written, or its client left); nothing reaches it any more.

Every move is in :data:`TRANSITIONS`; :func:`advance` refuses any other with :class:`IllegalTransition`,
which names the state.  Such an error is a bug in the streamer, never a client's doing: a reader that has
already ended ignores later events, failures and disconnects before asking for a move.
"""

from __future__ import annotations

import enum

from tokenrelay.runtime.transitions import IllegalTransition, Transitions


class ReaderState(enum.Enum):
    """One reader's place in its lifecycle."""

    CATCHING_UP = "catching_up"
    LIVE = "live"
    FINISHING = "finishing"
    FAILING = "failing"
    CLOSED = "closed"


TRANSITIONS = Transitions(
    "reader of stream",
    {
        ReaderState.CATCHING_UP: frozenset(
            {ReaderState.LIVE, ReaderState.FINISHING, ReaderState.FAILING, ReaderState.CLOSED}
        ),
        ReaderState.LIVE: frozenset(
            {ReaderState.CATCHING_UP, ReaderState.FINISHING, ReaderState.FAILING, ReaderState.CLOSED}
        ),
        ReaderState.FINISHING: frozenset({ReaderState.CLOSED}),
        ReaderState.FAILING: frozenset({ReaderState.CLOSED}),
        ReaderState.CLOSED: frozenset(),
    },
)
"""The legal moves from each state.  A reader that is finishing is not failed: its terminal event is queued
already, and a write of it that stalls drops the connection instead."""

ENDED = frozenset({ReaderState.FINISHING, ReaderState.FAILING, ReaderState.CLOSED})
"""The states of a reader whose terminal event is queued (or that is gone): it takes no more events."""


def advance(stream_id: str, state: ReaderState, target: ReaderState) -> ReaderState:
    """``target`` if :data:`TRANSITIONS` allows the move from ``state``, else :class:`IllegalTransition`."""
    return TRANSITIONS.advance(stream_id, state, target)


__all__ = ["ENDED", "TRANSITIONS", "IllegalTransition", "ReaderState", "advance"]
