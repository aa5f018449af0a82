"""What both compatible APIs share, sans-I/O: text content, and collecting a non-streamed response."""

from __future__ import annotations

from typing import Any

from tokenrelay.wire.errors import BadRequest
from tokenrelay.wire.messages import StreamDelta, StreamEnd, StreamError, StreamEvent


def joined_text(where: str, content: Any, *, piece: str) -> str:
    """A string, or the ``{"type": "text", "text": ...}`` items of an array joined (``piece``: the API's word)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, item in enumerate(content):
            if not isinstance(item, dict) or item.get("type") != "text" or not isinstance(item.get("text"), str):
                raise BadRequest(f"{where}[{j}] must be a text {piece}")
            parts.append(item["text"])
        return "".join(parts)
    raise BadRequest(f"{where} must be a string or an array of text {piece}s")


class TextCollector:
    """For ``stream: false``: deltas become their bare text; the terminal event is kept."""

    shares_native = False

    def __init__(self) -> None:
        self.end: StreamEnd | None = None
        self.failure: tuple[str, str] | None = None

    def event(self, event: StreamEvent) -> bytes:
        if isinstance(event, StreamDelta):
            return event.text.encode()
        if isinstance(event, StreamEnd):
            self.end = event
        elif isinstance(event, StreamError):
            self.failure = (event.code, event.message)
        return b""

    def error(self, code: str, message: str, *, id: str | None = None) -> bytes:
        self.failure = (code, message)
        return b""
