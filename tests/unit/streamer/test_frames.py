"""Spec of stream events as SSE frames: event names, ids and data fields of the contract."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tokenrelay.streamer.frames import error_frame, frame, is_terminal
from tokenrelay.wire.messages import (
    CancelReason,
    FinishReason,
    ReasoningDelta,
    StreamDelta,
    StreamEnd,
    StreamError,
    StreamStart,
    ToolCallDelta,
)

EPOCH = "5eed"
SID = "0123456789abcdef0123456789abcdef"


def fields(framed: bytes) -> tuple[str | None, str | None, Any]:
    """(event, id, decoded JSON data) of one frame whose data is a single line."""
    assert framed.endswith(b"\n\n")
    lines = framed.decode().removesuffix("\n\n").split("\n")
    event = next((line.removeprefix("event: ") for line in lines if line.startswith("event: ")), None)
    id_ = next((line.removeprefix("id: ") for line in lines if line.startswith("id: ")), None)
    data = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    assert len(data) == 1, framed
    assert len(lines) == (event is not None) + (id_ is not None) + 1, framed
    return event, id_, orjson.loads(data[0])


def test_start_frame_has_start_event_id_epoch_zero_and_stream_fields() -> None:
    start = StreamStart(stream_id=SID, epoch=EPOCH, model="synthetic", created=1700, runner_id="r", ts=1.0)
    assert fields(frame(start, EPOCH)) == (
        "start",
        f"{EPOCH}:0",
        {"stream_id": SID, "model": "synthetic", "created": 1700},
    )


def test_delta_frame_has_delta_event_id_epoch_index_and_text_and_index() -> None:
    delta = StreamDelta(seq=3, text=" world", index=7, count=2, ts=1.0)
    assert fields(frame(delta, EPOCH)) == ("delta", f"{EPOCH}:7", {"text": " world", "index": 7, "ts": delta.ts})


@pytest.mark.parametrize("text", ["a\nb", "a\r\nb\r", "café 日本語 😀 👩\u200d💻", '"quoted" \\ \0'])
def test_delta_frame_carries_any_text_on_one_data_line(text: str) -> None:
    delta = StreamDelta(seq=1, text=text, index=1, count=1, ts=1.0)
    assert fields(frame(delta, EPOCH))[2]["text"] == text


def test_end_frame_has_stop_event_id_epoch_tokens_and_finish_fields() -> None:
    end = StreamEnd(seq=9, finish_reason=FinishReason.LENGTH, tokens=12, ttft_ms=45.5)
    assert fields(frame(end, EPOCH)) == (
        "stop",
        f"{EPOCH}:12",
        {"finish_reason": "length", "tokens": 12, "ttft_ms": 45.5},
    )


def test_end_frame_carries_the_prompt_count_when_the_engine_gave_one() -> None:
    end = StreamEnd(seq=9, finish_reason=FinishReason.STOP, tokens=12, ttft_ms=45.5, prompt_tokens=30)
    assert fields(frame(end, EPOCH))[2] == {"finish_reason": "stop", "tokens": 12, "ttft_ms": 45.5, "prompt_tokens": 30}


def test_end_frame_reports_missing_ttft_as_null_and_omits_cancel_reason() -> None:
    end = StreamEnd(
        seq=1, finish_reason=FinishReason.CANCELLED, tokens=0, ttft_ms=None, cancel_reason=CancelReason.CLIENT
    )
    assert fields(frame(end, EPOCH)) == (
        "stop",
        f"{EPOCH}:0",
        {"finish_reason": "cancelled", "tokens": 0, "ttft_ms": None},
    )


def test_error_event_frame_has_error_event_id_epoch_tokens_and_code_and_message() -> None:
    failure = StreamError(seq=4, code="engine_error", message="the engine failed", tokens=3)
    assert fields(frame(failure, EPOCH)) == (
        "error",
        f"{EPOCH}:3",
        {"code": "engine_error", "message": "the engine failed"},
    )


def test_terminal_frame_id_equals_the_last_delta_id() -> None:
    last = StreamDelta(seq=5, text="x", index=12, count=1, ts=1.0)
    end = StreamEnd(seq=6, finish_reason=FinishReason.STOP, tokens=12, ttft_ms=1.0)
    failure = StreamError(seq=6, code="runner_lost", message="gone", tokens=12)
    assert fields(frame(end, EPOCH))[1] == fields(frame(last, EPOCH))[1]
    assert fields(frame(failure, EPOCH))[1] == fields(frame(last, EPOCH))[1]


def test_error_frame_without_id_has_no_id_line() -> None:
    assert fields(error_frame("slow_consumer", "too slow")) == (
        "error",
        None,
        {"code": "slow_consumer", "message": "too slow"},
    )


def test_error_frame_with_id_carries_it() -> None:
    assert fields(error_frame("internal", "oops", id=f"{EPOCH}:2"))[1] == f"{EPOCH}:2"


def test_is_terminal_is_true_only_for_end_and_error_events() -> None:
    assert is_terminal(StreamEnd(seq=1, finish_reason=FinishReason.STOP, tokens=0, ttft_ms=None))
    assert is_terminal(StreamError(seq=1, code="internal", message="x", tokens=0))
    assert not is_terminal(StreamDelta(seq=1, text="x", index=1, count=1, ts=0.0))
    assert not is_terminal(StreamStart(stream_id=SID, epoch=EPOCH, model="m", created=0, runner_id="r", ts=0.0))


def test_reasoning_frame_has_reasoning_event_id_epoch_index_and_text() -> None:
    event, id_, data = fields(frame(ReasoningDelta(seq=1, text="Let me see", index=3, count=3, ts=1.5), EPOCH))
    assert (event, id_, data) == ("reasoning", f"{EPOCH}:3", {"text": "Let me see", "index": 3, "ts": 1.5})


def test_the_first_tool_call_frame_names_the_call_and_later_ones_carry_only_arguments() -> None:
    first = ToolCallDelta(seq=2, call=0, id="call_9", name="lookup", arguments='{"q"', index=5, count=2, ts=2.0)
    later = ToolCallDelta(seq=3, call=0, arguments=': "x"}', index=6, count=1, ts=2.1)
    assert fields(frame(first, EPOCH)) == (
        "tool_call",
        f"{EPOCH}:5",
        {"call": 0, "id": "call_9", "name": "lookup", "arguments": '{"q"', "index": 5, "ts": 2.0},
    )
    assert fields(frame(later, EPOCH)) == (
        "tool_call",
        f"{EPOCH}:6",
        {"call": 0, "arguments": ': "x"}', "index": 6, "ts": 2.1},
    )


def test_end_frame_carries_the_engines_completion_count_and_a_tool_calls_finish() -> None:
    end = StreamEnd(seq=9, finish_reason=FinishReason.TOOL_CALLS, tokens=7, ttft_ms=1.0, completion_tokens=7)
    _, _, data = fields(frame(end, EPOCH))
    assert data["finish_reason"] == "tool_calls" and data["completion_tokens"] == 7
