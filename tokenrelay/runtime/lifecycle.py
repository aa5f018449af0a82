"""One structured log line per stream lifecycle event, in logfmt (``key=value`` pairs).

Every process logs what it saw happen to a stream on the ``tokenrelay.lifecycle`` logger at
INFO, one line per event, always with ``event``, ``role`` and ``stream_id`` first, e.g.::

    event=stream.created role=gateway stream_id=3f9c... model=synthetic max_tokens=256

so one ``grep stream_id=3f9c`` over all processes' logs tells a stream's story in order.
Values that contain spaces, quotes, ``=`` or control characters are quoted JSON-style;
``None`` values are left out.
"""

from __future__ import annotations

import enum
import logging
import math

import orjson

log = logging.getLogger("tokenrelay.lifecycle")


class LifecycleEvent(enum.StrEnum):
    """What happened to a stream, as the ``event`` field of its log line."""

    CREATED = "stream.created"
    """gateway: admitted and recorded as queued."""
    DISPATCHED = "stream.dispatched"
    """gateway: a runner accepted it."""
    NOT_STARTED = "stream.not_started"
    """gateway: ended before any runner took it (stopped while queued, or queue timeout)."""
    STOP_REQUESTED = "stream.stop_requested"
    """gateway: a stop arrived (client, disconnect, or runner lost)."""
    STOPPED = "stream.stopped"
    """gateway: the owner confirmed the halt."""
    RUNNER_LOST = "stream.runner_lost"
    """gateway: its runner stopped heartbeating and it could not move; readers get a ``runner_lost`` error."""
    MOVED = "stream.moved"
    """gateway: its runner was lost and another runner continues it (a new generation, after a recorded cut-off)."""
    FEEDBACK = "stream.feedback"
    """gateway: feedback stored."""
    STARTED = "stream.started"
    """runner: generation began."""
    FIRST_TOKEN = "stream.first_token"
    """runner: the engine produced the first token."""
    FINISHED = "stream.finished"
    """runner: terminal event published."""
    READER_OPENED = "reader.opened"
    """streamer: an SSE (or compatible API) reader connected."""
    READER_CLOSED = "reader.closed"
    """streamer: a reader's response ended (terminal event, error, or the client left)."""
    ABANDONED = "stream.abandoned"
    """streamer: every reader left for the grace period; generation cancelled."""


Value = str | int | float | bool | None

_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/+@")


def _value(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if math.isfinite(value) else str(value)
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if text and all(c in _PLAIN for c in text):
        return text
    return orjson.dumps(text).decode()


def format_line(event: LifecycleEvent, role: str, stream_id: str, fields: dict[str, Value]) -> str:
    """The logfmt line for one event (sans-I/O; :func:`log_event` writes it)."""
    parts = [f"event={event}", f"role={_value(role)}", f"stream_id={_value(stream_id)}"]
    for key, value in fields.items():
        if value is not None:
            parts.append(f"{key}={_value(value)}")
    return " ".join(parts)


def log_event(event: LifecycleEvent, role: str, stream_id: str, **fields: Value) -> None:
    """Log one lifecycle event at INFO (formatted only when INFO is enabled)."""
    if log.isEnabledFor(logging.INFO):
        log.info("%s", format_line(event, role, stream_id, fields))
