"""Anthropic-compatible messages, sans-I/O: request parsing, event framing, bodies, errors.

The message ``id`` is the tokenrelay stream id, so a stream started through the Anthropic SDK
can be stopped over the control WebSocket; a stop ends it with ``stop_reason`` ``"cancelled"``
(tokenrelay's own; Anthropic has none for it).  ``usage.input_tokens`` is the engine's count of
the prompt, in ``message_delta`` (0 in ``message_start``, which goes out before the engine counts, and
0 wherever the engine gave no count: see ``runner/engines``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from tokenrelay.streamer.compat.common import joined_text
from tokenrelay.streamer.sse import encode_event
from tokenrelay.wire.errors import BadRequest, ErrorCode
from tokenrelay.wire.messages import (
    ChatMessage,
    FinishReason,
    StartRequest,
    StreamDelta,
    StreamEnd,
    StreamError,
    StreamEvent,
    StreamStart,
)

ROLES = frozenset({"user", "assistant"})
OVERLOADED_STATUS = 529
"""Anthropic's status for an overloaded API (the SDK raises its overloaded error for it)."""

_STOP_REASONS = {FinishReason.STOP: "end_turn", FinishReason.LENGTH: "max_tokens"}
_ERROR_TYPES: dict[str, str] = {
    ErrorCode.BAD_REQUEST: "invalid_request_error",
    ErrorCode.PAYLOAD_TOO_LARGE: "request_too_large",
    ErrorCode.UNAUTHORIZED: "authentication_error",
    ErrorCode.NOT_FOUND: "not_found_error",
    ErrorCode.METHOD_NOT_ALLOWED: "invalid_request_error",
    ErrorCode.RATE_LIMITED: "rate_limit_error",
    ErrorCode.OVERLOADED: "overloaded_error",
}


@dataclass(frozen=True, slots=True)
class MessagesOptions:
    stream: bool


def parse_messages_request(obj: dict[str, Any]) -> tuple[StartRequest, MessagesOptions]:
    """Validate an Anthropic ``messages`` body; raise ``bad_request`` naming the field."""
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty array")
    parsed = [_message(i, m) for i, m in enumerate(messages)]
    system = obj.get("system")
    if system is not None:
        parsed.insert(0, ChatMessage(role="system", content=joined_text("system", system, piece="block")))
    model = obj.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model must be a non-empty string")
    max_tokens = obj.get("max_tokens")
    if type(max_tokens) is not int:
        raise BadRequest("max_tokens is required and must be an integer")
    stream = obj.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("stream must be a boolean")
    return StartRequest(messages=tuple(parsed), max_tokens=max_tokens, model=model), MessagesOptions(stream=stream)


def _message(i: int, item: Any) -> ChatMessage:
    if not isinstance(item, dict):
        raise BadRequest(f"messages[{i}] must be an object")
    role = item.get("role")
    if role not in ROLES:
        raise BadRequest(f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}")
    return ChatMessage(role=role, content=joined_text(f"messages[{i}].content", item.get("content"), piece="block"))


def stop_reason(end: StreamEnd) -> str:
    """``end_turn``, ``max_tokens``, or tokenrelay's own ``cancelled`` / ``error``."""
    return _STOP_REASONS.get(end.finish_reason, str(end.finish_reason))


def error_body(code: str, message: str) -> dict[str, Any]:
    """Anthropic's error shape; ``message`` carries our stable code in front."""
    return {"type": "error", "error": {"type": _ERROR_TYPES.get(code, "api_error"), "message": f"{code}: {message}"}}


def http_status(code: str, status: int) -> int:
    """Anthropic's status for one of our errors (529 for ``overloaded``)."""
    return OVERLOADED_STATUS if code == ErrorCode.OVERLOADED else status


class EventFraming:
    """Stream events as Anthropic's named SSE events (``message_start`` ... ``message_stop``)."""

    shares_native = False

    def __init__(self, *, stream_id: str, model: str) -> None:
        self._stream_id = stream_id
        self._model = model

    def event(self, event: StreamEvent) -> bytes:
        if isinstance(event, StreamStart):
            message: dict[str, Any] = {
                "id": self._stream_id,
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": self._model,
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }
            return (
                _event("message_start", {"type": "message_start", "message": message})
                + _event(
                    "content_block_start",
                    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                )
                + _event("ping", {"type": "ping"})
            )
        if isinstance(event, StreamDelta):
            delta = {"type": "text_delta", "text": event.text}
            return _event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
        if isinstance(event, StreamEnd):
            return (
                _event("content_block_stop", {"type": "content_block_stop", "index": 0})
                + _event(
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": stop_reason(event), "stop_sequence": None},
                        # The prompt's count is known by the end (``message_start`` went out before the engine
                        # counted it); the SDKs take ``input_tokens`` from here when it is present.
                        "usage": {"input_tokens": event.prompt_tokens or 0, "output_tokens": event.tokens},
                    },
                )
                + _event("message_stop", {"type": "message_stop"})
            )
        assert isinstance(event, StreamError)
        return self.error(event.code, event.message)

    def error(self, code: str, message: str, *, id: str | None = None) -> bytes:
        return _event("error", error_body(code, message))


def message_body(*, stream_id: str, model: str, text: str, end: StreamEnd) -> dict[str, Any]:
    """The ``message`` object of a finished non-streaming request."""
    return {
        "id": stream_id,
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": text}],
        "model": model,
        "stop_reason": stop_reason(end),
        "stop_sequence": None,
        "usage": {"input_tokens": end.prompt_tokens or 0, "output_tokens": end.tokens},
    }


def _event(name: str, obj: dict[str, Any]) -> bytes:
    return encode_event(orjson.dumps(obj).decode(), event=name)
