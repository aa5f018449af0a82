"""Sans-I/O control-plane protocol: parse WebSocket text messages, build replies.

Client -> gateway (JSON text; ``ref`` is optional and echoed on the reply):

* ``{"type": "start", ...stream body...}`` -> ``{"type": "started", "stream_id", "events_url", "stop_url"}``
  (with API keys both URLs carry a token for this stream: a page can read and stop it without the key)
* ``{"type": "stop", "stream_id"}`` -> ``{"type": "stopped", "stream_id", "tokens", "finish_reason", "halted_ts"}``
  (``halted_ts``: wall-clock time the engine halted, ``null`` if it had already finished)
* ``{"type": "feedback", "stream_id", "rating": "up"|"down", "comment"?}`` -> ``{"type": "ack", "stream_id"}``

Anything invalid -> ``{"type": "error", "code", "message"}`` (plus ``retry_after_s`` for ``rate_limited``
and ``overloaded``); the socket stays open.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson

from tokenrelay.wire.codec import parse_json_object
from tokenrelay.wire.errors import BadRequest, RetryLater, TokenRelayError

ANY_ORIGIN = "*"
MAX_REF_CHARS = 128
MAX_COMMENT_CHARS = 4096
Ref = str | int | None
ENVELOPE_FIELDS = frozenset({"type", "ref"})
"""A control message's own fields; a ``start``'s other fields are the new stream's body."""


@dataclass(frozen=True, slots=True)
class Start:
    """Start a stream; ``body`` is validated like ``POST /v1/streams``."""

    ref: Ref
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Stop:
    """Stop a stream."""

    ref: Ref
    stream_id: str


@dataclass(frozen=True, slots=True)
class FeedbackCommand:
    """Rate a stream."""

    ref: Ref
    stream_id: str
    rating: Literal["up", "down"]
    comment: str | None


Command = Start | Stop | FeedbackCommand


class ControlError(BadRequest):
    """A control message that cannot be acted on; ``ref`` is echoed if it could be read."""

    def __init__(self, message: str, ref: Ref = None) -> None:
        super().__init__(message)
        self.ref = ref


def parse_command(text: str) -> Command:
    """Parse one control message or raise :class:`ControlError`."""
    try:
        obj = parse_json_object(text)
    except BadRequest as exc:
        raise ControlError(exc.message) from None
    ref = _ref(obj.get("ref"))
    kind = obj.get("type")
    if kind == "start":
        # The envelope's own fields are not the stream's: every other field is passed on in the job's params.
        return Start(ref, {key: value for key, value in obj.items() if key not in ENVELOPE_FIELDS})
    if kind == "stop":
        return Stop(ref, _stream_id(obj, ref))
    if kind == "feedback":
        return _feedback(obj, ref)
    raise ControlError(f"unknown message type {kind!r}; expected start, stop or feedback", ref)


def _ref(value: Any) -> Ref:
    if value is None or (type(value) is int) or (isinstance(value, str) and len(value) <= MAX_REF_CHARS):
        return value
    raise ControlError(f"ref must be an integer or a string of at most {MAX_REF_CHARS} characters")


def _stream_id(obj: dict[str, Any], ref: Ref) -> str:
    value = obj.get("stream_id")
    if not isinstance(value, str) or not value:
        raise ControlError("stream_id must be a non-empty string", ref)
    return value


def _feedback(obj: dict[str, Any], ref: Ref) -> FeedbackCommand:
    stream_id = _stream_id(obj, ref)
    rating = obj.get("rating")
    if rating not in ("up", "down"):
        raise ControlError('rating must be "up" or "down"', ref)
    comment = obj.get("comment")
    if comment is not None and not isinstance(comment, str):
        raise ControlError("comment must be a string", ref)
    if comment is not None and len(comment) > MAX_COMMENT_CHARS:
        raise ControlError(f"comment must be at most {MAX_COMMENT_CHARS} characters", ref)
    return FeedbackCommand(ref, stream_id, rating, comment)


def reply(kind: str, ref: Ref, **fields: Any) -> str:
    """One reply message as JSON text, echoing ``ref`` when the client sent one."""
    body: dict[str, Any] = {"type": kind, **fields}
    if ref is not None:
        body["ref"] = ref
    return orjson.dumps(body).decode()


def error_reply(exc: TokenRelayError, ref: Ref) -> str:
    """An ``error`` reply with the error's stable code (and ``retry_after_s`` for ``rate_limited``/``overloaded``)."""
    if isinstance(exc, RetryLater):
        return reply("error", ref, code=str(exc.code), message=exc.message, retry_after_s=exc.retry_after_s)
    return reply("error", ref, code=str(exc.code), message=exc.message)


def origin_allowed(origin: str | None, *, host: str | None, allowed: Collection[str]) -> bool:
    """Whether a control WebSocket may be opened from ``origin`` (its ``Origin`` header).

    A browser always sends ``Origin``; a page may connect from the gateway's own origin (``Origin``'s
    host is the request's ``Host``) or from one in ``allowed`` (exact ``scheme://host[:port]``, or
    ``*`` for any).  A client that sends no ``Origin`` is not a browser page, so no other site can be
    acting through it: it is let through (its API key still decides).
    """
    if origin is None:
        return True
    if ANY_ORIGIN in allowed or origin.lower() in allowed:
        return True
    parts = urlsplit(origin)
    return host is not None and parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()
