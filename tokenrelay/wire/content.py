"""What a conversation is made of, as every request carries it: messages, content parts, tool calls (sans-I/O).

The canonical form is the OpenAI chat-completions shape that every API's requests map to; jobs and start requests
(:mod:`tokenrelay.wire.messages`) carry it between processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

JsonObject = dict[str, Any]
"""A JSON object carried as the client sent it (the codec checks only that it is an object)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ContentPart:
    """One part of a message's content: ``text``, or an ``image_url`` (a URL; a ``data:`` URL carries base64)."""

    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: str | None = None
    detail: str | None = None
    """An image's requested detail (``low``, ``high``, ``auto``), as the client gave it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCall:
    """A tool call an assistant turn made: its id, the function's name and the arguments' JSON text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatMessage:
    """One message of the conversation a generation continues, in the OpenAI chat shape every dialect maps to.

    ``content`` is a string or a tuple of parts; an ``assistant`` turn may carry ``tool_calls`` (and empty content);
    a ``tool`` message answers the call named by ``tool_call_id``.
    """

    role: str
    content: str | tuple[ContentPart, ...] = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None

    def text(self) -> str:
        """The message's text: its string content, or its text parts joined (images carry none)."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content if part.type == "text")

    def to_openai(self) -> JsonObject:
        """The message as an OpenAI chat-completions request carries it (fields left out where empty)."""
        out: JsonObject = {"role": self.role}
        if isinstance(self.content, str):
            out["content"] = self.content if self.content or not self.tool_calls else None
        else:
            out["content"] = [_part_to_openai(part) for part in self.content]
        if self.tool_calls:
            out["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in self.tool_calls
            ]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            out["name"] = self.name
        return out


def _part_to_openai(part: ContentPart) -> JsonObject:
    if part.type == "text":
        return {"type": "text", "text": part.text or ""}
    image: JsonObject = {"url": part.image_url or ""}
    if part.detail is not None:
        image["detail"] = part.detail
    return {"type": "image_url", "image_url": image}
