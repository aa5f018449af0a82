"""Sans-I/O state of one stream as a reader sees it, and the reconnect policy.

:class:`StreamTracker` takes the decoded SSE events of the native API (``start``, ``delta``,
``stop``, ``error``; see docs/api.md) and keeps the text, the resume cursor and the final
state.  :class:`ReconnectPolicy` decides how long to wait before the next reconnect and when
to give up.  Neither does I/O; the :class:`~tokenrelay.client.stream.Stream` moves bytes.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from typing import Any, TypeVar

import orjson

from tokenrelay.client.errors import ProtocolError
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
    (Phase.OPEN, "stop"): Phase.FINISHED,
    (Phase.OPEN, "error"): Phase.FAILED,
    (Phase.OPEN, "interrupt"): Phase.INTERRUPTED,
    (Phase.OPEN, "resume"): Phase.OPEN,
    (Phase.INTERRUPTED, "interrupt"): Phase.INTERRUPTED,
    (Phase.INTERRUPTED, "resume"): Phase.OPEN,
}
_EVENTS = frozenset({"start", "delta", "stop", "error"})


class StreamTracker:
    """Text, cursor and outcome of one stream, fed one SSE event at a time.

    ``tokens`` is the number of tokens delivered so far (the last delta's ``index``), then the
    ``stop`` event's count.  A delta whose ``index`` is not past ``tokens`` repeats text already
    held and is dropped, so the text never holds a token twice.
    """

    def __init__(self, *, cursor: str | None = None) -> None:
        self.phase = Phase.OPEN
        self.cursor = cursor
        self.tokens = _offset(cursor)
        self.model: str | None = None
        self.finish_reason: str | None = None
        self.ttft_ms: float | None = None
        self.prompt_tokens: int | None = None
        self.error: TokenRelayError | None = None

    def receive(self, event: ServerSentEvent) -> str | None:
        """Apply one event; return the new text it carries, if any."""
        if event.event not in _EVENTS:
            return None  # event types this client does not know are skipped (forward compatibility)
        data = _json(event)
        if event.event == "error" and _streamer_closing(data, event):
            self._move("interrupt")
            return None
        self._move(event.event)
        if event.id:
            self.cursor = event.id
        if event.event == "delta":
            return self._delta(data)
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

    def _delta(self, data: dict[str, Any]) -> str | None:
        index = _field(data, "index", int, "delta")
        text = _field(data, "text", str, "delta")
        if index <= self.tokens:
            return None
        self.tokens = index
        return text

    def _stop(self, data: dict[str, Any]) -> None:
        self.finish_reason = _field(data, "finish_reason", str, "stop")
        self.tokens = _field(data, "tokens", int, "stop")
        ttft = data.get("ttft_ms")
        self.ttft_ms = float(ttft) if isinstance(ttft, int | float) else None
        prompt = data.get("prompt_tokens")  # only when the engine counted the prompt
        self.prompt_tokens = prompt if isinstance(prompt, int) and not isinstance(prompt, bool) else None


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
