"""Sans-I/O per-reader output buffer: the single backpressure decision point.

Frames are appended as they are produced and taken by the reader's writer in one piece, so
a reader that falls behind gets its pending events coalesced into one larger write.  If the
unsent bytes would pass ``max_buffered_bytes`` the buffer is replaced by one terminal
``slow_consumer`` error frame and closed: memory per reader stays bounded whatever the
client does.
"""

from __future__ import annotations

from streamer.frames import error_frame
from streamer.sse import PING
from tokenrelay.errors import ErrorCode


class ReaderBuffer:
    """Unsent bytes of one SSE reader, bounded by ``max_buffered_bytes``."""

    def __init__(self, *, max_buffered_bytes: int, now: float) -> None:
        self._max = max_buffered_bytes
        self._chunks: list[bytes] = []
        self._size = 0
        self.closed = False
        self.close_code: str | None = None
        self.last_activity = now

    @property
    def buffered_bytes(self) -> int:
        """Bytes appended and not yet taken."""
        return self._size

    def append(self, data: bytes, now: float) -> bool:
        """Queue bytes for the client; return ``False`` if the reader is (now) closed."""
        if self.closed:
            return False
        if self._size + len(data) > self._max:
            self.fail(str(ErrorCode.SLOW_CONSUMER), "the client did not read fast enough", now)
            return False
        self._chunks.append(data)
        self._size += len(data)
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
        self._chunks = [error_frame(code, message, id=id)]
        self._size = len(self._chunks[0])
        self.close_code = code
        self.closed = True
        self.last_activity = now

    def ping_if_idle(self, now: float, heartbeat_s: float) -> bool:
        """Queue a ``: ping`` if nothing was queued for ``heartbeat_s``; return whether it did."""
        if self.closed or now - self.last_activity < heartbeat_s:
            return False
        return self.append(PING, now)

    def take(self) -> bytes:
        """Everything pending, as one write."""
        if not self._chunks:
            return b""
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks = []
        self._size = 0
        return data
