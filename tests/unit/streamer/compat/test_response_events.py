"""Spec of the Responses API's streaming events: a stream's events as ``response.*`` events in OpenAI's order and
shapes, numbered by stream position so that merged deltas and resumed readers number every event the same way, and
accepted whole by the OpenAI SDK's own accumulator."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast

import orjson
import pytest
from openai._models import construct_type, validate_type
from openai._types import omit
from openai.lib.streaming.responses import ResponseStreamState
from openai.types.responses import ParsedResponse, ResponseStreamEvent

from tokenrelay.streamer.compat.response_events import (
    Emitted,
    ResponseCollector,
    ResponseFraming,
    ResponseHead,
    ResponseState,
    encode,
    response_id,
    stream_id_of,
)
from tokenrelay.wire.content import JsonObject
from tokenrelay.wire.messages import (
    OUT_OF_BAND_SEQ,
    ContentDelta,
    FinishReason,
    ReasoningDelta,
    StreamDelta,
    StreamEnd,
    StreamError,
    StreamEvent,
    StreamStart,
    ToolCallDelta,
)

SID = "s1"
CREATED = 1_700_000_000
HEAD = ResponseHead(id=response_id(SID), created_at=CREATED, model="m", echo={"metadata": {"topic": "sky"}})
START = StreamStart(stream_id=SID, epoch="e1", model="m", created=CREATED, runner_id="r1", ts=0.0)
LIFECYCLE = ("response.created", "response.in_progress", "response.completed", "response.incomplete")


@dataclass
class Producer:
    """A runner's stream of events: each content event gets the next ``seq`` and ends ``count`` tokens on."""

    events: list[StreamEvent] = field(default_factory=lambda: [START])
    seq: int = 0
    index: int = 0

    def _next(self, count: int) -> tuple[int, int]:
        self.seq += 1
        self.index += count
        return self.seq, self.index

    def text(self, *texts: str, count: int = 1) -> Producer:
        for text in texts:
            seq, index = self._next(count)
            self.events.append(StreamDelta(seq=seq, text=text, index=index, count=count, ts=0.0))
        return self

    def reasoning(self, *texts: str, count: int = 1) -> Producer:
        for text in texts:
            seq, index = self._next(count)
            self.events.append(ReasoningDelta(seq=seq, text=text, index=index, count=count, ts=0.0))
        return self

    def call(self, call: int, *arguments: str, id: str | None = None, name: str | None = None) -> Producer:
        for k, fragment in enumerate(arguments):
            seq, index = self._next(1)
            first = k == 0 and id is not None
            self.events.append(
                ToolCallDelta(
                    seq=seq,
                    call=call,
                    id=id if first else None,
                    name=name if first else None,
                    arguments=fragment,
                    index=index,
                    count=1,
                    ts=0.0,
                )
            )
        return self

    def end(
        self, reason: FinishReason = FinishReason.STOP, *, prompt_tokens: int | None = 7, completion: int | None = None
    ) -> list[StreamEvent]:
        self.events.append(
            StreamEnd(
                seq=self.seq + 1,
                finish_reason=reason,
                tokens=self.index,
                ttft_ms=1.0,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion,
            )
        )
        return self.events

    def error(self, code: str = "internal", message: str = "the engine crashed") -> list[StreamEvent]:
        self.events.append(StreamError(seq=self.seq + 1, code=code, message=message, tokens=self.index))
        return self.events

    def lost(self) -> list[StreamEvent]:
        """Ended by the gateway (its runner lost): an out-of-band error that knows no position."""
        self.events.append(StreamError(seq=OUT_OF_BAND_SEQ, code="runner_lost", message="runner lost", tokens=0))
        return self.events


def feed(events: Sequence[StreamEvent]) -> tuple[list[Emitted], ResponseState]:
    state = ResponseState(HEAD)
    return [emitted for event in events for emitted in state.push(event)], state


def emitted(events: Sequence[StreamEvent]) -> list[Emitted]:
    return feed(events)[0]


def bodies(events: Sequence[StreamEvent]) -> list[JsonObject]:
    return [body for _, _, body in emitted(events)]


def numbered(events: Sequence[StreamEvent]) -> list[tuple[int, str]]:
    return [(sequence, name) for sequence, name, _ in emitted(events)]


def of_type(events: Sequence[StreamEvent], name: str) -> list[JsonObject]:
    return [body for _, kind, body in emitted(events) if kind == name]


def last_body(events: Sequence[StreamEvent]) -> JsonObject:
    return emitted(events)[-1][2]


def _same_block(last: StreamEvent, event: StreamEvent) -> bool:
    if isinstance(last, ToolCallDelta) and isinstance(event, ToolCallDelta):
        return last.call == event.call
    return isinstance(last, StreamDelta | ReasoningDelta) and type(last) is type(event)


def _merge(first: ContentDelta, then: ContentDelta) -> ContentDelta:
    """Two back-to-back events of one block as one: the last one's index and seq, the counts summed, texts joined."""
    count = first.count + then.count
    if isinstance(first, ToolCallDelta) and isinstance(then, ToolCallDelta):
        return replace(then, id=first.id, name=first.name, arguments=first.arguments + then.arguments, count=count)
    assert isinstance(first, StreamDelta | ReasoningDelta) and isinstance(then, StreamDelta | ReasoningDelta)
    return replace(then, text=first.text + then.text, count=count)


def merged(events: Sequence[StreamEvent], *, most: int | None = None) -> list[StreamEvent]:
    """The stream as a reader that fell behind frames it: runs of one block's events merged, ``most`` at a time."""
    out: list[StreamEvent] = []
    run = 0
    for event in events:
        last = out[-1] if out else None
        fits = most is None or run < most
        if last is not None and _same_block(last, event) and fits:
            assert isinstance(last, ContentDelta) and isinstance(event, ContentDelta)
            out[-1] = _merge(last, event)
            run += 1
        else:
            out.append(event)
            run = 1
    return out


def sse_bodies(data: bytes) -> list[JsonObject]:
    """The events of an SSE text, checking each one's ``event:`` name is its body's type."""
    out: list[JsonObject] = []
    for frame in data.decode().split("\n\n"):
        if not frame:
            continue
        lines = frame.split("\n")
        assert lines[0].startswith("event: ")
        body = orjson.loads("".join(line.removeprefix("data: ") for line in lines[1:]))
        assert body["type"] == lines[0].removeprefix("event: ")
        out.append(body)
    return out


def resumed(events: Sequence[StreamEvent], after: int | None) -> list[JsonObject]:
    framing = ResponseFraming(HEAD, after=after)
    return sse_bodies(b"".join(framing.event(event) for event in events))


def sdk_state(events: Sequence[StreamEvent]) -> ResponseStreamState[Any]:
    """The OpenAI SDK's stream accumulator, fed each event as its client parses one off the wire."""
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    for body in bodies(events):
        event = construct_type(type_=ResponseStreamEvent, value=orjson.loads(orjson.dumps(body)))
        state.handle_event(event)  # type: ignore[arg-type]
    return state


def sdk_final(events: Sequence[StreamEvent]) -> ParsedResponse[Any]:
    response = sdk_state(events)._completed_response
    assert response is not None
    return response


def joined_deltas(events: Sequence[StreamEvent], name: str) -> str:
    return "".join(body["delta"] for body in of_type(events, name))


def text_stream() -> list[StreamEvent]:
    return Producer().text("The", " sky", " is", " blue").end()


def mixed_stream() -> list[StreamEvent]:
    """Reasoning, then text, then two tool calls: four output items."""
    return (
        Producer()
        .reasoning("The user", " asks about", count=2)
        .reasoning(" weather.", count=1)
        .text("Let me", " check.")
        .call(0, '{"city":', ' "Paris"}', id="call_a", name="weather")
        .call(1, '{"tz":', ' "CET"', "}", id="call_b", name="time")
        .end(FinishReason.TOOL_CALLS)
    )


def interleaved_stream() -> list[StreamEvent]:
    """Two tool calls made in parallel, their fragments interleaved, then text."""
    return (
        Producer()
        .call(0, '{"a":', id="call_a", name="f")
        .call(1, '{"b":', id="call_b", name="g")
        .call(0, " 1}")
        .call(1, " 2", "}")
        .text("Both", " called.")
        .end()
    )


STREAMS: dict[str, Callable[[], list[StreamEvent]]] = {
    "text": text_stream,
    "reasoning, text and tool calls": mixed_stream,
    "interleaved tool calls": interleaved_stream,
    "text cut at max tokens": lambda: Producer().text("a", "b", "c").end(FinishReason.LENGTH),
    "cancelled inside reasoning": lambda: Producer().reasoning("x", "y", "z").end(FinishReason.CANCELLED),
    "failed inside a tool call": lambda: Producer().text("t").call(0, "{", '"k"', id="c", name="f").error(),
    "lost inside text": lambda: Producer().reasoning("r", "s").text("u", "v", "w").lost(),
    "tokens of several per event": lambda: Producer().reasoning("ab", "cd", count=3).text("ef", "gh", count=2).end(),
}
EVERY_STREAM = pytest.mark.parametrize("make", list(STREAMS.values()), ids=list(STREAMS))


# -- ids


def test_the_response_id_is_resp_and_its_stream_id() -> None:
    assert response_id("s1") == "resp_s1"
    assert stream_id_of("resp_s1") == "s1"
    assert stream_id_of("chatcmpl-s1") is None


def test_output_item_ids_are_their_kind_the_stream_id_and_their_output_index() -> None:
    output = feed(mixed_stream())[1].response()["output"]
    assert [(item["type"], item["id"]) for item in output] == [
        ("reasoning", "rs_s1_0"),
        ("message", "msg_s1_1"),
        ("function_call", "fc_s1_2"),
        ("function_call", "fc_s1_3"),
    ]


# -- a text stream


@EVERY_STREAM
def test_a_content_event_is_numbered_by_the_position_it_ends_at_less_one_plus_the_other_events_before_it(
    make: Callable[[], list[StreamEvent]],
) -> None:
    state = ResponseState(HEAD)
    others = 0
    for event in make():
        made = state.push(event)
        if isinstance(event, ContentDelta):
            *opened, (sequence, _, _) = made  # the items it closes and opens come before it
            assert sequence == event.index - 1 + others + len(opened)
        others += sum(not name.endswith(".delta") for _, name, _ in made)


def test_a_stream_of_one_token_events_is_numbered_0_1_2_with_no_gap() -> None:
    events = (
        Producer()
        .reasoning("r", "s")
        .text("a", "b", "c")
        .call(0, '{"a":', id="call_a", name="f")
        .call(1, "{}", id="call_b", name="g")
        .call(0, " 1}")
        .text("d")
        .end()
    )
    numbers = [sequence for sequence, _ in numbered(events)]
    assert numbers == list(range(len(numbers)))


def test_a_runner_event_of_three_tokens_advances_the_number_by_three() -> None:
    made = numbered(Producer().text("a").text("bcd", count=3).text("e").end())
    assert made[4:] == [
        (4, "response.output_text.delta"),
        (7, "response.output_text.delta"),
        (8, "response.output_text.delta"),
        (9, "response.output_text.done"),
        (10, "response.content_part.done"),
        (11, "response.output_item.done"),
        (12, "response.completed"),
    ]


def test_a_text_stream_is_created_in_progress_one_message_item_and_completed_numbered_by_position() -> None:
    assert numbered(text_stream()) == [
        (0, "response.created"),
        (1, "response.in_progress"),
        (2, "response.output_item.added"),
        (3, "response.content_part.added"),
        (4, "response.output_text.delta"),
        (5, "response.output_text.delta"),
        (6, "response.output_text.delta"),
        (7, "response.output_text.delta"),
        (8, "response.output_text.done"),
        (9, "response.content_part.done"),
        (10, "response.output_item.done"),
        (11, "response.completed"),
    ]


def test_every_event_body_carries_its_type_and_sequence_number() -> None:
    for sequence, name, body in emitted(mixed_stream()):
        assert (body["type"], body["sequence_number"]) == (name, sequence)


def test_a_text_streams_item_events_have_openais_fields() -> None:
    events = bodies(text_stream())
    assert events[2:6] == [
        {
            "type": "response.output_item.added", "sequence_number": 2, "output_index": 0,
            "item": {"id": "msg_s1_0", "type": "message", "status": "in_progress", "role": "assistant", "content": []},
        },
        {
            "type": "response.content_part.added", "sequence_number": 3, "item_id": "msg_s1_0", "output_index": 0,
            "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []},
        },
        {
            "type": "response.output_text.delta", "sequence_number": 4, "item_id": "msg_s1_0", "output_index": 0,
            "content_index": 0, "delta": "The", "logprobs": [],
        },
        {
            "type": "response.output_text.delta", "sequence_number": 5, "item_id": "msg_s1_0", "output_index": 0,
            "content_index": 0, "delta": " sky", "logprobs": [],
        },
    ]  # fmt: skip
    part = {"type": "output_text", "text": "The sky is blue", "annotations": [], "logprobs": []}
    assert events[8:11] == [
        {
            "type": "response.output_text.done", "sequence_number": 8, "item_id": "msg_s1_0", "output_index": 0,
            "content_index": 0, "text": "The sky is blue", "logprobs": [],
        },
        {
            "type": "response.content_part.done", "sequence_number": 9, "item_id": "msg_s1_0", "output_index": 0,
            "content_index": 0, "part": part,
        },
        {
            "type": "response.output_item.done", "sequence_number": 10, "output_index": 0,
            "item": {
                "id": "msg_s1_0", "type": "message", "status": "completed", "role": "assistant", "content": [part],
            },
        },
    ]  # fmt: skip


def test_created_and_in_progress_carry_the_empty_response_in_progress() -> None:
    created, in_progress = bodies(text_stream())[:2]
    empty = {
        "id": "resp_s1", "object": "response", "created_at": CREATED, "status": "in_progress", "error": None,
        "incomplete_details": None, "model": "m", "output": [], "usage": None, "metadata": {"topic": "sky"},
    }  # fmt: skip
    assert created == {"type": "response.created", "sequence_number": 0, "response": empty}
    assert in_progress == {"type": "response.in_progress", "sequence_number": 1, "response": empty}


def test_the_completed_response_holds_the_text_usage_and_the_echoed_fields() -> None:
    response = last_body(Producer().text("Hi", " there").end(prompt_tokens=5))["response"]
    assert response["status"] == "completed"
    assert response["metadata"] == {"topic": "sky"}
    assert response["error"] is None
    assert response["incomplete_details"] is None
    assert response["output"] == [
        {
            "id": "msg_s1_0", "type": "message", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": "Hi there", "annotations": [], "logprobs": []}],
        }
    ]  # fmt: skip
    assert response["usage"] == {
        "input_tokens": 5, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 2,
        "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 7,
    }  # fmt: skip


def test_usage_counts_the_engines_own_completion_tokens_when_it_reported_them() -> None:
    usage = last_body(Producer().text("Hi").end(prompt_tokens=None, completion=4))["response"]["usage"]
    assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == (0, 4, 4)


def test_a_stream_that_ends_before_any_content_is_a_completed_response_with_no_output() -> None:
    assert numbered(Producer().end()) == [
        (0, "response.created"),
        (1, "response.in_progress"),
        (2, "response.completed"),
    ]
    assert last_body(Producer().end())["response"]["output"] == []


def test_a_response_is_created_even_when_its_first_event_is_not_the_start() -> None:
    events = Producer().text("late").end()[1:]
    assert [name for _, name in numbered(events)][:2] == ["response.created", "response.in_progress"]


def test_nothing_follows_the_end() -> None:
    events = text_stream()
    made, state = feed(events)
    assert state.ended
    assert state.push(StreamDelta(seq=9, text="more", index=9, count=1, ts=0.0)) == []
    assert state.push(events[-1]) == []
    assert state.last_sequence == made[-1][0]


# -- reasoning and tool calls


def test_reasoning_text_and_two_tool_calls_are_four_items_with_the_calls_open_until_the_end() -> None:
    names = [name.removeprefix("response.") for _, name in numbered(mixed_stream())]
    assert names == [
        "created", "in_progress",
        "output_item.added", "content_part.added",
        "reasoning_text.delta", "reasoning_text.delta", "reasoning_text.delta",
        "reasoning_text.done", "content_part.done", "output_item.done",
        "output_item.added", "content_part.added", "output_text.delta", "output_text.delta",
        "output_text.done", "content_part.done", "output_item.done",
        "output_item.added", "function_call_arguments.delta", "function_call_arguments.delta",
        "output_item.added", "function_call_arguments.delta", "function_call_arguments.delta",
        "function_call_arguments.delta",
        "function_call_arguments.done", "output_item.done", "function_call_arguments.done", "output_item.done",
        "completed",
    ]  # fmt: skip


def test_block_events_are_numbered_after_the_content_event_at_the_position_they_happen() -> None:
    # Reasoning ends at token 5 after 4 other events (5 - 1 + 4 = 8), text at 7 after 9 (15), the first call's
    # fragments at 9 after 13 (21), the second's at 12 after 14 (25).
    got = dict(numbered(mixed_stream()))
    assert [got[s] for s in (8, 9, 10, 11, 12, 13)] == [
        "response.reasoning_text.delta", "response.reasoning_text.done", "response.content_part.done",
        "response.output_item.done", "response.output_item.added", "response.content_part.added",
    ]  # fmt: skip
    assert [got[s] for s in (15, 16, 17, 18, 19)] == [
        "response.output_text.delta", "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.output_item.added",
    ]  # fmt: skip
    assert [got[s] for s in (21, 22)] == ["response.function_call_arguments.delta", "response.output_item.added"]
    assert [got[s] for s in (25, 26, 27, 28, 29, 30)] == [
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed",
    ]  # fmt: skip


def test_reasoning_streams_as_reasoning_text_of_a_reasoning_item() -> None:
    events = mixed_stream()
    added = of_type(events, "response.output_item.added")[0]
    assert added["item"] == {
        "id": "rs_s1_0",
        "type": "reasoning",
        "status": "in_progress",
        "summary": [],
        "content": [],
    }
    assert of_type(events, "response.content_part.added")[0]["part"] == {"type": "reasoning_text", "text": ""}
    assert [body["delta"] for body in of_type(events, "response.reasoning_text.delta")] == [
        "The user",
        " asks about",
        " weather.",
    ]
    assert all("logprobs" not in body for body in of_type(events, "response.reasoning_text.delta"))
    done = of_type(events, "response.reasoning_text.done")[0]
    assert (done["item_id"], done["output_index"], done["text"]) == ("rs_s1_0", 0, "The user asks about weather.")
    item = of_type(events, "response.output_item.done")[0]["item"]
    assert item == {
        "id": "rs_s1_0", "type": "reasoning", "status": "completed", "summary": [],
        "content": [{"type": "reasoning_text", "text": "The user asks about weather."}],
    }  # fmt: skip


def test_a_tool_call_is_a_function_call_item_with_its_call_id_name_and_arguments() -> None:
    events = mixed_stream()
    added = [body["item"] for body in of_type(events, "response.output_item.added")][2:]
    assert added == [
        {"id": "fc_s1_2", "type": "function_call", "status": "in_progress", "call_id": "call_a", "name": "weather",
         "arguments": ""},
        {"id": "fc_s1_3", "type": "function_call", "status": "in_progress", "call_id": "call_b", "name": "time",
         "arguments": ""},
    ]  # fmt: skip
    assert of_type(events, "response.function_call_arguments.delta")[0] == {
        "type": "response.function_call_arguments.delta", "sequence_number": 20, "item_id": "fc_s1_2",
        "output_index": 2, "delta": '{"city":',
    }  # fmt: skip
    done = of_type(events, "response.function_call_arguments.done")
    assert [(body["item_id"], body["name"], body["arguments"]) for body in done] == [
        ("fc_s1_2", "weather", '{"city": "Paris"}'),
        ("fc_s1_3", "time", '{"tz": "CET"}'),
    ]  # fmt: skip
    output = last_body(events)["response"]["output"]
    assert output[2:] == [
        {"id": "fc_s1_2", "type": "function_call", "status": "completed", "call_id": "call_a", "name": "weather",
         "arguments": '{"city": "Paris"}'},
        {"id": "fc_s1_3", "type": "function_call", "status": "completed", "call_id": "call_b", "name": "time",
         "arguments": '{"tz": "CET"}'},
    ]  # fmt: skip


def test_usage_counts_the_reasoning_deltas_tokens_as_reasoning_tokens() -> None:
    usage = last_body(mixed_stream())["response"]["usage"]
    assert usage["output_tokens_details"] == {"reasoning_tokens": 2 + 2 + 1}
    assert usage["output_tokens"] == 12


def test_interleaved_tool_calls_keep_one_item_each_until_text_follows() -> None:
    events = interleaved_stream()
    output = last_body(events)["response"]["output"]
    assert [(item["type"], item.get("call_id"), item.get("arguments")) for item in output] == [
        ("function_call", "call_a", '{"a": 1}'),
        ("function_call", "call_b", '{"b": 2}'),
        ("message", None, None),
    ]
    deltas = of_type(events, "response.function_call_arguments.delta")
    assert [(d["item_id"], d["delta"]) for d in deltas] == [
        ("fc_s1_0", '{"a":'), ("fc_s1_1", '{"b":'), ("fc_s1_0", " 1}"), ("fc_s1_1", " 2"), ("fc_s1_1", "}"),
    ]  # fmt: skip
    assert len(of_type(events, "response.output_item.added")) == 3


# -- endings


@pytest.mark.parametrize("reason", [FinishReason.STOP, FinishReason.TOOL_CALLS])
def test_stop_and_tool_calls_complete_the_response(reason: FinishReason) -> None:
    events = Producer().text("a").call(0, "{}", id="c", name="f").end(reason)
    _, name, body = emitted(events)[-1]
    assert name == "response.completed"
    assert body["response"]["status"] == "completed"
    assert body["response"]["incomplete_details"] is None
    assert {item["status"] for item in body["response"]["output"]} == {"completed"}


@pytest.mark.parametrize(
    ("reason", "detail"),
    [(FinishReason.LENGTH, "max_output_tokens"), (FinishReason.CONTENT_FILTER, "content_filter")],
)
def test_length_and_content_filter_leave_the_response_incomplete_with_the_reason(
    reason: FinishReason, detail: str
) -> None:
    events = Producer().text("a", "b").end(reason)
    made = emitted(events)
    assert [name for _, name, _ in made[-4:]] == [
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.incomplete",
    ]  # fmt: skip
    response = made[-1][2]["response"]
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": detail}
    assert response["error"] is None
    assert response["usage"]["output_tokens"] == 2
    assert made[-2][2]["item"]["status"] == "incomplete"
    assert response["output"][0]["status"] == "incomplete"
    assert response["output"][0]["content"][0]["text"] == "ab"


def test_a_cancelled_response_ends_with_response_incomplete_of_status_cancelled() -> None:
    made = emitted(Producer().reasoning("hmm").end(FinishReason.CANCELLED))
    _, name, body = made[-1]
    assert name == "response.incomplete"
    assert body["response"]["status"] == "cancelled"
    assert body["response"]["output"][0]["status"] == "incomplete"
    assert body["response"]["usage"]["output_tokens_details"] == {"reasoning_tokens": 1}


def test_a_stream_error_fails_the_response_with_its_code_and_message_closing_the_open_item_incomplete() -> None:
    events = Producer().text("a").call(0, "{", id="c", name="f").error("internal", "the engine crashed")
    made = emitted(events)
    assert [(sequence, name) for sequence, name, _ in made[-3:]] == [
        (10, "response.function_call_arguments.done"),
        (11, "response.output_item.done"),
        (12, "response.failed"),
    ]
    assert made[-2][2]["item"]["status"] == "incomplete"
    response = made[-1][2]["response"]
    assert response["status"] == "failed"
    assert response["error"] == {"code": "internal", "message": "the engine crashed"}
    assert response["usage"] is None
    assert [item["status"] for item in response["output"]] == ["completed", "incomplete"]


def test_an_out_of_band_error_fails_the_response_after_the_last_event() -> None:
    made = emitted(Producer().text("a", "b").lost())
    assert [(sequence, name) for sequence, name, _ in made[-5:]] == [
        (5, "response.output_text.delta"),
        (6, "response.output_text.done"),
        (7, "response.content_part.done"),
        (8, "response.output_item.done"),
        (9, "response.failed"),
    ]
    assert made[-1][2]["response"]["error"] == {"code": "runner_lost", "message": "runner lost"}
    assert made[-1][2]["response"]["output"][0]["content"][0]["text"] == "ab"


def test_an_end_with_the_error_reason_fails_the_response_as_an_engine_error() -> None:
    response = last_body(Producer().text("a").end(FinishReason.ERROR))["response"]
    assert response["status"] == "failed"
    assert response["error"]["code"] == "engine_error"


# -- the same numbers for every reader


def assert_merged_numbers_the_same(events: Sequence[StreamEvent], most: int | None = None) -> None:
    """Every event a merged reader makes is the unmerged reader's event of that number (a delta: but for its text)."""
    whole = {sequence: body for sequence, _, body in emitted(events)}
    made = emitted(merged(events, most=most))
    assert len(made) < len(whole)
    for sequence, name, body in made:
        assert sequence in whole, f"{name} numbered {sequence} by a merged reader only"
        if name.endswith(".delta"):
            assert whole[sequence] | {"delta": body["delta"]} == body
        else:
            assert whole[sequence] == body


@EVERY_STREAM
@pytest.mark.parametrize("most", [None, 2], ids=["every run merged", "runs of two merged"])
def test_merged_deltas_number_every_event_that_survives_the_same(
    make: Callable[[], list[StreamEvent]], most: int | None
) -> None:
    assert_merged_numbers_the_same(make(), most)


@EVERY_STREAM
def test_merged_deltas_carry_the_text_of_those_they_stand_for(make: Callable[[], list[StreamEvent]]) -> None:
    events = make()
    whole = emitted(events)
    made = emitted(merged(events))
    previous = -1
    for sequence, name, body in made:
        if name.endswith(".delta"):
            covered = [b for s, n, b in whole if previous < s <= sequence and n == name]
            assert body["delta"] == "".join(b["delta"] for b in covered if b["item_id"] == body["item_id"])
        previous = sequence


@EVERY_STREAM
def test_merged_deltas_end_in_the_same_response(make: Callable[[], list[StreamEvent]]) -> None:
    events = make()
    whole, state = feed(events)
    merged_made, merged_state = feed(merged(events))
    assert merged_state.response() == state.response()
    assert merged_made[-1] == whole[-1]
    assert merged_state.last_sequence == state.last_sequence


@EVERY_STREAM
def test_resuming_after_any_number_a_reader_saw_gives_exactly_the_events_after_it(
    make: Callable[[], list[StreamEvent]],
) -> None:
    events = make()
    first = bodies(events)
    for k, seen in enumerate(first[:-1]):
        after = seen["sequence_number"]
        assert first[: k + 1] + resumed(events, after) == first, f"starting_after {after}"


@EVERY_STREAM
def test_resuming_after_any_number_a_merged_reader_saw_gives_exactly_the_events_after_it(
    make: Callable[[], list[StreamEvent]],
) -> None:
    events = make()
    full = bodies(events)
    first = bodies(merged(events))
    for k, seen in enumerate(first[:-1]):
        after = seen["sequence_number"]
        rest = resumed(events, after)
        assert rest == [body for body in full if body["sequence_number"] > after], f"starting_after {after}"
        for name in ("response.output_text.delta", "response.reasoning_text.delta"):
            text = "".join(b["delta"] for b in first[: k + 1] + rest if b["type"] == name)
            assert text == joined_deltas(events, name)


def seven_calls_then_text() -> list[StreamEvent]:
    producer = Producer()
    for call in range(7):
        producer.call(call, "{}", id=f"call_{call}", name="f")
    return producer.text("a", "b").end()


def test_merged_deltas_after_seven_open_tool_calls_number_every_event_the_same() -> None:
    assert_merged_numbers_the_same(seven_calls_then_text())


@EVERY_STREAM
def test_a_reader_from_the_start_gets_every_event_as_sse_named_by_its_type(
    make: Callable[[], list[StreamEvent]],
) -> None:
    events = make()
    assert resumed(events, None) == bodies(events)


def test_an_event_is_framed_as_sse_with_its_type_as_the_event_name() -> None:
    made = emitted(text_stream())[4]
    assert encode(made) == b"event: response.output_text.delta\ndata: " + orjson.dumps(made[2]) + b"\n\n"


@pytest.mark.parametrize("beyond", [0, 1, 1000])
def test_resuming_at_or_past_the_last_number_is_a_bad_request_error(beyond: int) -> None:
    events = mixed_stream()
    last = emitted(events)[-1][0]
    got = resumed(events, last + beyond)
    assert len(got) == 1
    assert got[0]["type"] == "error"
    assert got[0]["code"] == "bad_request"
    assert got[0]["param"] is None
    assert got[0]["sequence_number"] == last + beyond + 1
    assert str(last) in got[0]["message"]


def test_a_framing_error_is_numbered_after_the_last_event() -> None:
    framing = ResponseFraming(HEAD)
    for event in Producer().text("a", "b").events:
        framing.event(event)
    (body,) = sse_bodies(framing.error("slow_consumer", "the reader fell behind"))
    assert body == {
        "type": "error", "sequence_number": 6, "code": "slow_consumer", "message": "the reader fell behind",
        "param": None,
    }  # fmt: skip


def test_a_collector_builds_the_response_and_sends_nothing() -> None:
    collector = ResponseCollector(HEAD)
    assert all(collector.event(event) == b"" for event in mixed_stream())
    assert collector.state.response() == last_body(mixed_stream())["response"]
    assert collector.error("slow_consumer", "gone") == b""
    assert collector.failure == ("slow_consumer", "gone")


# -- a producer that breaks the rules


@pytest.mark.parametrize(
    "events",
    [
        [
            START,
            StreamDelta(seq=1, text="a", index=1, count=1, ts=0.0),
            StreamDelta(seq=2, text="b", index=1, count=0, ts=0.0),
        ],
        [
            START,
            StreamDelta(seq=1, text="", index=0, count=0, ts=0.0),
            ReasoningDelta(seq=2, text="r", index=0, count=0, ts=0.0),
            ToolCallDelta(seq=3, call=0, id="c", name="f", arguments="{}", index=0, count=0, ts=0.0),
        ],
        [
            START,
            ReasoningDelta(seq=1, text="r", index=3, count=1, ts=0.0),
            StreamDelta(seq=2, text="a", index=1, count=1, ts=0.0),
        ],
        [
            START,
            *(
                ToolCallDelta(seq=1 + c, call=c, id=f"c{c}", name="f", arguments="{}", index=1, count=1, ts=0.0)
                for c in range(6)
            ),
            StreamDelta(seq=7, text="a", index=1, count=0, ts=0.0),
        ],
    ],
    ids=["a delta of no tokens", "every kind at position 0", "a position that goes back", "six calls at one position"],
)
def test_sequence_numbers_strictly_increase_whatever_the_producer_sends(events: list[StreamEvent]) -> None:
    ended = [*events, StreamEnd(seq=99, finish_reason=FinishReason.STOP, tokens=0, ttft_ms=None)]
    numbers = [sequence for sequence, _ in numbered(ended)]
    assert numbers == sorted(set(numbers))


# -- the OpenAI SDK reads it


@EVERY_STREAM
def test_the_openai_sdks_accumulator_takes_every_event(make: Callable[[], list[StreamEvent]]) -> None:
    sdk_state(make())


@pytest.mark.parametrize("make", [text_stream, mixed_stream, interleaved_stream])
def test_the_openai_sdks_final_response_has_the_deltas_text(make: Callable[[], list[StreamEvent]]) -> None:
    events = make()
    response = sdk_final(events)
    assert response.id == "resp_s1"
    assert response.status == "completed"
    assert response.output_text == joined_deltas(events, "response.output_text.delta")


def test_the_openai_sdks_final_response_has_the_tool_calls() -> None:
    calls = [item for item in sdk_final(mixed_stream()).output if item.type == "function_call"]
    assert [(call.call_id, call.name, call.arguments) for call in calls] == [
        ("call_a", "weather", '{"city": "Paris"}'),
        ("call_b", "time", '{"tz": "CET"}'),
    ]


def test_the_openai_sdk_builds_the_same_usage() -> None:
    usage = sdk_final(mixed_stream()).usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (7, 12, 19)
    assert usage.output_tokens_details.reasoning_tokens == 5


@EVERY_STREAM
def test_item_and_content_events_are_valid_openai_sdk_events(make: Callable[[], list[StreamEvent]]) -> None:
    for body in bodies(make()):
        if body["type"] not in LIFECYCLE and body["type"] != "response.failed":
            validate_type(type_=cast(Any, ResponseStreamEvent), value=body)
