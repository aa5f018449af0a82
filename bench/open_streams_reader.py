"""``bench.open_streams``'s readers: raw HTTP/1.1 + SSE connections, decoded as bytes arrive.

A reader is an asyncio protocol (a few KiB each, no task per connection) around a sans-I/O parser,
so a load generator holding tens of thousands of them stays small next to what it measures.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import orjson

from tokenrelay.client.errors import ProtocolError
from tokenrelay.client.sse import ServerSentEvent, SSEDecoder
from tokenrelay.loadtest.stats import LatencyHistogram

LOADGEN_ERROR_CODES = frozenset(
    {"loadgen_fd_limit", "emfile", "enfile", "eaddrnotavail", "eaddrinuse", "reader_exception"}
)
"""Codes of readers this load generator could not open itself (its descriptors, its ports, its bugs)."""


def error_code(exc: BaseException) -> str:
    """A short code for a reader that could not open: the errno's name (``emfile``), ``timeout``, …"""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, OSError) and exc.errno is not None and exc.errno in errno.errorcode:
        return errno.errorcode[exc.errno].lower()
    if isinstance(exc, (ProtocolError, ValueError, KeyError)):
        return "protocol_error"
    return type(exc).__name__


# -- the readers: raw HTTP/1.1 + SSE, decoded as bytes arrive (sans-I/O parser, asyncio protocol) ------


class HttpEventStream:
    """An HTTP/1.1 response, fed as bytes arrive: the status, then the body (chunked or not) decoded as SSE.

    Sans-I/O; ``feed`` returns the events completed so far.  ``ProtocolError`` for a head that is not HTTP.
    """

    __slots__ = ("_buffer", "_chunk_left", "_chunked", "_crlf_due", "decoder", "ended", "status")

    MAX_HEAD_BYTES = 16384

    def __init__(self) -> None:
        self.status: int | None = None
        self.ended = False
        """The chunked body's last chunk arrived."""
        self.decoder = SSEDecoder()
        self._buffer = bytearray()
        self._chunked = False
        self._chunk_left = 0
        self._crlf_due = False

    def feed(self, data: bytes) -> list[ServerSentEvent]:
        """The SSE events these bytes complete."""
        if self.status is None:
            self._buffer += data
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > self.MAX_HEAD_BYTES:
                    raise ProtocolError("response head too long")
                return []
            self._parse_head(bytes(self._buffer[:end]))
            data = bytes(self._buffer[end + 4 :])
            self._buffer.clear()
        body = self._dechunk(data) if self._chunked else data
        return self.decoder.feed(body) if body else []

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        self.status = int(parts[1])
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"transfer-encoding" and b"chunked" in value.lower():
                self._chunked = True

    def _dechunk(self, data: bytes) -> bytes:
        buffer = self._buffer
        buffer += data
        out = bytearray()
        while not self.ended:
            if self._chunk_left:
                take = min(self._chunk_left, len(buffer))
                out += buffer[:take]
                del buffer[:take]
                self._chunk_left -= take
                if self._chunk_left:
                    break
                self._crlf_due = True
            if self._crlf_due:
                if len(buffer) < 2:
                    break
                del buffer[:2]
                self._crlf_due = False
            end = buffer.find(b"\r\n")
            if end < 0:
                break
            try:
                size = int(bytes(buffer[:end]).split(b";", 1)[0], 16)
            except ValueError:
                raise ProtocolError("bad chunk size") from None
            del buffer[: end + 2]
            if size == 0:
                self.ended = True
            self._chunk_left = size
        return bytes(out)


class ReaderFailed(Exception):
    """A reader that could not open, with the code it is counted under."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(message or code)
        self.code = code


@dataclass
class ReaderCounters:
    """What all readers of one load generator share: counts, errors, and the lag while holding."""

    opened: int = 0
    closed_early: int = 0
    """Readers that were open and whose connection ended while the phase still wanted them open."""
    ended: int = 0
    """Readers that were open and got their stream's terminal event (``stop`` or ``error``) before the phase ended."""
    deltas: int = 0
    deltas_held: int = 0
    with_token_held: int = 0
    """Readers that got at least one token while every reader was held open."""
    errors: Counter[str] = field(default_factory=Counter)
    error_examples: dict[str, str] = field(default_factory=dict)
    """The first message seen for each error code."""
    terminal: Counter[str] = field(default_factory=Counter)
    """Terminal events (``stop``/``error``, with its code) that arrived before the phase ended."""
    recording: bool = False
    lag: LatencyHistogram = field(default_factory=LatencyHistogram)
    ending: bool = False

    def error(self, code: str, message: str = "") -> None:
        """Count one error; keep its first message."""
        self.errors[code] += 1
        self.error_examples.setdefault(code, message[:300])


class EventsReader(asyncio.Protocol):
    """One SSE connection: sends the ``GET``, decodes what arrives, records lag while the phase holds.

    ``opened`` resolves when the ``start`` event arrives, or fails with :class:`ReaderFailed`.
    """

    __slots__ = ("_counters", "_parser", "_request", "got_token_held", "is_open", "opened", "transport")

    def __init__(self, request: bytes, counters: ReaderCounters) -> None:
        self._request = request
        self._counters = counters
        self._parser = HttpEventStream()
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.is_open = False
        self.got_token_held = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        try:
            self._received(data, time.time())
        except Exception as exc:  # a bug here must fail this reader, not vanish into the transport
            self._fail("reader_exception", f"{type(exc).__name__}: {exc}")

    def _received(self, data: bytes, wall: float) -> None:
        counters = self._counters
        try:
            events = self._parser.feed(data)
        except ProtocolError as exc:
            self._fail("sse_parse_error", str(exc))
            return
        status = self._parser.status
        if status is not None and status != 200:
            self._fail(f"events_http_{status}", data.decode(errors="replace").rpartition("\r\n\r\n")[2])
            return
        for event in events:
            if event.event == "delta":
                counters.deltas += 1
                if counters.recording:
                    counters.deltas_held += 1
                    if not self.got_token_held:
                        self.got_token_held = True
                        counters.with_token_held += 1
                    ts = orjson.loads(event.data).get("ts")
                    if ts is not None:
                        counters.lag.record((wall - ts) * 1000)
            elif event.event == "start":
                if not self.opened.done():
                    self.is_open = True
                    self.opened.set_result(None)
            elif event.event in ("stop", "error"):
                fields = orjson.loads(event.data)
                code = fields.get("code" if event.event == "error" else "finish_reason")
                counters.terminal[f"{event.event}:{code}" if code else event.event] += 1
                if self.is_open:
                    self.is_open = False
                    counters.ended += 1
                elif not self.opened.done():
                    self._fail(f"{event.event}_before_start:{code}", event.data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self._settle(ReaderFailed("closed_before_start", repr(exc) if exc else "the server closed the connection"))
        elif self.is_open and not self._counters.ending:
            self._counters.closed_early += 1
            self.is_open = False

    def _fail(self, code: str, message: str = "") -> None:
        if self.opened.done():
            self._counters.error(code, message)
        else:
            self._settle(ReaderFailed(code, message))
        self.is_open = False
        if self.transport is not None:
            self.transport.abort()

    def _settle(self, exc: ReaderFailed) -> None:
        self.opened.set_exception(exc)
        self.opened.exception()  # retrieved here: the opener reports it


def request_bytes(events_url: str) -> bytes:
    """The raw ``GET`` of an events URL."""
    url = urlsplit(events_url)
    target = url.path + (f"?{url.query}" if url.query else "")
    return f"GET {target} HTTP/1.1\r\nHost: {url.netloc}\r\nAccept: text/event-stream\r\n\r\n".encode()


def error_source(code: str) -> str:
    """Who refused a reader counted under ``code``: ``gateway`` (creating its stream), ``loadgen`` (this side's
    descriptors or ports) or ``streamer`` (its ``GET``: an HTTP error, a closed connection, no answer in time)."""
    if code.startswith("create_"):
        return "gateway"
    if code in LOADGEN_ERROR_CODES:
        return "loadgen"
    return "streamer"
