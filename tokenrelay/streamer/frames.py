r"""Stream events -> SSE frames, as the contract names them (sans-I/O).

===========  ===========================  ================================================
NATS event   SSE ``event:``               ``data:``
===========  ===========================  ================================================
start        ``start`` (id ``epoch:0``)     ``{"stream_id", "model", "created"}``
delta        ``delta`` (id ``epoch:index``) ``{"text", "index", "ts"}``
reasoning    ``reasoning`` (id ``epoch:index``) ``{"text", "index", "ts"}``
tool_call    ``tool_call`` (id ``epoch:index``) ``{"call", "id"?, "name"?, "arguments", "index", "ts"}``
end          ``stop`` (id ``epoch:tokens``) ``{"finish_reason", "tokens", "ttft_ms"}``
error        ``error`` (id ``epoch:tokens``) ``{"code", "message"}``
===========  ===========================  ================================================

A text-only stream is ``start``, ``delta``\ s, then ``stop``: a client that knows no other event reads it as it
always did.  ``reasoning`` and ``tool_call`` events come only from a model that reasons or calls tools; a tool call's
``id`` and ``name`` are in its first event, and its ``arguments`` fragments joined in order are the arguments' JSON.

A delta's ``ts`` is the wall-clock time (seconds) the runner published its (first) token batch,
so a client on the same clock can measure token lag.  Every frame carries an ``id`` so a
reconnecting ``EventSource`` resumes after it.  The terminal frame's id equals the last delta's,
so a reader that resumes after the last delta, or after the terminal event, gets the terminal
event again.
"""

from __future__ import annotations

from typing import Protocol

import orjson

from tokenrelay.streamer.sse import FramingError, encode_event
from tokenrelay.wire.messages import (
    OUT_OF_BAND_SEQ,
    ReasoningDelta,
    StreamDelta,
    StreamEnd,
    StreamError,
    StreamEvent,
    StreamStart,
    ToolCallDelta,
)


def frame(event: StreamEvent, epoch: str) -> bytes:
    """The SSE bytes for one stream event."""
    if isinstance(event, StreamDelta):
        return delta_frame(event, epoch)
    if isinstance(event, ReasoningDelta):
        data_reasoning = {"text": event.text, "index": event.index, "ts": event.ts}
        return encode_event(orjson.dumps(data_reasoning).decode(), event="reasoning", id=f"{epoch}:{event.index}")
    if isinstance(event, ToolCallDelta):
        return tool_call_frame(event, epoch)
    if isinstance(event, StreamStart):
        data_start = {"stream_id": event.stream_id, "model": event.model, "created": event.created}
        return encode_event(orjson.dumps(data_start).decode(), event="start", id=f"{epoch}:0")
    if isinstance(event, StreamEnd):
        data_end: dict[str, object] = {
            "finish_reason": str(event.finish_reason),
            "tokens": event.tokens,
            "ttft_ms": event.ttft_ms,
        }
        if event.prompt_tokens is not None:
            data_end["prompt_tokens"] = event.prompt_tokens
        if event.completion_tokens is not None:
            data_end["completion_tokens"] = event.completion_tokens
        return encode_event(orjson.dumps(data_end).decode(), event="stop", id=f"{epoch}:{event.tokens}")
    if event.seq == OUT_OF_BAND_SEQ:
        return error_frame(event.code, event.message)  # no id: the reader's last cursor stays valid
    return error_frame(event.code, event.message, id=f"{epoch}:{event.tokens}")


def delta_frame(delta: StreamDelta, epoch: str) -> bytes:
    """A ``delta`` event, built without the general encoder (the streamer frames one per token).

    As safe as :func:`~tokenrelay.streamer.sse.encode_event`: orjson's output is one line (JSON escapes every
    control character inside strings and orjson adds no whitespace), and the epoch is checked.
    """
    data = orjson.dumps({"text": delta.text, "index": delta.index, "ts": delta.ts})
    return b"event: delta\nid: %s:%d\ndata: %s\n\n" % (_epoch_bytes(epoch), delta.index, data)


def tool_call_frame(delta: ToolCallDelta, epoch: str) -> bytes:
    """A ``tool_call`` event: the call's ordinal, its id and name on its first fragment, an arguments fragment."""
    data: dict[str, object] = {"call": delta.call}
    if delta.id is not None:
        data["id"] = delta.id
    if delta.name is not None:
        data["name"] = delta.name
    data.update(arguments=delta.arguments, index=delta.index, ts=delta.ts)
    return encode_event(orjson.dumps(data).decode(), event="tool_call", id=f"{epoch}:{delta.index}")


def _epoch_bytes(epoch: str) -> bytes:
    if "\r" in epoch or "\n" in epoch or "\0" in epoch:
        raise FramingError("an SSE id must not contain CR, LF or NUL")
    return epoch.encode()


def error_frame(code: str, message: str, *, id: str | None = None) -> bytes:
    """A terminal ``error`` event."""
    return encode_event(orjson.dumps({"code": code, "message": message}).decode(), event="error", id=id)


def is_terminal(event: StreamEvent) -> bool:
    """Whether this event ends the stream."""
    return isinstance(event, StreamEnd | StreamError)


class Framing(Protocol):
    """How one reader's events become bytes on the wire (the native SSE events, or a compatible API's)."""

    shares_native: bool
    """Whether the native frame the hub makes once per event can be sent to this reader as is."""

    def event(self, event: StreamEvent) -> bytes:
        """The bytes for one event (a merged delta included); may be empty."""
        ...

    def error(self, code: str, message: str, *, id: str | None = None) -> bytes:
        """The bytes that end the reader with an error."""
        ...


class NativeFraming:
    """tokenrelay's own SSE events (the table above)."""

    shares_native = True

    def __init__(self, epoch: str) -> None:
        self.epoch = epoch

    def event(self, event: StreamEvent) -> bytes:
        return frame(event, self.epoch)

    def error(self, code: str, message: str, *, id: str | None = None) -> bytes:
        return error_frame(code, message, id=id)
