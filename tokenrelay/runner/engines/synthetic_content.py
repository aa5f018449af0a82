"""The synthetic engine's typed content, as pure functions of the request: a reasoning prelude, one tool call
whose arguments satisfy the first tool's schema, and text cut at the first stop sequence.

Everything here is deterministic (a hash of the prompt), so tests can compute what a stream must contain.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import orjson

from tokenrelay.runner.engines.base import Reasoning, ToolCallFragment
from tokenrelay.wire.content import ChatMessage, JsonObject

REASONING_TOKENS = {"minimal": 2, "low": 4, "medium": 8, "high": 16}
"""Tokens of the reasoning prelude for each ``reasoning_effort`` (another value: ``medium``'s)."""
DEFAULT_REASONING_TOKENS = REASONING_TOKENS["medium"]
REASONING_WORDS = ("Let", " me", " think", " about", " the", " request", " step", " by", " step", ".")
ARGUMENT_FRAGMENT_CHARS = 8
"""A tool call's arguments are streamed in fragments of this many characters (each one token)."""
STRING_VALUE = "synthetic"
"""What a required ``string`` property without an ``enum`` is given."""
INTEGER_VALUE = 42
NUMBER_VALUE = 1.5
MAX_SCHEMA_DEPTH = 8
"""Nested ``object`` schemas deeper than this are given ``{}`` (a bound on work for a self-referencing schema)."""


def reasoning_tokens(params: JsonObject) -> int:
    """How many reasoning tokens precede the answer: 0 unless reasoning is asked for.

    ``reasoning_effort`` (a string, as OpenAI's chat API takes it) or ``reasoning`` (an object, as OpenRouter and
    the Responses API take it; its ``effort`` key is read) ask for it; an effort of ``"none"`` does not.
    """
    effort = params.get("reasoning_effort")
    reasoning = params.get("reasoning")
    if effort is None and isinstance(reasoning, dict):
        effort = reasoning.get("effort", "medium")
    if effort is None or effort == "none":
        return 0
    return REASONING_TOKENS.get(effort, DEFAULT_REASONING_TOKENS) if isinstance(effort, str) else 0


def reasoning_prelude(tokens: int) -> Iterator[Reasoning]:
    """``tokens`` reasoning tokens (the same words every time)."""
    for i in range(tokens):
        yield Reasoning(REASONING_WORDS[i % len(REASONING_WORDS)])


def tool_to_call(params: JsonObject, messages: Sequence[ChatMessage]) -> JsonObject | None:
    """The ``function`` object of the first tool, when the engine should call it now; ``None`` to answer in text.

    A tool is called when ``tools`` has one, ``tool_choice`` is not ``"none"`` and no tool result follows the last
    user turn (once a tool has answered, the model answers in text).
    """
    tools = params.get("tools")
    if not isinstance(tools, list) or not tools or params.get("tool_choice") == "none":
        return None
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    if any(m.role == "tool" for m in messages[last_user + 1 :]):
        return None
    first = tools[0]
    function = first.get("function") if isinstance(first, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        return None
    return function


def call_id(prompt: str, name: str) -> str:
    """The synthetic call's id: ``call_`` and a hash of the prompt and the function's name."""
    return "call_" + hashlib.sha256(f"{prompt}\0{name}".encode()).hexdigest()[:24]


def arguments_for(schema: Any, *, depth: int = 0) -> Any:
    """A value of the type ``schema`` declares; for an object, its ``required`` properties each given one."""
    if not isinstance(schema, dict):
        return STRING_VALUE
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        if depth >= MAX_SCHEMA_DEPTH:
            return {}
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        required = schema.get("required")
        names = [n for n in required if isinstance(n, str)] if isinstance(required, list) else []
        return {name: arguments_for(properties.get(name), depth=depth + 1) for name in names}
    return {"integer": INTEGER_VALUE, "number": NUMBER_VALUE, "boolean": True, "array": [], "null": None}.get(
        kind if isinstance(kind, str) else "string", STRING_VALUE
    )


def tool_call_fragments(prompt: str, function: JsonObject) -> list[ToolCallFragment]:
    """Call 0 of ``function``: a first fragment with its id and name, then its arguments' JSON in short pieces."""
    name = function["name"]
    arguments = orjson.dumps(arguments_for(function.get("parameters", {"type": "object"}))).decode()
    fragments = [ToolCallFragment(call=0, id=call_id(prompt, name), name=name)]
    for start in range(0, len(arguments), ARGUMENT_FRAGMENT_CHARS):
        fragments.append(ToolCallFragment(call=0, arguments=arguments[start : start + ARGUMENT_FRAGMENT_CHARS]))
    return fragments


def stop_sequences(params: JsonObject) -> tuple[str, ...]:
    """The request's ``stop`` (a string or a list of strings), empty ones left out."""
    stop = params.get("stop")
    if isinstance(stop, str):
        return (stop,) if stop else ()
    if isinstance(stop, list):
        return tuple(s for s in stop if isinstance(s, str) and s)
    return ()


def cut_at_stop(tokens: Sequence[str], stops: Sequence[str]) -> tuple[list[str], bool]:
    """``tokens`` up to (not including) the first stop sequence in their text, and whether one was found.

    The token a stop sequence begins in is cut to what precedes it (left out when nothing does).
    """
    text = "".join(tokens)
    found = [at for at in (text.find(stop) for stop in stops) if at >= 0]
    if not found:
        return list(tokens), False
    end, kept, at = min(found), [], 0
    for token in tokens:
        if at + len(token) > end:
            if end > at:
                kept.append(token[: end - at])
            break
        kept.append(token)
        at += len(token)
    return kept, True
