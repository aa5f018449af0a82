"""Prometheus metrics of one runner process.

The ``model`` label holds only the models this runner serves (:data:`OTHER_MODEL` for anything else), so its values
are bounded by the models its engine announced.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from tokenrelay.runtime.loopmetrics import LoopMetrics
from tokenrelay.runtime.unknown import UnknownTypeCounter

log = logging.getLogger(__name__)

OTHER_MODEL = "other"
"""The ``model`` label of a stream whose model this runner does not announce (none should reach it)."""
TTFT_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class RunnerMetrics:
    """Counters and gauges a runner keeps, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, process_cpu_seconds_total, ...
        r = self.registry
        self.active_streams = Gauge("tokenrelay_runner_active_streams", "Streams generating now", registry=r)
        self.capacity = Gauge("tokenrelay_runner_capacity", "Streams this runner generates at once", registry=r)
        self.publish_interval = Gauge(
            "tokenrelay_runner_publish_interval_seconds",
            "How long tokens are held for one message now (grows while a streamer reports lateness)",
            registry=r,
        )
        self.streams = Counter(
            "tokenrelay_runner_streams", "Finished streams by finish reason", ["finish_reason"], registry=r
        )
        hot = LoopMetrics(r)  # updated per token: no lock per update
        self.tokens = hot.counter("tokenrelay_runner_tokens", "Tokens produced by the engine")
        self.messages = hot.counter("tokenrelay_runner_published_messages", "Event messages published")
        self.tokens_after_cancel = Counter(
            "tokenrelay_runner_tokens_after_cancel",
            "Tokens the engine produced after a cancel had reached this runner",
            registry=r,
        )
        self.cancellations = Counter(
            "tokenrelay_runner_cancellations", "Cancellations by reason", ["reason"], registry=r
        )
        self.cancel_seconds = Histogram(
            "tokenrelay_runner_cancel_seconds",
            "Cancel request received -> engine halted",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
            registry=r,
        )
        self.errors = Counter(
            "tokenrelay_runner_errors",
            "Errors by code: streams ended with an error event, and HTTP errors answered",
            ["code"],
            registry=r,
        )
        self.stream_tokens_per_second = Histogram(
            "tokenrelay_runner_stream_tokens_per_second",
            "Decode speed of each finished stream (tokens after the first / seconds since the first)",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000),
            registry=r,
        )
        self.jobs_rejected = Counter("tokenrelay_runner_jobs_rejected", "Jobs refused at capacity", registry=r)
        self.unknown_message = UnknownTypeCounter(
            "tokenrelay_runner_unknown_messages",
            "Messages of a type this runner does not know (a newer process's), dropped, by type",
            registry=r,
            log=log,
            doing="dropping messages",
            sender="a newer process",
        )
        """Count (and log the first of each type) a received message of a type this process does not know."""
        self.jobs_stale = Counter(
            "tokenrelay_runner_jobs_stale",
            "Job offers left unanswered because the gateway had stopped waiting for the answer (answer_by passed)",
            registry=r,
        )
        self.ttft = Histogram(
            "tokenrelay_runner_ttft_seconds",
            "Job accepted -> first token published",
            buckets=TTFT_BUCKETS_S,
            registry=r,
        )
        self.model_streams_started = Counter(
            "tokenrelay_runner_model_streams_started", "Streams this runner started generating, by model", ["model"],
            registry=r,
        )  # fmt: skip
        self.model_streams_finished = Counter(
            "tokenrelay_runner_model_streams_finished", "Streams this runner finished, by model and finish reason",
            ["model", "finish_reason"], registry=r,
        )  # fmt: skip
        self.model_tokens = Counter(
            "tokenrelay_runner_model_tokens", "Tokens of the streams this runner finished, by model", ["model"],
            registry=r,
        )  # fmt: skip
        self.model_ttft = Histogram(
            "tokenrelay_runner_model_ttft_seconds", "Job accepted -> first token published, by model", ["model"],
            buckets=TTFT_BUCKETS_S, registry=r,
        )  # fmt: skip
