"""An SSE client for tests that reads raw bytes as they arrive and parses them independently.

The parser follows the WHATWG event-stream interpretation (lines end in CRLF, CR or LF; a
blank line dispatches; ``field: value`` with one optional space; ``:`` starts a comment) and
deliberately shares no code with the streamer.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

_LINES = re.compile(r"\r\n|\r|\n")


@dataclass
class Event:
    """One dispatched SSE event and when its last byte arrived."""

    event: str
    data: str
    id: str | None
    at: float

    def json(self) -> Any:
        return orjson.loads(self.data)


@dataclass
class Stream:
    """Everything one SSE response delivered."""

    status: int
    headers: dict[str, str]
    events: list[Event] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    chunks: int = 0
    body: bytes = b""

    def of(self, name: str) -> list[Event]:
        return [e for e in self.events if e.event == name]

    @property
    def text(self) -> str:
        return "".join(e.json()["text"] for e in self.of("delta"))

    @property
    def terminal(self) -> Event:
        last = self.events[-1]
        assert last.event in ("stop", "error"), f"last event is {last.event!r}"
        return last


class Parser:
    """Incremental event-stream parser."""

    def __init__(self) -> None:
        self._buffer = ""
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._has_data = False

    def feed(self, text: str, at: float, out: Stream) -> None:
        self._buffer += text
        lines = _LINES.split(self._buffer)
        # A trailing CR may be half of a CRLF: keep the last (incomplete) line buffered.
        self._buffer = lines.pop()
        for line in lines:
            self._line(line, at, out)

    def _line(self, line: str, at: float, out: Stream) -> None:
        if line == "":
            if self._has_data:
                out.events.append(Event(self._event or "message", "\n".join(self._data), self._id, at))
            self._event, self._data, self._has_data = "", [], False
            return
        if line.startswith(":"):
            out.comments.append(line[1:].strip())
            return
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
            self._has_data = True
        elif name == "id":
            self._id = value


async def read_stream(
    url: str, *, headers: dict[str, str] | None = None, stop_after: int | None = None, timeout_s: float = 60
) -> Stream:
    """Read an SSE response until the server closes it (or ``stop_after`` events have arrived)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response,
    ):
        out = Stream(response.status, dict(response.headers))
        if response.status != 200 or not response.headers.get("Content-Type", "").startswith("text/event-stream"):
            out.body = await response.read()
            return out
        parser = Parser()
        decoder = _Utf8()
        async for chunk in response.content.iter_any():
            out.chunks += 1
            parser.feed(decoder.decode(chunk), time.monotonic(), out)
            if stop_after is not None and len(out.events) >= stop_after:
                break
        return out


class _Utf8:
    def __init__(self) -> None:
        import codecs

        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")

    def decode(self, data: bytes) -> str:
        return self._decoder.decode(data)
