"""Specs of the Anthropic framing's blocks: where the first one opens, and that each starts and stops once."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tokenrelay.streamer.compat import anthropic
from tokenrelay.wire.messages import FinishReason, ReasoningDelta, StreamEnd, StreamEvent, StreamStart, ToolCallDelta

SID = "0" * 32
START = StreamStart(stream_id=SID, epoch="e", model="m", created=1, runner_id="r", ts=0.0)
THINK = ReasoningDelta(seq=1, text="let me think", index=3, count=3, ts=0.0)
CALL_A = ToolCallDelta(seq=2, call=0, id="call_a", name="weather", arguments='{"city":', index=5, count=2, ts=0.0)
CALL_B = ToolCallDelta(seq=3, call=1, id="call_b", name="clock", arguments="{}", index=6, count=1, ts=0.0)
CALL_A2 = ToolCallDelta(seq=4, call=0, arguments=' "Paris"}', index=8, count=2, ts=0.0)
TOOL_END = StreamEnd(seq=5, finish_reason=FinishReason.TOOL_CALLS, tokens=8, ttft_ms=1.0)
EMPTY_END = StreamEnd(seq=1, finish_reason=FinishReason.STOP, tokens=0, ttft_ms=None)
TOOL = {"name": "weather", "input_schema": {"type": "object"}}


def framed(*events: StreamEvent, open_text_first: bool) -> list[tuple[str, Any]]:
    framing = anthropic.EventFraming(stream_id=SID, model="m", open_text_first=open_text_first)
    out = []
    for frame in b"".join(framing.event(event) for event in events).split(b"\n\n"):
        lines = dict(line.split(b": ", 1) for line in frame.split(b"\n") if b": " in line)
        if b"event" in lines:
            out.append((lines[b"event"].decode(), orjson.loads(lines[b"data"])))
    return out


def options(**extra: Any) -> anthropic.MessagesOptions:
    body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}], **extra}
    return anthropic.parse_messages_request(body)[1]


@pytest.mark.parametrize(
    "extra",
    [{"tools": [TOOL]}, {"thinking": {"type": "enabled", "budget_tokens": 1024}}],
    ids=["tools", "thinking"],
)
def test_a_request_offering_tools_or_enabling_thinking_may_begin_with_a_block_other_than_text(
    extra: dict[str, Any],
) -> None:
    assert options(**extra).may_begin_with_a_block


@pytest.mark.parametrize(
    "extra", [{}, {"tools": []}, {"thinking": {"type": "disabled"}}], ids=["plain", "no tools", "thinking off"]
)
def test_a_request_without_tools_or_thinking_opens_its_text_block_with_the_message(extra: dict[str, Any]) -> None:
    assert not options(**extra).may_begin_with_a_block


def test_without_open_text_first_the_first_block_is_the_first_contents_at_index_0() -> None:
    events = framed(START, THINK, CALL_A, CALL_A2, TOOL_END, open_text_first=False)
    assert [name for name, _ in events[:3]] == ["message_start", "ping", "content_block_start"]
    starts = [(data["index"], data["content_block"]["type"]) for name, data in events if name == "content_block_start"]
    assert starts == [(0, "thinking"), (1, "tool_use")]


def test_without_open_text_first_a_message_with_no_content_has_one_empty_text_block() -> None:
    events = framed(START, EMPTY_END, open_text_first=False)
    assert [name for name, _ in events] == [
        "message_start", "ping", "content_block_start", "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip
    assert events[2][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}


@pytest.mark.parametrize("open_text_first", [True, False])
def test_each_block_starts_and_stops_once_in_order_when_parallel_calls_interleave(open_text_first: bool) -> None:
    events = framed(START, THINK, CALL_A, CALL_B, CALL_A2, TOOL_END, open_text_first=open_text_first)
    starts = [data["index"] for name, data in events if name == "content_block_start"]
    stops = [data["index"] for name, data in events if name == "content_block_stop"]
    blocks = 4 if open_text_first else 3  # the empty text block opened with the message, then thinking, a, b
    assert starts == stops == list(range(blocks))
    opened = 0
    for name, _ in events:
        opened += {"content_block_start": 1, "content_block_stop": -1}.get(name, 0)
        assert opened in (0, 1)  # never two blocks open at once
