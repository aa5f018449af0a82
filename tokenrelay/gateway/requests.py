"""Sans-I/O validation of a new stream's body (``POST /v1/streams`` and the WS ``start`` message)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tokenrelay.runtime.config import DEFAULT_MAX_MESSAGES, DEFAULT_MAX_PROMPT_CHARS, GatewayConfig
from tokenrelay.wire.errors import BadRequest
from tokenrelay.wire.messages import ChatMessage

ROLES = frozenset({"system", "user", "assistant"})
MAX_MODEL_CHARS = 256


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamRequest:
    """A validated request for a new stream."""

    messages: tuple[ChatMessage, ...]
    max_tokens: int
    model: str | None


def parse_stream_request(
    obj: dict[str, Any],
    *,
    default_max_tokens: int,
    max_tokens_limit: int,
    max_messages: int = DEFAULT_MAX_MESSAGES,
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS,
) -> StreamRequest:
    """Validate ``{"messages": [...] | "prompt": "...", "max_tokens"?, "model"?}``.

    ``max_tokens`` must be an integer in ``1..max_tokens_limit``; at most ``max_messages``
    messages, whose contents hold at most ``max_prompt_chars`` characters together; unknown
    fields are ignored.
    """
    messages = _messages(obj, max_messages)
    chars = sum(len(m.text()) for m in messages)
    if chars > max_prompt_chars:
        raise BadRequest(f"the messages hold {chars} characters; at most {max_prompt_chars} are allowed")
    return StreamRequest(
        messages=messages,
        max_tokens=_max_tokens(obj.get("max_tokens"), default_max_tokens, max_tokens_limit),
        model=_model(obj.get("model")),
    )


def stream_request(config: GatewayConfig, obj: dict[str, Any]) -> StreamRequest:
    """:func:`parse_stream_request` with a gateway's limits."""
    return parse_stream_request(
        obj,
        default_max_tokens=config.default_max_tokens,
        max_tokens_limit=config.max_tokens_limit,
        max_messages=config.max_messages,
        max_prompt_chars=config.max_prompt_chars,
    )


def _messages(obj: dict[str, Any], max_messages: int) -> tuple[ChatMessage, ...]:
    messages, prompt = obj.get("messages"), obj.get("prompt")
    if messages is not None and prompt is not None:
        raise BadRequest("give either messages or prompt, not both")
    if prompt is not None:
        if not isinstance(prompt, str) or not prompt:
            raise BadRequest("prompt must be a non-empty string")
        return (ChatMessage(role="user", content=prompt),)
    if messages is None:
        raise BadRequest("messages or prompt is required")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty array")
    if len(messages) > max_messages:
        raise BadRequest(f"{len(messages)} messages; at most {max_messages} are allowed")
    return tuple(_message(i, m) for i, m in enumerate(messages))


def _message(i: int, item: Any) -> ChatMessage:
    if not isinstance(item, dict):
        raise BadRequest(f"messages[{i}] must be an object")
    role, content = item.get("role"), item.get("content")
    if not isinstance(role, str) or role not in ROLES:
        raise BadRequest(f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}")
    if not isinstance(content, str):
        raise BadRequest(f"messages[{i}].content must be a string")
    return ChatMessage(role=role, content=content)


def _max_tokens(value: Any, default: int, limit: int) -> int:
    if value is None:
        return min(default, limit)
    if type(value) is not int:
        raise BadRequest("max_tokens must be an integer")
    if value < 1:
        raise BadRequest("max_tokens must be at least 1")
    if value > limit:
        raise BadRequest(f"max_tokens must be at most {limit}")
    return value


def _model(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_MODEL_CHARS:
        raise BadRequest(f"model must be a non-empty string of at most {MAX_MODEL_CHARS} characters")
    return value
