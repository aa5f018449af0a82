"""Streams no reader has come for yet: which to check, and when (sans-I/O).

A client that disconnects and does not come back within a grace period cancels its generation
(``streamer/abandon.py``).  So must a client that never connects: a ``POST`` whose client crashed
before its ``GET`` would otherwise keep an engine generating for nobody until ``max_tokens``.  The
streamers see readers come and go, but none sees a reader that never came, so the gateway that
admitted a stream checks it: ``grace_s`` after admission, unless the stream ended before, it asks
every streamer whether it has a reader of the stream (or had one whose grace period runs there), and
cancels it with reason ``disconnect`` when none says so.

:class:`UnreadWatch` is the schedule.  Streams are kept in admission order, which is also the order
of their deadlines (one grace period for all), so the next one due is always the oldest: no timer
per stream, and ``O(1)`` per stream admitted, ended or due.  At most ``max_streams`` are watched;
past that the oldest is let go unchecked (counted in :attr:`UnreadWatch.let_go`), which costs at
worst the generation it would have saved, never a stream somebody reads.
"""

from __future__ import annotations

DEFAULT_MAX_STREAMS = 100_000
"""Streams watched at once at most: at 1,000 new streams a second, a grace period of 100 s."""


class UnreadWatch:
    """Admitted streams waiting for their grace period to end, in admission order."""

    def __init__(self, *, grace_s: float, max_streams: int = DEFAULT_MAX_STREAMS) -> None:
        if grace_s <= 0:
            raise ValueError("grace_s must be > 0")
        if max_streams <= 0:
            raise ValueError("max_streams must be > 0")
        self.grace_s = grace_s
        self._max_streams = max_streams
        self._due_at: dict[str, float] = {}
        """Stream id -> when its grace period ends; dicts keep insertion order, so the first is due first."""
        self.let_go = 0
        """Streams dropped unchecked because :attr:`max_streams` were watched already."""

    def __len__(self) -> int:
        return len(self._due_at)

    def admitted(self, stream_id: str, now: float) -> None:
        """Watch a stream admitted at ``now``."""
        self._due_at[stream_id] = now + self.grace_s
        while len(self._due_at) > self._max_streams:
            del self._due_at[next(iter(self._due_at))]
            self.let_go += 1

    def ended(self, stream_id: str) -> None:
        """The stream ended (or was stopped): nothing to check."""
        self._due_at.pop(stream_id, None)

    def next_due_in(self, now: float) -> float | None:
        """Seconds until the next stream is due (0 when one is), or ``None`` when none is watched."""
        first = next(iter(self._due_at.values()), None)
        return None if first is None else max(0.0, first - now)

    def due(self, now: float) -> list[str]:
        """The streams whose grace period has ended by ``now``, oldest first; they are no longer watched."""
        out: list[str] = []
        for stream_id, due_at in self._due_at.items():
            if due_at > now:
                break
            out.append(stream_id)
        for stream_id in out:
            del self._due_at[stream_id]
        return out
