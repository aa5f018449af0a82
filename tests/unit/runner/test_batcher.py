"""Spec of publish batching with an explicit clock: first token at once, then one publish per interval."""

from __future__ import annotations

import pytest

from tokenrelay.runner.batcher import DeltaBatcher
from tokenrelay.runner.pace import PublishPace

INTERVAL_S = 0.25
T0 = 100.0


def test_first_token_is_due_immediately() -> None:
    batcher = DeltaBatcher(PublishPace(INTERVAL_S))
    assert batcher.add("Hello", T0)
    deadline = batcher.deadline()
    assert deadline is not None
    assert deadline <= T0


def test_deadline_is_none_when_nothing_is_held() -> None:
    batcher = DeltaBatcher(PublishPace(INTERVAL_S))
    assert batcher.deadline() is None
    batcher.add("a", T0)
    batcher.take(T0)
    assert batcher.deadline() is None


def test_tokens_arriving_within_the_interval_are_held() -> None:
    batcher = DeltaBatcher(PublishPace(INTERVAL_S))
    batcher.add("a", T0)
    batcher.take(T0)
    assert not batcher.add("b", T0 + 0.125)
    assert not batcher.add("c", T0 + 0.2)
    assert batcher.pending_tokens == 2


def test_deadline_is_last_publish_plus_interval() -> None:
    batcher = DeltaBatcher(PublishPace(INTERVAL_S))
    batcher.add("a", T0)
    batcher.take(T0 + 0.5)
    batcher.add("b", T0 + 0.625)
    assert batcher.deadline() == T0 + 0.5 + INTERVAL_S


def test_held_tokens_are_due_at_the_deadline() -> None:
    batcher = DeltaBatcher(PublishPace(INTERVAL_S))
    batcher.add("a", T0)
    batcher.take(T0)
    assert not batcher.add("b", T0 + 0.125)
    assert batcher.add("c", T0 + INTERVAL_S)


def test_token_after_a_quiet_interval_is_due_immediately() -> None:
    batcher = DeltaBatcher(PublishPace(INTERVAL_S))
    batcher.add("a", T0)
    batcher.take(T0)
    assert batcher.add("b", T0 + 10)


def test_take_joins_held_text_and_counts_tokens() -> None:
    batcher = DeltaBatcher(PublishPace(INTERVAL_S))
    for text in ["Hello", ",", " wor", "ld", " 日本", "😀"]:
        batcher.add(text, T0)
    assert batcher.take(T0) == ("Hello, world 日本😀", 6)
    assert batcher.pending_tokens == 0


def test_take_starts_a_new_interval_at_its_now() -> None:
    batcher = DeltaBatcher(PublishPace(INTERVAL_S))
    batcher.add("a", T0)
    batcher.take(T0 + 1)
    assert not batcher.add("b", T0 + 1.125)
    assert batcher.take(T0 + 1.25) == ("b", 1)
    assert not batcher.add("c", T0 + 1.375)


def test_zero_interval_makes_every_token_due() -> None:
    batcher = DeltaBatcher(PublishPace(0))
    for i in range(5):
        assert batcher.add(f"t{i}", T0)
        assert batcher.take(T0) == (f"t{i}", 1)


def test_negative_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="base_interval_s"):
        PublishPace(-0.1)


def test_a_batch_is_held_since_its_oldest_token_and_taking_it_clears_that() -> None:
    batcher = DeltaBatcher(PublishPace(INTERVAL_S))
    assert batcher.held_since is None
    batcher.add("a", T0)
    batcher.take(T0)
    batcher.add("b", T0 + 0.125)
    batcher.add("c", T0 + 0.2)
    assert batcher.held_since == T0 + 0.125
    batcher.take(T0 + INTERVAL_S)
    assert batcher.held_since is None
