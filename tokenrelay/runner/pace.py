"""Sans-I/O publish pacing: how long a runner holds a stream's tokens before it publishes them.

Every NATS message of a delta costs the same at each hop whatever it carries: the runner encodes and
publishes it, the nats-server routes it and stores it in the events stream, every streamer parses it,
decodes it and hands it to its readers.  While tokens reach the streamers on time, each is published
within ``base_interval_s`` (the first of a quiet stream at once).  While a streamer reports that live
events reach it late (its readers' writes are already held up to that lateness), the runner holds each
stream's tokens for as long, up to ``max_interval_s``: the same tokens go out in fewer, larger messages,
and every hop's cost per token falls until the streamer has caught up.  A held batch is stamped with its
oldest token's time, so the holding counts as lag wherever lag is measured.

Streamers report (:class:`~tokenrelay.wire.messages.StreamerLag`) every ``LAG_REPORT_INTERVAL_S`` while they are
late and once more when they are on time again; a report older than ``LAG_REPORT_TTL_S`` no longer counts.
The slowest streamer heard from sets the pace.
"""

from __future__ import annotations

from tokenrelay.runtime.intervals import AdaptiveInterval
from tokenrelay.wire.messages import LAG_REPORT_TTL_S

MAX_STREAMERS = 1024
"""Late streamers remembered at once; a report from one more is ignored until some expire (a bound on memory
whatever is published on the subject)."""


class PublishPace(AdaptiveInterval):
    """The publish interval of every stream of one runner, from the streamers' lateness reports."""

    def __init__(self, base_interval_s: float, *, max_interval_s: float | None = None) -> None:
        super().__init__(base_interval_s, max_interval_s=max_interval_s)
        self._reports: dict[str, tuple[float, float]] = {}
        """streamer id -> (its lateness in seconds, when it was heard)."""

    def report(self, streamer_id: str, lag_s: float, now: float) -> None:
        """A streamer's average lateness of live events at ``now`` (0 or less: on time)."""
        if lag_s > 0:
            if streamer_id not in self._reports and len(self._reports) >= MAX_STREAMERS:
                return
            self._reports[streamer_id] = (lag_s, now)
        else:
            self._reports.pop(streamer_id, None)
        self._update(now)

    def expire(self, now: float) -> None:
        """Forget reports older than ``LAG_REPORT_TTL_S`` (call it now and then)."""
        stale = [sid for sid, (_, heard) in self._reports.items() if now - heard > LAG_REPORT_TTL_S]
        for sid in stale:
            del self._reports[sid]
        if stale:
            self._update(now)

    def _update(self, now: float) -> None:
        self.follow(max((lag for lag, heard in self._reports.values() if now - heard <= LAG_REPORT_TTL_S), default=0.0))
