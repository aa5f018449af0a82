"""What the gateway's dispatch asks its shell to do, and where it routes a stop (``gateway/dispatch.py``).

Each value is a decision already taken: the shell (``gateway/streams.py``) carries it out over NATS and reports
what came of it back to the :class:`~tokenrelay.gateway.dispatch.Dispatcher` as an event.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenrelay.gateway.states import Owner
from tokenrelay.wire.errors import ErrorCode
from tokenrelay.wire.messages import CancelReason, FinishReason, JobRequest


@dataclass(frozen=True, slots=True)
class Offer:
    """Offer ``job`` to the runners (through the model's queue group, or addressed to ``runner_id`` alone), waiting
    ``timeout_s`` for an answer; no runner may take it after ``take_within_s`` (sent as the wall-clock
    ``answer_by``).  The outcome is reported to the dispatcher's ``offer_accepted``, ``offer_refused``,
    ``offer_unanswered`` or ``offer_timed_out``."""

    job: JobRequest
    timeout_s: float
    take_within_s: float
    runner_id: str | None = None


@dataclass(frozen=True, slots=True)
class AskHolders:
    """Ask the runners which of them generates the stream (waiting ``timeout_s``); the answer is reported to the
    dispatcher's ``holders_answered``."""

    stream_id: str
    timeout_s: float


@dataclass(frozen=True, slots=True)
class Dispatched:
    """A runner took the stream after it waited ``queued_s`` (metrics and the lifecycle log)."""

    stream_id: str
    owner: Owner
    queued_s: float


@dataclass(frozen=True, slots=True)
class EndUnstarted:
    """End a stream no runner took: cancelled for ``cancel_reason``, or failed with ``error``.  A stop waiting on
    the stream is answered once it is ended."""

    job: JobRequest
    cancel_reason: CancelReason | None = None
    error: ErrorCode | None = None

    @property
    def finish_reason(self) -> FinishReason:
        """How the stream ends: ``error`` with an error code, else ``cancelled``."""
        return FinishReason.ERROR if self.error is not None else FinishReason.CANCELLED


@dataclass(frozen=True, slots=True)
class CancelOwner:
    """A stop came while the stream was offered and a runner took it: ask its owner to halt it, and answer the stop
    with the owner's reply."""

    stream_id: str
    owner: Owner
    reason: CancelReason


Action = Offer | AskHolders | Dispatched | EndUnstarted | CancelOwner
"""What the shell carries out for the dispatcher."""


@dataclass(frozen=True, slots=True)
class StopResult:
    """What a stop answers: the stream's final state."""

    stream_id: str
    finish_reason: FinishReason | None
    tokens: int
    halted_ts: float | None = None


@dataclass(frozen=True, slots=True)
class AwaitDispatch:
    """A stop of a stream still in the queue: it is answered by the :class:`EndUnstarted` or :class:`CancelOwner`
    that ends its dispatch (in ``actions`` already when the stream was not offered at the time)."""

    actions: tuple[Action, ...]


@dataclass(frozen=True, slots=True)
class AskOwner:
    """A stop of a stream a runner took: its owner answers it."""

    owner: Owner


StopRoute = AwaitDispatch | AskOwner | None
"""Where a stop goes; ``None``: not this gateway's to answer, the stream's record says who owns it."""


@dataclass(frozen=True, slots=True)
class RunnerLost:
    """A silent runner did not answer its ping: end ``stream_ids`` (those it may still own) with ``runner_lost``."""

    runner_id: str
    stream_ids: tuple[str, ...]
