"""Spec of the compatible APIs' typed content: requests put in the canonical form with nothing dropped, and
reasoning, tool calls and their finish reasons framed as each API frames them (the sans-I/O framers fed directly)."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from tokenrelay.streamer.compat import anthropic, openai
from tokenrelay.streamer.compat.common import Collector
from tokenrelay.wire.content import ChatMessage, ContentPart, ToolCall
from tokenrelay.wire.errors import BadRequest
from tokenrelay.wire.messages import (
    FinishReason,
    ReasoningDelta,
    StreamDelta,
    StreamEnd,
    StreamEvent,
    StreamStart,
    ToolCallDelta,
)

SID = "0" * 32
START = StreamStart(stream_id=SID, epoch="e", model="m", created=1, runner_id="r", ts=0.0)
THINK = ReasoningDelta(seq=1, text="let me think", index=3, count=3, ts=0.0)
CALL_A = ToolCallDelta(seq=2, call=0, id="call_a", name="weather", arguments='{"city":', index=5, count=2, ts=0.0)
CALL_B = ToolCallDelta(seq=3, call=1, id="call_b", name="clock", arguments="{}", index=6, count=1, ts=0.0)
CALL_A2 = ToolCallDelta(seq=4, call=0, arguments=' "Paris"}', index=8, count=2, ts=0.0)
TOOL_END = StreamEnd(seq=5, finish_reason=FinishReason.TOOL_CALLS, tokens=8, ttft_ms=1.0, prompt_tokens=4)
TEXT = StreamDelta(seq=2, text="Hello", index=5, count=2, ts=0.0)
TEXT_END = StreamEnd(seq=3, finish_reason=FinishReason.STOP, tokens=5, ttft_ms=1.0, completion_tokens=6)


def sse_data(raw: bytes) -> list[Any]:
    return [orjson.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: {")]


def sse_events(raw: bytes) -> list[tuple[str, Any]]:
    out = []
    for frame in raw.split(b"\n\n"):
        lines = dict(line.split(b": ", 1) for line in frame.split(b"\n") if b": " in line)
        if b"event" in lines:
            out.append((lines[b"event"].decode(), orjson.loads(lines[b"data"])))
    return out


def chunks(*events: StreamEvent, include_usage: bool = False) -> list[Any]:
    framing = openai.ChunkFraming(stream_id=SID, model="m", created=1, include_usage=include_usage)
    return sse_data(b"".join(framing.event(event) for event in events))


def anthropic_events(*events: StreamEvent) -> list[tuple[str, Any]]:
    framing = anthropic.EventFraming(stream_id=SID, model="m")
    return sse_events(b"".join(framing.event(event) for event in events))


def collected(*events: StreamEvent) -> Collector:
    collector = Collector()
    for event in events:
        collector.event(event)
    return collector


# -- OpenAI requests


def test_openai_request_keeps_tool_conversations_images_and_every_other_field() -> None:
    body = {
        "model": "m",
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_completion_tokens": 9,
        "messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://e.com/a.png"}}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}},
            ]},
            {"role": "tool", "tool_call_id": "c1", "content": "22 C"},
        ],
        "temperature": 0.3,
        "seed": 7,
        "stop": ["\n"],
        "tools": [{"type": "function", "function": {"name": "weather"}}],
        "top_k": 40,
    }  # fmt: skip
    request, options = openai.parse_chat_request(body)
    assert request.messages == (
        ChatMessage(role="developer", content="be brief"),
        ChatMessage(role="user", content=(ContentPart(type="image_url", image_url="https://e.com/a.png"),)),
        ChatMessage(role="assistant", content="", tool_calls=(ToolCall(id="c1", name="weather", arguments="{}"),)),
        ChatMessage(role="tool", content="22 C", tool_call_id="c1"),
    )
    assert request.max_tokens == 9
    assert request.params == {
        "temperature": 0.3,
        "seed": 7,
        "stop": ["\n"],
        "tools": [{"type": "function", "function": {"name": "weather"}}],
        "top_k": 40,
    }
    assert options == openai.ChatOptions(stream=True, include_usage=True)


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"role": "user", "content": [{"type": "audio"}]}, "messages[0].content[0]"),
        ({"role": "user", "content": None}, "messages[0].content"),
        ({"role": "user", "content": [{"type": "image_url", "image_url": {}}]}, "messages[0].content[0].image_url"),
        ({"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f"}}]}, "messages[0].tool_calls[0]"),
        ({"role": "tool", "content": "x", "tool_call_id": 5}, "messages[0].tool_call_id"),
    ],
)
def test_openai_request_that_cannot_be_put_in_the_canonical_form_is_a_bad_request(
    message: dict[str, Any], field: str
) -> None:
    with pytest.raises(BadRequest) as info:
        openai.parse_chat_request({"messages": [message]})
    assert info.value.code == "bad_request" and field in info.value.message


# -- OpenAI responses


def test_openai_chunks_carry_reasoning_content_and_tool_call_fragments() -> None:
    out = chunks(START, THINK, CALL_A, CALL_B, CALL_A2, TOOL_END, include_usage=True)
    deltas = [chunk["choices"][0]["delta"] for chunk in out if chunk["choices"]]
    assert deltas[1] == {"reasoning_content": "let me think"}
    assert deltas[2] == {
        "tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                        "function": {"name": "weather", "arguments": '{"city":'}}]
    }  # fmt: skip
    assert deltas[3]["tool_calls"][0]["index"] == 1
    assert deltas[4] == {"tool_calls": [{"index": 0, "function": {"arguments": ' "Paris"}'}}]}
    assert out[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert out[-1]["usage"] == {"prompt_tokens": 4, "completion_tokens": 8, "total_tokens": 12}


@pytest.mark.parametrize("reason", [FinishReason.CONTENT_FILTER, FinishReason.LENGTH, FinishReason.STOP])
def test_openai_finish_reason_is_the_streams(reason: FinishReason) -> None:
    end = StreamEnd(seq=1, finish_reason=reason, tokens=0, ttft_ms=None)
    assert chunks(START, end)[-1]["choices"][0]["finish_reason"] == str(reason)


def test_openai_usage_counts_the_engines_completion_tokens_when_it_reported_them() -> None:
    assert chunks(START, TEXT, TEXT_END, include_usage=True)[-1]["usage"]["completion_tokens"] == 6


def test_openai_non_streamed_message_assembles_text_reasoning_and_tool_calls() -> None:
    body = openai.completion_body(
        stream_id=SID, model="m", created=1, content=collected(START, THINK, CALL_A, CALL_B, CALL_A2), end=TOOL_END
    )
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["reasoning_content"] == "let me think"
    assert choice["message"]["tool_calls"] == [
        {"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_b", "type": "function", "function": {"name": "clock", "arguments": "{}"}},
    ]


def test_openai_non_streamed_text_answer_is_as_before() -> None:
    body = openai.completion_body(stream_id=SID, model="m", created=1, content=collected(START, TEXT), end=TEXT_END)
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello", "refusal": None}


# -- Anthropic requests


def test_anthropic_request_translates_tools_choice_thinking_stops_and_blocks() -> None:
    png = base64.b64encode(b"png").decode()
    body = {
        "model": "m",
        "max_tokens": 50,
        "system": "be brief",
        "tools": [{"name": "weather", "description": "now", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "stop_sequences": ["END"],
        "temperature": 0.5,
        "top_k": 5,
        "metadata": {"user_id": "u1"},
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}},
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hm", "signature": "s"},
                {"type": "text", "text": "checking"},
                {"type": "tool_use", "id": "tu1", "name": "weather", "input": {"city": "Paris"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "tu1", "content": [{"type": "text", "text": "22 C"}]},
                {"type": "text", "text": "and tomorrow?"},
            ]},
        ],
    }  # fmt: skip
    request, options = anthropic.parse_messages_request(body)
    assert request.messages == (
        ChatMessage(role="system", content="be brief"),
        ChatMessage(role="user", content=(
            ContentPart(type="text", text="what is this?"),
            ContentPart(type="image_url", image_url=f"data:image/png;base64,{png}"),
        )),
        ChatMessage(role="assistant", content="checking",
                    tool_calls=(ToolCall(id="tu1", name="weather", arguments='{"city":"Paris"}'),)),
        ChatMessage(role="tool", content="22 C", tool_call_id="tu1"),
        ChatMessage(role="user", content="and tomorrow?"),
    )  # fmt: skip
    assert request.params == {
        "tools": [{"type": "function", "function": {
            "name": "weather", "description": "now", "parameters": {"type": "object"}}}],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "reasoning_effort": "low",
        "reasoning": {"max_tokens": 2048},
        "stop": ["END"],
        "temperature": 0.5,
        "top_k": 5,
        "user": "u1",
    }  # fmt: skip
    assert (request.max_tokens, request.model, options.stream) == (50, "m", False)


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "weather"}, {"type": "function", "function": {"name": "weather"}}),
    ],
)
def test_anthropic_tool_choice_becomes_openais(choice: dict[str, Any], expected: Any) -> None:
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tool_choice": choice}
    assert anthropic.parse_messages_request(body)[0].params["tool_choice"] == expected


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"tool_choice": {"type": "some"}}, "tool_choice"),
        ({"thinking": {"type": "enabled"}}, "thinking"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0]"),
        ({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "n", "input": {}}]}]},
         "messages[0].content[0]"),
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file"}}]}]},
         "messages[0].content[0].source"),
    ],
)  # fmt: skip
def test_anthropic_request_that_cannot_be_translated_is_a_bad_request(extra: dict[str, Any], field: str) -> None:
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], **extra}
    with pytest.raises(BadRequest) as info:
        anthropic.parse_messages_request(body)
    assert info.value.code == "bad_request" and field in info.value.message


# -- Anthropic responses


def test_anthropic_text_only_stream_is_framed_as_before() -> None:
    names = [name for name, _ in anthropic_events(START, TEXT, TEXT_END)]
    assert names == [
        "message_start", "content_block_start", "ping", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ]  # fmt: skip


def test_anthropic_thinking_block_ends_with_a_signature_then_tool_use_blocks_follow() -> None:
    events = anthropic_events(START, THINK, CALL_A, CALL_A2, TOOL_END)
    starts = [data["content_block"] for name, data in events if name == "content_block_start"]
    assert starts == [
        {"type": "text", "text": ""},
        {"type": "thinking", "thinking": "", "signature": ""},
        {"type": "tool_use", "id": "call_a", "name": "weather", "input": {}},
    ]
    deltas = [(data["index"], data["delta"]) for name, data in events if name == "content_block_delta"]
    assert deltas[0] == (1, {"type": "thinking_delta", "thinking": "let me think"})
    assert deltas[1][0] == 1 and deltas[1][1]["type"] == "signature_delta" and deltas[1][1]["signature"]
    assert deltas[2:] == [
        (2, {"type": "input_json_delta", "partial_json": '{"city":'}),
        (2, {"type": "input_json_delta", "partial_json": ' "Paris"}'}),
    ]
    message_delta = next(data for name, data in events if name == "message_delta")
    assert message_delta["delta"]["stop_reason"] == "tool_use"
    assert message_delta["usage"] == {"input_tokens": 4, "output_tokens": 8}


def test_anthropic_interleaved_parallel_calls_go_out_as_whole_blocks_one_at_a_time() -> None:
    events = anthropic_events(START, CALL_A, CALL_B, CALL_A2, TOOL_END)
    blocks: dict[int, list[str]] = {}
    order = []
    for name, data in events:
        if name == "content_block_start":
            order.append((data["index"], data["content_block"].get("id")))
        if name == "content_block_delta":
            blocks.setdefault(data["index"], []).append(data["delta"]["partial_json"])
        if name in ("content_block_start", "content_block_stop"):
            opened = [n for n, _ in events[: events.index((name, data))] if n == "content_block_start"]
            closed = [n for n, _ in events[: events.index((name, data))] if n == "content_block_stop"]
            assert len(opened) - len(closed) <= 1  # never two blocks open at once
    assert order == [(0, None), (1, "call_a"), (2, "call_b")]
    assert "".join(blocks[1]) == '{"city": "Paris"}' and blocks[2] == ["{}"]


@pytest.mark.parametrize(
    ("reason", "stop"),
    [(FinishReason.TOOL_CALLS, "tool_use"), (FinishReason.STOP, "end_turn"), (FinishReason.LENGTH, "max_tokens")],
)
def test_anthropic_stop_reason_names_the_finish(reason: FinishReason, stop: str) -> None:
    assert anthropic.stop_reason(StreamEnd(seq=1, finish_reason=reason, tokens=0, ttft_ms=None)) == stop


def test_anthropic_non_streamed_message_assembles_blocks_in_order_with_parsed_input() -> None:
    content = collected(START, THINK, TEXT, CALL_A, CALL_A2)
    body = anthropic.message_body(stream_id=SID, model="m", content=content, end=TOOL_END)
    kinds = [block["type"] for block in body["content"]]
    assert kinds == ["thinking", "text", "tool_use"]
    assert body["content"][0]["thinking"] == "let me think" and body["content"][0]["signature"]
    assert body["content"][2] == {"type": "tool_use", "id": "call_a", "name": "weather", "input": {"city": "Paris"}}
    assert body["stop_reason"] == "tool_use"


def test_anthropic_non_streamed_text_answer_is_one_text_block_as_before() -> None:
    body = anthropic.message_body(stream_id=SID, model="m", content=collected(START, TEXT), end=TEXT_END)
    assert body["content"] == [{"type": "text", "text": "Hello"}]
    assert body["usage"] == {"input_tokens": 0, "output_tokens": 6}


def test_anthropic_blocks_stay_whole_when_a_reader_takes_every_event_in_one_write() -> None:
    # A reader frames pending deltas when it takes them, but the terminal event when it arrives: a stateful
    # framing must still see the events in stream order.
    from tokenrelay.streamer.reader import Reader

    reader = Reader(SID, epoch="e", resume=None, max_buffered_bytes=1 << 20, now=0.0,
                    framing=anthropic.EventFraming(stream_id=SID, model="m"), resumable=False)  # fmt: skip
    end = StreamEnd(seq=4, finish_reason=FinishReason.STOP, tokens=6, ttft_ms=1.0)
    for event in (START, THINK, TEXT, StreamDelta(seq=3, text=" you", index=6, count=1, ts=0.0), end):
        reader.deliver(event, 0.0)
    events = sse_events(reader.buffer.take())
    assert [(name, data.get("index")) for name, data in events if name.startswith("content_block_")] == [
        ("content_block_start", 0), ("content_block_stop", 0),
        ("content_block_start", 1), ("content_block_delta", 1), ("content_block_delta", 1), ("content_block_stop", 1),
        ("content_block_start", 2), ("content_block_delta", 2), ("content_block_stop", 2),
    ]  # fmt: skip
