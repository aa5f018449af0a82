"""Sans-I/O validation of a new stream's body (``POST /v1/streams``, the WS ``start`` message, and the compatible
APIs' requests a streamer sends for admission), and of a text completion (:func:`parse_completion_request`).

The body is the OpenAI chat-completions shape: ``messages`` (or a bare ``prompt``), ``model``, ``max_tokens`` (or
``max_completion_tokens``), and every other field in ``params`` (:mod:`tokenrelay.gateway.params`).  Messages have
the roles ``system``, ``developer``, ``user``, ``assistant`` (which may carry ``tool_calls``) and ``tool`` (which
answers an earlier call by its ``tool_call_id``); content is a string or an array of ``text`` and ``image_url``
parts.  Every refusal is ``bad_request`` naming the field, except an image over its size limit
(``payload_too_large``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tokenrelay.gateway.content import MessageLimits, parse_message
from tokenrelay.gateway.params import parse_params
from tokenrelay.runtime.config import (
    DEFAULT_MAX_CONTENT_PARTS,
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_MESSAGES,
    DEFAULT_MAX_PROMPT_CHARS,
    DEFAULT_MAX_TOOLS,
    GatewayConfig,
)
from tokenrelay.wire.content import ChatMessage, JsonObject
from tokenrelay.wire.errors import BadRequest, PayloadTooLarge

MAX_MODEL_CHARS = 256
DEFAULT_COMPLETION_MAX_TOKENS = 16
"""The ``max_tokens`` of a text completion that gives none: OpenAI's completions API default (a short completion,
as an editor's autocomplete asks for)."""
JOB_HEADROOM_BYTES = 1024
"""Room kept under the broker's largest message for what the offer adds to an encoded job (its deadline)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamRequest:
    """A validated request for a new stream."""

    messages: tuple[ChatMessage, ...]
    max_tokens: int
    """The client's limit, else the operator's ``default_max_tokens``, else the hard cap ``max_tokens_limit``."""
    model: str | None
    params: JsonObject = field(default_factory=dict)
    """Every field of the request tokenrelay does not own, as sent (see :mod:`tokenrelay.gateway.params`)."""
    max_tokens_set: bool = True
    """``False`` when neither the client nor the operator set a limit: the engine ends at its own, and
    :attr:`max_tokens` is only the hard cap (:attr:`~tokenrelay.wire.messages.JobRequest.max_tokens_set`)."""
    prompt: str | None = None
    """A text completion's raw prompt (:attr:`messages` empty); ``None``: a chat."""
    detached: bool = False
    """A background response: no reader needed (:attr:`~tokenrelay.wire.messages.JobRequest.detached`)."""
    stored: bool = False
    """A stored response: the runner keeps its events (:attr:`~tokenrelay.wire.messages.JobRequest.stored`)."""


def parse_stream_request(
    obj: dict[str, Any],
    *,
    max_tokens_limit: int,
    default_max_tokens: int | None = None,
    max_messages: int = DEFAULT_MAX_MESSAGES,
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS,
    max_tools: int = DEFAULT_MAX_TOOLS,
    max_content_parts: int = DEFAULT_MAX_CONTENT_PARTS,
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
) -> StreamRequest:
    """Validate ``{"messages": [...] | "prompt": "...", "max_tokens"?, "model"?, ...params}``.

    ``max_tokens`` (or ``max_completion_tokens``) must be an integer in ``1..max_tokens_limit``; a request that
    gives neither gets ``default_max_tokens`` (at most ``max_tokens_limit``) or, without one, the engine's own
    limit under the hard cap ``max_tokens_limit`` (:attr:`StreamRequest.max_tokens_set` ``False``); at most
    ``max_messages`` messages, whose text (tool call arguments included) holds at most ``max_prompt_chars``
    characters together, with at most ``max_content_parts`` parts together; at most ``max_tools`` tools.  Over any
    of these is ``bad_request``; an image of more than ``max_image_bytes`` decoded bytes is ``payload_too_large``.
    """
    limits = MessageLimits(max_content_parts=max_content_parts, max_image_bytes=max_image_bytes)
    messages = _messages(obj, max_messages, limits)
    chars = sum(len(m.text()) + sum(len(c.arguments) for c in m.tool_calls) for m in messages)
    if chars > max_prompt_chars:
        raise BadRequest(f"the messages hold {chars} characters; at most {max_prompt_chars} are allowed")
    max_tokens = _max_tokens(obj, max_tokens_limit)
    if max_tokens is None and default_max_tokens is not None:
        max_tokens = min(default_max_tokens, max_tokens_limit)
    return StreamRequest(
        messages=messages,
        max_tokens=max_tokens_limit if max_tokens is None else max_tokens,
        max_tokens_set=max_tokens is not None,
        model=_model(obj.get("model")),
        params=parse_params(obj, max_tools=max_tools),
    )


def stream_request(config: GatewayConfig, obj: dict[str, Any]) -> StreamRequest:
    """:func:`parse_stream_request` with a gateway's limits."""
    return parse_stream_request(
        obj,
        default_max_tokens=config.default_max_tokens,
        max_tokens_limit=config.max_tokens_limit,
        max_messages=config.max_messages,
        max_prompt_chars=config.max_prompt_chars,
        max_tools=config.max_tools,
        max_content_parts=config.max_content_parts,
        max_image_bytes=config.max_image_bytes,
    )


def parse_completion_request(
    obj: dict[str, Any],
    *,
    max_tokens_limit: int,
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS,
    max_tools: int = DEFAULT_MAX_TOOLS,
) -> StreamRequest:
    """Validate a text completion (``POST /v1/completions``): ``{"prompt": "...", "max_tokens"?, "model"?, ...}``.

    ``prompt`` is one string (it may be empty, as at the start of a file), continued as is, never made a chat
    message; ``suffix`` (fill-in-the-middle) is a string or ``null`` and stays in ``params`` with every other field
    tokenrelay does not own.  The prompt and the suffix hold at most ``max_prompt_chars`` characters together.
    ``max_tokens`` is in ``1..max_tokens_limit``, :data:`DEFAULT_COMPLETION_MAX_TOKENS` (at most
    ``max_tokens_limit``) when not given, as OpenAI's completions API defaults it.  Any refusal is ``bad_request``.
    """
    prompt, suffix = obj.get("prompt"), obj.get("suffix")
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string")
    if suffix is not None and not isinstance(suffix, str):
        raise BadRequest("suffix must be a string")
    chars = len(prompt) + len(suffix or "")
    if chars > max_prompt_chars:
        raise BadRequest(f"the prompt and suffix hold {chars} characters; at most {max_prompt_chars} are allowed")
    given = _positive("max_tokens", obj.get("max_tokens"), max_tokens_limit)
    return StreamRequest(
        messages=(),
        prompt=prompt,
        max_tokens=min(DEFAULT_COMPLETION_MAX_TOKENS, max_tokens_limit) if given is None else given,
        model=_model(obj.get("model")),
        params=parse_params(obj, max_tools=max_tools),
    )


def completion_request(config: GatewayConfig, obj: dict[str, Any]) -> StreamRequest:
    """:func:`parse_completion_request` with a gateway's limits."""
    return parse_completion_request(
        obj, max_tokens_limit=config.max_tokens_limit, max_prompt_chars=config.max_prompt_chars,
        max_tools=config.max_tools,
    )  # fmt: skip


def check_job_bytes(job_bytes: int, *, max_payload_bytes: int) -> None:
    """Refuse a job the broker cannot carry: ``payload_too_large`` when ``job_bytes`` (its encoded size) and
    :data:`JOB_HEADROOM_BYTES` exceed ``max_payload_bytes`` (the NATS server's ``max_payload``)."""
    if job_bytes + JOB_HEADROOM_BYTES > max_payload_bytes:
        raise PayloadTooLarge(
            f"the request makes a job of {job_bytes} bytes; NATS carries at most {max_payload_bytes} bytes in one "
            f"message (its max_payload), {JOB_HEADROOM_BYTES} of them kept for the offer: send smaller images or "
            "fewer messages"
        )


def _messages(obj: dict[str, Any], max_messages: int, limits: MessageLimits) -> tuple[ChatMessage, ...]:
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
    parsed: list[ChatMessage] = []
    calls: set[str] = set()  # ids of the tool calls made so far: a tool message answers one of them
    parts = 0
    for i, item in enumerate(messages):
        message = parse_message(i, item, limits)
        if message.role == "tool" and message.tool_call_id not in calls:
            raise BadRequest(f"messages[{i}].tool_call_id {message.tool_call_id!r} answers no earlier tool call")
        calls.update(call.id for call in message.tool_calls)
        parts += 0 if isinstance(message.content, str) else len(message.content)
        if parts > limits.max_content_parts:
            raise BadRequest(f"more than {limits.max_content_parts} content parts; at most that many are allowed")
        parsed.append(message)
    return tuple(parsed)


def _max_tokens(obj: dict[str, Any], limit: int) -> int | None:
    """The limit the client gave (``None``: none)."""
    given = _positive("max_tokens", obj.get("max_tokens"), limit)
    # max_completion_tokens is the newer name of the same limit; it wins where a client sends both.
    newer = _positive("max_completion_tokens", obj.get("max_completion_tokens"), limit)
    return newer if newer is not None else given


def _positive(name: str, value: Any, limit: int) -> int | None:
    if value is None:
        return None
    if type(value) is not int:
        raise BadRequest(f"{name} must be an integer")
    if value < 1:
        raise BadRequest(f"{name} must be at least 1")
    if value > limit:
        raise BadRequest(f"{name} must be at most {limit}")
    return value


def _model(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_MODEL_CHARS:
        raise BadRequest(f"model must be a non-empty string of at most {MAX_MODEL_CHARS} characters")
    return value
