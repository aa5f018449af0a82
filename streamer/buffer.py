"""Sans-I/O per-reader output buffer: the single backpressure decision point.

Frames are appended as they are produced and taken by the reader's writer in one piece, so
a reader that falls behind gets one larger write; deltas that pile up back to back are merged
into one larger ``delta`` event (its ``id`` is the last one's, so resuming stays exact).  If
the unsent bytes — those queued here plus the write in flight, which the I/O shell reports in
``in_flight_bytes`` until the transport has handed it to the kernel — would pass
``max_buffered_bytes``, the buffer is replaced by one terminal ``slow_consumer`` error frame and
closed: memory per reader stays bounded whatever the client does.
"""

from __future__ import annotations

from dataclasses import replace

from streamer.frames import error_frame, frame
from streamer.sse import PING
from tokenrelay.errors import ErrorCode
from tokenrelay.messages import StreamDelta

DELTA_FRAME_OVERHEAD_BYTES = 64
"""Bytes an SSE delta frame adds around its text (field names, id, JSON keys), for accounting."""

_Pending = bytes | tuple[StreamDelta, bytes | None]


class ReaderBuffer:
    """Unsent bytes of one SSE reader, bounded by ``max_buffered_bytes``."""

    def __init__(self, *, max_buffered_bytes: int, now: float, epoch: str = "") -> None:
        self._max = max_buffered_bytes
        self._epoch = epoch
        self._chunks: list[_Pending] = []
        self._size = 0
        self.closed = False
        self.close_code: str | None = None
        self.last_activity = now
        self.in_flight_bytes = 0
        """Bytes taken by the writer that the transport still holds (set by the I/O shell)."""

    @property
    def buffered_bytes(self) -> int:
        """Bytes appended and not yet taken."""
        return self._size

    @property
    def unsent_bytes(self) -> int:
        """Bytes queued here plus the write in flight: what counts against the limit."""
        return self._size + self.in_flight_bytes

    @property
    def max_buffered_bytes(self) -> int:
        """The limit on :attr:`unsent_bytes`."""
        return self._max

    def append(self, data: bytes, now: float) -> bool:
        """Queue bytes for the client; return ``False`` if the reader is (now) closed."""
        if self.closed:
            return False
        return self._add(data, len(data), now)

    def append_delta(self, delta: StreamDelta, now: float, framed: bytes | None = None) -> bool:
        """Queue a delta (``framed``: its shared frame, if the caller has one); merged with pending ones."""
        size = len(framed) if framed is not None else len(delta.text.encode()) + DELTA_FRAME_OVERHEAD_BYTES
        return self._add((delta, framed), size, now)

    def _add(self, item: _Pending, size: int, now: float) -> bool:
        if self.closed:
            return False
        if self.unsent_bytes + size > self._max:
            self.fail(str(ErrorCode.SLOW_CONSUMER), "the client did not read fast enough", now)
            return False
        self._chunks.append(item)
        self._size += size
        self.last_activity = now
        return True

    def finish(self, data: bytes, now: float) -> None:
        """Queue the terminal frame and close (a terminal frame is never refused for size)."""
        if self.closed:
            return
        self._chunks.append(data)
        self._size += len(data)
        self.last_activity = now
        self.closed = True

    def fail(self, code: str, message: str, now: float, *, id: str | None = None) -> None:
        """Drop what is pending, queue a terminal ``error`` and close."""
        if self.closed:
            return
        failure = error_frame(code, message, id=id)
        self._chunks = [failure]
        self._size = len(failure)
        self.close_code = code
        self.closed = True
        self.last_activity = now

    def ping_if_idle(self, now: float, heartbeat_s: float) -> bool:
        """Queue a ``: ping`` if nothing was queued for ``heartbeat_s``; return whether it did."""
        if self.closed or now - self.last_activity < heartbeat_s:
            return False
        return self.append(PING, now)

    def take(self) -> bytes:
        """Everything pending, as one write; back-to-back deltas become one event."""
        if not self._chunks:
            return b""
        chunks, self._chunks, self._size = self._chunks, [], 0
        if len(chunks) == 1 and isinstance(chunks[0], bytes):
            return chunks[0]
        out: list[bytes] = []
        run: list[tuple[StreamDelta, bytes | None]] = []
        for item in chunks:
            if isinstance(item, bytes):
                out.append(self._merged(run))
                run = []
                out.append(item)
            else:
                run.append(item)
        out.append(self._merged(run))
        return b"".join(out)

    def _merged(self, run: list[tuple[StreamDelta, bytes | None]]) -> bytes:
        if not run:
            return b""
        if len(run) == 1:
            delta, framed = run[0]
            return framed if framed is not None else frame(delta, self._epoch)
        last = run[-1][0]
        text = "".join(delta.text for delta, _ in run)
        merged = replace(last, text=text, count=sum(delta.count for delta, _ in run))
        return frame(merged, self._epoch)
