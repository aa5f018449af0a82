"""OpenAI-compatible chat completions, sans-I/O: request parsing, chunk framing, bodies, errors.

The chunk ``id`` is the tokenrelay stream id, so a stream started through the OpenAI SDK can
be stopped over the control WebSocket.  A stop ends the stream with ``finish_reason``
``"cancelled"`` (tokenrelay's own reason; OpenAI has none for it).  ``usage.prompt_tokens`` is
the engine's count of the prompt (0 when it gave none: see ``runner/engines``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from tokenrelay.streamer.compat.common import Collector, completion_tokens, openai_message
from tokenrelay.streamer.sse import encode_event
from tokenrelay.wire.errors import BadRequest, ErrorCode
from tokenrelay.wire.messages import (
    ReasoningDelta,
    StartRequest,
    StreamDelta,
    StreamEnd,
    StreamError,
    StreamEvent,
    StreamStart,
    ToolCallDelta,
)

DONE = b"data: [DONE]\n\n"

_ERROR_TYPES: dict[str, str] = {
    ErrorCode.BAD_REQUEST: "invalid_request_error",
    ErrorCode.PAYLOAD_TOO_LARGE: "invalid_request_error",
    ErrorCode.UNAUTHORIZED: "invalid_request_error",
    ErrorCode.NOT_FOUND: "not_found_error",
    ErrorCode.MODEL_NOT_FOUND: "invalid_request_error",  # OpenAI's type for a model it does not serve
    ErrorCode.UNSUPPORTED_PARAMETER: "invalid_request_error",
    ErrorCode.METHOD_NOT_ALLOWED: "invalid_request_error",
    ErrorCode.RATE_LIMITED: "rate_limit_exceeded",
    ErrorCode.OVERLOADED: "server_error",
    ErrorCode.UNAVAILABLE: "server_error",
}


OWNED_FIELDS = frozenset({"model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens"})
"""The request's fields tokenrelay acts on itself; every other one is passed on in the stream's ``params``."""


@dataclass(frozen=True, slots=True)
class ChatOptions:
    """What an OpenAI request (chat or text completion) asked of the response (not of the generation)."""

    stream: bool
    include_usage: bool


def parse_chat_request(obj: dict[str, Any]) -> tuple[StartRequest, ChatOptions]:
    """An OpenAI ``chat.completions`` body in the canonical form: its messages, ``max_tokens`` (or
    ``max_completion_tokens``), ``model``, and every other field in ``params`` as sent; ``bad_request`` naming the
    field for what cannot be put in that form (the admitting gateway checks the rest)."""
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty array")
    parsed = tuple(openai_message(f"messages[{i}]", m) for i, m in enumerate(messages))
    model = optional_model(obj)
    max_tokens = obj.get("max_completion_tokens")
    max_tokens = optional_int("max_tokens", obj.get("max_tokens") if max_tokens is None else max_tokens)
    options = response_options(obj)
    params = {key: value for key, value in obj.items() if key not in OWNED_FIELDS}
    return StartRequest(messages=parsed, max_tokens=max_tokens, model=model, params=params), options


def optional_model(obj: dict[str, Any]) -> str | None:
    """The request's ``model``: a non-empty string, or ``None`` when absent (the gateway picks one)."""
    model = obj.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise BadRequest("model must be a non-empty string")
    return model


def optional_int(name: str, value: Any) -> int | None:
    """``value`` when it is an integer or ``None``, else ``bad_request`` naming the field (the gateway checks range)."""
    if value is not None and type(value) is not int:
        raise BadRequest(f"{name} must be an integer")
    return value


def response_options(obj: dict[str, Any]) -> ChatOptions:
    """What an OpenAI request (chat or text completion) asks of its response: ``stream`` and
    ``stream_options.include_usage``."""
    stream = obj.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest("stream must be a boolean")
    stream_options = obj.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise BadRequest("stream_options must be an object")
    include_usage = stream_options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise BadRequest("stream_options.include_usage must be a boolean")
    return ChatOptions(stream=bool(stream), include_usage=include_usage)


def finish_reason(end: StreamEnd) -> str:
    """tokenrelay's finish reason as the chunk's ``finish_reason`` (``stop``, ``length``, ``tool_calls``,
    ``content_filter``, or tokenrelay's own ``cancelled`` / ``error``)."""
    return str(end.finish_reason)


def usage(end: StreamEnd) -> dict[str, int]:
    """The ``usage`` object of a finished stream."""
    prompt, completion = end.prompt_tokens or 0, completion_tokens(end)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def error_body(code: str, message: str) -> dict[str, Any]:
    """OpenAI's error shape, so the SDK raises its own exception types."""
    kind = _ERROR_TYPES.get(code, "server_error")  # StrEnum keys match plain strings
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class ChunkFraming:
    """Stream events as ``chat.completion.chunk`` SSE ``data:`` lines, then ``data: [DONE]``."""

    shares_native = False

    def __init__(self, *, stream_id: str, model: str, created: int, include_usage: bool) -> None:
        self._base = {"id": stream_id, "object": "chat.completion.chunk", "created": created, "model": model}
        self._include_usage = include_usage

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _data({**self._base, "choices": [choice]})

    def event(self, event: StreamEvent) -> bytes:
        if isinstance(event, StreamStart):
            return self._chunk({"role": "assistant", "content": ""})
        if isinstance(event, StreamDelta):
            return self._chunk({"content": event.text})
        if isinstance(event, ReasoningDelta):
            return self._chunk({"reasoning_content": event.text})
        if isinstance(event, ToolCallDelta):
            return self._chunk({"tool_calls": [tool_call_delta(event)]})
        if isinstance(event, StreamEnd):
            out = self._chunk({}, finish_reason(event))
            if self._include_usage:
                out += _data({**self._base, "choices": [], "usage": usage(event)})
            return out + DONE
        assert isinstance(event, StreamError)
        return self.error(event.code, event.message)

    def error(self, code: str, message: str, *, id: str | None = None) -> bytes:
        return _data(error_body(code, message))


def tool_call_delta(delta: ToolCallDelta) -> dict[str, Any]:
    """A chunk's ``delta.tool_calls`` item: ``index`` is the call; its first fragment names it (``id``, ``type``,
    ``function.name``), every fragment carries the next piece of ``function.arguments``."""
    function: dict[str, Any] = {"arguments": delta.arguments}
    item: dict[str, Any] = {"index": delta.call}
    if delta.id is not None:
        item.update(id=delta.id, type="function")
    if delta.name is not None:
        function = {"name": delta.name, **function}
    item["function"] = function
    return item


def completion_body(*, stream_id: str, model: str, created: int, content: Collector, end: StreamEnd) -> dict[str, Any]:
    """The ``chat.completion`` object of a finished non-streaming request: its text, reasoning (when the model
    reasoned) and tool calls (when it made any) assembled."""
    text = content.text("text")
    calls = content.tool_calls()
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None, "refusal": None}
    reasoning = content.text("reasoning")
    if reasoning:
        message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = [
            {"id": call.id or "", "type": "function", "function": {"name": call.name or "", "arguments": call.text()}}
            for call in calls
        ]
    return {
        "id": stream_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason(end)}],
        "usage": usage(end),
    }


def _data(obj: dict[str, Any]) -> bytes:
    return encode_event(orjson.dumps(obj).decode())
