"""Sans-I/O state of one stream as a reader sees it, and the reconnect policy.

:class:`StreamTracker` takes the decoded SSE events of the native API (``start``, ``delta``,
``reasoning``, ``tool_call``, ``stop``, ``error``; see docs/api.md) and keeps the text, the
reasoning, the tool calls, the resume cursor and the final state.  :class:`ReconnectPolicy`
decides how long to wait before the next reconnect and when to give up.  Neither does I/O;
the :class:`~tokenrelay.client.stream.Stream` moves bytes.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from typing import Any, TypeVar

import orjson

from tokenrelay.client.errors import ProtocolError
from tokenrelay.client.events import (
    ContentEvent,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolCallAssembler,
    ToolCallDelta,
    Usage,
)
from tokenrelay.client.sse import ServerSentEvent
from tokenrelay.wire.errors import ErrorCode, TokenRelayError, from_code

T = TypeVar("T")

DEFAULT_MAX_RECONNECTS = 5
DEFAULT_RECONNECT_DELAY_S = 0.25
DEFAULT_MAX_RECONNECT_DELAY_S = 5.0


class Phase(enum.Enum):
    """Where a stream is, from the reader's side."""

    OPEN = "open"
    """Events are expected on the current connection."""
    INTERRUPTED = "interrupted"
    """The connection ended before a terminal event: reconnect with the cursor."""
    FINISHED = "finished"
    """A ``stop`` event arrived."""
    FAILED = "failed"
    """An ``error`` event arrived."""


_TRANSITIONS: dict[tuple[Phase, str], Phase] = {
    (Phase.OPEN, "start"): Phase.OPEN,
    (Phase.OPEN, "delta"): Phase.OPEN,
    (Phase.OPEN, "reasoning"): Phase.OPEN,
    (Phase.OPEN, "tool_call"): Phase.OPEN,
    (Phase.OPEN, "stop"): Phase.FINISHED,
    (Phase.OPEN, "error"): Phase.FAILED,
    (Phase.OPEN, "interrupt"): Phase.INTERRUPTED,
    (Phase.OPEN, "resume"): Phase.OPEN,
    (Phase.INTERRUPTED, "interrupt"): Phase.INTERRUPTED,
    (Phase.INTERRUPTED, "resume"): Phase.OPEN,
}
_CONTENT_EVENTS = frozenset({"delta", "reasoning", "tool_call"})
_EVENTS = _CONTENT_EVENTS | {"start", "stop", "error"}


class StreamTracker:
    """Text, reasoning, tool calls, cursor and outcome of one stream, fed one SSE event at a time.

    ``tokens`` is the number of tokens delivered so far (the last content event's ``index``: text,
    reasoning and tool calls all count), then the ``stop`` event's count.  A content event whose
    ``index`` is not past ``tokens`` repeats one already held and is dropped, so no text,
    reasoning or tool-call fragment is ever held twice, wherever a resume began.
    """

    def __init__(self, *, cursor: str | None = None) -> None:
        self.phase = Phase.OPEN
        self.cursor = cursor
        self.tokens = _offset(cursor)
        self.model: str | None = None
        self.finish_reason: str | None = None
        self.ttft_ms: float | None = None
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.error: TokenRelayError | None = None
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._tool_calls = ToolCallAssembler()

    @property
    def text(self) -> str:
        """The answer's text received so far."""
        return _joined(self._text)

    @property
    def reasoning(self) -> str:
        """The model's reasoning received so far (empty for a model that does not reason)."""
        return _joined(self._reasoning)

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        """The tool calls received so far, fragments joined; whole once the stream finished."""
        return self._tool_calls.calls()

    @property
    def usage(self) -> Usage:
        """Token counts: ``tokens`` so far, and the engine's counts once the ``stop`` event gave them."""
        return Usage(tokens=self.tokens, prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens)

    def receive(self, event: ServerSentEvent) -> str | None:
        """Apply one event; return the new answer text it carries, if any (see :meth:`receive_content`)."""
        content = self.receive_content(event)
        return content.text if isinstance(content, TextDelta) else None

    def receive_content(self, event: ServerSentEvent) -> ContentEvent | None:
        """Apply one event; return the new typed content it carries, if any (``None`` for a repeat)."""
        if event.event not in _EVENTS:
            return None  # event types this client does not know are skipped (forward compatibility)
        data = _json(event)
        if event.event == "error" and _streamer_closing(data, event):
            self._move("interrupt")
            return None
        self._move(event.event)
        if event.id:
            self.cursor = event.id
        if event.event in _CONTENT_EVENTS:
            return self._content(event.event, data)
        if event.event == "start":
            self.model = _field(data, "model", str, "start")
        elif event.event == "stop":
            self._stop(data)
        else:
            self.error = from_code(_field(data, "code", str, "error"), _field(data, "message", str, "error"))
        return None

    def interrupt(self) -> None:
        """The connection ended before a terminal event."""
        self._move("interrupt")

    def resume(self) -> None:
        """A new connection is open."""
        self._move("resume")

    @property
    def ended(self) -> bool:
        """Whether a terminal event arrived."""
        return self.phase in (Phase.FINISHED, Phase.FAILED)

    def _move(self, action: str) -> None:
        phase = _TRANSITIONS.get((self.phase, action))
        if phase is None:
            raise ProtocolError(f"unexpected {action!r} while the stream is {self.phase.value}")
        self.phase = phase

    def _content(self, kind: str, data: dict[str, Any]) -> ContentEvent | None:
        index = _field(data, "index", int, kind)
        content = _parse_content(kind, index, data)
        if index <= self.tokens:
            return None
        self.tokens = index
        if isinstance(content, TextDelta):
            self._text.append(content.text)
        elif isinstance(content, ReasoningDelta):
            self._reasoning.append(content.text)
        else:
            self._tool_calls.add(content)
        return content

    def _stop(self, data: dict[str, Any]) -> None:
        self.finish_reason = _field(data, "finish_reason", str, "stop")
        self.tokens = _field(data, "tokens", int, "stop")
        ttft = data.get("ttft_ms")
        self.ttft_ms = float(ttft) if isinstance(ttft, int | float) else None
        self.prompt_tokens = _optional_count(data.get("prompt_tokens"))  # only when the engine counted them
        self.completion_tokens = _optional_count(data.get("completion_tokens"))


class ReconnectPolicy:
    """Exponential backoff with jitter, bounded in attempts and in delay.

    The n-th reconnect in a row waits ``base * 2**(n-1)`` seconds, at most ``max_reconnect_delay_s``,
    times a random factor in [0.5, 1) so that many clients do not return at once; ``base`` is the
    server's ``retry`` time if it sent one, else ``reconnect_delay_s``.  After ``max_reconnects``
    failures in a row :meth:`next_delay_s` answers ``None`` (give up); :meth:`progressed` starts
    the count again.
    """

    def __init__(
        self,
        *,
        max_reconnects: int = DEFAULT_MAX_RECONNECTS,
        reconnect_delay_s: float = DEFAULT_RECONNECT_DELAY_S,
        max_reconnect_delay_s: float = DEFAULT_MAX_RECONNECT_DELAY_S,
        random_fraction: Callable[[], float] = random.random,
    ) -> None:
        self.max_reconnects = max_reconnects
        self.reconnect_delay_s = reconnect_delay_s
        self.max_reconnect_delay_s = max_reconnect_delay_s
        self.attempts = 0
        """Reconnects in a row since the last progress."""
        self._random = random_fraction

    def next_delay_s(self, server_retry_ms: int | None = None) -> float | None:
        """Seconds to wait before the next reconnect, or ``None`` when the attempts are exhausted."""
        if self.attempts >= self.max_reconnects:
            return None
        self.attempts += 1
        base = server_retry_ms / 1000 if server_retry_ms is not None else self.reconnect_delay_s
        delay = min(self.max_reconnect_delay_s, base * 2.0 ** (self.attempts - 1))
        return delay * (0.5 + self._random() / 2)

    def progressed(self) -> None:
        """An event arrived: the next failure is the first in a row again."""
        self.attempts = 0


def _offset(cursor: str | None) -> int:
    """Tokens before a cursor ``epoch:offset`` (0 for a cursor of another shape)."""
    offset = (cursor or "").rpartition(":")[2]
    return int(offset) if offset.isascii() and offset.isdigit() else 0


def _parse_content(kind: str, index: int, data: dict[str, Any]) -> ContentEvent:
    ts = data.get("ts")
    at = float(ts) if isinstance(ts, int | float) and not isinstance(ts, bool) else None
    if kind == "delta":
        return TextDelta(_field(data, "text", str, kind), index, at)
    if kind == "reasoning":
        return ReasoningDelta(_field(data, "text", str, kind), index, at)
    return ToolCallDelta(
        call=_field(data, "call", int, kind),
        arguments=_field(data, "arguments", str, kind),
        index=index,
        id=_optional_field(data, "id", kind),
        name=_optional_field(data, "name", kind),
        ts=at,
    )


def _joined(parts: list[str]) -> str:
    if len(parts) > 1:
        parts[:] = ["".join(parts)]  # joined once, so reading the text again and again stays cheap
    return parts[0] if parts else ""


def _optional_count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _optional_field(data: dict[str, Any], name: str, event: str) -> str | None:
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise ProtocolError(f"{event!r} event: {name!r} must be str")
    return value


def _streamer_closing(data: dict[str, Any], event: ServerSentEvent) -> bool:
    # A streamer that shuts down ends its readers with ``shutting_down`` and no ``id`` (the
    # cursor stays valid: "resume elsewhere"); a runner's ``shutting_down`` ends the stream
    # itself and carries an id.
    return data.get("code") == ErrorCode.SHUTTING_DOWN and event.id is None


def _json(event: ServerSentEvent) -> dict[str, Any]:
    try:
        data = orjson.loads(event.data)
    except orjson.JSONDecodeError:
        raise ProtocolError(f"the data of a {event.event!r} event is not JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"the data of a {event.event!r} event is not a JSON object")
    return data


def _field(data: dict[str, Any], name: str, kind: type[T], event: str) -> T:
    value = data.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"{event!r} event: {name!r} must be {kind.__name__}")
    return value
