"""Typed content end to end: a native reader sees reasoning, a tool call and text with cursors that count every
token, and a reader resuming from any cursor of such a stream assembles exactly what an uninterrupted one does."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from tokenrelay.testing.http import post
from tokenrelay.testing.procs import System, nats_server, system
from tokenrelay.testing.sse import Event, Stream, read_stream
from tokenrelay.testing.synthetic import expected_text

RUNNER_ARGS = ["--synthetic-tokens-per-s", "200", "--synthetic-ttft-ms", "0", "--publish-interval-ms", "0"]
STREAMER_ARGS = ["--flush-interval-ms", "0"]
"""Every token published and written as it comes (5 ms apart): a reader gets a cursor at nearly every token."""
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city", "days", "unit"],
        },
    },
}
CONTENT = ("reasoning", "delta", "tool_call")


@pytest.fixture(scope="module")
def sut() -> Iterator[System]:
    # A broker of its own: runners of other modules on the shared broker would take these jobs too.
    with nats_server() as own, system(own.url, runner_args=RUNNER_ARGS, streamer_args=STREAMER_ARGS) as running:
        yield running


@dataclass
class Assembled:
    """What a native client builds from the events it read."""

    reasoning: str = ""
    text: str = ""
    calls: dict[int, dict[str, str]] = field(default_factory=dict)

    def read(self, events: list[Event]) -> Assembled:
        for event in events:
            data = event.json()
            if event.event == "reasoning":
                self.reasoning += data["text"]
            elif event.event == "delta":
                self.text += data["text"]
            elif event.event == "tool_call":
                made = self.calls.setdefault(data["call"], {"id": "", "name": "", "arguments": ""})
                made["id"] += data.get("id", "")
                made["name"] += data.get("name", "")
                made["arguments"] += data["arguments"]
        return self


async def _stream(sut: System, **body: Any) -> Stream:
    status, created = await post(f"{sut.gateway_url}/v1/streams", body)
    assert status == 201, created
    return await read_stream(created["events_url"])


def _offset(event: Event) -> int:
    assert event.id is not None
    return int(event.id.rsplit(":", 1)[1])


async def test_a_native_reader_sees_reasoning_then_a_tool_call_with_cursors_counting_every_token(sut: System) -> None:
    stream = await _stream(sut, prompt="weather in Paris?", max_tokens=200, tools=[WEATHER], reasoning_effort="low")
    kinds = [event.event for event in stream.events]
    assert kinds[0] == "start" and kinds[-1] == "stop"
    assert set(kinds[1:-1]) == {"reasoning", "tool_call"}
    assert kinds.index("tool_call") > max(i for i, kind in enumerate(kinds) if kind == "reasoning")
    content = [event for event in stream.events if event.event in CONTENT]
    assert [_offset(event) for event in content] == [event.json()["index"] for event in content]
    assert [_offset(event) for event in content] == sorted({_offset(event) for event in content})
    end = stream.terminal.json()
    assert end["finish_reason"] == "tool_calls"
    assert end["tokens"] == _offset(content[-1]) == _offset(stream.terminal)
    assembled = Assembled().read(stream.events)
    assert assembled.reasoning and not assembled.text
    (call,) = assembled.calls.values()
    assert call["name"] == "get_weather" and call["id"].startswith("call_")
    assert orjson.loads(call["arguments"]) == {"city": "synthetic", "days": 42, "unit": "c"}


async def test_reasoning_comes_before_the_text_it_leads_to(sut: System) -> None:
    prompt = "think, then answer"
    stream = await _stream(sut, prompt=prompt, max_tokens=200, reasoning_effort="minimal", temperature=0.3)
    kinds = [event.event for event in stream.events if event.event in CONTENT]
    assert kinds[0] == "reasoning" and kinds[-1] == "delta"
    assert kinds == sorted(kinds, key=("reasoning", "delta").index)
    reasoning_tokens = max(_offset(e) for e in stream.events if e.event == "reasoning")
    assert reasoning_tokens == 2
    assert stream.text == expected_text(prompt, 200 - reasoning_tokens)
    assert stream.terminal.json()["finish_reason"] == "stop"


async def test_a_text_only_stream_has_only_delta_events(sut: System) -> None:
    stream = await _stream(sut, prompt="just text", max_tokens=100)
    assert {event.event for event in stream.events} == {"start", "delta", "stop"}
    assert stream.text == expected_text("just text", 100)


async def test_a_reader_resuming_from_every_cursor_assembles_exactly_the_uninterrupted_stream(sut: System) -> None:
    status, created = await post(
        f"{sut.gateway_url}/v1/streams",
        {"prompt": "reason, then call", "max_tokens": 200, "tools": [WEATHER], "reasoning_effort": "high"},
    )
    assert status == 201, created
    whole = await read_stream(created["events_url"])
    expected = Assembled().read(whole.events)
    assert expected.reasoning and expected.calls
    cursors = [event.id for event in whole.events if event.event != "stop"]
    kinds = [event.event for event in whole.events]
    assert kinds.count("reasoning") > 2 and kinds.count("tool_call") > 2  # cursors inside both blocks
    for at, cursor in enumerate(cursors):
        assert cursor is not None
        rest = await read_stream(created["events_url"], headers={"Last-Event-ID": cursor})
        assert rest.terminal.event == "stop", (cursor, rest.terminal.data)
        resumed = Assembled().read(whole.events[: at + 1]).read(rest.events)
        assert resumed == expected, cursor
        assert all(_offset(event) > _offset(whole.events[at]) for event in rest.events if event.event in CONTENT)
