"""Anthropic-compatible messages, sans-I/O: request parsing, event framing, bodies, errors.

The message ``id`` is the tokenrelay stream id, so a stream started through the Anthropic SDK
can be stopped over the control WebSocket; a stop ends it with ``stop_reason`` ``"cancelled"``
(tokenrelay's own; Anthropic has none for it).  ``usage.input_tokens`` is the engine's count of
the prompt, in ``message_delta`` (0 in ``message_start``, which goes out before the engine counts, and
0 wherever the engine gave no count: see ``runner/engines``).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import orjson

from tokenrelay.streamer.compat.common import Block, Collector, completion_tokens, joined_text
from tokenrelay.streamer.sse import encode_event
from tokenrelay.wire.content import ChatMessage, ContentPart, JsonObject, ToolCall
from tokenrelay.wire.errors import BadRequest, ErrorCode
from tokenrelay.wire.messages import (
    FinishReason,
    ReasoningDelta,
    StartRequest,
    StreamDelta,
    StreamEnd,
    StreamError,
    StreamEvent,
    StreamStart,
    ToolCallDelta,
)

ROLES = frozenset({"user", "assistant"})
OVERLOADED_STATUS = 529
"""Anthropic's status for an overloaded API (the SDK raises its overloaded error for it)."""
OWNED_FIELDS = frozenset({"model", "messages", "system", "max_tokens", "stream"})
"""The request's fields tokenrelay acts on itself (translated ones apart, every other one is passed on as sent)."""
LOW_EFFORT_BELOW_TOKENS = 4096
HIGH_EFFORT_FROM_TOKENS = 16384
"""``thinking.budget_tokens`` becomes ``reasoning_effort``: ``low`` below 4,096, ``high`` from 16,384, else
``medium`` (the budget itself is passed on too, as ``reasoning.max_tokens``)."""

_STOP_REASONS = {
    FinishReason.STOP: "end_turn",
    FinishReason.LENGTH: "max_tokens",
    FinishReason.TOOL_CALLS: "tool_use",
    FinishReason.CONTENT_FILTER: "refusal",
}
_TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
_ERROR_TYPES: dict[str, str] = {
    ErrorCode.BAD_REQUEST: "invalid_request_error",
    ErrorCode.PAYLOAD_TOO_LARGE: "request_too_large",
    ErrorCode.UNAUTHORIZED: "authentication_error",
    ErrorCode.NOT_FOUND: "not_found_error",
    ErrorCode.MODEL_NOT_FOUND: "not_found_error",
    ErrorCode.UNSUPPORTED_PARAMETER: "invalid_request_error",
    ErrorCode.METHOD_NOT_ALLOWED: "invalid_request_error",
    ErrorCode.RATE_LIMITED: "rate_limit_error",
    ErrorCode.OVERLOADED: "overloaded_error",
}


@dataclass(frozen=True, slots=True)
class MessagesOptions:
    """What the request asked of the response (not of the generation)."""

    stream: bool
    may_begin_with_a_block: bool = False
    """The request offers tools or enables thinking: the answer may begin with a ``thinking`` or ``tool_use``
    block, so no text block is opened before the content begins (see :class:`EventFraming`)."""


def parse_messages_request(obj: dict[str, Any]) -> tuple[StartRequest, MessagesOptions]:
    """An Anthropic ``messages`` body in the canonical (OpenAI chat) form; ``bad_request`` naming the field.

    ``system`` becomes the first message; ``tool_use`` blocks an assistant's tool calls (``input`` as JSON text),
    ``tool_result`` blocks ``tool`` messages; ``image`` blocks image parts; ``tools``, ``tool_choice``,
    ``thinking``, ``stop_sequences`` and ``metadata.user_id`` their OpenAI counterparts in ``params``; every other
    field (``temperature``, ``top_p``, ``top_k``...) is passed on as sent.
    """
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty array")
    parsed = [turn for i, m in enumerate(messages) for turn in _message(i, m)]
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
    params = _params(obj)
    request = StartRequest(messages=tuple(parsed), max_tokens=max_tokens, model=model, params=params)
    return request, MessagesOptions(stream=stream, may_begin_with_a_block=bool(params.get("tools")) or _thinks(params))


def _thinks(params: JsonObject) -> bool:
    return params.get("reasoning_effort") is not None or params.get("reasoning") is not None


def _params(obj: dict[str, Any]) -> JsonObject:
    params = {key: value for key, value in obj.items() if key not in OWNED_FIELDS}
    if (tools := params.pop("tools", None)) is not None:
        params["tools"] = _tools(tools)
    if (choice := params.pop("tool_choice", None)) is not None:
        params.update(_tool_choice(choice))
    if (thinking := params.pop("thinking", None)) is not None:
        params.update(_thinking(thinking))
    if (stop := params.pop("stop_sequences", None)) is not None:
        params["stop"] = stop
    metadata = params.pop("metadata", None)
    if isinstance(metadata, dict) and metadata.get("user_id") is not None:
        params["user"] = metadata["user_id"]
    elif metadata is not None and not isinstance(metadata, dict):
        raise BadRequest("metadata must be an object")
    return params


def _tools(value: Any) -> list[JsonObject]:
    if not isinstance(value, list):
        raise BadRequest("tools must be an array")
    out = []
    for i, tool in enumerate(value):
        if not isinstance(tool, dict) or tool.get("type", "custom") != "custom":
            raise BadRequest(f"tools[{i}] must be a custom tool (name, description, input_schema)")
        function = {"name": tool.get("name"), "parameters": tool.get("input_schema")}
        if "description" in tool:
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(value: Any) -> JsonObject:
    kind = value.get("type") if isinstance(value, dict) else None
    params: JsonObject = {}
    if kind in _TOOL_CHOICES:
        params["tool_choice"] = _TOOL_CHOICES[kind]
    elif kind == "tool":
        params["tool_choice"] = {"type": "function", "function": {"name": value.get("name")}}
    else:
        raise BadRequest('tool_choice must be an object whose type is "auto", "any", "tool" or "none"')
    if value.get("disable_parallel_tool_use") is True:
        params["parallel_tool_calls"] = False
    return params


def _thinking(value: Any) -> JsonObject:
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "disabled":
        return {}
    budget = value.get("budget_tokens") if isinstance(value, dict) else None
    if kind != "enabled" or type(budget) is not int or budget < 1:
        raise BadRequest('thinking must be {"type": "enabled", "budget_tokens": <positive integer>} or disabled')
    effort = "low" if budget < LOW_EFFORT_BELOW_TOKENS else "high" if budget >= HIGH_EFFORT_FROM_TOKENS else "medium"
    return {"reasoning_effort": effort, "reasoning": {"max_tokens": budget}}


def _message(i: int, item: Any) -> list[ChatMessage]:
    """One Anthropic message as canonical messages: a user turn's ``tool_result`` blocks become ``tool`` messages
    ahead of what else it says; an assistant turn's ``tool_use`` blocks become its tool calls.  ``thinking``
    blocks an assistant turn sends back are not passed on (the canonical form carries no reasoning)."""
    where = f"messages[{i}]"
    if not isinstance(item, dict):
        raise BadRequest(f"{where} must be an object")
    role, content = item.get("role"), item.get("content")
    if role not in ROLES:
        raise BadRequest(f"{where}.role must be one of {', '.join(sorted(ROLES))}")
    if isinstance(content, str):
        return [ChatMessage(role=role, content=content)]
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content must be a string or an array of content blocks")
    turn = _Turn()
    for j, block in enumerate(content):
        turn.add(f"{where}.content[{j}]", role, block)
    said: list[ChatMessage] = []
    if turn.parts or turn.calls or not turn.results:
        text_only = all(part.type == "text" for part in turn.parts)
        parts = turn.parts
        body: str | tuple[ContentPart, ...] = "".join(p.text or "" for p in parts) if text_only else tuple(parts)
        said.append(ChatMessage(role=role, content=body, tool_calls=tuple(turn.calls)))
    return turn.results + said


@dataclass(slots=True)
class _Turn:
    """What one Anthropic message's blocks hold, sorted into the canonical form's places."""

    parts: list[ContentPart] = field(default_factory=list)
    calls: list[ToolCall] = field(default_factory=list)
    results: list[ChatMessage] = field(default_factory=list)

    def add(self, where: str, role: str, block: Any) -> None:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            self.parts.append(ContentPart(type="text", text=block["text"]))
        elif kind == "image":
            self.parts.append(_image(where, block.get("source")))
        elif kind == "tool_use" and role == "assistant":
            self.calls.append(_tool_use(where, block))
        elif kind == "tool_result" and role == "user":
            self.results.append(_tool_result(where, block))
        elif kind not in ("thinking", "redacted_thinking") or role != "assistant":
            # An assistant's thinking sent back is left out: an OpenAI chat request has no place for it.
            raise BadRequest(f"{where} must be a text, image, tool_use (assistant) or tool_result (user) block")


def _image(where: str, source: Any) -> ContentPart:
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64" and isinstance(source.get("media_type"), str) and isinstance(source.get("data"), str):
        return ContentPart(type="image_url", image_url=f"data:{source['media_type']};base64,{source['data']}")
    if kind == "url" and isinstance(source.get("url"), str):
        return ContentPart(type="image_url", image_url=source["url"])
    raise BadRequest(f"{where}.source must be a base64 source (media_type, data) or a url source")


def _tool_use(where: str, block: dict[str, Any]) -> ToolCall:
    call_id, name, arguments = block.get("id"), block.get("name"), block.get("input", {})
    if not isinstance(call_id, str) or not isinstance(name, str) or not isinstance(arguments, dict):
        raise BadRequest(f"{where} must have a string id and name and an object input")
    return ToolCall(id=call_id, name=name, arguments=orjson.dumps(arguments).decode())


def _tool_result(where: str, block: dict[str, Any]) -> ChatMessage:
    call_id, content = block.get("tool_use_id"), block.get("content", "")
    if not isinstance(call_id, str):
        raise BadRequest(f"{where}.tool_use_id must be a string")
    text = joined_text(f"{where}.content", content, piece="block")
    if block.get("is_error") is True:
        text = f"Error: {text}"  # the canonical tool message has no error flag: the model reads it in the text
    return ChatMessage(role="tool", content=text, tool_call_id=call_id)


def stop_reason(end: StreamEnd) -> str:
    """``end_turn``, ``max_tokens``, ``tool_use``, ``refusal``, or tokenrelay's own ``cancelled`` / ``error``."""
    return _STOP_REASONS.get(end.finish_reason, str(end.finish_reason))


def error_body(code: str, message: str) -> dict[str, Any]:
    """Anthropic's error shape; ``message`` carries our stable code in front."""
    return {"type": "error", "error": {"type": _ERROR_TYPES.get(code, "api_error"), "message": f"{code}: {message}"}}


def http_status(code: str, status: int) -> int:
    """Anthropic's status for one of our errors (529 for ``overloaded``)."""
    return OVERLOADED_STATUS if code == ErrorCode.OVERLOADED else status


class EventFraming:
    """Stream events as Anthropic's named SSE events (``message_start`` ... ``message_stop``).

    Content goes out in blocks, one open at a time: ``text`` (opened with the message, so a text-only stream is
    framed as it always was), ``thinking`` (closed with a ``signature_delta``) and ``tool_use`` (opened with its
    id, name and an empty ``input``, then ``input_json_delta`` fragments).  With ``open_text_first`` off (a request
    whose answer may begin with a thinking or tool_use block), each block opens when its content begins, as in
    Anthropic's own streams, so no empty text block comes first.  Anthropic's blocks never interleave, so
    fragments of a parallel tool call that arrive while another call's block is open are held, and go out as that
    call's block when the open one closes.
    """

    shares_native = False

    def __init__(self, *, stream_id: str, model: str, open_text_first: bool = True) -> None:
        self._stream_id = stream_id
        self._model = model
        self._index = 0 if open_text_first else -1
        self._open: tuple[str, int | None] = ("text", None) if open_text_first else ("", None)
        self._held: dict[int, list[ToolCallDelta]] = {}
        self._calls: dict[int, tuple[str | None, str | None]] = {}

    def event(self, event: StreamEvent) -> bytes:
        if isinstance(event, StreamStart):
            return self._start()
        if isinstance(event, StreamDelta):
            return self._into(("text", None)) + self._delta({"type": "text_delta", "text": event.text})
        if isinstance(event, ReasoningDelta):
            return self._into(("thinking", None)) + self._delta({"type": "thinking_delta", "thinking": event.text})
        if isinstance(event, ToolCallDelta):
            return self._tool_call(event)
        if isinstance(event, StreamEnd):
            # A message with no content at all still has one (empty) text block, as a non-streamed one does.
            empty = self._into(("text", None)) if self._index < 0 else b""
            return (
                empty
                + self._close()
                + _event(
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": stop_reason(event), "stop_sequence": None},
                        # The prompt's count is known by the end (``message_start`` went out before the engine
                        # counted it); the SDKs take ``input_tokens`` from here when it is present.
                        "usage": {"input_tokens": event.prompt_tokens or 0, "output_tokens": completion_tokens(event)},
                    },
                )
                + _event("message_stop", {"type": "message_stop"})
            )
        assert isinstance(event, StreamError)
        return self.error(event.code, event.message)

    def error(self, code: str, message: str, *, id: str | None = None) -> bytes:
        return _event("error", error_body(code, message))

    def _start(self) -> bytes:
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
        text = self._block_start({"type": "text", "text": ""}) if self._open[0] == "text" else b""
        return (
            _event("message_start", {"type": "message_start", "message": message})
            + text
            + _event("ping", {"type": "ping"})
        )

    def _tool_call(self, event: ToolCallDelta) -> bytes:
        if event.id is not None or event.name is not None:
            self._calls[event.call] = (event.id, event.name)
        if self._open[0] == "tool_use" and self._open[1] != event.call:
            self._held.setdefault(event.call, []).append(event)  # another call's block is open: held until it closes
            return b""
        out = self._into(("tool_use", event.call))
        return out + self._delta({"type": "input_json_delta", "partial_json": event.arguments})

    def _into(self, block: tuple[str, int | None]) -> bytes:
        """Close the open block unless it is ``block``, and open ``block``."""
        if self._open == block:
            return b""
        out = self._close()
        self._index += 1
        self._open = block
        kind, call = block
        if kind == "text":
            return out + self._block_start({"type": "text", "text": ""})
        if kind == "thinking":
            return out + self._block_start({"type": "thinking", "thinking": "", "signature": ""})
        call_id, name = self._calls.get(call or 0, (None, None))
        return out + self._block_start({"type": "tool_use", "id": call_id or "", "name": name or "", "input": {}})

    def _close(self) -> bytes:
        """Close the open block, then send the tool calls held while it was open, each as its own block."""
        kind, _ = self._open
        if not kind:
            return b""  # none is open: before the first block, or between a block and a held call's
        out = b""
        if kind == "thinking":
            out += self._delta({"type": "signature_delta", "signature": self._signature()})
        out += _event("content_block_stop", {"type": "content_block_stop", "index": self._index})
        self._open = ("", None)
        while self._held:
            call, fragments = next(iter(self._held.items()))
            del self._held[call]
            out += self._into(("tool_use", call))
            for fragment in fragments:
                out += self._delta({"type": "input_json_delta", "partial_json": fragment.arguments})
            out += self._close()
        return out

    def _signature(self) -> str:
        # Anthropic signs thinking so it can be sent back unaltered; tokenrelay's is an opaque tag of the block
        # (the SDKs keep it as a string and never check it), and a thinking block sent back is not passed on.
        return base64.b64encode(f"tokenrelay:{self._stream_id}:{self._index}".encode()).decode()

    def _block_start(self, block: dict[str, Any]) -> bytes:
        start = {"type": "content_block_start", "index": self._index, "content_block": block}
        return _event("content_block_start", start)

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return _event("content_block_delta", {"type": "content_block_delta", "index": self._index, "delta": delta})


def message_body(*, stream_id: str, model: str, content: Collector, end: StreamEnd) -> dict[str, Any]:
    """The ``message`` object of a finished non-streaming request: its blocks in order (a text-only answer is one
    ``text`` block, as before; ``tool_use.input`` is the arguments parsed, or ``{"arguments": <text>}`` where the
    model's arguments are not a JSON object)."""
    blocks = [_block_body(stream_id, i, block) for i, block in enumerate(content.blocks)]
    return {
        "id": stream_id,
        "type": "message",
        "role": "assistant",
        "content": blocks or [{"type": "text", "text": ""}],
        "model": model,
        "stop_reason": stop_reason(end),
        "stop_sequence": None,
        "usage": {"input_tokens": end.prompt_tokens or 0, "output_tokens": completion_tokens(end)},
    }


def _block_body(stream_id: str, index: int, block: Block) -> dict[str, Any]:
    if block.kind == "text":
        return {"type": "text", "text": block.text()}
    if block.kind == "reasoning":
        signature = base64.b64encode(f"tokenrelay:{stream_id}:{index}".encode()).decode()
        return {"type": "thinking", "thinking": block.text(), "signature": signature}
    try:
        parsed = orjson.loads(block.text())
    except orjson.JSONDecodeError:
        parsed = None
    arguments = parsed if isinstance(parsed, dict) else {"arguments": block.text()}
    return {"type": "tool_use", "id": block.id or "", "name": block.name or "", "input": arguments}


def _event(name: str, obj: dict[str, Any]) -> bytes:
    return encode_event(orjson.dumps(obj).decode(), event=name)
