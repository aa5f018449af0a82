"""The one decision that cuts a reader off as a slow consumer, as a value (sans-I/O).

A reader is disconnected with ``slow_consumer`` when it holds more than its byte budget (bytes queued for it,
the write in flight and events held while it catches up, all counted at what they cost in memory), when it
holds too many events ahead of a gap in its history, or when a write it was given stalls.  Each of those is
asked of :func:`decide` by whoever holds the numbers (the reader's buffer as it queues bytes, the reader as an
event is merged, the hub's heartbeat loop for writes), and the answer is a :class:`Disconnect` or ``None``;
what to do with it is the reader's (:meth:`~tokenrelay.streamer.reader.Reader.disconnect`), in one place.
Like centrifuge's ``DisconnectSlow``, the reason is data: the code and message the client reads in the
reader's terminal ``error`` event.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenrelay.runtime.config import DEFAULT_MAX_READER_BUFFER_BYTES, DEFAULT_WRITE_TIMEOUT_S
from tokenrelay.wire.errors import ErrorCode

DEFAULT_MAX_HELD_EVENTS = 4096
"""Events a reader may hold ahead of a gap in its history before it is disconnected."""
FAILED_WRITE_GRACE_S = 1.0
"""A reader that failed (``slow_consumer``, shutdown) while a write is stuck gets this long for its
``error`` event to go out; then the connection is dropped and the client resumes from its cursor."""


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Why a reader is cut off: the code and message of its terminal ``error`` event.

    ``abort``: the connection is dropped at once as well, since the ``error`` event cannot get past a write
    the client is not taking (the client resumes from its cursor).
    """

    code: ErrorCode
    message: str
    abort: bool = False


OVER_BUFFER = Disconnect(ErrorCode.SLOW_CONSUMER, "the client did not read fast enough")
"""More bytes unsent (queued, in flight, held while catching up) than ``max_buffered_bytes``."""
TOO_MANY_HELD = Disconnect(ErrorCode.SLOW_CONSUMER, "too many events held while catching up")
"""More than ``max_held_events`` events held ahead of a gap."""
WRITE_STALLED = Disconnect(ErrorCode.SLOW_CONSUMER, "the client did not take a write in time", abort=True)
"""A write not taken by the kernel within ``write_timeout_s`` (or within ``failed_write_grace_s`` of failing)."""


@dataclass(frozen=True, slots=True)
class DisconnectLimits:
    """The limits :func:`decide` holds a reader to; each one passed disconnects it as ``slow_consumer``.

    ``max_buffered_bytes``: bytes unsent, queued, in flight and held together.  ``max_held_events``: events held
    ahead of a gap in its history.  ``write_timeout_s``: how long one write may wait for the client.
    ``failed_write_grace_s``: how long a reader that already failed may wait for its ``error`` event's write.
    """

    max_buffered_bytes: int = DEFAULT_MAX_READER_BUFFER_BYTES
    max_held_events: int = DEFAULT_MAX_HELD_EVENTS
    write_timeout_s: float = DEFAULT_WRITE_TIMEOUT_S
    failed_write_grace_s: float = FAILED_WRITE_GRACE_S


def decide(
    buffered_bytes: int,
    held_events: int,
    write_started_at: float | None,
    now: float,
    limits: DisconnectLimits,
    *,
    failed_at: float | None = None,
) -> Disconnect | None:
    """Whether a reader is disconnected now, and why; ``None``: it is not.

    ``buffered_bytes``: what it would hold unsent (the caller adds what it is about to queue).
    ``held_events``: events held ahead of a gap.  ``write_started_at``: when the write in progress started
    (``None``: no write in progress).  ``failed_at``: when the reader failed, if it did (its ``error`` event
    is queued behind that write).  Callers pass 0 and ``None`` for what they do not track: this runs for every
    event queued, so it takes plain positional numbers.
    """
    if held_events > limits.max_held_events:
        return TOO_MANY_HELD
    if buffered_bytes > limits.max_buffered_bytes:
        return OVER_BUFFER
    if write_started_at is not None and (
        now - write_started_at >= limits.write_timeout_s
        or (failed_at is not None and now - failed_at >= limits.failed_write_grace_s)
    ):
        return WRITE_STALLED
    return None
