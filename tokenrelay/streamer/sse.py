"""Sans-I/O Server-Sent Events framing (WHATWG HTML, "Server-sent events", §9.2).

Framing is injection-proof: ``event`` and ``id`` fields may not contain CR or LF (they would
end the field and start another), and ``data`` is split on every line break the spec
recognises (CRLF, CR, LF) into one ``data:`` line each, so no payload can create or alter
an event.
"""

from __future__ import annotations

import re

PING = b": ping\n\n"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class FramingError(ValueError):
    """A field value that cannot be framed safely."""


def _field_value(name: str, value: str) -> str:
    if "\r" in value or "\n" in value or "\0" in value:
        raise FramingError(f"SSE {name} must not contain CR, LF or NUL")
    return value


def encode_event(data: str, *, event: str | None = None, id: str | None = None) -> bytes:
    """Frame one event. ``data`` may hold line breaks; ``event`` and ``id`` may not."""
    parts: list[str] = []
    if event is not None:
        parts.append(f"event: {_field_value('event', event)}\n")
    if id is not None:
        parts.append(f"id: {_field_value('id', id)}\n")
    for line in _LINE_BREAK.split(data):
        parts.append(f"data: {line}\n")
    parts.append("\n")
    return "".join(parts).encode()


def encode_comment(text: str) -> bytes:
    """A comment line (ignored by clients; keeps proxies from timing out the connection)."""
    lines = _LINE_BREAK.split(text)
    return ("".join(f": {line}\n" for line in lines) + "\n").encode()


def encode_retry(retry_ms: int) -> bytes:
    """Tell the client how long to wait before reconnecting."""
    if retry_ms < 0:
        raise FramingError("retry must be >= 0")
    return f"retry: {retry_ms}\n\n".encode()
