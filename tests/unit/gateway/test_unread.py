"""The gateway's schedule of streams no reader has come for yet (sans-I/O: no sockets, no sleeps)."""

from __future__ import annotations

import pytest

from tokenrelay.gateway.unread import UnreadWatch


def test_a_stream_is_due_once_its_grace_period_is_over_and_only_once() -> None:
    watch = UnreadWatch(grace_s=5.0)
    watch.admitted("a", now=100.0)

    assert watch.next_due_in(101.0) == 4.0
    assert watch.due(104.9) == []
    assert watch.due(105.0) == ["a"]
    assert watch.due(200.0) == []
    assert watch.next_due_in(200.0) is None


def test_streams_fall_due_in_the_order_they_were_admitted_and_the_next_due_is_the_oldest() -> None:
    watch = UnreadWatch(grace_s=1.0)
    for n, stream_id in enumerate(("a", "b", "c")):
        watch.admitted(stream_id, now=10.0 + n)

    assert watch.next_due_in(10.5) == 0.5
    assert watch.due(12.0) == ["a", "b"]
    assert watch.next_due_in(12.0) == 1.0
    assert len(watch) == 1


def test_a_stream_that_ended_within_its_grace_period_is_never_due() -> None:
    watch = UnreadWatch(grace_s=1.0)
    watch.admitted("short", now=0.0)
    watch.admitted("long", now=0.0)

    watch.ended("short")
    watch.ended("unknown")  # a stream never watched (another gateway's, or already due): nothing happens

    assert watch.due(5.0) == ["long"]


def test_a_due_stream_is_reported_with_no_wait_even_when_it_is_long_overdue() -> None:
    watch = UnreadWatch(grace_s=1.0)
    watch.admitted("a", now=0.0)

    assert watch.next_due_in(60.0) == 0.0


def test_past_its_bound_the_watch_lets_the_oldest_stream_go_unchecked_and_counts_it() -> None:
    watch = UnreadWatch(grace_s=1.0, max_streams=2)
    for stream_id in ("a", "b", "c"):
        watch.admitted(stream_id, now=0.0)

    assert watch.let_go == 1
    assert watch.due(1.0) == ["b", "c"]


@pytest.mark.parametrize(("grace_s", "max_streams"), [(0.0, 10), (-1.0, 10), (1.0, 0)])
def test_a_watch_needs_a_positive_grace_period_and_room_for_a_stream(grace_s: float, max_streams: int) -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        UnreadWatch(grace_s=grace_s, max_streams=max_streams)
