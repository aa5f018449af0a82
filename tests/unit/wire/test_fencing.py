"""Spec of a moved stream's fences: an older generation's events from a newer one's fence on are void."""

from __future__ import annotations

import pytest

from tokenrelay.wire.fencing import MAX_GENERATIONS, Fences


def moved(*fences: tuple[int, int]) -> Fences:
    """Fences that learned each ``(gen, fence)``, in the order given."""
    known = Fences()
    for gen, fence in fences:
        known.learn(gen, fence)
    return known


def test_a_stream_that_never_moved_voids_nothing() -> None:
    fences = Fences()
    assert fences.newest == 0
    assert not fences.void(0, 0)
    assert not fences.void(0, 1_000)


def test_generation_zero_starts_at_seq_zero_and_a_generation_not_learned_has_no_fence() -> None:
    fences = Fences()
    assert fences.fence_of(0) == 0
    assert fences.fence_of(1) is None


def test_learning_a_generation_for_the_first_time_is_news() -> None:
    fences = Fences()
    assert fences.learn(1, 5)
    assert fences.newest == 1
    assert fences.fence_of(1) == 5


def test_learning_a_generation_again_is_no_news_and_keeps_its_first_fence() -> None:
    fences = moved((1, 5))
    assert not fences.learn(1, 5)
    assert not fences.learn(1, 7)
    assert fences.fence_of(1) == 5
    assert fences.void(0, 5)


@pytest.mark.parametrize("gen", [0, -1])
def test_generation_zero_or_below_is_never_learned(gen: int) -> None:
    fences = Fences()
    assert not fences.learn(gen, 5)
    assert fences.newest == 0
    assert not fences.void(0, 5)


def test_an_older_generations_events_before_the_fence_stand() -> None:
    fences = moved((1, 5))
    assert not fences.void(0, 0)
    assert not fences.void(0, 4)


@pytest.mark.parametrize("seq", [5, 6, 1_000])
def test_an_older_generations_events_at_or_past_the_fence_are_void(seq: int) -> None:
    assert moved((1, 5)).void(0, seq)


@pytest.mark.parametrize("seq", [5, 6, 1_000])
def test_the_newest_generations_own_events_are_never_void(seq: int) -> None:
    assert not moved((1, 5)).void(1, seq)


def test_an_event_of_a_generation_newer_than_any_learned_is_never_void() -> None:
    assert not moved((1, 5)).void(2, 5)


@pytest.mark.parametrize("order", [((1, 5), (2, 8)), ((2, 8), (1, 5))], ids=["in-order", "newer-first"])
def test_each_generation_is_cut_off_by_the_first_newer_fence_at_or_before_its_events(
    order: tuple[tuple[int, int], ...],
) -> None:
    fences = moved(*order)
    assert fences.newest == 2
    assert [fences.void(0, seq) for seq in (4, 5, 7, 8)] == [False, True, True, True]
    assert [fences.void(1, seq) for seq in (5, 7, 8, 9)] == [False, False, True, True]
    assert not fences.void(2, 8)
    assert not fences.void(2, 1_000)


def test_learning_an_older_generation_after_a_newer_one_keeps_the_newest() -> None:
    fences = moved((2, 8))
    assert fences.learn(1, 5)
    assert fences.newest == 2
    assert fences.fence_of(1) == 5
    assert fences.fence_of(2) == 8


def test_generation_zero_is_void_from_a_generation_two_fence_when_generation_one_is_not_known() -> None:
    fences = moved((2, 8))
    assert not fences.void(0, 7)
    assert fences.void(0, 8)


def test_two_generations_may_start_at_the_same_seq() -> None:
    """A runner that was lost again before it published anything: the next one starts where it would have."""
    fences = moved((1, 5), (2, 5))
    assert fences.void(0, 5)
    assert fences.void(1, 5)
    assert not fences.void(2, 5)


def test_fences_are_kept_for_at_most_max_generations() -> None:
    fences = Fences()
    assert all(fences.learn(gen, gen) for gen in range(1, MAX_GENERATIONS + 1))
    assert not fences.learn(MAX_GENERATIONS + 1, MAX_GENERATIONS + 1)
    assert fences.newest == MAX_GENERATIONS
    assert fences.fence_of(MAX_GENERATIONS + 1) is None


def test_a_fence_past_max_generations_voids_nothing_and_its_events_pass_by_seq() -> None:
    fences = moved(*((gen, gen) for gen in range(1, MAX_GENERATIONS + 1)))
    fences.learn(MAX_GENERATIONS + 1, 1_000)
    assert not fences.void(MAX_GENERATIONS, 1_000)
    assert not fences.void(MAX_GENERATIONS + 1, 1_000)
    assert fences.void(MAX_GENERATIONS - 1, MAX_GENERATIONS)
