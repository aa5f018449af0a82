"""A :class:`Stream` of typed content, read from a scripted events source standing in for a streamer (no server).

The source answers each connection with the streamer's frames after the ``Last-Event-ID`` it was sent and may drop
the connection after some events, so these specs show what a reader gets across drops at every position.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, cast

import aiohttp
import pytest

from tokenrelay.client import (
    ChatMessage,
    Finished,
    ReasoningDelta,
    Stopped,
    Stream,
    StreamEvent,
    TextDelta,
    TokenRelayError,
    ToolCallDelta,
    Usage,
)
from tokenrelay.client.stream import EventsOptions
from tokenrelay.streamer.frames import frame
from tokenrelay.wire import messages as m

from .test_client_typed_tracker import CALLS, EPOCH, TYPED_STREAM, content_of

URL = "http://127.0.0.1:1/v1/streams/s1/events"
INSTANT = EventsOptions(reconnect_delay_s=0.0, max_reconnect_delay_s=0.0)
"""Reconnect at once: the scripted source never needs a pause."""


class ScriptedResponse:
    """A ``200 text/event-stream`` response that gives one frame per read, then ends (or drops)."""

    status = 200
    content_type = "text/event-stream"

    def __init__(self, frames: list[bytes]) -> None:
        self._frames = frames
        self.content = self

    async def readany(self) -> bytes:
        return self._frames.pop(0) if self._frames else b""

    def close(self) -> None:
        self._frames = []


class ScriptedSource:
    """Serves a stream's frames after the cursor each connection sends; connection ``n`` ends after ``cuts[n]``."""

    def __init__(self, events: list[m.StreamEvent], cuts: Sequence[int]) -> None:
        self.frames = [(f"{EPOCH}:{_offset(event)}", frame(event, EPOCH)) for event in events]
        self.cuts = list(cuts)
        self.cursors: list[str | None] = []

    async def get(self, url: str, *, headers: dict[str, str], **options: object) -> ScriptedResponse:
        cursor = headers.get("Last-Event-ID")
        self.cursors.append(cursor)
        ids = [event_id for event_id, _ in self.frames]
        start = 0 if cursor is None else ids.index(cursor) + 1
        frames = [data for _, data in self.frames[start:]]
        return ScriptedResponse(frames[: self.cuts.pop(0)] if self.cuts else frames)


class ScriptedOwner:
    """A stream's owner whose HTTP pool is the scripted source."""

    def __init__(self, source: ScriptedSource) -> None:
        self.source = source

    async def stop(self, stream_id: str) -> Stopped:
        raise AssertionError("not stopped here")

    async def feedback(self, stream_id: str, rating: Literal["up", "down"], comment: str | None = None) -> None:
        raise AssertionError("not rated here")

    async def http_session(self) -> aiohttp.ClientSession:
        return cast(aiohttp.ClientSession, self.source)


def _offset(event: m.StreamEvent) -> int:
    if isinstance(event, m.StreamStart):
        return 0
    if isinstance(event, m.StreamEnd | m.StreamError):
        return event.tokens
    return event.index


def stream_of(events: list[m.StreamEvent], cuts: Sequence[int] = ()) -> tuple[Stream, ScriptedSource]:
    source = ScriptedSource(events, list(cuts))
    return Stream(ScriptedOwner(source), "s1", URL, options=INSTANT), source


FINISHED = Finished("tool_calls", Usage(tokens=15, prompt_tokens=11, completion_tokens=15), CALLS, 9.5)


async def test_events_yields_every_typed_event_in_order_then_how_the_stream_finished() -> None:
    stream, _ = stream_of(TYPED_STREAM)
    events: list[StreamEvent] = [event async for event in stream.events()]
    assert events == [*content_of(TYPED_STREAM), FINISHED]
    assert isinstance(events[0], ReasoningDelta) and isinstance(events[2], TextDelta)
    assert isinstance(events[3], ToolCallDelta) and events[3].name == "get_weather"


async def test_iterating_a_stream_still_yields_its_text_alone_and_keeps_the_rest_in_attributes() -> None:
    stream, _ = stream_of(TYPED_STREAM)
    assert [delta async for delta in stream] == ["Let me check."]
    assert (stream.text, stream.reasoning, stream.tool_calls) == ("Let me check.", "The user wants weather.", CALLS)
    assert (stream.finish_reason, stream.usage, stream.completion_tokens) == ("tool_calls", FINISHED.usage, 15)


async def test_the_model_turn_goes_back_as_an_assistant_message_with_its_text_and_tool_calls() -> None:
    stream, _ = stream_of(TYPED_STREAM)
    await stream.collect()
    assert stream.assistant_message() == ChatMessage(
        role="assistant", content="Let me check.", tool_calls=tuple(call.to_wire() for call in CALLS)
    )


@pytest.mark.parametrize("cut", range(1, len(TYPED_STREAM)))
async def test_a_connection_dropped_after_any_event_resumes_there_without_repeating_or_losing_a_fragment(
    cut: int,
) -> None:
    stream, source = stream_of(TYPED_STREAM, cuts=[cut])
    events = [event async for event in stream.events()]
    assert events == [*content_of(TYPED_STREAM), FINISHED]
    assert source.cursors == [None, f"{EPOCH}:{_offset(TYPED_STREAM[cut - 1])}"]
    assert stream.reconnects == 1


async def test_a_stream_dropped_after_every_event_still_assembles_each_tool_call_whole() -> None:
    stream, source = stream_of(TYPED_STREAM, cuts=[1] * len(TYPED_STREAM))
    assert await stream.collect() == "Let me check."
    assert stream.tool_calls == CALLS
    assert len(source.cursors) == len(TYPED_STREAM)


async def test_a_stream_that_ends_in_an_error_raises_it_from_events_and_yields_no_finish() -> None:
    events = [*TYPED_STREAM[:3], m.StreamError(seq=3, code="engine_error", message="boom", tokens=4)]
    stream, _ = stream_of(events)
    seen: list[StreamEvent] = []
    with pytest.raises(TokenRelayError, match="boom") as raised:
        async for event in stream.events():
            seen.append(event)
    assert raised.value.code == "engine_error"
    assert seen == content_of(events)
