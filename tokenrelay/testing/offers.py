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
    """Copies of the job offers on a NATS server, from :meth:`watching` until :meth:`close`."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._seen: list[tuple[str, JobRequest]] = []

    @classmethod
    async def watching(cls, nats_url: str) -> OfferLog:
        """Watch every offer from now on (the subscriptions are in place on return)."""
        log = cls(await natsio.connect(nats_url, name="test-offers"))
        for subject in (GROUP_OFFERS, ADDRESSED_OFFERS):
            await log._nc.subscribe(subject, cb=log._on_offer)
        await log._nc.flush()
        return log

    async def _on_offer(self, msg: Msg) -> None:
        self._seen.append((msg.subject, codec.decode_as(msg.data, JobRequest)))

    def of(self, stream_id: str) -> Offers:
        """The offers of one stream seen so far."""
        offers = Offers()
        for subject, job in self._seen:
            if job.stream_id != stream_id:
                continue
            if subject.startswith(f"{subjects.JOBS_PREFIX}."):
                offers.group.append(job)
            else:
                offers.addressed.setdefault(subject, []).append(job)
        return offers

    async def close(self) -> None:
        await self._nc.close()
