"""Spec of the transition table every role's states use (tokenrelay.runtime.transitions)."""

from __future__ import annotations

import enum

import pytest

from tokenrelay.runtime.transitions import IllegalTransition, Transitions


class Light(enum.Enum):
    RED = "red"
    GREEN = "green"
    OFF = "off"


MOVES = Transitions("light", {Light.RED: {Light.GREEN, Light.OFF}, Light.GREEN: {Light.RED, Light.OFF}, Light.OFF: ()})


def test_a_move_in_the_table_returns_the_target() -> None:
    assert MOVES.advance("l-1", Light.RED, Light.GREEN) is Light.GREEN


def test_a_move_missing_from_the_table_names_what_moved_its_state_and_the_target() -> None:
    with pytest.raises(IllegalTransition, match="light l-1: no transition from off to red") as raised:
        MOVES.advance("l-1", Light.OFF, Light.RED)
    assert (raised.value.stream_id, raised.value.state, raised.value.target) == ("l-1", Light.OFF, Light.RED)


def test_staying_in_a_state_is_a_move_like_any_other() -> None:
    with pytest.raises(IllegalTransition, match="from red to red"):
        MOVES.advance("l-1", Light.RED, Light.RED)


def test_the_table_reads_as_a_mapping_of_frozensets() -> None:
    assert set(MOVES) == set(Light) and len(MOVES) == 3
    assert MOVES[Light.OFF] == frozenset()


def test_a_table_without_a_row_for_every_state_is_refused() -> None:
    with pytest.raises(ValueError, match="no row for \\['off'\\]"):
        Transitions("light", {Light.RED: {Light.GREEN}, Light.GREEN: {Light.RED}})
