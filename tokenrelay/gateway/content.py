"""Sans-I/O checks of one message of a new stream's conversation, in the OpenAI chat shape.

=============  ================================================  ==============================================
role           content                                           besides
=============  ================================================  ==============================================
``system``     a string or ``text`` parts                        ``name``?
``developer``  a string or ``text`` parts                        ``name``?
``user``       a string or ``text`` and ``image_url`` parts      ``name``?
``assistant``  a string, ``text`` parts, or ``null`` with calls  ``tool_calls``? ``name``?
``tool``       a string or ``text`` parts                        ``tool_call_id`` (required)
=============  ================================================  ==============================================

An image is ``{"type": "image_url", "image_url": {"url", "detail"?}}`` whose ``url`` is an ``http(s)`` URL or a
``data:image/...;base64,`` URL of at most ``max_image_bytes`` decoded bytes (more: ``payload_too_large``).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tokenrelay.runtime.config import DEFAULT_MAX_CONTENT_PARTS, DEFAULT_MAX_IMAGE_BYTES
from tokenrelay.wire.content import ChatMessage, ContentPart, ToolCall
from tokenrelay.wire.errors import BadRequest, PayloadTooLarge

ROLES = ("system", "developer", "user", "assistant", "tool")
IMAGE_ROLES = frozenset({"user"})
DETAILS = frozenset({"low", "high", "auto"})
_DATA_URL = re.compile(r"data:image/[A-Za-z0-9.+-]+;base64,", re.ASCII)


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageLimits:
    """What one request's messages may hold."""

    max_content_parts: int = DEFAULT_MAX_CONTENT_PARTS
    """Content parts of all messages together; more is ``bad_request``."""
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    """Decoded bytes of one ``data:`` URL image; more is ``payload_too_large``."""


def parse_message(i: int, item: Any, limits: MessageLimits) -> ChatMessage:
    """``messages[i]`` as a :class:`ChatMessage`, or ``bad_request`` naming what is wrong with it."""
    where = f"messages[{i}]"
    if not isinstance(item, dict):
        raise BadRequest(f"{where} must be an object")
    role = item.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise BadRequest(f"{where}.role must be one of {', '.join(ROLES)}")
    tool_calls = _tool_calls(where, role, item.get("tool_calls"))
    content = _content(where, role, item.get("content"), limits, has_calls=bool(tool_calls))
    return ChatMessage(
        role=role,
        content=content,
        tool_calls=tool_calls,
        tool_call_id=_tool_call_id(where, role, item.get("tool_call_id")),
        name=_name(where, item.get("name")),
    )


def _content(
    where: str, role: str, value: Any, limits: MessageLimits, *, has_calls: bool
) -> str | tuple[ContentPart, ...]:
    if isinstance(value, str):
        return value
    if value is None:
        if role == "assistant" and has_calls:
            return ""
        raise BadRequest(f"{where}.content is required" + (" (or tool_calls)" if role == "assistant" else ""))
    if not isinstance(value, list):
        raise BadRequest(f"{where}.content must be a string or an array of content parts")
    if not value:
        raise BadRequest(f"{where}.content must not be an empty array")
    if len(value) > limits.max_content_parts:
        raise BadRequest(f"{where}.content has {len(value)} parts; at most {limits.max_content_parts} are allowed")
    return tuple(_part(f"{where}.content[{j}]", role, part, limits) for j, part in enumerate(value))


def _part(where: str, role: str, part: Any, limits: MessageLimits) -> ContentPart:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise BadRequest(f"{where}.text must be a string")
        return ContentPart(type="text", text=text)
    if kind == "image_url":
        if role not in IMAGE_ROLES:
            raise BadRequest(f"{where}: only a user message may carry images")
        return _image(where, part.get("image_url"), limits.max_image_bytes)
    allowed = '"text" or "image_url"' if role in IMAGE_ROLES else '"text"'
    raise BadRequest(f"{where} must be an object whose type is {allowed}")


def _image(where: str, value: Any, max_image_bytes: int) -> ContentPart:
    if not isinstance(value, dict):
        raise BadRequest(f"{where}.image_url must be an object with a url")
    url, detail = value.get("url"), value.get("detail")
    if not isinstance(url, str):
        raise BadRequest(f"{where}.image_url.url must be a string")
    if detail is not None and detail not in DETAILS:
        raise BadRequest(f"{where}.image_url.detail must be one of {', '.join(sorted(DETAILS))}")
    if url.startswith("data:"):
        _check_data_url(f"{where}.image_url.url", url, max_image_bytes)
    else:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise BadRequest(f"{where}.image_url.url must be an http(s) URL or a data:image/...;base64, URL")
    return ContentPart(type="image_url", image_url=url, detail=detail)


def _check_data_url(where: str, url: str, max_image_bytes: int) -> None:
    prefix = _DATA_URL.match(url)
    if prefix is None:
        raise BadRequest(f"{where} must be a data:image/<type>;base64, URL")
    data = url[prefix.end() :]
    # The decoded size is known from the length: refuse an oversize image before decoding it.
    size = len(data) * 3 // 4 - data[-2:].count("=")
    if size > max_image_bytes:
        raise PayloadTooLarge(f"{where} holds an image of {size} bytes; at most {max_image_bytes} are allowed")
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{where} is not valid base64") from None


def _tool_calls(where: str, role: str, value: Any) -> tuple[ToolCall, ...]:
    if value is None:
        return ()
    if role != "assistant":
        raise BadRequest(f"{where}.tool_calls: only an assistant message may carry tool calls")
    if not isinstance(value, list) or not value:
        raise BadRequest(f"{where}.tool_calls must be a non-empty array")
    return tuple(_tool_call(f"{where}.tool_calls[{k}]", call) for k, call in enumerate(value))


def _tool_call(where: str, call: Any) -> ToolCall:
    if not isinstance(call, dict) or call.get("type") != "function":
        raise BadRequest(f'{where} must be an object with "type": "function"')
    call_id, function = call.get("id"), call.get("function")
    if not isinstance(call_id, str) or not call_id:
        raise BadRequest(f"{where}.id must be a non-empty string")
    if not isinstance(function, dict):
        raise BadRequest(f"{where}.function must be an object")
    name, arguments = function.get("name"), function.get("arguments")
    if not isinstance(name, str) or not name:
        raise BadRequest(f"{where}.function.name must be a non-empty string")
    if not isinstance(arguments, str):
        raise BadRequest(f"{where}.function.arguments must be a string (the arguments' JSON text)")
    return ToolCall(id=call_id, name=name, arguments=arguments)


def _tool_call_id(where: str, role: str, value: Any) -> str | None:
    if role != "tool":
        if value is not None:
            raise BadRequest(f"{where}.tool_call_id: only a tool message answers a tool call")
        return None
    if value is None:
        raise BadRequest(f"{where}.tool_call_id is required for a tool message")
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{where}.tool_call_id must be a non-empty string")
    return value


def _name(where: str, value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise BadRequest(f"{where}.name must be a non-empty string")
    return value
