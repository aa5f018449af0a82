"""Where a stream stands in the gateway's dispatch, and which moves between those places are legal (sans-I/O).

The states are the gateway's own view, finer than the record's ``queued``/``running``/``finished``:

- ``queued``: admitted, no offer in flight; it waits for its next try (a backoff, or its turn as the queue's head).
- ``offered``: an offer is out on the runners' queue group, its answer not back yet.
- ``confirming``: the offer got no answer in time; the runners are asked which of them holds the stream.
- ``running``: a runner took it; :class:`Owner` says which.
- ``finished``: it ended (a runner finished it or was lost, or it ended before any runner took it).

Every move is in :data:`TRANSITIONS`; :func:`advance` refuses any other with
:class:`~tokenrelay.runtime.transitions.IllegalTransition`, which names the state.  Such an error is a bug in the
dispatch itself, never a client's mistake: messages that arrive late or twice are checked against the state before
any move is asked for.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from tokenrelay.runtime.transitions import IllegalTransition, Transitions


class DispatchState(enum.Enum):
    """A stream's place in one gateway's dispatch."""

    QUEUED = "queued"
    OFFERED = "offered"
    CONFIRMING = "confirming"
    RUNNING = "running"
    FINISHED = "finished"


TRANSITIONS = Transitions(
    "stream",
    {
        DispatchState.QUEUED: frozenset({DispatchState.OFFERED, DispatchState.FINISHED}),
        DispatchState.OFFERED: frozenset(
            {DispatchState.RUNNING, DispatchState.QUEUED, DispatchState.CONFIRMING, DispatchState.FINISHED}
        ),
        DispatchState.CONFIRMING: frozenset({DispatchState.RUNNING, DispatchState.QUEUED, DispatchState.FINISHED}),
        DispatchState.RUNNING: frozenset({DispatchState.FINISHED}),
        DispatchState.FINISHED: frozenset(),
    },
)
"""The legal moves from each state.  ``offered``/``confirming`` -> ``finished`` is a dispatch abandoned (the
gateway's connection failed or it is closing); a stop while an offer is out waits for the offer's answer."""

WAITING = frozenset({DispatchState.QUEUED, DispatchState.OFFERED, DispatchState.CONFIRMING})
"""The states of a stream still in its queue: it counts against the queue's bound."""


def advance(stream_id: str, state: DispatchState, target: DispatchState) -> DispatchState:
    """``target`` if :data:`TRANSITIONS` allows the move from ``state``, else :class:`IllegalTransition`."""
    return TRANSITIONS.advance(stream_id, state, target)


@dataclass(frozen=True, slots=True)
class Owner:
    """The runner that generates a stream, and the generation of the stream it owns.

    A value, not a field of the runner: a stream's owner can be replaced (a generation moved to another runner)
    without touching anything else, and a stop always goes to the owner of the latest generation.
    """

    runner_id: str
    generation: int = 1


__all__ = ["TRANSITIONS", "WAITING", "DispatchState", "IllegalTransition", "Owner", "advance"]
