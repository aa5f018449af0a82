"""Streams seen starting on the shared live subscription: their epochs while they run, and their first events.

A reader's ``GET`` needs the stream's epoch (its cursor must belong to it, and every event id
carries it) and the events published before it connected.  Both are NATS round trips away, the
record in the KV bucket and the history its runner holds, and under load each waits behind
everything else on both event loops: at 1,000 x 20 tokens/s each took 0.4 to 0.8 s per reader
while streams started, and every live token published meanwhile waited behind them.  A streamer
on the shared wildcard subscription has already seen those events go by, usually before the
reader connects, so it can remember them.

:class:`RecentStarts` is that memory, sans-I/O.  For each stream whose ``start`` it saw and whose
terminal event it has not: the epoch, and the stream's events as they were published (raw bytes,
from the ``start`` on) until its first reader here takes them; once its terminal event went by, only
that it was seen (:meth:`RecentStarts.seen`: a reader of a stream never seen starting waits for its
``start``).  Bounds: ``max_streams`` streams (the oldest go first), none older than ``ttl_s``, at most
``max_stream_bytes`` of events per stream (past it only the epoch is kept) and ``max_total_bytes`` in
all (past it a new stream keeps only its epoch).

What the hub and the HTTP shell do with it: a stream it does not know (a miss, an ended stream, a
streamer that joined late, ``per-stream`` mode) has its record read as before, and so has every
reader with an API key, whose tenant must own the stream (the record names the owner, the
``start`` event does not).  The first events replace the history read when they are whole: kept from
the ``start`` on, within bounds, with no outage of the live connection since (:meth:`RecentStarts.lost_connection`)
and, as the hub checks, ``seq`` 0, 1, 2, ... without a gap.  Everything published after them reaches the
reader live, as after a history read from the runner, so nothing is missing.  Otherwise they are a head
start: the reader still reads history, which fills any gap and repeats nothing (events are dropped by
``seq``), but no longer waits for it before its first byte.  At 1,000 new streams in 5 s, 60 to 111 of
their first readers read history instead of all 1,000 (each read a request the runner answers while it
generates), and the token lag p99 went from 1.95-2.40 s to 0.86-1.72 s in three alternating rounds.

The byte prefixes let the hub spot ``start`` and terminal events of streams nobody reads here
without decoding them (the codec writes ``type`` first; a test pins that).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

START_PREFIX = b'{"type":"start"'
TERMINAL_PREFIXES = (b'{"type":"end"', b'{"type":"error"')
DEFAULT_MAX_STREAMS = 50_000
"""At ~200 bytes an entry without events, ~10 MB at most."""
DEFAULT_TTL_S = 60.0
"""Long enough for any reader that connects right after its ``POST``; an older stream's reader reads its record."""
DEFAULT_MAX_STREAM_BYTES = 16 * 1024
"""Events kept per stream until its first reader here takes them (~130 synthetic tokens, one at a time)."""
DEFAULT_MAX_TOTAL_BYTES = 16 * 1024 * 1024
"""Events kept for all streams together (1,000 streams' first 16 KiB)."""


@dataclass(frozen=True, slots=True)
class Kept:
    """A stream's events kept from its ``start`` on, as its first reader takes them."""

    events: list[bytes]
    whole: bool
    """No outage of the live connection since the ``start``: every event it delivered is here (the caller
    still checks their ``seq``)."""


@dataclass(slots=True)
class _Seen:
    at: float
    epoch: str
    events: list[bytes] | None
    """Raw events from the ``start`` on, or ``None``: taken by a reader, over a bound, or never kept."""
    size: int = 0
    whole: bool = True
    ended: bool = False
    """Its terminal event went by: only the fact that it was seen is kept (:meth:`RecentStarts.seen`)."""


class RecentStarts:
    """``stream id -> epoch`` (and first events) of streams seen starting and not yet seen ending, bounded."""

    def __init__(
        self,
        *,
        max_streams: int = DEFAULT_MAX_STREAMS,
        ttl_s: float = DEFAULT_TTL_S,
        max_stream_bytes: int = DEFAULT_MAX_STREAM_BYTES,
        max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    ) -> None:
        for name, value in (("max_streams", max_streams), ("ttl_s", ttl_s)):
            if value <= 0:
                raise ValueError(f"{name} must be > 0")
        for name, value in (("max_stream_bytes", max_stream_bytes), ("max_total_bytes", max_total_bytes)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0")
        self._max_streams = max_streams
        self._ttl_s = ttl_s
        self._max_stream_bytes = max_stream_bytes
        self._max_total_bytes = max_total_bytes
        self._seen: OrderedDict[str, _Seen] = OrderedDict()
        """Oldest ``start`` first."""
        self.total_bytes = 0
        """Bytes of events kept now, all streams together."""

    def __len__(self) -> int:
        return len(self._seen)

    def started(self, stream_id: str, epoch: str, data: bytes | None, now: float) -> None:
        """A ``start`` event went by; keep ``data`` (its bytes) as the stream's first event, or only the epoch.

        A stream started again on another runner starts over with its new epoch.
        """
        self._forget(stream_id)
        seen = _Seen(now, epoch, events=None)
        room = min(self._max_stream_bytes, self._max_total_bytes - self.total_bytes)
        if data is not None and len(data) <= room:
            seen.events, seen.size = [data], len(data)
            self.total_bytes += seen.size
        self._seen[stream_id] = seen
        while len(self._seen) > self._max_streams:
            self._forget(next(iter(self._seen)))
        self._expire(now)

    def published(self, stream_id: str, data: bytes) -> None:
        """A later event of the stream went by (nobody reads it here yet): keep it while within bounds."""
        seen = self._seen.get(stream_id)
        if seen is None or seen.events is None:
            return
        size = len(data)
        if seen.size + size > self._max_stream_bytes or self.total_bytes + size > self._max_total_bytes:
            self._drop_events(seen)  # a partial prefix is no head start: the reader reads history as before
            return
        seen.events.append(data)
        seen.size += size
        self.total_bytes += size

    def lost_connection(self) -> None:
        """The live connection was down: events published meanwhile never came by, so none kept so far is whole."""
        for seen in self._seen.values():
            seen.whole = False

    def ended(self, stream_id: str) -> None:
        """Its terminal event went by: a reader from now on learns how it ended from the record (its events and
        epoch are dropped; that it was seen is kept, within the same bounds)."""
        seen = self._seen.get(stream_id)
        if seen is not None:
            self._drop_events(seen)
            seen.ended = True

    def seen(self, stream_id: str, now: float) -> bool:
        """Whether its ``start`` went by within ``ttl_s`` (running or ended since); ``False`` for one never seen,
        or forgotten (older than ``ttl_s``, or past ``max_streams``)."""
        seen = self._seen.get(stream_id)
        return seen is not None and now - seen.at <= self._ttl_s

    def epoch(self, stream_id: str, now: float) -> str | None:
        """The epoch of a running stream seen starting within ``ttl_s``, else ``None`` (read the record)."""
        seen = self._seen.get(stream_id)
        if seen is None or seen.ended or now - seen.at > self._ttl_s:
            return None
        return seen.epoch

    def take_events(self, stream_id: str, epoch: str) -> Kept | None:
        """The stream's events from its ``start`` on, once (its first reader takes them; the epoch stays known).

        ``None`` when none are kept, or they belong to another epoch than the reader's.
        """
        seen = self._seen.get(stream_id)
        if seen is None or seen.events is None or seen.epoch != epoch:
            return None
        kept = Kept(seen.events, seen.whole)
        self._drop_events(seen)
        return kept

    def _drop_events(self, seen: _Seen) -> None:
        self.total_bytes -= seen.size
        seen.events = None
        seen.size = 0

    def _forget(self, stream_id: str) -> None:
        seen = self._seen.pop(stream_id, None)
        if seen is not None:
            self._drop_events(seen)

    def _expire(self, now: float) -> None:
        while self._seen:
            stream_id, seen = next(iter(self._seen.items()))
            if now - seen.at <= self._ttl_s:
                return
            self._forget(stream_id)
