"""What both compatible APIs share, sans-I/O: text content, messages in the canonical (OpenAI chat) form, the
engine's completion count, and collecting a non-streamed response's typed content.

The streamer only puts a request into the canonical form here; the gateway that admits it checks it against its
rules and limits (``gateway/requests.py``), so both APIs and the native one refuse the same things the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from tokenrelay.wire.content import ChatMessage, ContentPart, ToolCall
from tokenrelay.wire.errors import BadRequest
from tokenrelay.wire.messages import (
    ReasoningDelta,
    StreamDelta,
    StreamEnd,
    StreamError,
    StreamEvent,
    ToolCallDelta,
)


def joined_text(where: str, content: Any, *, piece: str) -> str:
    """A string, or the ``{"type": "text", "text": ...}`` items of an array joined (``piece``: the API's word)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, item in enumerate(content):
            if not isinstance(item, dict) or item.get("type") != "text" or not isinstance(item.get("text"), str):
                raise BadRequest(f"{where}[{j}] must be a text {piece}")
            parts.append(item["text"])
        return "".join(parts)
    raise BadRequest(f"{where} must be a string or an array of text {piece}s")


def openai_message(where: str, item: Any) -> ChatMessage:
    """An OpenAI chat message as a :class:`ChatMessage`, field for field; ``bad_request`` for what has no place in
    one (the admitting gateway checks roles, required fields and limits)."""
    if not isinstance(item, dict):
        raise BadRequest(f"{where} must be an object")
    role = item.get("role")
    if not isinstance(role, str):
        raise BadRequest(f"{where}.role must be a string")
    content = item.get("content")
    if content is None and role != "assistant":
        raise BadRequest(f"{where}.content is required")
    return ChatMessage(
        role=role,
        content=_content(f"{where}.content", content),
        tool_calls=_tool_calls(f"{where}.tool_calls", item.get("tool_calls")),
        tool_call_id=_optional_string(f"{where}.tool_call_id", item.get("tool_call_id")),
        name=_optional_string(f"{where}.name", item.get("name")),
    )


def _content(where: str, value: Any) -> str | tuple[ContentPart, ...]:
    if value is None or isinstance(value, str):
        return value or ""
    if not isinstance(value, list):
        raise BadRequest(f"{where} must be a string or an array of content parts")
    return tuple(_part(f"{where}[{j}]", part) for j, part in enumerate(value))


def _part(where: str, part: Any) -> ContentPart:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text" and isinstance(part.get("text"), str):
        return ContentPart(type="text", text=part["text"])
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else None
        if not isinstance(url, str):
            raise BadRequest(f"{where}.image_url.url must be a string")
        detail = _optional_string(f"{where}.image_url.detail", image.get("detail"))
        return ContentPart(type="image_url", image_url=url, detail=detail)
    raise BadRequest(f'{where} must be a "text" part with a text string or an "image_url" part')


def _tool_calls(where: str, value: Any) -> tuple[ToolCall, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise BadRequest(f"{where} must be an array")
    calls = []
    for k, call in enumerate(value):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise BadRequest(f"{where}[{k}] must be an object with a function")
        call_id, name, arguments = call.get("id"), function.get("name"), function.get("arguments")
        if not isinstance(call_id, str) or not isinstance(name, str) or not isinstance(arguments, str):
            raise BadRequest(f"{where}[{k}] must have a string id, function.name and function.arguments")
        calls.append(ToolCall(id=call_id, name=name, arguments=arguments))
    return tuple(calls)


def _optional_string(where: str, value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{where} must be a string")
    return value


def completion_tokens(end: StreamEnd) -> int:
    """The tokens generated: the engine's own count where it reported one, else what the runner counted."""
    return end.completion_tokens if end.completion_tokens is not None else end.tokens


@dataclass(slots=True)
class Block:
    """One block of a collected response: a run of text, of reasoning, or one tool call."""

    kind: Literal["text", "reasoning", "tool_call"]
    texts: list[str] = field(default_factory=list)
    """The block's text, or for a tool call the fragments of its arguments' JSON, in order."""
    call: int | None = None
    id: str | None = None
    name: str | None = None

    def text(self) -> str:
        """The block's text (a tool call's arguments)."""
        return "".join(self.texts)


class Collector:
    """For ``stream: false``: gathers the response's blocks in order, and keeps the terminal event.

    A tool call's fragments go to that call's block even where parallel calls interleave; every other event
    extends the last block when it is of the same kind, or starts one.
    """

    shares_native = False

    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self.end: StreamEnd | None = None
        self.failure: tuple[str, str] | None = None
        self._calls: dict[int, Block] = {}

    def event(self, event: StreamEvent) -> bytes:
        if isinstance(event, StreamDelta | ReasoningDelta):
            kind: Literal["text", "reasoning"] = "text" if isinstance(event, StreamDelta) else "reasoning"
            if not self.blocks or self.blocks[-1].kind != kind:
                self.blocks.append(Block(kind))
            self.blocks[-1].texts.append(event.text)
        elif isinstance(event, ToolCallDelta):
            self._tool_call(event)
        elif isinstance(event, StreamEnd):
            self.end = event
        elif isinstance(event, StreamError):
            self.failure = (event.code, event.message)
        return b""

    def _tool_call(self, event: ToolCallDelta) -> None:
        block = self._calls.get(event.call)
        if block is None:
            block = self._calls[event.call] = Block("tool_call", call=event.call)
            self.blocks.append(block)
        block.id = block.id or event.id
        block.name = block.name or event.name
        block.texts.append(event.arguments)

    def error(self, code: str, message: str, *, id: str | None = None) -> bytes:
        self.failure = (code, message)
        return b""

    def text(self, kind: Literal["text", "reasoning"]) -> str:
        """Every block of ``kind`` joined."""
        return "".join(block.text() for block in self.blocks if block.kind == kind)

    def tool_calls(self) -> list[Block]:
        """The tool call blocks, in the order of their calls."""
        return sorted((block for block in self.blocks if block.kind == "tool_call"), key=lambda b: b.call or 0)
