"""Prometheus metrics of one gateway process.

A ``model`` label holds only models the runners announced (admission refuses any other), so its values are bounded
by the models served.
"""

from __future__ import annotations

import enum
import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from tokenrelay.runtime.unknown import UnknownTypeCounter

log = logging.getLogger(__name__)

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class OfferOutcome(enum.StrEnum):
    """What became of one offer of a new stream (the ``outcome`` label of ``tokenrelay_gateway_job_offers_total``)."""

    ACCEPTED = "accepted"
    REFUSED = "refused"
    """A runner answered no (at capacity, draining)."""
    UNANSWERED = "unanswered"
    """No runner could receive it ("no responders"), or its answer was not one."""
    TIMED_OUT = "timed_out"
    """No answer within the offer's wait: a busy runner, or a paused member of the queue group."""


class GatewayMetrics:
    """Counters and gauges a gateway keeps, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, process_cpu_seconds_total, ...
        r = self.registry
        self.streams_created = Counter(
            "tokenrelay_gateway_streams_created", "Streams admitted, by model", ["model"], registry=r
        )
        self.streams_queued = Gauge("tokenrelay_gateway_streams_queued", "Streams waiting for a runner", registry=r)
        self.streams_not_started = Counter(
            "tokenrelay_gateway_streams_not_started",
            "Streams that ended before any runner took them, by model and finish reason (cancelled while queued, "
            "error)",
            ["model", "finish_reason"],
            registry=r,
        )
        self.errors = Counter("tokenrelay_gateway_errors", "Errors answered, by code", ["code"], registry=r)
        self.control_sockets = Gauge(
            "tokenrelay_gateway_control_sockets_open", "Control WebSockets open now", registry=r
        )
        self.control_messages = Counter(
            "tokenrelay_gateway_control_messages", "Control messages by type", ["type"], registry=r
        )
        self.dispatch_seconds = Histogram(
            "tokenrelay_gateway_dispatch_seconds", "Stream admitted -> a runner accepted it",
            buckets=LATENCY_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.stop_seconds = Histogram(
            "tokenrelay_gateway_stop_seconds", "Stop received -> owner confirmed the halt",
            buckets=LATENCY_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.cancellations = Counter(
            "tokenrelay_gateway_cancellations",
            "Stops handled, by reason (client, disconnect, runner_lost)",
            ["reason"],
            registry=r,
        )
        self.unread_cancels = Counter(
            "tokenrelay_gateway_unread_cancels",
            "Streams cancelled because no reader connected within --unread-grace-s of their admission",
            registry=r,
        )
        self.runners_available = Gauge(
            "tokenrelay_gateway_runners_available", "Runners heard from recently", registry=r
        )
        self.runner_checks = Counter(
            "tokenrelay_gateway_runner_checks",
            "Runners whose heartbeats stopped and were pinged, by outcome (answered, lost)",
            ["outcome"],
            registry=r,
        )
        self.moves = Counter(
            "tokenrelay_gateway_stream_moves",
            "Streams of lost runners this gateway handled, by outcome (moved to another runner; ended: it had "
            "finished; lost: ended runner_lost; taken: another gateway moved it)",
            ["outcome"],
            registry=r,
        )
        self.runners_returned = Counter(
            "tokenrelay_gateway_runners_returned",
            "Runners declared lost that were heard from again (a false loss: late heartbeats, a pause, a partition); "
            "their moved streams are cancelled on them",
            registry=r,
        )
        self.job_offers = Counter(
            "tokenrelay_gateway_job_offers",
            "Offers of new streams to the runners, by where they went (group: the model's queue group; runner: "
            "addressed to one, after an offer went unanswered) and outcome (accepted, refused, unanswered, timed_out)",
            ["to", "outcome"],
            registry=r,
        )
        self.feedback = Counter("tokenrelay_gateway_feedback", "Feedback stored, by rating", ["rating"], registry=r)
        self.unknown_message = UnknownTypeCounter(
            "tokenrelay_gateway_unknown_messages",
            "Messages of a type this gateway does not know (a newer process's), dropped, by type",
            registry=r,
            log=log,
            doing="dropping messages",
            sender="a newer process",
        )
        """Count (and log the first of each type) a received message of a type this process does not know."""

    def offered(self, runner_id: str | None, outcome: OfferOutcome) -> None:
        """Count one offer of a new stream: through the queue group (``runner_id`` ``None``) or addressed to one."""
        self.job_offers.labels(to="group" if runner_id is None else "runner", outcome=str(outcome)).inc()
