"""Prometheus metrics of one streamer process."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector

from tokenrelay.runtime.loopmetrics import LoopMetrics
from tokenrelay.runtime.unknown import UnknownTypeCounter

log = logging.getLogger(__name__)

LAG_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class StreamerMetrics:
    """Counters and gauges a streamer keeps, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, process_cpu_seconds_total, ...
        r = self.registry
        self.readers_open = Gauge("tokenrelay_streamer_readers_open", "SSE readers connected now", registry=r)
        self.readers = Counter("tokenrelay_streamer_readers", "SSE readers accepted", registry=r)
        self.channels_open = Gauge(
            "tokenrelay_streamer_channels_open", "Streams with a live NATS subscription here", registry=r
        )
        hot = LoopMetrics(r)  # updated per write: no lock per update
        self.writes = hot.counter("tokenrelay_streamer_writes", "Socket writes to SSE readers")
        self.bytes_sent = hot.counter("tokenrelay_streamer_bytes_sent", "Bytes written to SSE readers")
        self.history_fetches = Counter(
            "tokenrelay_streamer_history_fetches",
            "History reads (late or resuming readers), by where they were served from: runner (its memory) "
            "or jetstream",
            ["source"],
            registry=r,
        )
        self.reader_lookups = Counter(
            "tokenrelay_streamer_reader_lookups",
            "How native SSE readers learned their stream's epoch: start_event (seen starting on the shared "
            "subscription, no record read), shared_history (a stream read here whose shared history is whole) or "
            "record (read from the KV bucket)",
            ["source"],
            registry=r,
        )
        self.history_reads_skipped = Counter(
            "tokenrelay_streamer_history_reads_skipped",
            "Readers whose first events from this streamer's memory were whole (from the start, no gap, no outage "
            "of the live connection since): no history read, unless a later live event shows a gap",
            registry=r,
        )
        self.reader_prefills = Counter(
            "tokenrelay_streamer_reader_prefills",
            "Readers handed their stream's first events from this streamer's memory as they joined (seen going by "
            "on the shared subscription), before any history read answered",
            registry=r,
        )
        self.shared_history_readers = Counter(
            "tokenrelay_streamer_shared_history_readers",
            "Readers that joined a stream read here already and were handed its shared history (every event from "
            "the start, kept from what its readers saw live and read): no history read of their own",
            registry=r,
        )
        self.shared_history_bytes = Gauge(
            "tokenrelay_streamer_shared_history_bytes",
            "Encoded bytes of events the streams' shared histories hold now, all streams together",
            registry=r,
        )
        self.disconnect_cancels = Counter(
            "tokenrelay_streamer_disconnect_cancels",
            "Generations cancelled because every reader left for the grace period",
            registry=r,
        )
        self.tokens_delivered = hot.counter(
            "tokenrelay_streamer_tokens_delivered",
            "Live tokens written to readers (rate() is tokens/s out of this streamer)",
        )
        self.token_lag_seconds = hot.histogram(
            "tokenrelay_streamer_token_lag_seconds",
            "Runner published a token batch -> the kernel took the write that carried it to a reader "
            "(live tokens only; one observation per write, from the oldest token in it)",
            LAG_BUCKETS_S,
        )
        self.flush_interval_seconds = Gauge(
            "tokenrelay_streamer_flush_interval_seconds",
            "How long a reader's next write is held after its last one now (grows while live tokens arrive late)",
            registry=r,
        )
        self.slow_consumer_disconnects = Counter(
            "tokenrelay_streamer_slow_consumer_disconnects",
            "Readers closed with slow_consumer (fell past their buffer limit, or a write stalled)",
            registry=r,
        )
        self.errors = Counter(
            "tokenrelay_streamer_errors",
            "Errors by code: HTTP errors answered and error events that ended a reader",
            ["code"],
            registry=r,
        )
        self.reader_errors = Counter(
            "tokenrelay_streamer_reader_errors",
            "Readers ended with an error event, by code",
            ["code"],
            registry=r,
        )
        self.unknown_event = UnknownTypeCounter(
            "tokenrelay_streamer_unknown_events",
            "Stream events of a type this streamer does not know (a newer runner's), skipped with their seq counted "
            "as seen, by type; each time one is read, live or from history",
            registry=r,
            log=log,
            doing="skipping stream events",
            sender="a newer runner",
        )
        """Count (and log the first of each type) a received message of a type this process does not know."""
