"""Spec of the replay merge on a stream that moved to another runner: a reader gets the uninterrupted text.

The stream below starts on a runner (generation 0) that publishes seq 1-4 and is lost; a gateway cuts it off at
seq 5 and moves it to generation 1, which continues from seq 5 (the fence).  The lost runner may wake up and go on
publishing its own seq 5, 6, ... (a zombie): those events are void.  The second move cuts generation 1 off at seq 7.
Every content event carries one token, so the event at ``seq`` s has ``index`` s.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

import pytest

from tests.unit.streamer.test_replay import push_all
from tokenrelay.streamer.replay import MergeState, Replay, ReplayError, held_size
from tokenrelay.wire.cursor import Cursor
from tokenrelay.wire.errors import ErrorCode
from tokenrelay.wire.messages import (
    OUT_OF_BAND_SEQ,
    FinishReason,
    ReasoningDelta,
    ReceivedEvent,
    StreamDelta,
    StreamEnd,
    StreamError,
    StreamEvent,
    StreamFence,
    StreamStart,
    ToolCallDelta,
)

EPOCH = "e1"
SID = "0123456789abcdef0123456789abcdef"
FENCE_1 = 5
"""Where generation 1 starts."""
FENCE_2 = 7
"""Where generation 2 starts, on the stream that moved twice."""
FENCES = {1: FENCE_1, 2: FENCE_2}
PROPERTY_CASES = 200


def fence_of(gen: int) -> int:
    return FENCES.get(gen, 0)


def delta(seq: int, gen: int = 0, text: str | None = None) -> StreamDelta:
    """One token at ``seq``; its text names its generation, so a zombie's text differs from its successor's."""
    word = f" g{gen}s{seq}" if text is None else text
    return StreamDelta(seq=seq, text=word, index=seq, count=1, ts=0.0, gen=gen, fence=fence_of(gen))


def end(seq: int, gen: int = 0) -> StreamEnd:
    """The terminal event after ``seq - 1`` one-token events."""
    return StreamEnd(
        seq=seq, finish_reason=FinishReason.STOP, tokens=seq - 1, ttft_ms=1.0, gen=gen, fence=fence_of(gen)
    )


def fence(gen: int) -> StreamFence:
    return StreamFence(gen=gen, fence=fence_of(gen))


START = StreamStart(stream_id=SID, epoch=EPOCH, model="m", created=0, runner_id="r0", ts=0.0)
BEFORE: list[StreamEvent] = [START, *(delta(seq) for seq in range(1, FENCE_1))]
"""Generation 0's events before the cut-off."""
MOVED: list[StreamEvent] = [*(delta(seq, gen=1) for seq in range(FENCE_1, 9)), end(9, gen=1)]
"""Generation 1's events: seq 5-8 and its end."""
ZOMBIE: list[StreamEvent] = [*(delta(seq) for seq in range(FENCE_1, 9)), end(9)]
"""What the lost runner publishes when it wakes up: its own seq 5-8 and its end, all void."""
EXPECTED: list[StreamEvent] = BEFORE + MOVED
"""What a reader of the stream that moved once gets: the uninterrupted stream."""

ONE_MOVED: list[StreamEvent] = [delta(seq, gen=1) for seq in range(FENCE_1, FENCE_2)]
"""Generation 1's events on the stream that moved twice: seq 5-6."""
TWICE_MOVED: list[StreamEvent] = [*(delta(seq, gen=2) for seq in range(FENCE_2, 10)), end(10, gen=2)]
"""Generation 2's events: seq 7-9 and its end."""
ONE_ZOMBIE: list[StreamEvent] = [*(delta(seq, gen=1) for seq in range(FENCE_2, 10)), end(10, gen=1)]
"""What generation 1 publishes when it wakes up after the second move: all void."""
EXPECTED_TWICE: list[StreamEvent] = BEFORE + ONE_MOVED + TWICE_MOVED


def push_until_error(replay: Replay, events: Iterable[ReceivedEvent]) -> tuple[list[StreamEvent], ReplayError | None]:
    """Push events until one is refused; return what was released and the refusal, if any."""
    released: list[StreamEvent] = []
    for event in events:
        out = replay.push(event)
        if isinstance(out, ReplayError):
            return released, out
        released.extend(out)
    return released, None


def text(events: Iterable[StreamEvent]) -> str:
    return "".join(event.text for event in events if isinstance(event, StreamDelta))


# --- one move: the cut-off and the new generation, in every order a reader gets them --------------------------------


def test_a_moved_stream_read_in_order_releases_the_uninterrupted_stream() -> None:
    replay = Replay(epoch=EPOCH)
    assert push_all(replay, [*BEFORE, fence(1), *MOVED]) == EXPECTED
    assert replay.finished


def test_the_fence_is_never_released_to_a_reader() -> None:
    replay = Replay(epoch=EPOCH)
    push_all(replay, BEFORE)
    assert replay.push(fence(1)) == []
    assert not replay.waiting_on_gap


def test_a_moved_stream_needs_no_fence_the_new_generations_events_carry_it() -> None:
    assert push_all(Replay(epoch=EPOCH), BEFORE + MOVED) == EXPECTED


def test_a_fence_that_arrives_after_the_first_new_generation_event_changes_nothing() -> None:
    arrivals = [*BEFORE, MOVED[0], fence(1), *MOVED[1:], fence(1)]
    assert push_all(Replay(epoch=EPOCH), arrivals) == EXPECTED


@pytest.mark.parametrize(
    "arrivals",
    [
        # Live (subscribed at the fence) entirely before history.
        [fence(1), *MOVED, *BEFORE, fence(1), *MOVED],
        # Live and history alternating, each in its own order, with their overlap twice.
        [MOVED[0], START, fence(1), BEFORE[1], MOVED[1], *BEFORE[2:], MOVED[0], *MOVED[1:], *MOVED[2:]],
        # The new generation ahead of the old one's last events, and the fence last.
        [*MOVED[::-1], *BEFORE[::-1], fence(1)],
        # Every event twice in a row.
        [event for event in [*BEFORE, fence(1), *MOVED] for _ in range(2)],
    ],
    ids=["live-then-history", "alternating", "reversed", "doubled"],
)
def test_a_moved_stream_from_history_and_live_releases_each_event_once_in_order(
    arrivals: list[ReceivedEvent],
) -> None:
    assert push_all(Replay(epoch=EPOCH), arrivals) == EXPECTED


# --- a superseded runner that wakes up ------------------------------------------------------------------------------


def test_an_old_generations_events_past_the_fence_after_the_fence_are_dropped() -> None:
    arrivals = [*BEFORE, fence(1), ZOMBIE[0], MOVED[0], ZOMBIE[1], *MOVED[1:3], *ZOMBIE[2:], MOVED[3], MOVED[4]]
    released = push_all(Replay(epoch=EPOCH), arrivals)
    assert released == EXPECTED
    assert text(released) == text(EXPECTED)


def test_an_old_generations_events_past_the_fence_after_a_new_generation_event_are_dropped() -> None:
    arrivals = [*BEFORE, MOVED[0], *ZOMBIE, *MOVED[1:]]
    assert push_all(Replay(epoch=EPOCH), arrivals) == EXPECTED


def test_an_old_generations_end_past_the_fence_does_not_end_the_reader() -> None:
    replay = Replay(epoch=EPOCH)
    push_all(replay, [*BEFORE, fence(1), MOVED[0]])
    assert replay.push(ZOMBIE[-1]) == []
    assert replay.state is MergeState.OPEN
    assert push_all(replay, MOVED[1:]) == MOVED[1:]
    assert replay.finished


def test_an_old_generations_typed_content_past_the_fence_is_dropped() -> None:
    reasoning = ReasoningDelta(seq=FENCE_1, text="hmm", index=FENCE_1, count=1, ts=0.0)
    call = ToolCallDelta(seq=FENCE_1 + 1, call=0, id="c0", name="f", arguments="{", index=6, count=1, ts=0.0)
    arrivals = [*BEFORE, fence(1), reasoning, call, *MOVED]
    assert push_all(Replay(epoch=EPOCH), arrivals) == EXPECTED


def test_a_new_generations_typed_content_is_released() -> None:
    call = ToolCallDelta(
        seq=FENCE_1, call=0, id="c0", name="f", arguments="{}", index=5, count=1, ts=0.0, gen=1, fence=FENCE_1
    )
    replay = Replay(epoch=EPOCH)
    push_all(replay, [*BEFORE, fence(1)])
    assert replay.push(call) == [call]
    assert replay.push(ZOMBIE[1]) == []


def test_held_old_generation_events_past_the_fence_are_dropped_when_the_fence_is_learned() -> None:
    replay = Replay(epoch=EPOCH)
    assert push_all(replay, [START, BEFORE[2], ZOMBIE[1], ZOMBIE[2]]) == [START]
    assert replay.held_events == 3
    assert replay.push(fence(1)) == []
    assert replay.held_events == 1
    assert replay.held_bytes == held_size(BEFORE[2])
    assert push_all(replay, [BEFORE[1], *BEFORE[3:], *MOVED]) == EXPECTED[1:]


def test_a_held_old_generation_event_at_the_fence_gives_way_to_the_new_generations_event() -> None:
    replay = Replay(epoch=EPOCH)
    assert push_all(replay, [*BEFORE[:-1], ZOMBIE[0]]) == BEFORE[:-1]
    assert push_all(replay, [MOVED[0]]) == []
    assert replay.held_events == 1
    assert replay.held_bytes == held_size(MOVED[0])
    assert push_all(replay, [BEFORE[-1], *MOVED[1:]]) == [BEFORE[-1], *MOVED]


def test_a_reader_sent_an_old_generation_event_past_the_fence_ends_as_runner_lost_on_the_fence() -> None:
    replay = Replay(epoch=EPOCH)
    assert push_all(replay, [*BEFORE, ZOMBIE[0]]) == [*BEFORE, ZOMBIE[0]]
    result = replay.push(fence(1))
    assert isinstance(result, ReplayError)
    assert result.code is ErrorCode.RUNNER_LOST
    assert replay.state is MergeState.ABANDONED
    assert replay.push(MOVED[0]) == []


def test_a_reader_sent_an_old_generation_event_past_the_fence_ends_as_runner_lost_on_a_new_generation_event() -> None:
    replay = Replay(epoch=EPOCH)
    push_all(replay, [*BEFORE, *ZOMBIE[:2]])
    result = replay.push(MOVED[2])
    assert isinstance(result, ReplayError)
    assert result.code is ErrorCode.RUNNER_LOST


def test_a_reader_sent_exactly_the_old_generations_events_before_the_fence_goes_on() -> None:
    replay = Replay(epoch=EPOCH)
    push_all(replay, BEFORE)
    assert replay.push(fence(1)) == []
    assert push_all(replay, MOVED) == MOVED


# --- two moves -------------------------------------------------------------------------------------------------------


def test_a_stream_moved_twice_releases_each_generation_up_to_the_next_ones_fence() -> None:
    arrivals = [*BEFORE, fence(1), *ONE_MOVED, fence(2), *TWICE_MOVED]
    assert push_all(Replay(epoch=EPOCH), arrivals) == EXPECTED_TWICE


def test_a_stream_moved_twice_drops_both_superseded_runners_when_they_wake_up() -> None:
    arrivals = [
        *BEFORE,
        fence(1),
        ONE_MOVED[0],
        ZOMBIE[0],
        ONE_MOVED[1],
        ZOMBIE[1],
        fence(2),
        ZOMBIE[2],
        ONE_ZOMBIE[0],
        TWICE_MOVED[0],
        *ONE_ZOMBIE[1:],
        *ZOMBIE[3:],
        *TWICE_MOVED[1:],
    ]
    assert push_all(Replay(epoch=EPOCH), arrivals) == EXPECTED_TWICE


def test_old_generation_events_between_the_two_fences_stay_void_after_the_second_move() -> None:
    replay = Replay(epoch=EPOCH)
    push_all(replay, [*BEFORE, fence(1), fence(2)])
    assert push_all(replay, ZOMBIE[:2]) == []
    assert push_all(replay, [*ONE_MOVED, *TWICE_MOVED]) == ONE_MOVED + TWICE_MOVED


def test_a_reader_that_learns_the_second_move_first_still_releases_the_first_ones_events() -> None:
    replay = Replay(epoch=EPOCH)
    assert push_all(replay, [TWICE_MOVED[0], fence(2), *BEFORE]) == BEFORE
    assert push_all(replay, [fence(1), *ONE_MOVED, *TWICE_MOVED]) == ONE_MOVED + TWICE_MOVED


def test_a_second_moves_event_at_the_first_moves_fence_is_released_by_the_first_moves_fence() -> None:
    """The first new runner was lost before it published anything: the second starts at the same seq."""
    first, second = StreamFence(gen=1, fence=FENCE_1), StreamFence(gen=2, fence=FENCE_1)
    moved = StreamDelta(seq=FENCE_1, text=" g2s5", index=FENCE_1, count=1, ts=0.0, gen=2, fence=FENCE_1)
    replay = Replay(epoch=EPOCH)
    assert push_all(replay, [*BEFORE, second, moved]) == BEFORE
    assert replay.held_events == 1
    assert replay.push(first) == [moved]
    assert replay.held_events == 0


def test_a_reader_sent_an_old_generation_event_past_the_first_fence_ends_when_it_learns_the_first_move_late() -> None:
    """The second move is learned first; the first generation's zombie fills the gap before the first move is
    learned, so the reader was sent void text: the second move's events wait, and the reader ends."""
    replay = Replay(epoch=EPOCH)
    push_all(replay, [TWICE_MOVED[0], *BEFORE])
    assert push_all(replay, [*ZOMBIE[:2], *TWICE_MOVED[1:]]) == ZOMBIE[:2]
    assert not replay.finished
    result = replay.push(fence(1))
    assert isinstance(result, ReplayError)
    assert result.code is ErrorCode.RUNNER_LOST


# --- resumed readers and the out-of-band error -----------------------------------------------------------------------


@pytest.mark.parametrize("offset", [0, 3, FENCE_1 - 1, FENCE_1, 7, 8])
def test_a_resumed_reader_of_a_moved_stream_gets_exactly_the_tail(offset: int) -> None:
    replay = Replay(epoch=EPOCH, resume=Cursor(EPOCH, offset))
    arrivals = [MOVED[2], *BEFORE, ZOMBIE[0], fence(1), *ZOMBIE, *MOVED, *BEFORE]
    assert push_all(replay, arrivals) == [event for event in EXPECTED[1:] if _tokens(event) > offset]


def _tokens(event: StreamEvent) -> int:
    """The token count a cursor after ``event`` names (its end counts as one past the last token)."""
    if isinstance(event, StreamDelta):
        return event.index
    assert isinstance(event, StreamEnd)
    return event.tokens + 1


def test_the_out_of_band_runner_lost_error_still_ends_a_moved_stream() -> None:
    lost = StreamError(seq=OUT_OF_BAND_SEQ, code="runner_lost", message="no runner took it", tokens=6)
    replay = Replay(epoch=EPOCH)
    push_all(replay, [*BEFORE, fence(1), MOVED[0], MOVED[2]])
    assert replay.push(lost) == [lost]
    assert replay.finished
    assert not replay.waiting_on_gap
    assert push_all(replay, MOVED) == []


# --- property: any interleaving of history and live copies --------------------------------------------------------


def interleave(
    rng: random.Random, first: Sequence[ReceivedEvent], second: Sequence[ReceivedEvent]
) -> list[ReceivedEvent]:
    """A random merge of two sequences that keeps each one's own order."""
    merged: list[ReceivedEvent] = []
    i = j = 0
    while i < len(first) or j < len(second):
        if j == len(second) or (i < len(first) and rng.random() < 0.5):
            merged.append(first[i])
            i += 1
        else:
            merged.append(second[j])
            j += 1
    return merged


def published(rng: random.Random, *, moves: int, early_zombies: bool) -> list[ReceivedEvent]:
    """The order a stream's events reach the server: each fence, then its generation's events, interleaved with
    what the superseded runners publish when they wake up after the fence (or, with ``early_zombies``, before it:
    between the gateway reading the history and publishing the fence)."""
    zombies = [ZOMBIE[: rng.randint(0, len(ZOMBIE))], ONE_ZOMBIE[: rng.randint(0, len(ONE_ZOMBIE))]]
    generations = [MOVED] if moves == 1 else [ONE_MOVED, TWICE_MOVED]
    order: list[ReceivedEvent] = list(BEFORE)
    late: list[tuple[StreamFence, list[StreamEvent]]] = []
    for gen, events in enumerate(generations, start=1):
        woken = zombies[gen - 1]
        early = rng.randint(0, len(woken)) if early_zombies else 0
        order += [*woken[:early], fence(gen), *events]
        late.append((fence(gen), woken[early:]))
    for cut_off, woken in late:
        after = order.index(cut_off) + 1
        order[after:] = interleave(rng, order[after:], woken)
    return order


def reader_arrivals(rng: random.Random, order: list[ReceivedEvent], *, subscribed_at: int) -> list[ReceivedEvent]:
    """What one reader gets: live from ``subscribed_at`` on, merged with a history read up to some later point,
    plus a few redeliveries of events it already had."""
    history = order[: rng.randint(subscribed_at, len(order))]
    merged = interleave(rng, order[subscribed_at:], history)
    for _ in range(rng.randint(0, 3)):
        at = rng.randrange(len(merged))
        merged.insert(rng.randint(at + 1, len(merged)), merged[at])
    return merged


def learns_the_cut_off_first(arrived: Sequence[ReceivedEvent], moves: int) -> bool:
    """Whether every void event comes after the reader could know a fence that voids it (a ``StreamFence`` or an
    event of the newer generation: each carries its fence)."""
    known: set[int] = set()
    for event in arrived:
        gen = getattr(event, "gen", 0)
        known.add(gen)
        if isinstance(event, StreamFence):
            continue
        voiders = {newer for newer in range(gen + 1, moves + 1) if event.seq >= fence_of(newer)}
        if voiders and not voiders & known:
            return False
    return True


@pytest.mark.parametrize("moves", [1, 2])
def test_any_interleaving_in_which_the_cut_off_comes_first_releases_the_expected_text(moves: int) -> None:
    """Live and history copies, redeliveries and superseded runners' events past the fence, in any order in which
    the reader can know each fence before the events it voids: exactly the uninterrupted stream."""
    rng = random.Random(20_260 + moves)
    expected = EXPECTED if moves == 1 else EXPECTED_TWICE
    checked = 0
    while checked < PROPERTY_CASES:
        order = published(rng, moves=moves, early_zombies=False)
        arrived = reader_arrivals(rng, order, subscribed_at=rng.randint(0, len(order)))
        if not learns_the_cut_off_first(arrived, moves):
            continue
        checked += 1
        released = push_all(Replay(epoch=EPOCH), arrived)
        assert text(released) == text(expected), arrived
        assert released == expected, arrived


@pytest.mark.parametrize("moves", [1, 2])
def test_any_interleaving_releases_the_expected_text_or_ends_as_runner_lost_after_void_text(moves: int) -> None:
    """Never a silent mix: a reader that was sent a void event before it could know the cut-off ends as
    ``runner_lost``, unless the superseded runner had already ended the stream by then (before the fence was
    published), in which case the reader got that runner's own uninterrupted stream."""
    rng = random.Random(40_520 + moves)
    expected = EXPECTED if moves == 1 else EXPECTED_TWICE
    superseded = [BEFORE + ZOMBIE] if moves == 1 else [BEFORE + ZOMBIE, BEFORE + ONE_MOVED + ONE_ZOMBIE]
    outcomes: set[str] = set()
    for _ in range(PROPERTY_CASES):
        order = published(rng, moves=moves, early_zombies=True)
        arrived = reader_arrivals(rng, order, subscribed_at=rng.randint(0, len(order)))
        released, refused = push_until_error(Replay(epoch=EPOCH), arrived)
        if refused is not None:
            outcomes.add("runner_lost")
            assert refused.code is ErrorCode.RUNNER_LOST
            assert any(event not in expected for event in released), arrived
        else:
            outcomes.add("expected" if released == expected else "superseded")
            assert released == expected or released in superseded, arrived
    assert {"expected", "runner_lost"} <= outcomes
