"""Spec of publish batching with an explicit clock: first token at once, then one publish per interval, and only
tokens of one block (text, reasoning, one tool call) held together."""

from __future__ import annotations

import pytest

from tokenrelay.runner.batcher import REASONING, TEXT, BlockBoundaryError, DeltaBatcher
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


def test_tokens_of_one_kind_are_no_block_boundary_for_each_other() -> None:
    batcher = DeltaBatcher(PublishPace(INTERVAL_S))
    batcher.add("think", T0, REASONING)
    assert not batcher.boundary(REASONING)
    assert batcher.boundary(TEXT)
    assert batcher.boundary(0)


def test_nothing_held_is_no_block_boundary_whatever_was_taken_before() -> None:
    batcher = DeltaBatcher(PublishPace(INTERVAL_S))
    batcher.add("think", T0, REASONING)
    batcher.take(T0)
    assert not batcher.boundary(TEXT)
    assert batcher.block == REASONING  # the last token's block is remembered: the generation's finish reads it


def test_the_batcher_refuses_a_token_of_another_block_while_tokens_are_held() -> None:
    batcher = DeltaBatcher(PublishPace(INTERVAL_S))
    batcher.add("a", T0)
    batcher.take(T0)
    batcher.add("b", T0 + 0.1)
    with pytest.raises(BlockBoundaryError, match=r"'text'.*'reasoning'"):
        batcher.add("think", T0 + 0.1, REASONING)
    with pytest.raises(BlockBoundaryError, match=r"'text'.*0"):
        batcher.add_fragment(0, "{", T0 + 0.1, id="call_1", name="f")
    assert batcher.take(T0 + 0.2) == ("b", 1)


def test_fragments_of_one_tool_call_join_and_keep_the_calls_id_and_name() -> None:
    batcher = DeltaBatcher(PublishPace(INTERVAL_S))
    batcher.add("a", T0)
    batcher.take(T0)
    batcher.add_fragment(0, "", T0 + 0.1, id="call_1", name="get_weather")
    batcher.add_fragment(0, '{"city"', T0 + 0.1)
    batcher.add_fragment(0, ': "Paris"}', T0 + 0.1)
    assert (batcher.block, batcher.call_id, batcher.call_name) == (0, "call_1", "get_weather")
    assert batcher.take(T0 + 0.25) == ('{"city": "Paris"}', 3)
    assert (batcher.call_id, batcher.call_name) == (None, None)


def test_a_fragment_of_another_call_is_a_block_boundary() -> None:
    batcher = DeltaBatcher(PublishPace(INTERVAL_S))
    batcher.add_fragment(0, "{}", T0, id="call_1", name="f")
    assert not batcher.boundary(0)
    assert batcher.boundary(1)


def test_a_calls_first_fragment_is_due_even_with_empty_arguments() -> None:
    batcher = DeltaBatcher(PublishPace(INTERVAL_S))
    assert batcher.add_fragment(0, "", T0, id="call_1", name="f")


def test_empty_reasoning_waits_for_text_like_empty_text() -> None:
    batcher = DeltaBatcher(PublishPace(INTERVAL_S))
    assert not batcher.add("", T0, REASONING)
    assert batcher.deadline() is None
