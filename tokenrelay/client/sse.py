"""Sans-I/O Server-Sent Events decoder (WHATWG HTML, "Server-sent events", §9.2.6 "Interpreting an event stream").

:class:`SSEDecoder` takes the response body's bytes in whatever chunks the network delivers
and returns the events they complete.  It handles what the spec allows and a network does:
lines ending in CRLF, LF or CR (a CRLF split between two chunks included), a UTF-8 character
split between chunks, a leading byte order mark, multi-line ``data``, comments (``: ping``),
``id`` and ``retry`` fields.  It never touches a socket.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

from tokenrelay.client.errors import ProtocolError

DEFAULT_MAX_EVENT_CHARS = 8 * 2**20
"""Characters one event (its unfinished line plus its data) may hold before the decoder gives up."""

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_BOM = "\ufeff"


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event.

    ``id`` is the value of this event's own ``id`` field (``None`` if it had none);
    ``last_event_id`` is the stream's last event ID when it was dispatched (WHATWG's
    ``lastEventId``, which persists across events), i.e. what to resume from.
    """

    event: str
    data: str
    id: str | None
    last_event_id: str


class SSEDecoder:
    """Incremental ``text/event-stream`` parser: :meth:`feed` bytes, get the events they complete.

    ``max_event_chars`` bounds what one event may buffer; past it :meth:`feed` raises
    :class:`~tokenrelay.client.errors.ProtocolError` (a server that never ends a line or an
    event cannot make the client hold unbounded memory).
    """

    def __init__(self, *, max_event_chars: int = DEFAULT_MAX_EVENT_CHARS) -> None:
        self.max_event_chars = max_event_chars
        self.last_event_id = ""
        self.retry_ms: int | None = None
        """The latest ``retry`` field: the server's reconnection time in milliseconds."""
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._line = ""
        self._skip_lf = False
        self._at_start = True
        self._reset_event()

    def feed(self, data: bytes) -> list[ServerSentEvent]:
        """Decode the next bytes of the body; return every event they complete, in order."""
        text = self._text(self._utf8.decode(data))
        if not text:
            return []
        lines = _LINE_BREAK.split(self._line + text)
        self._line = lines.pop()
        # A CR that ends this chunk ended its line; an LF that starts the next one belongs to it.
        self._skip_lf = text.endswith("\r")
        events: list[ServerSentEvent] = []
        for line in lines:
            event = self._process(line)
            if event is not None:
                events.append(event)
        self._check_size()
        return events

    def reset(self) -> None:
        """Start a new connection: drop the unfinished line and event; keep ``last_event_id`` and ``retry_ms``."""
        self._utf8.reset()
        self._line = ""
        self._skip_lf = False
        self._at_start = True
        self._reset_event()

    def _text(self, text: str) -> str:
        if self._at_start and text:
            self._at_start = False
            text = text.removeprefix(_BOM)  # one BOM at the start of the stream is not content
        if self._skip_lf and text:
            self._skip_lf = False
            text = text.removeprefix("\n")
        return text

    def _reset_event(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._data_chars = 0
        self._id: str | None = None

    def _check_size(self) -> None:
        held = len(self._line) + self._data_chars
        if held > self.max_event_chars:
            raise ProtocolError(f"an SSE event holds {held} characters, over the limit of {self.max_event_chars}")

    def _process(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment, e.g. the heartbeat ": ping"
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        self._field(name, value)
        return None

    def _field(self, name: str, value: str) -> None:
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
            self._data_chars += len(value) + 1
            self._check_size()
        elif name == "id" and "\0" not in value:
            self._id = value
            self.last_event_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry_ms = int(value)

    def _dispatch(self) -> ServerSentEvent | None:
        event: ServerSentEvent | None = None
        if self._data:
            event = ServerSentEvent(self._event or "message", "\n".join(self._data), self._id, self.last_event_id)
        self._reset_event()
        return event
