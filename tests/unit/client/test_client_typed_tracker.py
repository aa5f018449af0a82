"""The tracker reads typed streams: text, reasoning and tool calls, fed as the streamer frames them (no server).

The SSE bytes come from the streamer's own framing of wire events, so these specs read exactly what a real
streamer writes; resuming is checked from every cursor the stream issues, with any overlap a resume may repeat.
"""

from __future__ import annotations

import pytest

from tokenrelay.client import ReasoningDelta, StreamTracker, TextDelta, ToolCall, ToolCallDelta, Usage
from tokenrelay.client.errors import ProtocolError
from tokenrelay.client.events import ContentEvent
from tokenrelay.client.sse import ServerSentEvent, SSEDecoder
from tokenrelay.client.tracker import Phase
from tokenrelay.streamer.frames import frame
from tokenrelay.wire import messages as m
from tokenrelay.wire.content import ToolCall as WireToolCall

EPOCH = "0badcafe"

TYPED_STREAM: list[m.StreamEvent] = [
    m.StreamStart(stream_id="s1", epoch=EPOCH, model="synthetic", created=1, runner_id="r", ts=1.0),
    m.ReasoningDelta(seq=1, text="The user", index=2, count=2, ts=1.1),
    m.ReasoningDelta(seq=2, text=" wants weather.", index=4, count=2, ts=1.2),
    m.StreamDelta(seq=3, text="Let me check.", index=7, count=3, ts=1.3),
    m.ToolCallDelta(seq=4, call=0, id="call_a", name="get_weather", arguments='{"city": ', index=9, count=2, ts=1.4),
    m.ToolCallDelta(seq=5, call=1, id="call_b", name="get_time", arguments="", index=10, count=1, ts=1.5),
    m.ToolCallDelta(seq=6, call=0, arguments='"Paris"}', index=12, count=2, ts=1.6),
    m.ToolCallDelta(seq=7, call=1, arguments='{"tz": "CET"}', index=15, count=3, ts=1.7),
    m.StreamEnd(
        seq=8, finish_reason=m.FinishReason.TOOL_CALLS, tokens=15, ttft_ms=9.5, prompt_tokens=11, completion_tokens=15
    ),
]
"""Reasoning, then text, then two parallel tool calls whose fragments interleave."""

CALLS = (
    ToolCall(call=0, id="call_a", name="get_weather", arguments='{"city": "Paris"}'),
    ToolCall(call=1, id="call_b", name="get_time", arguments='{"tz": "CET"}'),
)


def sse_events(events: list[m.StreamEvent]) -> list[ServerSentEvent]:
    """What a client decodes from the streamer's frames of ``events``."""
    return SSEDecoder().feed(b"".join(frame(event, EPOCH) for event in events))


def content_of(events: list[m.StreamEvent]) -> list[ContentEvent]:
    """The typed content a reader should be given for ``events``, each once and in order."""
    expected: list[ContentEvent] = []
    for event in events:
        if isinstance(event, m.StreamDelta):
            expected.append(TextDelta(event.text, event.index, event.ts))
        elif isinstance(event, m.ReasoningDelta):
            expected.append(ReasoningDelta(event.text, event.index, event.ts))
        elif isinstance(event, m.ToolCallDelta):
            expected.append(ToolCallDelta(event.call, event.arguments, event.index, event.id, event.name, event.ts))
    return expected


def feed(tracker: StreamTracker, events: list[ServerSentEvent]) -> list[ContentEvent]:
    return [content for event in events if (content := tracker.receive_content(event)) is not None]


def test_the_tracker_gives_text_reasoning_and_tool_call_fragments_as_typed_events_in_order() -> None:
    tracker = StreamTracker()
    assert feed(tracker, sse_events(TYPED_STREAM)) == content_of(TYPED_STREAM)
    assert (tracker.phase, tracker.finish_reason, tracker.model) == (Phase.FINISHED, "tool_calls", "synthetic")


def test_the_tracker_keeps_text_and_reasoning_apart_and_assembles_each_tool_call_from_its_fragments() -> None:
    tracker = StreamTracker()
    feed(tracker, sse_events(TYPED_STREAM))
    assert tracker.text == "Let me check."
    assert tracker.reasoning == "The user wants weather."
    assert tracker.tool_calls == CALLS
    assert [call.parsed_arguments() for call in tracker.tool_calls] == [{"city": "Paris"}, {"tz": "CET"}]


def test_the_stop_event_gives_the_engines_usage_beside_the_delivered_tokens() -> None:
    tracker = StreamTracker()
    feed(tracker, sse_events(TYPED_STREAM))
    assert tracker.usage == Usage(tokens=15, prompt_tokens=11, completion_tokens=15)
    assert tracker.ttft_ms == 9.5


def test_the_cursor_counts_every_token_reasoning_and_tool_calls_included() -> None:
    tracker = StreamTracker()
    cursors = []
    for event in sse_events(TYPED_STREAM[:-1]):
        tracker.receive_content(event)
        cursors.append((tracker.cursor, tracker.tokens))
    assert cursors == [(f"{EPOCH}:{index}", index) for index in (0, 2, 4, 7, 9, 10, 12, 15)]


def test_receive_still_gives_only_the_answers_text_so_text_only_readers_see_what_they_always_saw() -> None:
    tracker = StreamTracker()
    texts = [text for event in sse_events(TYPED_STREAM) if (text := tracker.receive(event)) is not None]
    assert texts == ["Let me check."]
    assert tracker.tool_calls == CALLS  # what receive does not return is still held


def test_a_text_only_stream_is_read_exactly_as_before() -> None:
    events: list[m.StreamEvent] = [
        TYPED_STREAM[0],
        m.StreamDelta(seq=1, text="Hel", index=1, count=1, ts=1.0),
        m.StreamDelta(seq=2, text="lo", index=2, count=1, ts=1.1),
        m.StreamEnd(seq=3, finish_reason=m.FinishReason.STOP, tokens=2, ttft_ms=1.0),
    ]
    tracker = StreamTracker()
    assert [tracker.receive(event) for event in sse_events(events)] == [None, "Hel", "lo", None]
    assert (tracker.text, tracker.reasoning, tracker.tool_calls) == ("Hello", "", ())
    assert tracker.usage == Usage(tokens=2)


CUTS = range(1, len(TYPED_STREAM))


@pytest.mark.parametrize("cut", CUTS)
@pytest.mark.parametrize("overlap", [0, 1, 3])
def test_a_resume_after_any_event_repeats_and_loses_no_fragment_even_when_the_server_repeats_some(
    cut: int, overlap: int
) -> None:
    # The connection drops after ``cut`` events; the next one starts ``overlap`` events earlier than the cursor
    # (a server may repeat what it is not sure was delivered; the index tells the tracker what it already holds).
    events = sse_events(TYPED_STREAM)
    tracker = StreamTracker()
    given = feed(tracker, events[:cut])
    tracker.interrupt()
    tracker.resume()
    given += feed(tracker, events[max(1, cut - overlap) :])
    assert given == content_of(TYPED_STREAM)
    assert (tracker.text, tracker.reasoning, tracker.tool_calls) == ("Let me check.", "The user wants weather.", CALLS)
    assert tracker.phase is Phase.FINISHED


@pytest.mark.parametrize("cut", CUTS)
def test_a_tracker_started_from_any_cursor_gives_what_follows_it_and_nothing_before(cut: int) -> None:
    events = sse_events(TYPED_STREAM)
    cursor = events[cut - 1].id
    tracker = StreamTracker(cursor=cursor)
    assert feed(tracker, events) == content_of(TYPED_STREAM[cut:])


def test_a_reader_that_joins_inside_a_tool_calls_arguments_holds_the_rest_without_its_id_and_name() -> None:
    events = sse_events(TYPED_STREAM)
    tracker = StreamTracker(cursor=f"{EPOCH}:10")  # after both calls began
    feed(tracker, events)
    assert tracker.tool_calls == (
        ToolCall(call=0, id=None, name=None, arguments='"Paris"}'),
        ToolCall(call=1, id=None, name=None, arguments='{"tz": "CET"}'),
    )
    with pytest.raises(ValueError, match="tool call 0"):
        tracker.tool_calls[0].to_wire()


def test_a_whole_tool_call_goes_back_to_the_model_as_the_wire_tool_call_of_an_assistant_turn() -> None:
    assert CALLS[0].to_wire() == WireToolCall(id="call_a", name="get_weather", arguments='{"city": "Paris"}')


def test_arguments_that_are_not_whole_json_raise_protocol_error_when_parsed() -> None:
    with pytest.raises(ProtocolError, match="get_weather"):
        ToolCall(call=0, id="c", name="get_weather", arguments='{"city": ').parsed_arguments()


def test_a_tool_call_with_no_arguments_parses_as_an_empty_object() -> None:
    assert ToolCall(call=0, id="c", name="now", arguments="").parsed_arguments() == {}


@pytest.mark.parametrize(
    ("event", "data"),
    [
        ("tool_call", '{"call": "0", "arguments": "", "index": 1}'),
        ("tool_call", '{"call": 0, "arguments": 1, "index": 1}'),
        ("tool_call", '{"call": 0, "id": 7, "arguments": "", "index": 1}'),
        ("reasoning", '{"text": null, "index": 1}'),
        ("reasoning", '{"text": "x", "index": "1"}'),
    ],
)
def test_malformed_typed_events_raise_protocol_error(event: str, data: str) -> None:
    with pytest.raises(ProtocolError, match=event):
        StreamTracker().receive_content(ServerSentEvent(event, data, "e:1", "e:1"))
