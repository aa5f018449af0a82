"""A stored response's input as the Responses API lists it (``GET /v1/responses/{id}/input_items``), sans-I/O.

The request's input items were made chat messages when it was admitted (``responses_request.py``); here they are
turned back into items: a ``message`` per message (``input_text`` / ``input_image`` parts, ``output_text`` for the
assistant's), a ``function_call`` per tool call an assistant message carries, a ``function_call_output`` per tool
message. Reasoning items were never kept (they are left out of the prompt), so they are not listed. Each item's id is
``in_<stream id>_<position>``, the same on every call.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenrelay.wire.content import ChatMessage, ContentPart, JsonObject
from tokenrelay.wire.errors import BadRequest

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


@dataclass(frozen=True, slots=True)
class Page:
    """Which items a listing asks for: at most ``limit``, ``desc`` (newest first) or ``asc``, after item ``after``."""

    limit: int = DEFAULT_LIMIT
    order: str = "desc"
    after: str | None = None

    @classmethod
    def parse(cls, limit: str | None, order: str | None, after: str | None) -> Page:
        """The query's ``limit`` (1..100), ``order`` and ``after``; ``bad_request`` naming the field otherwise."""
        try:
            count = DEFAULT_LIMIT if limit is None else int(limit)
        except ValueError:
            raise BadRequest("limit must be an integer") from None
        if not 1 <= count <= MAX_LIMIT:
            raise BadRequest(f"limit must be between 1 and {MAX_LIMIT}, got {count}")
        if order not in (None, "asc", "desc"):
            raise BadRequest(f'order must be "asc" or "desc", got {order!r}')
        return cls(limit=count, order=order or "desc", after=after)


def input_items(stream_id: str, messages: tuple[ChatMessage, ...]) -> list[JsonObject]:
    """The items ``messages`` were made from, in order, each with its id."""
    items: list[JsonObject] = []
    for message in messages:
        items.extend(_items(message))
    return [{"id": f"in_{stream_id}_{i}", **item} for i, item in enumerate(items)]


def listing(items: list[JsonObject], page: Page) -> JsonObject:
    """One page of ``items`` as OpenAI lists them (``bad_request`` for an ``after`` that names no item)."""
    ordered = items if page.order == "asc" else items[::-1]
    if page.after is not None:
        ids = [item["id"] for item in ordered]
        if page.after not in ids:
            raise BadRequest(f"after names no input item of this response: {page.after!r}")
        ordered = ordered[ids.index(page.after) + 1 :]
    data = ordered[: page.limit]
    return {
        "object": "list", "data": data, "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None, "has_more": len(ordered) > len(data),
    }  # fmt: skip


def _items(message: ChatMessage) -> list[JsonObject]:
    if message.role == "tool":
        return [{"type": "function_call_output", "call_id": message.tool_call_id or "", "output": _text(message)}]
    items: list[JsonObject] = []
    if message.content or not message.tool_calls:
        output = message.role == "assistant"
        content = [_part(part, output=output) for part in _parts(message.content)]
        items.append({"type": "message", "role": message.role, "status": "completed", "content": content})
    items.extend(
        {"type": "function_call", "call_id": c.id, "name": c.name, "arguments": c.arguments, "status": "completed"}
        for c in message.tool_calls
    )
    return items


def _parts(content: str | tuple[ContentPart, ...]) -> tuple[ContentPart, ...]:
    return (ContentPart(type="text", text=content),) if isinstance(content, str) else content


def _part(part: ContentPart, *, output: bool) -> JsonObject:
    if part.type == "image_url":
        return {"type": "input_image", "image_url": part.image_url, "detail": part.detail or "auto"}
    if output:
        return {"type": "output_text", "text": part.text or "", "annotations": []}
    return {"type": "input_text", "text": part.text or ""}


def _text(message: ChatMessage) -> str:
    return "".join(part.text or "" for part in _parts(message.content))
