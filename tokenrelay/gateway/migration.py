"""Moving a lost runner's unfinished streams to other runners of their model, each behind a recorded cut-off.

Every gateway keeps the jobs it dispatched (KV ``tokenrelay_jobs``, written after the offer, off the first token's
path), so any gateway can move a stream, the one that admitted it may be gone too.  Every gateway that sees a
runner lost tries to move its streams; the record's compare-and-set lets exactly one do each.  For one stream:

1. its record: finished, or owned by another runner since: nothing to do.  Moved ``max_migrations`` times already,
   or its job not kept: it ends ``runner_lost``, as it did before streams could move;
2. its history from JetStream, planned by :func:`~tokenrelay.gateway.moves.plan_move`: already ended (its record is
   finished from the terminal event), or broken (``runner_lost``), or to be continued at a cut-off;
3. no live runner of its model can continue it (``RunnerHeartbeat.continues``): ``runner_lost``;
4. the cut-off is recorded (the record's ``generation``, by compare-and-set) *before* anyone continues, then
   announced on the stream's subject (:class:`~tokenrelay.wire.messages.StreamFence`), then the continuation is
   offered to each runner that can take it, addressed to that runner (``tokenrelay.runner.<id>.jobs``: the lost
   runner may be paused and still in the model's queue group), until one takes it, within ``migration_timeout_s``
   (else ``runner_lost``).

A stop of the stream is routed to the new owner (the dispatcher is told), and a superseded owner that wakes up is
cancelled when its heartbeat lists the stream (``gateway/lost_runners.py``); whatever it publishes meanwhile is void
at every reader, in the history and in its own record writes (``wire/fencing.py``).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from dataclasses import replace

from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from tokenrelay.gateway import ROLE
from tokenrelay.gateway.addressing import QUEUE_GROUP, offer_order
from tokenrelay.gateway.dispatch import OFFER_TAKE_FRACTION, Dispatcher
from tokenrelay.gateway.moves import Broken, Continue, Ended, plan_move
from tokenrelay.gateway.states import Owner
from tokenrelay.runtime import natsio
from tokenrelay.runtime.config import GatewayConfig
from tokenrelay.runtime.lifecycle import LifecycleEvent, log_event
from tokenrelay.runtime.tasks import TaskSet
from tokenrelay.wire import codec, subjects
from tokenrelay.wire.codec import CodecError, UnknownMessageType
from tokenrelay.wire.messages import (
    Continuation,
    FinishReason,
    JobAccepted,
    JobRequest,
    Message,
    ReceivedEvent,
    StreamEnd,
    StreamError,
    StreamFence,
    StreamRecord,
    StreamState,
)

log = logging.getLogger(__name__)

JOB_WRITE_TIMEOUT_S = 8.0
"""How long keeping a dispatched job is tried while the jobs' bucket elects a leader."""
LEADER_CATCH_UP_S = 2.0
"""How long a stream's history, read from any replica, may take to reach the event its leader holds last."""
OFFER_WAIT_FIRST_S = 0.05
"""The first pause, in seconds, before a continuation no runner took is offered again (doubling)."""
OFFER_WAIT_MAX_S = 0.5
"""The longest pause, in seconds, between two offers of one continuation."""


class MoveOutcome(enum.StrEnum):
    """What became of one stream of a lost runner."""

    MOVED = "moved"
    """Another runner continues it."""
    ENDED = "ended"
    """It had finished: its record says so, or its terminal event was stored (its record is finished from it)."""
    LOST = "lost"
    """It cannot move (migrations used up, no job kept, history broken, no runner can continue it, none took it):
    the caller ends it ``runner_lost``."""
    TAKEN = "taken"
    """Another gateway moved it, or its record says another owner has it: nothing for this gateway to do."""


class StreamMover:
    """Keeps dispatched jobs, and moves a lost runner's streams (one :meth:`move` per stream)."""

    def __init__(
        self,
        *,
        nc: NATS,
        records: KeyValue,
        jobs: KeyValue,
        dispatch: Dispatcher,
        max_migrations: int,
        timeout_s: float,
        offer_timeout_s: float,
    ) -> None:
        self._nc = nc
        self._records = records
        self._jobs = jobs
        self._dispatch = dispatch
        self._max_migrations = max_migrations
        self._timeout_s = timeout_s
        self._offer_timeout_s = offer_timeout_s
        self._tasks = TaskSet()

    def keep(self, job: JobRequest) -> None:
        """Keep a dispatched stream's job for whoever may move it (in the background; a failure only means the
        stream cannot move)."""
        if self._max_migrations > 0:
            self._tasks.spawn(self._keep(job), name=f"keep-job-{job.stream_id}")

    async def _keep(self, job: JobRequest) -> None:
        data = codec.encode(job)
        try:
            await natsio.retrying(
                f"stream {job.stream_id}: job",
                lambda: self._jobs.put(job.stream_id, data),
                timeout_s=JOB_WRITE_TIMEOUT_S,
            )
        except Exception as exc:
            log.warning("stream %s: could not keep its job (it cannot move to another runner): %r", job.stream_id, exc)

    def close(self) -> None:
        """Stop keeping jobs."""
        self._tasks.cancel()

    async def move(self, stream_id: str, lost_runner_id: str) -> MoveOutcome:
        """Move one stream of the lost runner ``lost_runner_id`` (the steps in this module's docstring)."""
        entry = await self._records.get(stream_id)
        if entry.value is None or entry.revision is None:
            return MoveOutcome.TAKEN
        record = codec.decode_as(entry.value, StreamRecord)
        if record.state is StreamState.FINISHED:
            return MoveOutcome.ENDED
        if record.runner_id not in (lost_runner_id, None):
            return MoveOutcome.TAKEN
        if record.runner_id is None and record.generation > 0:
            return MoveOutcome.TAKEN  # a move under way by another gateway
        if record.generation >= self._max_migrations:
            return MoveOutcome.LOST
        job = await self._kept_job(stream_id)
        if job is None:
            return MoveOutcome.LOST
        plan = plan_move(await self._history(stream_id), generation=record.generation)
        if isinstance(plan, Ended):
            return await self._finish(stream_id, record, entry.revision, plan.terminal)
        if isinstance(plan, Broken):
            log.warning("stream %s: cannot move: %s", stream_id, plan.reason)
            return MoveOutcome.LOST
        assert isinstance(plan, Continue)
        continuation = plan.continuation
        if not self._takers(job.model, continuation, lost_runner_id):
            log.warning("stream %s: no live runner of %s can continue it", stream_id, job.model)
            return MoveOutcome.LOST
        cut = replace(record, generation=continuation.gen, runner_id=None, tokens=continuation.tokens)
        try:
            await self._records.update(stream_id, codec.encode(cut), last=entry.revision)
        except KeyWrongLastSequenceError:
            return MoveOutcome.TAKEN  # the runner wrote it after all, or another gateway moves it
        fence = StreamFence(gen=continuation.gen, fence=continuation.seq)
        await self._nc.publish(subjects.events(stream_id), codec.encode(fence))
        runner_id = await self._offer(replace(job, continuation=continuation), lost_runner_id)
        if runner_id is None:
            return MoveOutcome.LOST
        self._dispatch.moved(job, Owner(runner_id, continuation.gen), time.monotonic())
        log_event(
            LifecycleEvent.MOVED, ROLE, stream_id, runner_id=runner_id, lost_runner_id=lost_runner_id,
            generation=continuation.gen, seq=continuation.seq, tokens=continuation.tokens,
        )  # fmt: skip
        return MoveOutcome.MOVED

    async def _kept_job(self, stream_id: str) -> JobRequest | None:
        try:
            entry = await self._jobs.get(stream_id)
        except KeyNotFoundError:
            log.warning("stream %s: its job was not kept; it cannot move", stream_id)
            return None
        if entry.value is None:
            return None
        return codec.decode_as(entry.value, JobRequest)

    async def _history(self, stream_id: str) -> list[ReceivedEvent]:
        """Every stored event of the stream (those of unknown types as such; malformed ones left out), as the stream's
        leader has them.

        The batched direct gets may be answered by a replica that lags the leader: a history cut short would put
        the cut-off before events readers already have.  So the leader is asked for the stream's last event first,
        and the history is read again until it reaches that one (within :data:`LEADER_CATCH_UP_S`).
        """
        subject = subjects.events(stream_id)
        try:
            last = (await self._nc.jetstream().get_last_msg(subjects.EVENTS_STREAM, subject)).seq or 0
        except NotFoundError:
            last = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LEADER_CATCH_UP_S
        while True:
            stored = await natsio.direct_get(self._nc, subjects.EVENTS_STREAM, subject)
            if (stored[-1][0] if stored else 0) >= last or loop.time() >= deadline:
                break
            await asyncio.sleep(OFFER_WAIT_FIRST_S)
        events: list[ReceivedEvent] = []
        for _, data in stored:
            try:
                events.append(codec.decode_received_event(data))
            except (UnknownMessageType, CodecError):
                continue
        return events

    async def _finish(
        self, stream_id: str, record: StreamRecord, revision: int, terminal: StreamEnd | StreamError
    ) -> MoveOutcome:
        """The stream had ended before its runner was lost: its record says so (unless someone wrote it since)."""
        if isinstance(terminal, StreamEnd):
            finished = replace(
                record, state=StreamState.FINISHED, finish_reason=terminal.finish_reason, tokens=terminal.tokens,
                ttft_ms=terminal.ttft_ms, cancel_reason=terminal.cancel_reason,
            )  # fmt: skip
        else:
            finished = replace(
                record, state=StreamState.FINISHED, finish_reason=FinishReason.ERROR, tokens=terminal.tokens,
                error_code=terminal.code,
            )  # fmt: skip
        try:
            await self._records.update(stream_id, codec.encode(finished), last=revision)
        except KeyWrongLastSequenceError:
            return MoveOutcome.TAKEN
        return MoveOutcome.ENDED

    def _takers(self, model: str, continuation: Continuation, lost_runner_id: str) -> list[str | None]:
        """Where to offer the continuation, in turn (:func:`~tokenrelay.gateway.addressing.offer_order`), among the
        runners not declared lost: one whose heartbeat is late (a busy machine) is asked too, as admission asks it;
        empty when none can take it."""
        return offer_order(
            self._dispatch.registered_runners(),
            model=model,
            continuation=continuation,
            leave_out=lost_runner_id,
            live={beat.runner_id for beat in self._dispatch.live_runners(time.monotonic())},
        )

    async def _offer(self, job: JobRequest, lost_runner_id: str) -> str | None:
        """Offer the continuation to each runner that can take it (:meth:`_takers`, asked again each round), round
        after round, until one takes it (its id) or ``migration_timeout_s`` passes (``None``)."""
        assert job.continuation is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        wait_s = OFFER_WAIT_FIRST_S
        while True:
            for runner_id in self._takers(job.model, job.continuation, lost_runner_id) or [QUEUE_GROUP]:
                subject = subjects.jobs(job.model) if runner_id is QUEUE_GROUP else subjects.runner_jobs(runner_id)
                taker = await self._offer_once(subject, job)
                if taker is not None and taker != lost_runner_id:
                    return taker
                if loop.time() >= deadline:
                    return None
            left_s = deadline - loop.time()
            if left_s <= 0:
                return None
            await asyncio.sleep(min(wait_s, left_s))
            wait_s = min(2 * wait_s, OFFER_WAIT_MAX_S)

    async def _offer_once(self, subject: str, job: JobRequest) -> str | None:
        """Offer the continuation on ``subject`` once: the id of the runner that took it, or ``None``."""
        sent = replace(job, answer_by=time.time() + OFFER_TAKE_FRACTION * self._offer_timeout_s)
        reply: Message | None
        try:
            msg = await self._nc.request(subject, codec.encode(sent), timeout=self._offer_timeout_s)
            reply = codec.decode(msg.data)
        except NatsTimeout:
            reply = await self._holder(job.stream_id)  # taken, but its answer was late?
        except (NoRespondersError, CodecError):
            reply = None
        if isinstance(reply, JobAccepted) and reply.stream_id == job.stream_id:
            return reply.runner_id
        return None

    async def _holder(self, stream_id: str) -> JobAccepted | None:
        """The runner that says it generates the stream, asked once an unanswered offer can no longer be taken."""
        await asyncio.sleep((1 - OFFER_TAKE_FRACTION) * self._offer_timeout_s)
        try:
            msg = await self._nc.request(subjects.holders(stream_id), b"", timeout=self._offer_timeout_s)
            reply = codec.decode(msg.data)
        except (NoRespondersError, NatsTimeout, CodecError):
            return None
        return reply if isinstance(reply, JobAccepted) else None


def mover_for(
    config: GatewayConfig, *, nc: NATS, records: KeyValue, jobs: KeyValue | None, dispatch: Dispatcher
) -> StreamMover | None:
    """The gateway's mover (``None``: streams never move, ``--max-migrations 0`` or no jobs' bucket)."""
    if jobs is None or config.max_migrations <= 0:
        return None
    return StreamMover(
        nc=nc, records=records, jobs=jobs, dispatch=dispatch, max_migrations=config.max_migrations,
        timeout_s=config.migration_timeout_s, offer_timeout_s=config.dispatch_attempt_timeout_s,
    )  # fmt: skip
