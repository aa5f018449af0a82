"""The body of a new stream, in the OpenAI chat-completions shape the native API accepts (sans-I/O).

tokenrelay owns ``model``, ``messages``, ``max_tokens`` and how the answer is streamed; every other field (the
named :class:`RequestParams` or anything in ``params``) goes to the engine as sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from tokenrelay.wire.content import ChatMessage

OWNED_FIELDS = frozenset(
    {"type", "ref", "prompt", "messages", "model", "max_tokens", "max_completion_tokens", "stream", "stream_options"}
)
"""Fields the client sets itself (from ``start``'s own arguments), so ``params`` may not carry them."""

MessageLike = ChatMessage | Mapping[str, Any]
"""A message as :class:`~tokenrelay.wire.messages.ChatMessage`, or as an OpenAI chat message object."""


class RequestParams(TypedDict, total=False):
    """The request fields most models take, typed; they reach the engine as sent (see docs/api.md)."""

    tools: Sequence[Mapping[str, Any]]
    """Tool definitions: ``{"type": "function", "function": {"name", "description", "parameters"}}``."""
    tool_choice: str | Mapping[str, Any]
    """``auto``, ``none``, ``required`` or ``{"type": "function", "function": {"name": ...}}``."""
    parallel_tool_calls: bool
    temperature: float
    top_p: float
    stop: str | Sequence[str]
    seed: int
    presence_penalty: float
    frequency_penalty: float
    response_format: Mapping[str, Any]
    reasoning_effort: str
    """``low``, ``medium`` or ``high``: how much the model reasons before answering."""
    user: str


def function_tool(name: str, description: str, parameters: Mapping[str, Any]) -> dict[str, Any]:
    """A ``tools`` entry for a function the model may call; ``parameters`` is its arguments' JSON Schema."""
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


def start_command(
    *,
    prompt: str | None = None,
    messages: Sequence[MessageLike] | None = None,
    max_tokens: int | None = None,
    model: str | None = None,
    params: Mapping[str, Any] | None = None,
    fields: RequestParams | None = None,
) -> dict[str, Any]:
    """The control socket's ``start`` command: the owned fields given, then ``params`` and ``fields`` as sent.

    Raises :class:`ValueError` for a field that ``params`` and ``fields`` both give, or one that ``params`` may not
    carry (:data:`OWNED_FIELDS`): a request is never sent with one of two values silently dropped.
    """
    extra = dict(params or {})
    owned = sorted(OWNED_FIELDS & extra.keys())
    if owned:
        raise ValueError(f"params may not carry {', '.join(owned)}: pass them as start's own arguments")
    named: dict[str, Any] = dict(fields or {})
    twice = sorted(extra.keys() & named.keys())
    if twice:
        raise ValueError(f"{', '.join(twice)} given both in params and as an argument")
    command: dict[str, Any] = {"type": "start"}
    if prompt is not None:
        command["prompt"] = prompt
    if messages is not None:
        command["messages"] = [_message(message) for message in messages]
    if max_tokens is not None:
        command["max_tokens"] = max_tokens
    if model is not None:
        command["model"] = model
    command |= {name: _plain(value) for name, value in (extra | named).items()}
    return command


def _message(message: MessageLike) -> Any:
    return message.to_openai() if isinstance(message, ChatMessage) else _plain(message)


def _plain(value: Any) -> Any:
    """``value`` with mappings as dicts and sequences (not strings) as lists, so that it encodes as JSON."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes | bytearray):
        return [_plain(item) for item in value]
    return value
