"""The gateway's dispatch as a state machine (sans-I/O): admission, the queue, offers, deadlines, lost runners, stops.

:class:`Dispatcher` is fed events — a stream admitted, an offer answered, refused, unanswered or timed out, the
holders' answer, a stop, a stream done, a runner's heartbeat or silence, the clock advanced — each with ``now``
(monotonic seconds), and answers with actions (``gateway/actions.py``) for its shell (``gateway/streams.py``) to
carry out: offer a job, ask which runner holds a stream, end a stream no runner took, ask an owner to halt.  It
never awaits and never touches a socket, so every decision here is specified by fast tests with a fake clock.

Each stream's :class:`~tokenrelay.gateway.states.DispatchState` moves only as ``gateway/states.py`` allows.  While
the runners have room, every new stream is offered at once, side by side.  Once a runner refused one for
capacity, its queue is served first come, first served: only the head asks again, at once when a runner says it
finished one of this gateway's streams, else after a backoff (``backoff_min_s`` doubling to ``backoff_max_s``:
runners admitted by other gateways free slots without telling this one), and each stream that leaves the queue
wakes the next head.  So the stream that waited longest gets the next free slot, and a full queue costs the
runners one refused offer per backoff, not one per queued stream.  An offer with no answer (a busy or missing
runner) is no capacity signal: taking it for one serialised a busy gateway's whole queue behind one round trip at
a time.  An offer unanswered within ``offer_timeout_s`` is followed by asking the runners which of them holds the
stream before it may be offered again, so a runner that took it but answered late keeps it instead of a second
runner generating it too.  A stream offered through the queue group that no runner answered (a member of the
group may be paused, and NATS still hands it its share) is offered next to the model's live runners in turn, each
offer addressed to one of them (``gateway/addressing.py``).

**Per-model queues.**  Streams wait in queues keyed by the job's model (``gateway/waiting.py``), and everything
"full", "head" and ``max_queued_streams`` mean is per queue.  Jobs go only to runners of their model (the shell
offers them on that model's subject), so a refusal fills only that model's queue: a saturated model never holds
up another, whose streams are still offered at once, side by side.  Admission asks the registry which models the
runners serve (``gateway/models.py``).

**Owners and generations.**  Which runner generates a stream is an :class:`~tokenrelay.gateway.states.Owner`
value (runner and generation number) kept per stream, not an attribute of the runner: stops go to the current
owner (:class:`AskOwner`), and a lost runner fails only the streams it still owns.  A stream moved to another runner
(``gateway/migration.py``) gets a new owner (:meth:`Dispatcher.moved`): its stops route there, the old runner's loss
no longer concerns it, the new one's does, and the old runner, should it be heard from again (a false loss,
:class:`Heard`), has the streams it still lists that moved away cancelled on it.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from dataclasses import dataclass

from tokenrelay.gateway.actions import (
    Action,
    AskHolders,
    AskOwner,
    AwaitDispatch,
    CancelOwner,
    Dispatched,
    EndUnstarted,
    Offer,
    RunnerLost,
    StopRoute,
)
from tokenrelay.gateway.addressing import QUEUE_GROUP, offer_order
from tokenrelay.gateway.liveness import RunnerRegistry
from tokenrelay.gateway.models import choose_model
from tokenrelay.gateway.states import WAITING, DispatchState, Owner
from tokenrelay.gateway.waiting import ModelQueue, QueueKey, WaitingStream, queue_key
from tokenrelay.runtime.config import (
    DEFAULT_DISPATCH_ATTEMPT_TIMEOUT_S,
    DEFAULT_MAX_QUEUED_STREAMS,
    DEFAULT_QUEUE_TIMEOUT_S,
    DEFAULT_RUNNER_STALE_AFTER_S,
)
from tokenrelay.wire.errors import ErrorCode, Overloaded, Unavailable
from tokenrelay.wire.messages import CancelReason, JobRequest, RunnerHeartbeat

DISPATCH_BACKOFF_MIN_S = 0.005
"""The first wait, in seconds, before a stream whose offer was refused or unanswered asks again."""
DISPATCH_BACKOFF_MAX_S = 0.1
"""The longest wait, in seconds, between two offers of one stream (the backoff doubles up to it)."""
OWNER_MEMORY_STREAMS = 100_000
"""Streams that left the queue remembered (owner, tenant), to route stops without a KV read; older ones are
forgotten first, and their stops go through the record."""
MAX_LOST_RUNNERS = 1024
"""Runners declared lost that are remembered, to count one heard from again (a false loss)."""
OFFER_TAKE_FRACTION = 0.75
"""A runner may take an offer within this fraction of the gateway's wait for the answer (``answer_by``); the rest
is for the answer's way back and for clocks that disagree by less than it (250 ms at the default 1 s)."""


@dataclass(frozen=True, slots=True)
class Heard:
    """What a heartbeat told: the runner had been declared lost (a false loss), and the streams it still lists
    that moved to another owner (a superseded runner that woke up: they are cancelled on it)."""

    returned: bool
    superseded: tuple[str, ...]


class Dispatcher:
    """The dispatch of one gateway's streams to runners, fed events with ``now`` (monotonic seconds).

    ``max_queued_streams``: streams of one model waiting for a runner at most; :meth:`admit` beyond is ``overloaded``.
    ``queue_timeout_s``: a stream no runner took within this ends with ``overloaded`` (:class:`EndUnstarted`).
    ``offer_timeout_s``: the wait for an answer to one offer, and for the holders' answer after it.
    ``runner_stale_after_s``: a runner silent this long is pinged, and lost if it does not answer.
    ``backoff_min_s``/``backoff_max_s``: the waits between offers of one stream (doubling).
    ``max_remembered_streams``: streams that left the queue kept to route stops; the oldest are forgotten first.
    """

    def __init__(
        self,
        *,
        max_queued_streams: int = DEFAULT_MAX_QUEUED_STREAMS,
        queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S,
        offer_timeout_s: float = DEFAULT_DISPATCH_ATTEMPT_TIMEOUT_S,
        runner_stale_after_s: float = DEFAULT_RUNNER_STALE_AFTER_S,
        backoff_min_s: float = DISPATCH_BACKOFF_MIN_S,
        backoff_max_s: float = DISPATCH_BACKOFF_MAX_S,
        max_remembered_streams: int = OWNER_MEMORY_STREAMS,
    ) -> None:
        self._max_queued_streams = max_queued_streams
        self._queue_timeout_s = queue_timeout_s
        self._offer_timeout_s = offer_timeout_s
        self._backoff_min_s = backoff_min_s
        self._backoff_max_s = backoff_max_s
        self._max_remembered_streams = max_remembered_streams
        self._runners = RunnerRegistry(stale_after_s=runner_stale_after_s)
        self._queues: dict[QueueKey, ModelQueue] = {}
        self._waiting: dict[str, WaitingStream] = {}
        self._left: OrderedDict[str, WaitingStream] = OrderedDict()
        """Streams that left the queue (running or finished), the most recent last."""
        self._timers: list[tuple[float, int, str, int]] = []
        """Heap of (due, tie-breaker, stream id, timer version)."""
        self._ticket = itertools.count()
        self._checking: set[str] = set()
        self._lost: OrderedDict[str, None] = OrderedDict()
        """Runners declared lost (the most recent last, at most ``MAX_LOST_RUNNERS``): one heard from again was not."""
        self._moved: OrderedDict[str, None] = OrderedDict()
        """Streams this gateway moved to another runner (the most recent last, as many as are remembered)."""

    # -- what it knows ---------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Streams waiting for a runner (offered ones included), of all models (each counts to its own limit)."""
        return len(self._waiting)

    def state_of(self, stream_id: str) -> DispatchState | None:
        """The stream's state, or ``None`` when this gateway does not know it (any more)."""
        stream = self._stream(stream_id)
        return stream.state if stream is not None else None

    def owner_of(self, stream_id: str) -> Owner | None:
        """The runner generating the stream, as far as this gateway knows."""
        stream = self._stream(stream_id)
        return stream.owner if stream is not None else None

    def tenant_of(self, stream_id: str) -> str | None:
        """The tenant that created the stream here (``None``: unknown, or created without keys)."""
        stream = self._stream(stream_id)
        return stream.job.owner if stream is not None else None

    def stopping(self, stream_id: str) -> CancelReason | None:
        """The reason of a stop waiting for the stream's dispatch to end, if one is."""
        stream = self._waiting.get(stream_id)
        return stream.stop if stream is not None else None

    def may_run(self, stream_id: str) -> bool:
        """Queued here, or taken by a runner (finished ones too, while remembered)."""
        stream = self._stream(stream_id)
        return stream is not None and (stream.state in WAITING or stream.owner is not None)

    def holds(self, stream_id: str) -> bool:
        """Queued here, or listed by a runner's last heartbeat or taken by one since."""
        return stream_id in self._waiting or self._runners.holds(stream_id)

    def next_due_at(self) -> float | None:
        """When :meth:`tick` next has something to do, or ``None`` when nothing waits on the clock."""
        while self._timers:
            _, _, stream_id, version = self._timers[0]
            stream = self._waiting.get(stream_id)
            if stream is not None and stream.timer == version and stream.state is DispatchState.QUEUED:
                return self._timers[0][0]
            heapq.heappop(self._timers)
        return None

    # -- admission -------------------------------------------------------------------------------

    def check_admission(self, model: str | None = None) -> list[RunnerHeartbeat]:
        """The runners not declared lost, or ``unavailable`` (no runner) / ``overloaded`` (``model``'s queue is
        full; without ``model``: every served model's queue is, so no stream could be admitted).

        A runner whose heartbeats are late is still being asked whether it is alive; until it is declared lost it
        counts here: a runner too busy to heartbeat on time made every new stream ``unavailable`` while it was late.
        """
        runners = self._runners.registered()
        models = [model] if model is not None else self._runners.registered_models()
        if models and all(self._queued_of(key) >= self._max_queued_streams for key in models):
            raise Overloaded("too many streams are waiting for a runner", retry_after_s=1)
        if not runners:
            raise Unavailable("no runner is available")
        return runners

    def choose_model(self, requested: str | None, *, default_model: str | None = None) -> str:
        """The model a new stream is for (``gateway/models.py``): ``model_not_found``, ``unavailable`` or
        ``bad_request`` when there is none to give it."""
        return choose_model(
            requested,
            served=self._runners.registered_models(),
            knows=self._runners.knows_model,
            default_model=default_model,
        )

    def live_models(self, now: float) -> list[str]:
        """The models served by runners heard from within ``runner_stale_after_s``, each once."""
        return self._runners.live_models(now)

    def admit(self, job: JobRequest, now: float) -> list[Action]:
        """Queue a new stream (after :meth:`check_admission`) and offer it at once unless its queue is full;
        ``model_not_found`` / ``unavailable`` unless a runner serves its model."""
        self.check_admission(job.model)
        self.choose_model(job.model)
        stream_id = job.stream_id
        if self._stream(stream_id) is not None:
            raise ValueError(f"stream {stream_id} was admitted already")
        key = queue_key(job.model)
        stream = WaitingStream(job, key, now, now + self._queue_timeout_s, self._backoff_min_s)
        self._queues.setdefault(key, ModelQueue()).streams[stream_id] = stream
        self._waiting[stream_id] = stream
        return self._turn(stream, now, woken=True)

    # -- offers ----------------------------------------------------------------------------------

    def offer_accepted(self, stream_id: str, runner_id: str, now: float) -> list[Action]:
        """A runner took the offered stream."""
        stream = self._in(stream_id, DispatchState.OFFERED)
        return self._place(stream, runner_id, now) if stream is not None else []

    def offer_refused(self, stream_id: str, now: float) -> list[Action]:
        """A runner refused the offer for capacity: the stream's queue is full until it empties."""
        stream = self._in(stream_id, DispatchState.OFFERED)
        if stream is None:
            return []
        self._queues[stream.queue].runners_full = True
        return self._retry(stream, now)

    def offer_unanswered(self, stream_id: str, now: float) -> list[Action]:
        """No runner answered at once (none subscribed), or the answer was garbage: try again later."""
        stream = self._in(stream_id, DispatchState.OFFERED)
        if stream is None:
            return []
        stream.unanswered = True
        return self._retry(stream, now)

    def offer_timed_out(self, stream_id: str, now: float) -> list[Action]:
        """No answer within ``offer_timeout_s``: a runner may have taken it late, so ask before offering again."""
        stream = self._in(stream_id, DispatchState.OFFERED)
        if stream is None:
            return []
        stream.move(DispatchState.CONFIRMING)
        return [AskHolders(stream_id, self._offer_timeout_s)]

    def holders_answered(self, stream_id: str, runner_id: str | None, now: float) -> list[Action]:
        """The runner that says it generates the stream, or ``None`` when none did in time."""
        stream = self._in(stream_id, DispatchState.CONFIRMING)
        if stream is None:
            return []
        if runner_id is not None:
            return self._place(stream, runner_id, now)
        stream.unanswered = True
        return self._retry(stream, now)

    def abandon(self, stream_id: str, now: float) -> list[Action]:
        """The shell could not go on dispatching the stream (its connection failed): it leaves the queue."""
        stream = self._waiting.get(stream_id)
        if stream is None:
            return []
        stream.move(DispatchState.FINISHED)
        return self._leave(stream, now)

    # -- the clock, stops and ends ---------------------------------------------------------------

    def tick(self, now: float) -> list[Action]:
        """The clock reached ``now``: streams whose backoff is over ask again, those past their deadline end."""
        actions: list[Action] = []
        while (due := self.next_due_at()) is not None and due <= now:
            _, _, stream_id, _ = heapq.heappop(self._timers)
            actions += self._turn(self._waiting[stream_id], now, woken=False)
        return actions

    def stop(self, stream_id: str, reason: CancelReason, now: float) -> StopRoute:
        """Route a stop: a queued stream ends now, an offered one once its offer is answered; a runner's owner
        answers for it; ``None`` when this gateway does not know the stream, or knows no runner took it."""
        stream = self._waiting.get(stream_id)
        if stream is not None:
            if stream.stop is None:  # the first stop's reason is the one recorded
                stream.stop = reason
            if stream.state is DispatchState.QUEUED:
                return AwaitDispatch(tuple(self._turn(stream, now, woken=True)))
            return AwaitDispatch(())
        left = self._left.get(stream_id)
        if left is not None and left.owner is not None:
            # A finished stream's owner answers too: a runner remembers how the streams it finished ended.
            return AskOwner(left.owner)
        return None

    def stream_done(self, stream_id: str | None, now: float) -> list[Action]:
        """A runner finished a stream admitted here (``None``: its message could not be read): a slot is free, so
        the head of the stream's queue (of every queue, when the stream is not known) asks at once."""
        stream = self._left.get(stream_id) if stream_id is not None else None
        if stream is not None and stream.state is DispatchState.RUNNING:
            stream.move(DispatchState.FINISHED)
        keys = [stream.queue] if stream is not None else list(self._queues)
        actions: list[Action] = []
        for key in keys:
            queue = self._queues.get(key)
            if queue is not None:
                actions += self._wake_head(queue, now)
        return actions

    # -- runners ---------------------------------------------------------------------------------

    def heartbeat(self, beat: RunnerHeartbeat, now: float) -> Heard:
        """A runner's heartbeat (or its answer to a ping): whether it had been declared lost, and which of the
        streams it lists this gateway moved to another owner since (to cancel on it)."""
        self._runners.on_heartbeat(beat, now)
        returned = beat.runner_id in self._lost
        if returned:
            del self._lost[beat.runner_id]
        superseded: tuple[str, ...] = ()
        if self._moved:
            superseded = tuple(
                stream_id
                for stream_id in beat.streams
                if stream_id in self._moved
                and (owner := self.owner_of(stream_id)) is not None
                and owner.runner_id != beat.runner_id
            )
        return Heard(returned=returned, superseded=superseded)

    def moved(self, job: JobRequest, owner: Owner, now: float) -> None:
        """The stream of ``job`` moved to ``owner`` (a new generation on another runner): its stops go there, and
        losing that runner is losing this stream.  A stream admitted by another gateway is remembered from here."""
        stream_id = job.stream_id
        stream = self._stream(stream_id)
        if stream is None:
            stream = WaitingStream(
                job, queue_key(job.model), now, now, self._backoff_min_s, state=DispatchState.RUNNING
            )
            self._left[stream_id] = stream
            while len(self._left) > self._max_remembered_streams:
                self._left.popitem(last=False)
        stream.owner = owner
        self._runners.on_dispatch(stream_id, owner.runner_id, now)
        self._moved[stream_id] = None
        while len(self._moved) > self._max_remembered_streams:
            self._moved.popitem(last=False)

    def live_runners(self, now: float) -> list[RunnerHeartbeat]:
        """Runners heard from within ``runner_stale_after_s``."""
        return self._runners.live(now)

    def registered_runners(self) -> list[RunnerHeartbeat]:
        """Runners not declared lost: the live ones and those whose heartbeats are late (still being asked)."""
        return self._runners.registered()

    def runners_to_check(self, now: float) -> list[str]:
        """Silent runners to ping now (each once until :meth:`runner_checked`)."""
        due = [runner_id for runner_id in self._runners.stale(now) if runner_id not in self._checking]
        self._checking.update(due)
        return due

    def runner_silent(self, runner_id: str, now: float) -> RunnerLost | None:
        """A pinged runner did not answer: lost, with the streams it may still own; ``None`` when a heartbeat came
        meanwhile.  Streams this gateway knows another runner owns now are not its to fail."""
        stream_ids = self._runners.forget(runner_id, now)
        if stream_ids is None:
            return None
        self._lost[runner_id] = None
        while len(self._lost) > MAX_LOST_RUNNERS:
            self._lost.popitem(last=False)
        lost: list[str] = []
        for stream_id in sorted(stream_ids):
            stream = self._left.get(stream_id)
            if stream is not None and stream.owner is not None and stream.owner.runner_id != runner_id:
                continue
            if stream is not None and stream.state is DispatchState.RUNNING:
                stream.move(DispatchState.FINISHED)
            lost.append(stream_id)
        return RunnerLost(runner_id, tuple(lost))

    def runner_checked(self, runner_id: str) -> None:
        """The ping of ``runner_id`` is over, however it ended; it may be checked again."""
        self._checking.discard(runner_id)

    # -- transitions -----------------------------------------------------------------------------

    def _stream(self, stream_id: str) -> WaitingStream | None:
        return self._waiting.get(stream_id) or self._left.get(stream_id)

    def _queued_of(self, key: QueueKey) -> int:
        queue = self._queues.get(key)
        return len(queue.streams) if queue is not None else 0

    def _in(self, stream_id: str, state: DispatchState) -> WaitingStream | None:
        """The waiting stream if it is in ``state``; answers that come late or twice find it elsewhere."""
        stream = self._waiting.get(stream_id)
        return stream if stream is not None and stream.state is state else None

    def _turn(self, stream: WaitingStream, now: float, *, woken: bool) -> list[Action]:
        """A queued stream's turn: end it (stopped, or past its deadline unless woken), let it wait for its turn
        as the head of a full queue, or offer it."""
        if stream.stop is not None:
            return self._end(stream, now, EndUnstarted(stream.job, cancel_reason=stream.stop))
        if not woken and now >= stream.deadline:
            return self._end(stream, now, EndUnstarted(stream.job, error=ErrorCode.OVERLOADED))
        queue = self._queues[stream.queue]
        if queue.runners_full and queue.head() is not stream:
            self._schedule(stream, stream.deadline)  # a wake as the new head comes first, or its deadline
            return []
        stream.woken = False
        stream.timer += 1
        stream.move(DispatchState.OFFERED)
        take_within_s = OFFER_TAKE_FRACTION * self._offer_timeout_s
        to = self._addressee(stream, now)
        return [Offer(stream.job, timeout_s=self._offer_timeout_s, take_within_s=take_within_s, runner_id=to)]

    def _addressee(self, stream: WaitingStream, now: float) -> str | None:
        """The runner the stream's next offer is addressed to, ``None`` for the queue group: the group until an
        offer went unanswered, then the model's live runners in turn (whatever each answered), least busy first."""
        if not stream.unanswered:
            return QUEUE_GROUP
        live = self._runners.live(now)
        order = offer_order(live, model=stream.job.model, live={beat.runner_id for beat in live})
        if not order:
            return QUEUE_GROUP
        stream.addressed += 1
        return order[(stream.addressed - 1) % len(order)]

    def _retry(self, stream: WaitingStream, now: float) -> list[Action]:
        """Back to the queue after an offer no runner took: at once if woken or stopped meanwhile, else after the
        backoff (or at the deadline, if that comes first)."""
        stream.move(DispatchState.QUEUED)
        if stream.woken or stream.stop is not None:
            return self._turn(stream, now, woken=True)
        wait_s = min(stream.backoff_s, stream.deadline - now)
        stream.backoff_s = min(2 * stream.backoff_s, self._backoff_max_s)
        if wait_s <= 0:
            return self._turn(stream, now, woken=False)
        self._schedule(stream, now + wait_s)
        return []

    def _place(self, stream: WaitingStream, runner_id: str, now: float) -> list[Action]:
        """A runner took the stream: it owns it, and a stop that waited is sent to it."""
        stream.move(DispatchState.RUNNING)
        owner = stream.owner = Owner(runner_id)
        self._runners.on_dispatch(stream.job.stream_id, runner_id, now)
        actions: list[Action] = [Dispatched(stream.job.stream_id, owner, queued_s=now - stream.admitted_at)]
        if stream.stop is not None:
            actions.append(CancelOwner(stream.job.stream_id, owner, stream.stop))
        return actions + self._leave(stream, now)

    def _end(self, stream: WaitingStream, now: float, end: EndUnstarted) -> list[Action]:
        stream.move(DispatchState.FINISHED)
        return [end, *self._leave(stream, now)]

    def _leave(self, stream: WaitingStream, now: float) -> list[Action]:
        """Take the stream out of its queue and remember it; the queue's head may ask at once."""
        stream_id = stream.job.stream_id
        del self._waiting[stream_id]
        stream.timer += 1
        self._left[stream_id] = stream
        while len(self._left) > self._max_remembered_streams:
            self._left.popitem(last=False)
        queue = self._queues[stream.queue]
        del queue.streams[stream_id]
        if not queue.streams:  # an empty queue is forgotten, and with it that its runners were full
            del self._queues[stream.queue]
            return []
        return self._wake_head(queue, now)

    def _wake_head(self, queue: ModelQueue, now: float) -> list[Action]:
        head = queue.head()
        if head is None:
            return []
        if head.state is DispatchState.QUEUED:
            return self._turn(head, now, woken=True)
        head.woken = True  # its offer is out: it asks again as soon as the answer is in
        return []

    def _schedule(self, stream: WaitingStream, due: float) -> None:
        stream.timer += 1
        heapq.heappush(self._timers, (due, next(self._ticket), stream.job.stream_id, stream.timer))
