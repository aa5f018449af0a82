"""States as data: one table of the legal moves between an enum's states, and one guard for them (sans-I/O).

Each role keeps its own states (a stream in the gateway's dispatch, a reader in the streamer) as an
:class:`enum.Enum` and its moves as a :class:`Transitions` table; :meth:`Transitions.advance` is the only way a
state changes, and a move the table lacks raises :class:`IllegalTransition` naming what moved, its state and the
move asked for.  Such an error is a bug in the caller, never a client's mistake.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping
from typing import Generic, TypeVar

S = TypeVar("S", bound=enum.Enum)


class IllegalTransition(RuntimeError):
    """A move the table does not allow, with what was asked to move (``stream_id``), its state and the target."""

    def __init__(self, what: str, stream_id: str, state: enum.Enum, target: enum.Enum) -> None:
        super().__init__(f"{what} {stream_id}: no transition from {state.value} to {target.value}")
        self.stream_id = stream_id
        self.state = state
        self.target = target


class Transitions(Mapping[S, frozenset[S]], Generic[S]):
    """The legal moves from each state of one enum; every state has a row (an end state, an empty one)."""

    def __init__(self, what: str, moves: Mapping[S, Iterable[S]]) -> None:
        self._what = what
        self._moves = {state: frozenset(targets) for state, targets in moves.items()}
        states = {member for state in self._moves for member in type(state)}
        missing = states - self._moves.keys()
        if missing:
            raise ValueError(f"no row for {sorted(s.value for s in missing)} in the moves of a {what}")

    def __getitem__(self, state: S) -> frozenset[S]:
        return self._moves[state]

    def __iter__(self) -> Iterator[S]:
        return iter(self._moves)

    def __len__(self) -> int:
        return len(self._moves)

    def advance(self, stream_id: str, state: S, target: S) -> S:
        """``target`` if the table allows the move from ``state``, else :class:`IllegalTransition`."""
        if target not in self._moves[state]:
            raise IllegalTransition(self._what, stream_id, state, target)
        return target
