"""Spec of a generation that continues a stream moved from a lost runner: no start, seqs from the fence, tokens
counted from those before, every event stamped with its generation and fence; and a stored response kept whole
from the stream's earlier events (a fake broker and engine, no sleeps)."""

from __future__ import annotations

import asyncio

from tests.unit.runner.test_generation import FakeBroker, ScriptedEngine
from tokenrelay.runner.engines import Piece, Reasoning, ToolCallFragment
from tokenrelay.runner.generation import Generation
from tokenrelay.runner.metrics import RunnerMetrics
from tokenrelay.runner.pace import PublishPace
from tokenrelay.runner.stored import KeptEvents, earlier_events
from tokenrelay.wire import codec
from tokenrelay.wire.content import ChatMessage
from tokenrelay.wire.messages import (
    Continuation,
    FinishReason,
    JobRequest,
    ReasoningDelta,
    StreamDelta,
    StreamEnd,
    StreamError,
    StreamEvent,
    StreamFence,
    StreamRecord,
    StreamStart,
    ToolCallDelta,
)

MOVED = Continuation(gen=2, seq=7, tokens=9, text="Hello there", typed=True)


async def continue_stream(
    pieces: list[Piece], *, moved: Continuation = MOVED, max_tokens: int = 100, interval_s: float = 0.0
) -> tuple[list[StreamEvent], list[StreamRecord]]:
    broker, records = FakeBroker(), []

    async def write_record(record: StreamRecord) -> None:
        records.append(record)

    job = JobRequest(
        stream_id="0" * 32, epoch="e1", gateway_id="g1", model="m", messages=(ChatMessage(role="user", content="hi"),),
        max_tokens=max_tokens, created=1, continuation=moved,
    )  # fmt: skip
    generation = Generation(
        job, engine=ScriptedEngine(pieces), nc=broker, runner_id="r2", pace=PublishPace(interval_s),  # type: ignore[arg-type]
        metrics=RunnerMetrics(), write_record=write_record,
    )  # fmt: skip
    await generation.start()
    await generation.records_saved()
    return broker.events(), records


async def test_a_continuation_publishes_no_start_and_numbers_its_events_from_the_fence() -> None:
    events, _ = await continue_stream(["a", "b", "c"])
    assert not any(isinstance(event, StreamStart) for event in events)
    assert [event.seq for event in events] == list(range(7, 7 + len(events)))


async def test_a_continuation_counts_tokens_from_those_before_the_move() -> None:
    events, records = await continue_stream([Reasoning("r"), "a", "b"])
    assert [(type(e).__name__, e.index) for e in events if isinstance(e, StreamDelta | ReasoningDelta)] == [
        ("ReasoningDelta", 10),
        ("StreamDelta", 11),
        ("StreamDelta", 12),
    ]
    end = events[-1]
    assert isinstance(end, StreamEnd) and (end.tokens, end.finish_reason) == (12, FinishReason.STOP)
    assert (records[-1].tokens, records[-1].generation) == (12, 2)


async def test_every_event_of_a_continuation_carries_its_generation_and_fence() -> None:
    events, _ = await continue_stream([Reasoning("r"), "a", ToolCallFragment(call=0, id="c", name="f")])
    assert {type(event) for event in events} == {ReasoningDelta, StreamDelta, ToolCallDelta, StreamEnd}
    assert all(getattr(event, "gen", None) == 2 and getattr(event, "fence", None) == 7 for event in events)


async def test_a_continuation_ends_at_max_tokens_counting_the_tokens_before_the_move() -> None:
    events, _ = await continue_stream(["a", "b", "c", "d"], max_tokens=11)
    end = events[-1]
    assert isinstance(end, StreamEnd) and (end.finish_reason, end.tokens) == (FinishReason.LENGTH, 11)


async def test_a_continuation_with_nothing_left_ends_at_once_as_length() -> None:
    events, _ = await continue_stream(["a"], max_tokens=9)
    assert len(events) == 1
    end = events[0]
    assert isinstance(end, StreamEnd) and (end.seq, end.finish_reason, end.tokens) == (7, FinishReason.LENGTH, 9)


async def test_a_continuations_error_carries_its_generation_and_the_total_tokens() -> None:
    class Failing(ScriptedEngine):
        async def stream(self, request):  # type: ignore[no-untyped-def]
            yield "a"
            raise RuntimeError("boom")

    broker = FakeBroker()

    async def write_record(record: StreamRecord) -> None:
        """Records are not what this test looks at."""

    job = JobRequest(
        stream_id="1" * 32, epoch="e1", gateway_id="g1", model="m", messages=(ChatMessage(role="user", content="x"),),
        max_tokens=100, created=1, continuation=MOVED,
    )  # fmt: skip
    generation = Generation(
        job, engine=Failing([]), nc=broker, runner_id="r2", pace=PublishPace(0.0), metrics=RunnerMetrics(),  # type: ignore[arg-type]
        write_record=write_record,
    )  # fmt: skip
    await generation.start()
    error = broker.events()[-1]
    assert isinstance(error, StreamError)
    assert (error.gen, error.fence, error.tokens) == (2, 7, 10)


def encoded(*events: StreamEvent | StreamFence) -> list[bytes]:
    return [codec.encode(event) for event in events]


START = StreamStart(stream_id="s", epoch="e", model="m", created=1, runner_id="r1", ts=1.0)


def delta(seq: int, text: str, *, gen: int = 0, fence: int = 0) -> StreamDelta:
    return StreamDelta(seq=seq, text=text, index=seq, count=1, ts=1.0, gen=gen, fence=fence)


def test_a_moved_streams_earlier_events_are_those_before_the_fence_not_cut_off() -> None:
    history = encoded(
        START, delta(1, "a"), delta(2, "b"), delta(3, "void"),  # generation 0, cut off at 3
        StreamFence(gen=1, fence=3), delta(3, "c", gen=1, fence=3), delta(4, "d", gen=1, fence=3),
        delta(4, "late", gen=0),  # the first owner woke up: void
        delta(5, "e", gen=1, fence=3),
    )  # fmt: skip
    kept = earlier_events(history, fence=5)
    assert kept is not None
    assert [codec.decode_event(data) for data in kept] == [
        START, delta(1, "a"), delta(2, "b"), delta(3, "c", gen=1, fence=3), delta(4, "d", gen=1, fence=3),
    ]  # fmt: skip


def test_a_fence_learned_from_a_later_event_voids_what_came_before_it() -> None:
    history = encoded(START, delta(1, "a"), delta(2, "void"), delta(2, "b", gen=1, fence=2))
    kept = earlier_events(history, fence=3)
    assert kept is not None and codec.decode_event(kept[-1]) == delta(2, "b", gen=1, fence=2)


def test_a_history_with_a_hole_gives_no_earlier_events() -> None:
    assert earlier_events(encoded(START, delta(2, "b")), fence=3) is None
    assert earlier_events([], fence=1) is None


def read_back(events: list[bytes] | None) -> asyncio.Future[list[bytes] | None]:
    """A read of the earlier events that is done already."""
    read: asyncio.Future[list[bytes] | None] = asyncio.get_running_loop().create_future()
    read.set_result(events)
    return read


class FakeKeeper:
    def __init__(self) -> None:
        self.kept: list[list[bytes]] = []

    async def keep(self, stream_id: str, events: list[bytes]) -> bool:
        self.kept.append(events)
        return True


async def test_a_moved_stored_response_is_kept_with_its_earlier_events_first() -> None:
    keeper, earlier = FakeKeeper(), encoded(START, delta(1, "a"))
    kept = KeptEvents(keeper, "s", earlier=read_back(earlier))  # type: ignore[arg-type]
    end = StreamEnd(seq=3, finish_reason=FinishReason.STOP, tokens=2, ttft_ms=None, gen=1, fence=2)
    for event in (delta(2, "b", gen=1, fence=2), end):
        await kept.add(event, codec.encode(event))
    assert keeper.kept == [[*earlier, *encoded(delta(2, "b", gen=1, fence=2), end)]]


async def test_a_moved_stored_response_whose_earlier_events_cannot_be_read_is_not_kept() -> None:
    keeper = FakeKeeper()
    kept = KeptEvents(keeper, "s", earlier=read_back(None))  # type: ignore[arg-type]
    end = StreamEnd(seq=2, finish_reason=FinishReason.STOP, tokens=1, ttft_ms=None, gen=1, fence=2)
    await kept.add(end, codec.encode(end))
    assert keeper.kept == []
