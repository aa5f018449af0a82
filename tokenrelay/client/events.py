"""What a stream's reader is given: typed content events, the tool calls they assemble into, and the usage.

A stream's content is text (``delta`` events), the model's reasoning (``reasoning``) and tool calls (``tool_call``),
each event with its own SSE id.  :class:`ToolCallAssembler` joins a call's fragments into one :class:`ToolCall`.
Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from tokenrelay.client.errors import ProtocolError
from tokenrelay.wire.content import ToolCall as WireToolCall


@dataclass(frozen=True, slots=True)
class TextDelta:
    """Some of the answer's text; ``index`` is the stream's token count after it (its SSE id's offset)."""

    text: str
    index: int
    ts: float | None = None
    """Wall-clock time (Unix seconds) the runner made its oldest token, when the event said."""


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """Some of the model's reasoning, shown apart from its answer; fields as :class:`TextDelta`."""

    text: str
    index: int
    ts: float | None = None


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A fragment of tool call number ``call`` (0, 1, ... in the stream).

    The call's first fragment carries its ``id`` and ``name``; ``arguments`` is the next piece of the arguments'
    JSON text.  :attr:`Stream.tool_calls <tokenrelay.client.Stream.tool_calls>` holds the calls assembled so far.
    """

    call: int
    arguments: str
    index: int
    id: str | None = None
    name: str | None = None
    ts: float | None = None


ContentEvent = TextDelta | ReasoningDelta | ToolCallDelta
"""One content event of a stream, as :meth:`Stream.events <tokenrelay.client.Stream.events>` yields it."""


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of a finished stream.

    ``tokens`` is what tokenrelay delivered (text, reasoning and tool calls together); ``completion_tokens`` and
    ``prompt_tokens`` are the engine's own counts, ``None`` when it gave none.
    """

    tokens: int
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call the model made, its fragments joined.

    ``id`` and ``name`` are ``None`` only when the stream was read from a cursor after the call's first fragment;
    ``arguments`` is the JSON text received so far (whole once the stream finished).
    """

    call: int
    id: str | None
    name: str | None
    arguments: str

    def parsed_arguments(self) -> Any:
        """The arguments as JSON values; :class:`ProtocolError` when they are not (yet) whole JSON."""
        try:
            return orjson.loads(self.arguments or "{}")
        except orjson.JSONDecodeError as exc:
            raise ProtocolError(f"tool call {self.call} ({self.name}): arguments are not JSON: {exc}") from None

    def to_wire(self) -> WireToolCall:
        """The call as an assistant message carries it back to the model (needs its id and name)."""
        if self.id is None or self.name is None:
            raise ValueError(f"tool call {self.call} was read without its first fragment: its id and name are unknown")
        return WireToolCall(id=self.id, name=self.name, arguments=self.arguments)


@dataclass(frozen=True, slots=True)
class Finished:
    """The last event :meth:`Stream.events <tokenrelay.client.Stream.events>` yields: how the stream ended.

    ``finish_reason`` is ``stop``, ``length``, ``tool_calls``, ``content_filter``, ``cancelled`` or ``error``.
    """

    finish_reason: str
    usage: Usage
    tool_calls: tuple[ToolCall, ...] = ()
    ttft_ms: float | None = None


StreamEvent = ContentEvent | Finished
"""Everything :meth:`Stream.events <tokenrelay.client.Stream.events>` yields."""


@dataclass(slots=True)
class ToolCallAssembler:
    """Joins tool-call fragments, fed in order and each once, into whole calls (in the order they began)."""

    _calls: dict[int, list[str]] = field(default_factory=dict)
    _heads: dict[int, tuple[str | None, str | None]] = field(default_factory=dict)

    def add(self, fragment: ToolCallDelta) -> None:
        """Append one fragment to its call (the first one of a call names it)."""
        parts = self._calls.setdefault(fragment.call, [])
        known_id, known_name = self._heads.get(fragment.call, (None, None))
        self._heads[fragment.call] = (known_id or fragment.id, known_name or fragment.name)
        if fragment.arguments:
            parts.append(fragment.arguments)

    def calls(self) -> tuple[ToolCall, ...]:
        """Every call so far, in the order its first fragment arrived."""
        for parts in self._calls.values():
            if len(parts) > 1:
                parts[:] = ["".join(parts)]  # joined once, so asking again and again stays cheap
        return tuple(
            ToolCall(call=call, id=self._heads[call][0], name=self._heads[call][1], arguments="".join(parts))
            for call, parts in self._calls.items()
        )
