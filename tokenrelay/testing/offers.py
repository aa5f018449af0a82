"""Every job offer a test saw: those on the models' queue group subjects and those addressed to one runner.

A plain subscription (no queue group) gets a copy of each offer whichever runner it goes to, so a test can tell
how a stream was offered, not only that it started.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from tokenrelay.runtime import natsio
from tokenrelay.wire import codec, subjects
from tokenrelay.wire.messages import JobRequest

ADDRESSED_OFFERS = "tokenrelay.runner.*.jobs"
"""The subjects of the offers addressed to one runner (``subjects.runner_jobs``)."""
GROUP_OFFERS = f"{subjects.JOBS_PREFIX}.>"
"""The subjects of the offers to a model's queue group (``subjects.jobs``)."""


@dataclass(frozen=True, slots=True)
class Offers:
    """One stream's offers: through the queue group, and addressed to runners (by subject), in the order seen."""

    group: list[JobRequest] = field(default_factory=list)
    addressed: dict[str, list[JobRequest]] = field(default_factory=dict)


class OfferLog:
    """Copies of the job offers on a NATS server or cluster, from :meth:`watching` until :meth:`close`.

    On a cluster it watches from every node: a subscription's interest reaches the other nodes a moment after the
    subscription, and an offer published on a node that does not know of it yet would be missed.  The node the
    offer is published on always knows of its own subscription, so the copies from the other nodes are dropped (an
    offer's bytes are its own: each carries the time it may be taken until)."""

    def __init__(self, connections: list[NATS]) -> None:
        self._connections = connections
        self._seen: dict[tuple[str, bytes], JobRequest] = {}

    @classmethod
    async def watching(cls, nats_url: str) -> OfferLog:
        """Watch every offer from now on (the subscriptions are in place on every node on return)."""
        urls = nats_url.split(",")
        log = cls([await natsio.connect(url, name="test-offers") for url in urls])
        for nc in log._connections:
            for subject in (GROUP_OFFERS, ADDRESSED_OFFERS):
                await nc.subscribe(subject, cb=log._on_offer)
            await nc.flush()
        return log

    async def _on_offer(self, msg: Msg) -> None:
        self._seen.setdefault((msg.subject, msg.data), codec.decode_as(msg.data, JobRequest))

    def of(self, stream_id: str) -> Offers:
        """The offers of one stream seen so far."""
        offers = Offers()
        for (subject, _), job in self._seen.items():
            if job.stream_id != stream_id:
                continue
            if subject.startswith(f"{subjects.JOBS_PREFIX}."):
                offers.group.append(job)
            else:
                offers.addressed.setdefault(subject, []).append(job)
        return offers

    async def close(self) -> None:
        for nc in self._connections:
            await nc.close()
