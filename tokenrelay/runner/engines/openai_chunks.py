"""Sans-I/O reading of an OpenAI-compatible streaming answer: one ``chat.completion.chunk`` (or, for a text
completion, ``text_completion`` chunk) in, typed pieces out.

A chunk's ``choices[0].delta`` may carry reasoning (``reasoning_content``, as vLLM and DeepSeek name it, or
``reasoning``, as others do), the answer's text (``content``) and tool-call fragments (``tool_calls``: each with
its ``index`` (the call's ordinal), an ``id`` and ``function.name`` on the call's first fragment, and the next
piece of ``function.arguments``).  Each becomes one piece, in that order.  ``choices[0].finish_reason`` and a
``usage`` object (the last chunk, when ``stream_options.include_usage`` asked for it) are reported through the
request.
"""

from __future__ import annotations

from typing import Any

import orjson

from tokenrelay.runner.engines.base import EngineError, GenerationRequest, Piece, Reasoning, ToolCallFragment
from tokenrelay.wire.errors import ErrorCode
from tokenrelay.wire.messages import FinishReason

FINISH_REASONS = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,  # the deprecated single-function form
    "content_filter": FinishReason.CONTENT_FILTER,
}
"""The upstream's finish reasons tokenrelay relays; another value is read as ``stop``."""
REASONING_FIELDS = ("reasoning_content", "reasoning")


def chunk_pieces(payload: str, request: GenerationRequest) -> list[Piece]:
    """The pieces of one chunk's JSON text (often none, e.g. a usage-only chunk); usage and finish are reported.

    A text completion's chunk (``text_completion``, for a request with a raw prompt) carries its text in
    ``choices[0].text``; a chat's in ``choices[0].delta``.
    """
    try:
        chunk: Any = orjson.loads(payload)
        _report_usage(chunk.get("usage"), request)
        choices = chunk.get("choices") or []
        if not choices:
            return []
        choice = choices[0]
        if request.prompt is None:
            pieces = _delta_pieces(choice.get("delta") or {})
        else:
            text = _text(choice.get("text"), "text")
            pieces = [text] if text else []
        finish = choice.get("finish_reason")
    except (orjson.JSONDecodeError, AttributeError, TypeError, KeyError) as exc:
        raise EngineError(str(ErrorCode.UPSTREAM_ERROR), f"malformed upstream chunk: {payload[:80]!r}") from exc
    if finish is not None:
        request.report_finish_reason(FINISH_REASONS.get(finish, FinishReason.STOP))
    return pieces


def _report_usage(usage: Any, request: GenerationRequest) -> None:
    if not isinstance(usage, dict):
        return
    if isinstance(prompt := usage.get("prompt_tokens"), int) and prompt >= 0:
        request.report_prompt_tokens(prompt)
    if isinstance(completion := usage.get("completion_tokens"), int) and completion >= 0:
        request.report_completion_tokens(completion)


def _delta_pieces(delta: Any) -> list[Piece]:
    pieces: list[Piece] = []
    for name in REASONING_FIELDS:
        reasoning = _text(delta.get(name), name)
        if reasoning:
            pieces.append(Reasoning(reasoning))
            break  # a server that sends both sends the same text twice
    content = _text(delta.get("content"), "content")
    if content:
        pieces.append(content)
    for call in delta.get("tool_calls") or ():
        pieces.append(_fragment(call))
    return pieces


def _text(value: Any, name: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise EngineError(str(ErrorCode.UPSTREAM_ERROR), f"upstream chunk's {name} is not a string")
    return value


def _fragment(call: Any) -> ToolCallFragment:
    index = call.get("index", 0)
    function = call.get("function") or {}
    call_id, name, arguments = call.get("id"), function.get("name"), function.get("arguments") or ""
    if type(index) is not int or index < 0:
        raise EngineError(str(ErrorCode.UPSTREAM_ERROR), "upstream tool call index is not a non-negative integer")
    if not all(v is None or isinstance(v, str) for v in (call_id, name, arguments)):
        raise EngineError(str(ErrorCode.UPSTREAM_ERROR), "upstream tool call id, name or arguments is not a string")
    return ToolCallFragment(call=index, id=call_id, name=name, arguments=arguments)
