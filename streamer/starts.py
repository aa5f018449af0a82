"""Streams seen starting on the shared live subscription, and still running: what a reader needs without a record read.

A reader's ``GET`` needs the stream's epoch (its cursor must belong to it, and every event id
carries it) and to know the stream exists.  That is the stream's record, one JetStream round trip
away, and under load that trip waits behind everything else on both event loops: at 1,000 x 20
tokens/s it took 0.4 to 0.8 s per reader while streams started, and every live token published
meanwhile waited behind it.  A streamer on the shared wildcard subscription has already seen the
stream's ``start`` event (which carries the epoch) go by, usually before the reader connects, so it
can remember it.

:class:`RecentStarts` is that memory, sans-I/O: ``stream id -> epoch`` of streams whose ``start``
it saw and whose terminal event it has not, at most ``max_streams`` of them (the oldest go first)
and none older than ``ttl_s``.  A stream it does not know (a miss, an ended stream, a streamer
that joined late, ``per-stream`` mode) is read from the record as before; so is every reader with
an API key, whose tenant must own the stream (the record holds the owner, the ``start`` event not).

The byte prefixes let the hub spot ``start`` and terminal events of streams nobody reads here
without decoding them (the codec writes ``type`` first; a test pins that).
"""

from __future__ import annotations

from collections import OrderedDict

START_PREFIX = b'{"type":"start"'
TERMINAL_PREFIXES = (b'{"type":"end"', b'{"type":"error"')
DEFAULT_MAX_STREAMS = 50_000
"""At ~200 bytes an entry, ~10 MB at most."""
DEFAULT_TTL_S = 60.0
"""Long enough for any reader that connects right after its ``POST``; an older stream's reader reads its record."""


class RecentStarts:
    """``stream id -> epoch`` of streams seen starting and not yet seen ending, bounded in count and age."""

    def __init__(self, *, max_streams: int = DEFAULT_MAX_STREAMS, ttl_s: float = DEFAULT_TTL_S) -> None:
        if max_streams <= 0:
            raise ValueError("max_streams must be > 0")
        if ttl_s <= 0:
            raise ValueError("ttl_s must be > 0")
        self._max_streams = max_streams
        self._ttl_s = ttl_s
        self._started: OrderedDict[str, tuple[float, str]] = OrderedDict()
        """Stream id -> (when its ``start`` was seen, its epoch), oldest first."""

    def __len__(self) -> int:
        return len(self._started)

    def started(self, stream_id: str, epoch: str, now: float) -> None:
        """A ``start`` event went by (a stream started again on another runner replaces its epoch)."""
        self._started.pop(stream_id, None)
        self._started[stream_id] = (now, epoch)
        while len(self._started) > self._max_streams:
            self._started.popitem(last=False)
        self._expire(now)

    def ended(self, stream_id: str) -> None:
        """Its terminal event went by: a reader from now on learns how it ended from the record."""
        self._started.pop(stream_id, None)

    def epoch(self, stream_id: str, now: float) -> str | None:
        """The epoch of a running stream seen starting within ``ttl_s``, else ``None`` (read the record)."""
        entry = self._started.get(stream_id)
        if entry is None or now - entry[0] > self._ttl_s:
            return None
        return entry[1]

    def _expire(self, now: float) -> None:
        while self._started:
            seen, _ = next(iter(self._started.values()))
            if now - seen <= self._ttl_s:
                return
            self._started.popitem(last=False)
