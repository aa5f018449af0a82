"""Spec of a stream's shared history: whole once every event up to one that came live is held, and never
whole when it might lack one."""

from __future__ import annotations

import pytest

from tokenrelay.streamer.shared_history import SharedHistory, SharedHistoryBudget, Sharing
from tokenrelay.wire.messages import ReceivedEvent, StreamDelta, StreamFence, StreamStart, UnknownEvent

SIZE = 100
"""Encoded bytes each event counts for here."""


def start() -> StreamStart:
    return StreamStart(stream_id="s", epoch="e", model="m", created=0, runner_id="r", ts=0.0)


def delta(seq: int, *, gen: int = 0) -> StreamDelta:
    return StreamDelta(seq=seq, text=f"t{seq}", index=seq, count=1, ts=0.0, gen=gen, fence=1 if gen else 0)


def events(first: int, last: int) -> list[ReceivedEvent]:
    """``seq`` first..last (a start at 0)."""
    return [start() if seq == 0 else delta(seq) for seq in range(first, last + 1)]


def state(shared: SharedHistory) -> Sharing:
    """Asked afresh each time (an attribute read would be narrowed by the type checker after the first assert)."""
    return shared.state


def seqs(shared: SharedHistory) -> list[int]:
    return [event.seq for event in shared.events]


def page(shared: SharedHistory, first: int, last: int) -> None:
    read = events(first, last)
    shared.read(read, SIZE * len(read))


def live(shared: SharedHistory, first: int, last: int) -> None:
    for event in events(first, last):
        shared.live(event, SIZE)


def fresh(max_total_bytes: int = 1 << 20, max_stream_bytes: int = 1 << 20) -> tuple[SharedHistory, SharedHistoryBudget]:
    budget = SharedHistoryBudget(max_total_bytes)
    return SharedHistory(budget, max_stream_bytes=max_stream_bytes), budget


def test_opened_before_the_start_the_live_events_alone_are_whole() -> None:
    shared, _ = fresh()
    assert state(shared) is Sharing.FILLING
    live(shared, 0, 3)
    assert state(shared) is Sharing.WHOLE
    assert seqs(shared) == [0, 1, 2, 3]


def test_a_history_read_alone_is_not_whole_until_an_event_came_live() -> None:
    # The read may lack the last event published before it: only a live event proves what came before it is held.
    shared, _ = fresh()
    page(shared, 0, 4)
    assert state(shared) is Sharing.FILLING
    with pytest.raises(RuntimeError):
        _ = shared.events
    live(shared, 5, 5)
    assert state(shared) is Sharing.WHOLE
    assert seqs(shared) == [0, 1, 2, 3, 4, 5]


def test_live_events_past_a_hole_wait_until_a_read_fills_it() -> None:
    shared, _ = fresh()
    live(shared, 5, 7)
    assert state(shared) is Sharing.FILLING
    page(shared, 0, 2)
    assert state(shared) is Sharing.FILLING  # 3 and 4 still missing
    page(shared, 0, 4)  # the repeats are dropped
    assert state(shared) is Sharing.WHOLE
    assert seqs(shared) == list(range(8))


def test_a_read_that_reaches_past_what_came_live_is_kept_and_the_late_live_copies_are_not() -> None:
    shared, _ = fresh()
    live(shared, 3, 3)
    page(shared, 0, 6)  # 4..6 published after 3 came live, read before they arrive live
    assert state(shared) is Sharing.WHOLE
    live(shared, 4, 7)
    assert seqs(shared) == list(range(8))


def test_a_page_that_skips_ahead_is_left_for_a_later_read() -> None:
    shared, _ = fresh()
    live(shared, 6, 6)
    page(shared, 3, 5)  # a resume's read: nothing before 3
    assert state(shared) is Sharing.FILLING
    page(shared, 0, 5)
    assert state(shared) is Sharing.WHOLE


def test_a_gap_in_the_live_events_ends_the_sharing_and_gives_back_its_bytes() -> None:
    shared, budget = fresh()
    live(shared, 0, 2)
    assert budget.total_bytes == 3 * SIZE
    live(shared, 4, 4)  # 3 never came
    assert state(shared) is Sharing.ENDED
    assert budget.total_bytes == 0
    live(shared, 5, 5)
    page(shared, 0, 5)
    assert state(shared) is Sharing.ENDED  # for good


def test_a_repeated_live_event_ends_the_sharing() -> None:
    shared, _ = fresh()
    live(shared, 0, 2)
    live(shared, 2, 2)
    assert state(shared) is Sharing.ENDED


@pytest.mark.parametrize(
    "moved",
    [StreamFence(gen=1, fence=3), delta(3, gen=1)],
    ids=["a fence", "an event of a later generation"],
)
def test_a_move_seen_live_ends_the_sharing(moved: ReceivedEvent) -> None:
    shared, _ = fresh()
    live(shared, 0, 2)
    shared.live(moved, SIZE)
    assert state(shared) is Sharing.ENDED


def test_a_move_seen_in_a_history_page_ends_the_sharing() -> None:
    shared, _ = fresh()
    live(shared, 4, 4)
    shared.read([start(), delta(1), StreamFence(gen=1, fence=2), delta(2, gen=1)], 4 * SIZE)
    assert state(shared) is Sharing.ENDED


def test_an_event_of_an_unknown_type_holds_its_place() -> None:
    shared, _ = fresh()
    live(shared, 0, 1)
    shared.live(UnknownEvent(seq=2, tag="newer"), SIZE)
    live(shared, 3, 3)
    assert seqs(shared) == [0, 1, 2, 3]


def test_past_its_own_bound_a_stream_keeps_nothing() -> None:
    shared, budget = fresh(max_stream_bytes=3 * SIZE)
    live(shared, 0, 2)
    assert state(shared) is Sharing.WHOLE
    live(shared, 3, 3)
    assert state(shared) is Sharing.ENDED
    assert budget.total_bytes == 0


def test_past_the_bound_of_all_streams_together_a_stream_keeps_nothing_and_the_others_keep_theirs() -> None:
    budget = SharedHistoryBudget(max_total_bytes=5 * SIZE)
    first, second = SharedHistory(budget), SharedHistory(budget)
    live(first, 0, 2)
    live(second, 0, 1)
    live(second, 2, 2)  # the sixth event
    assert state(second) is Sharing.ENDED
    assert state(first) is Sharing.WHOLE
    assert budget.total_bytes == 3 * SIZE
    first.end()
    first.end()  # once
    assert budget.total_bytes == 0


def test_a_page_counts_its_share_of_the_bytes_per_event_kept() -> None:
    shared, budget = fresh()
    live(shared, 2, 2)
    shared.read(events(0, 3), 400)  # 3 is past what came live: kept too
    assert budget.total_bytes == SIZE + 3 * 100
    assert shared.size == budget.total_bytes


def test_bounds_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="max_total_bytes"):
        SharedHistoryBudget(-1)
    with pytest.raises(ValueError, match="max_stream_bytes"):
        SharedHistory(SharedHistoryBudget(), max_stream_bytes=-1)
