"""The streams a gateway's dispatcher holds until a runner takes them, and their queues: one per model
(``gateway/dispatch.py`` decides; this is what it keeps)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tokenrelay.gateway.states import DispatchState, Owner, advance
from tokenrelay.wire.messages import CancelReason, JobRequest

QueueKey = str


def queue_key(model: str) -> QueueKey:
    """The queue a stream of ``model`` waits in: one per model, as runners take only the jobs of their models."""
    return model


@dataclass(eq=False, slots=True)
class WaitingStream:
    """A stream admitted and not yet taken by a runner (or stopped, or timed out), as the dispatcher tracks it."""

    job: JobRequest
    queue: QueueKey
    admitted_at: float
    deadline: float
    backoff_s: float
    state: DispatchState = DispatchState.QUEUED
    woken: bool = False
    """Asking the runners again may get another answer than the last: it became the head, or a runner finished one
    of this gateway's streams while its offer was out."""
    stop: CancelReason | None = None
    owner: Owner | None = None
    timer: int = 0
    """Version of its pending timer: a timer entry with another version is stale."""
    unanswered: bool = False
    """An offer of it went unanswered (no runner said it holds the stream either): its next offers are addressed to
    the model's live runners in turn (``gateway/addressing.py``), not to the queue group."""
    addressed: int = 0
    """Offers of it addressed to one runner so far: whose turn the next one is."""

    def move(self, target: DispatchState) -> None:
        self.state = advance(self.job.stream_id, self.state, target)


@dataclass(slots=True)
class ModelQueue:
    """The streams of one model waiting for a runner, first come, first served."""

    streams: dict[str, WaitingStream] = field(default_factory=dict)
    """Streams in the order they were admitted (dicts keep it): the first is the head."""
    runners_full: bool = False
    """A runner refused a stream of this queue for capacity since the queue was last empty."""

    def head(self) -> WaitingStream | None:
        return next(iter(self.streams.values()), None)
