"""Spec of typed content in a reader: merged within one block only, under the same byte budget, and resumable at
every cursor (inside reasoning, inside a tool call's arguments) with nothing repeated and nothing missing."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import orjson
import pytest

from tokenrelay.streamer.buffer import RUN_OVERHEAD_BYTES, TEXT_OVERHEAD_BYTES, ReaderBuffer
from tokenrelay.streamer.frames import frame
from tokenrelay.streamer.reader import Reader
from tokenrelay.streamer.replay import Replay, ReplayError
from tokenrelay.wire.cursor import Cursor
from tokenrelay.wire.errors import ErrorCode
from tokenrelay.wire.messages import (
    FinishReason,
    ReasoningDelta,
    StreamDelta,
    StreamEnd,
    StreamEvent,
    StreamStart,
    ToolCallDelta,
)

T0 = 1000.0
EPOCH = "e1"
SID = "0123456789abcdef0123456789abcdef"


def reasoning(seq: int, text: str, index: int, count: int = 1) -> ReasoningDelta:
    return ReasoningDelta(seq=seq, text=text, index=index, count=count, ts=T0 + seq)


def delta(seq: int, text: str, index: int, count: int = 1) -> StreamDelta:
    return StreamDelta(seq=seq, text=text, index=index, count=count, ts=T0 + seq)


def call(
    seq: int, n: int, arguments: str, index: int, *, id: str | None = None, name: str | None = None
) -> ToolCallDelta:
    return ToolCallDelta(seq=seq, call=n, id=id, name=name, arguments=arguments, index=index, count=1, ts=T0 + seq)


STREAM: list[StreamEvent] = [
    StreamStart(stream_id=SID, epoch=EPOCH, model="m", created=1, runner_id="r", ts=T0),
    reasoning(1, "Let", 1), reasoning(2, " me", 2), reasoning(3, " think", 4, count=2),
    delta(4, "Calling", 5), delta(5, " now", 6),
    call(6, 0, "", 7, id="call_a", name="get_weather"), call(7, 0, '{"city"', 8), call(8, 0, ': "Paris"}', 9),
    call(9, 1, "{}", 10, id="call_b", name="clock"),
    StreamEnd(seq=10, finish_reason=FinishReason.TOOL_CALLS, tokens=10, ttft_ms=1.0),
]  # fmt: skip
CURSORS = sorted({0} | {e.index for e in STREAM if isinstance(e, StreamDelta | ReasoningDelta | ToolCallDelta)})


@dataclass
class Assembled:
    """What a native SSE client builds from the frames it read."""

    reasoning: str = ""
    text: str = ""
    calls: dict[int, dict[str, str]] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)
    terminal: str | None = None

    def read(self, raw: bytes) -> Assembled:
        for block in raw.decode().split("\n\n"):
            fields = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line)
            if "event" not in fields:
                continue
            data = orjson.loads(fields["data"])
            self.ids.append(fields.get("id", ""))
            kind = fields["event"]
            if kind == "reasoning":
                self.reasoning += data["text"]
            elif kind == "delta":
                self.text += data["text"]
            elif kind == "tool_call":
                made = self.calls.setdefault(data["call"], {"id": "", "name": "", "arguments": ""})
                made["id"] += data.get("id", "")
                made["name"] += data.get("name", "")
                made["arguments"] += data["arguments"]
            elif kind in ("stop", "error"):
                self.terminal = kind
        return self


def native(events: list[StreamEvent]) -> bytes:
    return b"".join(frame(event, EPOCH) for event in events)


WHOLE = Assembled().read(native(STREAM))


def test_an_uninterrupted_reader_assembles_reasoning_text_and_both_tool_calls() -> None:
    assert WHOLE.reasoning == "Let me think" and WHOLE.text == "Calling now"
    assert WHOLE.calls == {
        0: {"id": "call_a", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        1: {"id": "call_b", "name": "clock", "arguments": "{}"},
    }


def test_pending_events_merge_within_a_block_and_never_across_kinds() -> None:
    buffer = ReaderBuffer(max_buffered_bytes=1 << 20, now=T0, epoch=EPOCH)
    for event in STREAM[1:10]:
        assert isinstance(event, StreamDelta | ReasoningDelta | ToolCallDelta)
        assert buffer.append_delta(event, T0) is None
    frames = [block for block in buffer.take().decode().split("\n\n") if block]
    assert [block.split("\n")[0] for block in frames] == [
        "event: reasoning", "event: delta", "event: tool_call", "event: tool_call",
    ]  # fmt: skip
    assert [block.split("\n")[1] for block in frames] == ["id: e1:4", "id: e1:6", "id: e1:9", "id: e1:10"]
    first_call = orjson.loads(frames[2].split("\n")[2].removeprefix("data: "))
    assert first_call == {
        "call": 0, "id": "call_a", "name": "get_weather", "arguments": '{"city": "Paris"}', "index": 9, "ts": T0 + 6,
    }  # fmt: skip


def test_a_merged_tool_call_fragment_after_its_first_carries_no_id_or_name() -> None:
    buffer = ReaderBuffer(max_buffered_bytes=1 << 20, now=T0, epoch=EPOCH)
    buffer.append_delta(call(7, 0, '{"city"', 8), T0)
    buffer.append_delta(call(8, 0, ': "Paris"}', 9), T0)
    data = orjson.loads(buffer.take().split(b"data: ")[1].split(b"\n")[0])
    assert data == {"call": 0, "arguments": '{"city": "Paris"}', "index": 9, "ts": T0 + 7}


def test_reasoning_pending_between_text_is_its_own_event() -> None:
    buffer = ReaderBuffer(max_buffered_bytes=1 << 20, now=T0, epoch=EPOCH)
    for event in (delta(1, "a", 1), reasoning(2, "r", 2), delta(3, "b", 3)):
        buffer.append_delta(event, T0)
    assert Assembled().read(buffer.take()).ids == ["e1:1", "e1:2", "e1:3"]


def test_a_new_block_costs_a_run_against_the_byte_budget() -> None:
    text_bytes = sys.getsizeof("a") + TEXT_OVERHEAD_BYTES
    buffer = ReaderBuffer(max_buffered_bytes=RUN_OVERHEAD_BYTES + 2 * text_bytes, now=T0, epoch=EPOCH)
    assert buffer.append_delta(reasoning(1, "a", 1), T0) is None
    assert buffer.append_delta(reasoning(2, "b", 2), T0) is None  # merged: only its text
    refused = buffer.append_delta(delta(3, "c", 3), T0)  # another block: a run of its own does not fit
    assert refused is not None and refused.code is ErrorCode.SLOW_CONSUMER


@pytest.mark.parametrize("offset", CURSORS)
def test_a_reader_resuming_from_any_cursor_gets_exactly_the_rest(offset: int) -> None:
    had: list[StreamEvent] = [STREAM[0]]
    had += [e for e in STREAM if isinstance(e, StreamDelta | ReasoningDelta | ToolCallDelta) and e.index <= offset]
    reader = Reader(SID, epoch=EPOCH, resume=Cursor(EPOCH, offset), max_buffered_bytes=1 << 20, now=T0)
    for event in STREAM:  # history from the start, as a resuming reader reads it
        reader.deliver(event, T0, notify=False)
    resumed = reader.buffer.take()
    assembled = Assembled().read(native(had)).read(resumed)
    assert (assembled.reasoning, assembled.text, assembled.calls) == (WHOLE.reasoning, WHOLE.text, WHOLE.calls)
    assert assembled.terminal == "stop"
    content_ids = Assembled().read(resumed).ids[:-1]  # the terminal event's id is the stream's last cursor
    assert all(int(i.rsplit(":", 1)[1]) > offset for i in content_ids)


def test_a_cursor_inside_an_event_of_several_reasoning_tokens_is_refused() -> None:
    replay = Replay(epoch=EPOCH, resume=Cursor(EPOCH, 3))  # reasoning(3, " think", 4, count=2) holds tokens 3 and 4
    for event in STREAM[:3]:
        replay.push(event)
    refused = replay.push(STREAM[3])
    assert isinstance(refused, ReplayError) and refused.code is ErrorCode.BAD_REQUEST
