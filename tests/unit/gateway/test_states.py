"""Spec of a stream's dispatch states: the legal moves are one table, and any other move names the state it left."""

from __future__ import annotations

import itertools

import pytest

from tokenrelay.gateway.states import TRANSITIONS, DispatchState, IllegalTransition, Owner, advance


def test_every_state_has_its_moves_in_the_table() -> None:
    assert set(TRANSITIONS) == set(DispatchState)


@pytest.mark.parametrize(
    ("state", "target"),
    [(s, t) for s, t in itertools.product(DispatchState, DispatchState) if t in TRANSITIONS[s]],
)
def test_a_move_the_table_allows_lands_in_its_target(state: DispatchState, target: DispatchState) -> None:
    assert advance("s-1", state, target) is target


@pytest.mark.parametrize(
    ("state", "target"),
    [(s, t) for s, t in itertools.product(DispatchState, DispatchState) if t not in TRANSITIONS[s]],
)
def test_a_move_the_table_does_not_allow_raises_an_error_naming_the_state(
    state: DispatchState, target: DispatchState
) -> None:
    with pytest.raises(IllegalTransition, match=f"from {state.value} to {target.value}") as raised:
        advance("s-1", state, target)
    assert (raised.value.stream_id, raised.value.state, raised.value.target) == ("s-1", state, target)


def test_a_finished_stream_never_moves_again() -> None:
    assert TRANSITIONS[DispatchState.FINISHED] == frozenset()


def test_a_running_stream_never_goes_back_to_the_queue() -> None:
    with pytest.raises(IllegalTransition, match="running"):
        advance("s-1", DispatchState.RUNNING, DispatchState.QUEUED)


def test_a_stream_is_offered_only_from_the_queue() -> None:
    assert [s for s in DispatchState if DispatchState.OFFERED in TRANSITIONS[s]] == [DispatchState.QUEUED]


def test_an_owner_starts_at_the_first_generation_and_is_a_value() -> None:
    assert Owner("r1") == Owner("r1", 1)
    assert Owner("r1", 2) != Owner("r1", 1)
