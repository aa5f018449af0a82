"""Prometheus metrics of one streamer process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class StreamerMetrics:
    """Counters and gauges a streamer keeps, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.readers_open = Gauge("tokenrelay_streamer_readers_open", "SSE readers connected now", registry=r)
        self.readers = Counter("tokenrelay_streamer_readers", "SSE readers accepted", registry=r)
        self.channels_open = Gauge(
            "tokenrelay_streamer_channels_open", "Streams with a live NATS subscription here", registry=r
        )
        self.writes = Counter("tokenrelay_streamer_writes", "Socket writes to SSE readers", registry=r)
        self.bytes_sent = Counter("tokenrelay_streamer_bytes_sent", "Bytes written to SSE readers", registry=r)
        self.history_fetches = Counter(
            "tokenrelay_streamer_history_fetches", "History reads (late or resuming readers)", registry=r
        )
        self.disconnect_cancels = Counter(
            "tokenrelay_streamer_disconnect_cancels",
            "Generations cancelled because every reader left for the grace period",
            registry=r,
        )
        self.reader_errors = Counter(
            "tokenrelay_streamer_reader_errors",
            "Readers ended with an error event, by code",
            ["code"],
            registry=r,
        )
