"""OpenAI Responses API streaming events, sans-I/O: one stream's events as ``response.*`` events, and the Response.

A :class:`ResponseState` takes a stream's events in order (start, text, reasoning and tool call deltas, the end or
an error) and returns the Responses events they make: ``response.created`` and ``response.in_progress`` first; an
output item per block (a ``message`` for text, a ``reasoning`` item, a ``function_call`` per tool call), opened with
``response.output_item.added`` (and ``response.content_part.added``), filled by ``response.output_text.delta`` /
``response.reasoning_text.delta`` / ``response.function_call_arguments.delta``, closed with the matching ``.done``
events; then ``response.completed``, ``response.incomplete`` (``max_output_tokens`` or ``content_filter``; a
cancelled response is ``response.incomplete`` too, with status ``cancelled``) or ``response.failed``.

**Sequence numbers are a function of the stream position**, never of how events were grouped on the way. Each event
is numbered as if every token had been an event of its own: a content event whose tokens end at token position ``p``
is numbered ``p - 1 + s``, every other event ``p + s``, where ``s`` counts the non-content events before it
(``response.created`` is 0, ``response.in_progress`` 1). Merging never crosses a block, so a delta that merges
several (a reader that fell behind) has its last piece's number, and every streamer, and every reader however far
behind, numbers the same event the same way: ``starting_after=N`` resumes exactly, a reader from the start dropping
every event numbered ``<= N`` (:class:`ResponseFraming`). With one token per event the numbers are consecutive; a
batch of ``n`` tokens advances them by ``n``.

Ids are functions of the stream too: the response is ``resp_<stream id>``, its items ``msg_``/``rs_``/``fc_`` +
``<stream id>_<output index>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from tokenrelay.streamer.compat.common import completion_tokens
from tokenrelay.streamer.sse import encode_event
from tokenrelay.wire.content import JsonObject
from tokenrelay.wire.messages import (
    FinishReason,
    ReasoningDelta,
    StreamDelta,
    StreamEnd,
    StreamError,
    StreamEvent,
    StreamStart,
    ToolCallDelta,
)

RESPONSE_ID_PREFIX = "resp_"

ResponseStatus = Literal["queued", "in_progress", "completed", "incomplete", "cancelled", "failed"]
BlockKind = Literal["message", "reasoning", "function_call"]
Emitted = tuple[int, str, JsonObject]
"""One Responses event: its sequence number, its type, its whole body (``type`` and ``sequence_number`` in it)."""


def response_id(stream_id: str) -> str:
    """The Response id of a stream."""
    return RESPONSE_ID_PREFIX + stream_id


def stream_id_of(response_id: str) -> str | None:
    """The stream id a Response id names (``None``: not a Response id)."""
    return response_id[len(RESPONSE_ID_PREFIX) :] if response_id.startswith(RESPONSE_ID_PREFIX) else None


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """What a Response says besides its output: its id, creation time, model and the request fields it echoes."""

    id: str
    created_at: int
    model: str
    echo: JsonObject = field(default_factory=dict)


@dataclass(slots=True)
class _Item:
    kind: BlockKind
    id: str
    output_index: int
    texts: list[str] = field(default_factory=list)
    call_id: str = ""
    name: str = ""
    status: str = "in_progress"
    """``in_progress`` while open; ``completed``, or ``incomplete`` when the response ended it unfinished."""

    @property
    def done(self) -> bool:
        return self.status != "in_progress"

    def text(self) -> str:
        return "".join(self.texts)

    def body(self, status: str) -> JsonObject:
        """The output item as a Response lists it."""
        if self.kind == "function_call":
            return {
                "id": self.id, "type": "function_call", "status": status, "call_id": self.call_id,
                "name": self.name, "arguments": self.text(),
            }  # fmt: skip
        if self.kind == "reasoning":
            content = [_reasoning_part(self.text())] if self.texts or self.done else []
            return {"id": self.id, "type": "reasoning", "status": status, "summary": [], "content": content}
        content = [_text_part(self.text())] if self.texts or self.done else []
        return {"id": self.id, "type": "message", "status": status, "role": "assistant", "content": content}


def _text_part(text: str) -> JsonObject:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _reasoning_part(text: str) -> JsonObject:
    return {"type": "reasoning_text", "text": text}


_PREFIX: dict[BlockKind, str] = {"message": "msg_", "reasoning": "rs_", "function_call": "fc_"}


class ResponseState:
    """One Response built from its stream's events, in order; each :meth:`push` returns the events it makes."""

    def __init__(self, head: ResponseHead) -> None:
        self.head = head
        self._stream_id = stream_id_of(head.id) or head.id
        self.status: ResponseStatus = "in_progress"
        self._items: list[_Item] = []
        self._open: _Item | None = None
        """The open text or reasoning item."""
        self._open_calls: dict[int, _Item] = {}
        """The open tool call items, by call ordinal."""
        self._begun = False
        self._position = 0
        """Token position of the last event."""
        self._last_sequence = -1
        self._others = 0
        """Non-content events made so far (every one numbered by its position plus this count)."""
        self._usage: JsonObject | None = None
        self._error: JsonObject | None = None
        self._incomplete: JsonObject | None = None
        self._reasoning_tokens = 0
        self.ended = False

    @property
    def last_sequence(self) -> int:
        """The number of the last event made (-1 before any)."""
        return self._last_sequence

    def push(self, event: StreamEvent) -> list[Emitted]:
        """The Responses events one stream event makes (none once the response ended)."""
        if self.ended:
            return []
        out: list[Emitted] = []
        if not self._begun:
            self._begin(out)
        if isinstance(event, StreamStart):
            return out
        if isinstance(event, StreamDelta | ReasoningDelta | ToolCallDelta):
            self._content(event, out)
        elif isinstance(event, StreamEnd):
            self._end(event, out)
        elif isinstance(event, StreamError):
            self._fail(event.code, event.message, max(event.tokens, self._position), out)
        return out

    def response(self) -> JsonObject:
        """The Response object as it stands."""
        output = [item.body(item.status) for item in self._items]
        return {
            "id": self.head.id, "object": "response", "created_at": self.head.created_at, "status": self.status,
            "error": self._error, "incomplete_details": self._incomplete, "model": self.head.model,
            "output": output, "usage": self._usage, **self.head.echo,
        }  # fmt: skip

    def _begin(self, out: list[Emitted]) -> None:
        self._begun = True
        self._emit_at(out, 0, "response.created", {"response": self.response()})
        self._emit_at(out, 0, "response.in_progress", {"response": self.response()})

    def _content(self, event: StreamDelta | ReasoningDelta | ToolCallDelta, out: list[Emitted]) -> None:
        start = event.index - event.count
        item = self._item_for(event, start, out)
        if isinstance(event, ToolCallDelta):
            item.call_id = item.call_id or (event.id or "")
            item.name = item.name or (event.name or "")
            text, name = event.arguments, "response.function_call_arguments.delta"
        else:
            text = event.text
            name = "response.output_text.delta" if isinstance(event, StreamDelta) else "response.reasoning_text.delta"
            if isinstance(event, ReasoningDelta):
                self._reasoning_tokens += event.count
        item.texts.append(text)
        self._position = event.index
        body: JsonObject = {"item_id": item.id, "output_index": item.output_index}
        if item.kind != "function_call":
            body["content_index"] = 0
        body["delta"] = text
        if item.kind == "message":
            body["logprobs"] = []
        self._emit(out, self._others + event.index - 1, name, body)

    def _item_for(self, event: StreamDelta | ReasoningDelta | ToolCallDelta, start: int, out: list[Emitted]) -> _Item:
        """The open item this event extends, or a new one at token position ``start``.

        Tool calls may interleave (a model calling tools in parallel): each call's item stays open, its fragments
        go to it, until text or reasoning follows or the response ends.  Text or reasoning after any other block
        closes every open item first.
        """
        if isinstance(event, ToolCallDelta):
            call = self._open_calls.get(event.call)
            if call is not None:
                return call
            self._close_all(start, out, calls=False)
            item = self._new_item("function_call", start, out, event)
            self._open_calls[event.call] = item
            return item
        kind: BlockKind = "message" if isinstance(event, StreamDelta) else "reasoning"
        if self._open is not None and self._open.kind == kind:
            return self._open
        self._close_all(start, out)
        self._open = self._new_item(kind, start, out)
        return self._open

    def _new_item(self, kind: BlockKind, position: int, out: list[Emitted], call: ToolCallDelta | None = None) -> _Item:
        index = len(self._items)
        item = _Item(kind=kind, id=f"{_PREFIX[kind]}{self._stream_id}_{index}", output_index=index)
        if call is not None:  # its first fragment names it: the added item carries its call id and name
            item.call_id, item.name = call.id or "", call.name or ""
        self._items.append(item)
        base = {"output_index": index}
        added_item = {**base, "item": item.body("in_progress")}
        self._emit_at(out, position, "response.output_item.added", added_item)
        if kind != "function_call":
            part = _text_part("") if kind == "message" else _reasoning_part("")
            added = {"item_id": item.id, **base, "content_index": 0, "part": part}
            self._emit_at(out, position, "response.content_part.added", added)
        return item

    def _close_all(self, position: int, out: list[Emitted], *, calls: bool = True, status: str = "completed") -> None:
        """Close the open text or reasoning item and (``calls``) every open tool call, in output order."""
        if self._open is not None:
            self._close(self._open, position, out, status)
            self._open = None
        if calls:
            for item in sorted(self._open_calls.values(), key=lambda open_call: open_call.output_index):
                self._close(item, position, out, status)
            self._open_calls.clear()

    def _close(self, item: _Item, position: int, out: list[Emitted], status: str = "completed") -> None:
        """Emit the ``.done`` events of ``item`` at ``position``."""
        item.status = status
        base: JsonObject = {"item_id": item.id, "output_index": item.output_index}
        text = item.text()
        if item.kind == "function_call":
            done = {**base, "name": item.name, "arguments": text}
            self._emit_at(out, position, "response.function_call_arguments.done", done)
        else:
            if item.kind == "message":
                name, part = "response.output_text.done", _text_part(text)
                self._emit_at(out, position, name, {**base, "content_index": 0, "text": text, "logprobs": []})
            else:
                name, part = "response.reasoning_text.done", _reasoning_part(text)
                self._emit_at(out, position, name, {**base, "content_index": 0, "text": text})
            part_done = {**base, "content_index": 0, "part": part}
            self._emit_at(out, position, "response.content_part.done", part_done)
        item_done = {"output_index": item.output_index, "item": item.body(status)}
        self._emit_at(out, position, "response.output_item.done", item_done)

    def _end(self, end: StreamEnd, out: list[Emitted]) -> None:
        reason = end.finish_reason
        if reason in (FinishReason.STOP, FinishReason.TOOL_CALLS):
            self.status, name = "completed", "response.completed"
        elif reason is FinishReason.CANCELLED:
            self.status, name = "cancelled", "response.incomplete"
        elif reason is FinishReason.ERROR:
            self._fail("engine_error", "the generation failed", max(end.tokens, self._position), out)
            return
        else:
            self.status, name = "incomplete", "response.incomplete"
            detail = "max_output_tokens" if reason is FinishReason.LENGTH else "content_filter"
            self._incomplete = {"reason": detail}
        self._usage = self._usage_of(end)
        self._finish(name, max(end.tokens, self._position), out)

    def _fail(self, code: str, message: str, position: int, out: list[Emitted]) -> None:
        self.status = "failed"
        self._error = {"code": code, "message": message}
        self._finish("response.failed", position, out)

    def _finish(self, name: str, position: int, out: list[Emitted]) -> None:
        self._close_all(position, out, status="completed" if self.status == "completed" else "incomplete")
        self.ended = True
        self._emit_at(out, position, name, {"response": self.response()})

    def _usage_of(self, end: StreamEnd) -> JsonObject:
        prompt, completion = end.prompt_tokens or 0, completion_tokens(end)
        return {
            "input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": self._reasoning_tokens},
            "total_tokens": prompt + completion,
        }  # fmt: skip

    def _emit_at(self, out: list[Emitted], position: int, name: str, body: JsonObject) -> None:
        """A non-content event at token position ``position``."""
        self._emit(out, position + self._others, name, body)
        self._others += 1

    def _emit(self, out: list[Emitted], sequence: int, name: str, body: JsonObject) -> None:
        # Increasing whatever a producer sends; for the events runners publish (every content event holds at least
        # one token) the number is the position's, unchanged.
        sequence = max(sequence, self._last_sequence + 1)
        self._last_sequence = sequence
        out.append((sequence, name, {"type": name, "sequence_number": sequence, **body}))


def encode(emitted: Emitted) -> bytes:
    """One Responses event as SSE (``event:`` its type, ``data:`` its body)."""
    _, name, body = emitted
    return encode_event(orjson.dumps(body).decode(), event=name)


def error_event(code: str, message: str, sequence: int) -> bytes:
    """An ``error`` event (the reader ends: it is not part of the Response)."""
    body: dict[str, Any] = {"type": "error", "sequence_number": sequence, "code": code, "message": message}
    body["param"] = None
    return encode_event(orjson.dumps(body).decode(), event="error")


class ResponseFraming:
    """A reader's events as Responses SSE events, from the stream's start, dropping those numbered ``<= after``.

    A reader resuming with ``after`` (``starting_after``) must get every stream event unmerged (its buffer keeps
    content events apart), so that each event it is given ends at a position the first reader saw an end at too.
    When the stream ends at or before ``after``, the reader ends with a ``bad_request`` error: nothing is after it.
    """

    shares_native = False

    def __init__(self, head: ResponseHead, *, after: int | None = None) -> None:
        self.state = ResponseState(head)
        self._after = -1 if after is None else after

    def event(self, event: StreamEvent) -> bytes:
        made = self.state.push(event)
        after = self._after
        data = b"".join(encode(emitted) for emitted in made if emitted[0] > after)
        if self.state.ended and self.state.last_sequence <= after:
            message = f"starting_after {after} is past the response's last event ({self.state.last_sequence})"
            return error_event("bad_request", message, after + 1)
        return data

    def error(self, code: str, message: str, *, id: str | None = None) -> bytes:
        return error_event(code, message, self.state.last_sequence + 1)


class ResponseCollector:
    """For a Response answered whole: builds it from the reader's events, sends nothing."""

    shares_native = False

    def __init__(self, head: ResponseHead) -> None:
        self.state = ResponseState(head)
        self.failure: tuple[str, str] | None = None

    def event(self, event: StreamEvent) -> bytes:
        self.state.push(event)
        return b""

    def error(self, code: str, message: str, *, id: str | None = None) -> bytes:
        self.failure = (code, message)
        return b""
