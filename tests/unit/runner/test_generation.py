"""Spec of one generation's publishing: typed blocks as their own messages, consecutive seqs, every token counted,
the engine's finish reason and usage in the terminal event (a fake broker and engine, no sleeps)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from tokenrelay.runner.engines import GenerationRequest, Piece, Reasoning, TextTail, ToolCallFragment
from tokenrelay.runner.generation import Generation
from tokenrelay.runner.metrics import RunnerMetrics
from tokenrelay.runner.pace import PublishPace
from tokenrelay.wire import codec
from tokenrelay.wire.content import ChatMessage
from tokenrelay.wire.messages import (
    FinishReason,
    JobRequest,
    ReasoningDelta,
    StreamDelta,
    StreamEnd,
    StreamEvent,
    StreamFence,
    StreamRecord,
    StreamStart,
    StreamState,
    ToolCallDelta,
)

HOLD_S = 3600.0
"""A publish interval no test reaches: only the first token goes out at once, the rest at block boundaries and the
end (no timer ever fires)."""


class FakeBroker:
    """Records what is published."""

    def __init__(self) -> None:
        self.published: list[bytes] = []

    async def publish(self, subject: str, data: bytes) -> None:
        self.published.append(data)

    def events(self) -> list[StreamEvent]:
        """What was published, decoded (a runner publishes no fence: the gateway does)."""
        return [event for data in self.published if not isinstance(event := codec.decode_event(data), StreamFence)]


class ScriptedEngine:
    """Yields the given pieces; reports a finish reason and a completion count when given them."""

    name = "scripted"
    model = "scripted"

    def __init__(
        self, pieces: Sequence[Piece], *, finish: FinishReason | None = None, completion_tokens: int | None = None
    ) -> None:
        self._pieces = pieces
        self._finish = finish
        self._completion_tokens = completion_tokens

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Piece]:
        for piece in self._pieces:
            yield piece
        if self._finish is not None:
            request.report_finish_reason(self._finish)
        if self._completion_tokens is not None:
            request.report_completion_tokens(self._completion_tokens)

    async def aclose(self) -> None:
        """Nothing to release."""


async def generate(
    engine: ScriptedEngine, *, max_tokens: int = 100, interval_s: float = HOLD_S
) -> tuple[list[StreamEvent], list[StreamRecord]]:
    broker, records = FakeBroker(), []

    async def write_record(record: StreamRecord) -> None:
        records.append(record)

    job = JobRequest(
        stream_id="0" * 32, epoch="e1", gateway_id="g1", model="m", messages=(ChatMessage(role="user", content="hi"),),
        max_tokens=max_tokens, created=1,
    )  # fmt: skip
    generation = Generation(
        job, engine=engine, nc=broker, runner_id="r1", pace=PublishPace(interval_s), metrics=RunnerMetrics(),  # type: ignore[arg-type]
        write_record=write_record,
    )  # fmt: skip
    await generation.start()
    await generation.records_saved()
    return broker.events(), records


def content(events: list[StreamEvent]) -> list[tuple[object, ...]]:
    """Each content event as (kind, its text or (call, id, name, arguments), index, count)."""
    out: list[tuple[object, ...]] = []
    for event in events:
        if isinstance(event, StreamDelta | ReasoningDelta):
            out.append((event.type, event.text, event.index, event.count))
        elif isinstance(event, ToolCallDelta):
            out.append((event.type, (event.call, event.id, event.name, event.arguments), event.index, event.count))
    return out


TYPED: list[Piece] = [
    Reasoning("Let"), Reasoning(" me"), "Hi", " there",
    ToolCallFragment(call=0, id="call_a", name="get_weather"), ToolCallFragment(call=0, arguments='{"city"'),
    ToolCallFragment(call=0, arguments=':"Paris"}'), ToolCallFragment(call=1, id="call_b", name="now", arguments="{}"),
]  # fmt: skip


async def test_a_generation_publishes_each_block_as_its_own_messages_with_consecutive_seqs() -> None:
    events, _ = await generate(ScriptedEngine(TYPED, finish=FinishReason.TOOL_CALLS, completion_tokens=8))
    assert [event.seq for event in events] == list(range(len(events)))
    assert isinstance(events[0], StreamStart)
    assert content(events) == [
        ("reasoning", "Let", 1, 1),  # the first token goes out at once
        ("reasoning", " me", 2, 1),
        ("delta", "Hi there", 4, 2),
        ("tool_call", (0, "call_a", "get_weather", '{"city":"Paris"}'), 7, 3),
        ("tool_call", (1, "call_b", "now", "{}"), 8, 1),
    ]
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert (end.finish_reason, end.tokens, end.completion_tokens) == (FinishReason.TOOL_CALLS, 8, 8)


async def test_a_block_boundary_starts_a_new_message_even_with_every_token_due() -> None:
    events, _ = await generate(ScriptedEngine(TYPED), interval_s=0)
    assert [kind for kind, *_ in content(events)] == ["reasoning"] * 2 + ["delta"] * 2 + ["tool_call"] * 4


async def test_the_record_counts_every_token_whatever_its_kind() -> None:
    _, records = await generate(ScriptedEngine(TYPED, finish=FinishReason.TOOL_CALLS))
    final = records[-1]
    assert (final.state, final.tokens, final.finish_reason) == (StreamState.FINISHED, 8, FinishReason.TOOL_CALLS)


async def test_a_tool_calls_finish_after_a_last_block_of_text_ends_as_stop() -> None:
    events, _ = await generate(ScriptedEngine(["a", "b"], finish=FinishReason.TOOL_CALLS))
    end = events[-1]
    assert isinstance(end, StreamEnd) and end.finish_reason is FinishReason.STOP


async def test_the_engines_content_filter_finish_ends_the_stream() -> None:
    events, _ = await generate(ScriptedEngine(["a"], finish=FinishReason.CONTENT_FILTER))
    end = events[-1]
    assert isinstance(end, StreamEnd) and end.finish_reason is FinishReason.CONTENT_FILTER


async def test_max_tokens_counts_reasoning_and_tool_call_tokens() -> None:
    events, _ = await generate(ScriptedEngine(TYPED), max_tokens=3)
    end = events[-1]
    assert isinstance(end, StreamEnd) and (end.finish_reason, end.tokens) == (FinishReason.LENGTH, 3)
    assert content(events)[-1] == ("delta", "Hi", 3, 1)


async def test_a_text_tail_after_reasoning_joins_the_text_block_not_the_reasoning() -> None:
    events, _ = await generate(ScriptedEngine(["a", Reasoning("r"), Reasoning("s"), TextTail("!")]))
    assert [kind for kind, *_ in content(events)] == ["delta", "reasoning", "delta"]
    assert content(events)[-1][1] == "!"


async def test_a_text_only_generation_publishes_deltas_and_an_end_without_an_engine_count() -> None:
    events, _ = await generate(ScriptedEngine(["Hel", "lo", "!"]))
    assert [type(event) for event in events] == [StreamStart, StreamDelta, StreamDelta, StreamEnd]
    assert content(events) == [("delta", "Hel", 1, 1), ("delta", "lo!", 3, 2)]
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert (end.finish_reason, end.tokens, end.completion_tokens) == (FinishReason.STOP, 3, None)
