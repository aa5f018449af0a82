"""The gateway's core: admit streams, dispatch them to runners, stop them, report them.

Ownership: while a stream waits for a runner it is owned by the gateway that admitted it
(cancels reach it on ``tokenrelay.gateway.<id>.cancel``); once a runner accepts, that runner
owns it (``tokenrelay.runner.<id>.cancel``).  Exactly one owner answers a stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.errors import Error as JetStreamError
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from tokenrelay.gateway.liveness import RunnerRegistry
from tokenrelay.gateway.metrics import GatewayMetrics
from tokenrelay.gateway.quotas import TenantQuotas
from tokenrelay.gateway.requests import StreamRequest
from tokenrelay.gateway.unread import UnreadWatch
from tokenrelay.runtime import natsio
from tokenrelay.runtime.auth import check_owner
from tokenrelay.runtime.config import GatewayConfig
from tokenrelay.runtime.lifecycle import LifecycleEvent, log_event
from tokenrelay.runtime.tasks import TaskSet
from tokenrelay.wire import codec, subjects
from tokenrelay.wire.codec import CodecError
from tokenrelay.wire.errors import ErrorCode, Overloaded, RateLimited, TokenRelayError, Unavailable
from tokenrelay.wire.messages import (
    OUT_OF_BAND_SEQ,
    CancelReason,
    CancelReply,
    CancelRequest,
    Feedback,
    FinishReason,
    JobAccepted,
    JobRejected,
    JobRequest,
    RunnerHeartbeat,
    StreamDone,
    StreamEnd,
    StreamError,
    StreamRecord,
    StreamStart,
    StreamState,
    job_record,
)

log = logging.getLogger(__name__)

ROLE = "gateway"

DISPATCH_BACKOFF_MIN_S = 0.005
DISPATCH_BACKOFF_MAX_S = 0.1
OWNER_MEMORY_STREAMS = 100_000
"""Runner ids of this many recently dispatched streams are kept, to route stops without a KV read."""
DEFAULT_MODEL = "synthetic"
RUNNER_CHECKS_PER_STALE_PERIOD = 4
OFFER_TAKE_FRACTION = 0.75
"""A runner may take an offer within this fraction of the gateway's wait for the answer (``answer_by``); the rest
is for the answer's way back and for clocks that disagree by less than it (250 ms at the default 1 s)."""
UNREAD_PROBE_TIMEOUT_S = 2.0
"""How long a stream past ``unread_grace_s`` waits for a streamer to say it has a reader: longer than the streamers'
own probe (a reader being served is the common case, and cancelling it by mistake would cut a user's text short;
a busy streamer answered NATS requests 0.4-0.8 s late at 1,000 streams)."""


@dataclass(frozen=True, slots=True)
class StopResult:
    """What a stop answers: the stream's final state."""

    stream_id: str
    finish_reason: FinishReason | None
    tokens: int
    halted_ts: float | None = None


@dataclass
class _Queued:
    job: JobRequest
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    cancel_reason: CancelReason = CancelReason.CLIENT
    result: asyncio.Future[StopResult] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when asking the runners again may get an answer other than the last one: the stream became the
    head of the queue, a runner finished one of this gateway's streams, or a stop came."""


def _remember(recent: OrderedDict[str, str], stream_id: str, value: str) -> None:
    """Keep ``value`` for ``stream_id`` among the :data:`OWNER_MEMORY_STREAMS` most recent streams."""
    recent[stream_id] = value
    while len(recent) > OWNER_MEMORY_STREAMS:
        recent.popitem(last=False)


class StreamManager:
    """Admission, dispatch and stop for the streams of one gateway."""

    def __init__(
        self, config: GatewayConfig, *, nc: NATS, kv: KeyValue, metrics: GatewayMetrics, gateway_id: str
    ) -> None:
        self.config = config
        self.gateway_id = gateway_id
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream()
        self._kv = kv
        self._metrics = metrics
        self._queued: dict[str, _Queued] = {}
        """Admitted streams no runner has taken yet, in the order they were admitted (dicts keep it)."""
        self._runners_full = False
        """A runner refused a stream for capacity since the queue was last empty: the queue is served in order,
        its head alone asks the runners (see :meth:`_dispatch`)."""
        self._owners: OrderedDict[str, str] = OrderedDict()
        self._tenants: OrderedDict[str, str] = OrderedDict()
        """Tenants of the streams created here lately, to check a stop's caller without a KV read."""
        self.quotas = TenantQuotas(config.quotas)
        self._runners = RunnerRegistry(stale_after_s=config.runner_stale_after_s)
        self._checking: set[str] = set()
        """Silent runners being asked whether they are alive."""
        self._unread = UnreadWatch(grace_s=config.unread_grace_s) if config.unread_grace_s > 0 else None
        self._unread_wake = asyncio.Event()
        self._subs: list[Subscription] = []
        self._tasks = TaskSet()

    async def start(self) -> None:
        """Listen to runner heartbeats, to cancels, and watch for lost runners."""
        nc = self._nc
        self._subs.append(await nc.subscribe(subjects.RUNNER_HEARTBEAT, cb=self._on_heartbeat))
        self._subs.append(await nc.subscribe(subjects.gateway_cancel(self.gateway_id), cb=self._on_cancel_request))
        self._subs.append(await nc.subscribe(subjects.gateway_done(self.gateway_id), cb=self._on_stream_done))
        self._subs.append(
            await nc.subscribe(subjects.CANCELS, queue=subjects.GATEWAY_QUEUE_GROUP, cb=self._on_cancel_request)
        )
        await nc.flush()
        self._tasks.spawn(self._watch_runners(), name="watch-runners")
        if self._unread is not None:
            self._tasks.spawn(self._watch_unread(self._unread), name="watch-unread")

    async def close(self) -> None:
        """Stop listening and abandon dispatches in flight."""
        for sub in self._subs:
            await natsio.unsubscribe_quietly(sub)
        self._tasks.cancel()

    # -- runners -----------------------------------------------------------------------------

    def live_runners(self) -> list[RunnerHeartbeat]:
        """Runners heard from within ``runner_stale_after_s``."""
        return self._runners.live(time.monotonic())

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            beat = codec.decode_as(msg.data, RunnerHeartbeat)
        except CodecError:
            return
        self._runners.on_heartbeat(beat, time.monotonic())
        self._metrics.runners_available.set(len(self.live_runners()))

    async def _watch_runners(self) -> None:
        """Check every runner that stopped heartbeating; turn the streams of one that is gone into ``runner_lost``."""
        interval_s = self.config.runner_stale_after_s / RUNNER_CHECKS_PER_STALE_PERIOD
        while True:
            await asyncio.sleep(interval_s)
            for runner_id in self._runners.stale(time.monotonic()):
                if runner_id not in self._checking:
                    self._checking.add(runner_id)
                    self._tasks.spawn(self._check_runner(runner_id), name=f"check-{runner_id}")
            self._metrics.runners_available.set(len(self.live_runners()))

    async def _check_runner(self, runner_id: str) -> None:
        """Ask a silent runner whether it is alive; declare it lost only if it is not.

        Heartbeats can be late without the runner being gone: a runner whose event loop is busy
        (10,000 streams and a garbage collection on two shared cores) sent them 2-3.3 s apart in a
        measured run, against 3 s of ``runner_stale_after_s``, and once every one of its 3,054
        healthy streams was ended ``runner_lost`` while it went on generating them.  So a silent
        runner is asked directly, and given another ``runner_stale_after_s`` to answer.  A runner
        that is really gone costs no more: with no process subscribed, NATS answers "no responders"
        at once.
        """
        try:
            try:
                answered = await self._runner_answers(runner_id)
            except NatsError as exc:  # we could not ask (our own connection): ask again at the next check
                log.warning("could not ping runner %s: %s", runner_id, exc)
                return
            if answered:
                self._metrics.runner_checks.labels(outcome="answered").inc()
                return
            stream_ids = self._runners.forget(runner_id, time.monotonic())
            if stream_ids is None:
                self._metrics.runner_checks.labels(outcome="answered").inc()  # by a heartbeat, while we asked
                return
            self._metrics.runner_checks.labels(outcome="lost").inc()
            log.warning("runner %s lost with %d stream(s)", runner_id, len(stream_ids))
            for stream_id in stream_ids:
                try:
                    await self._fail_lost_stream(stream_id)
                except (JetStreamError, TokenRelayError) as exc:
                    log.warning("stream %s: could not mark it lost: %s", stream_id, exc)
            self._metrics.runners_available.set(len(self.live_runners()))
        finally:
            self._checking.discard(runner_id)

    async def _runner_answers(self, runner_id: str) -> bool:
        """Whether the runner answers its ping within ``runner_stale_after_s`` (its answer counts as a heartbeat)."""
        try:
            msg = await self._nc.request(subjects.runner_ping(runner_id), b"", timeout=self.config.runner_stale_after_s)
        except (NoRespondersError, NatsTimeout):
            return False
        try:
            beat = codec.decode_as(msg.data, RunnerHeartbeat)
        except CodecError:
            return False
        self._runners.on_heartbeat(beat, time.monotonic())
        log.warning(
            "runner %s was silent for %.1f s but answered its ping", runner_id, self.config.runner_stale_after_s
        )
        return True

    async def _fail_lost_stream(self, stream_id: str) -> None:
        """End an unfinished stream with an out-of-band ``runner_lost`` error (one gateway wins the CAS)."""
        entry = await self._kv.get(stream_id)
        if entry.value is None or entry.revision is None:
            return
        record = codec.decode_as(entry.value, StreamRecord)
        if record.state is StreamState.FINISHED:
            return
        finished = replace(
            record, state=StreamState.FINISHED, finish_reason=FinishReason.ERROR, error_code=str(ErrorCode.RUNNER_LOST)
        )
        try:
            await self._kv.update(stream_id, codec.encode(finished), last=entry.revision)
        except KeyWrongLastSequenceError:
            return  # the runner finished it after all, or another gateway got there first
        error = StreamError(
            seq=OUT_OF_BAND_SEQ,
            code=str(ErrorCode.RUNNER_LOST),
            message="the runner generating this stream stopped responding",
            tokens=record.tokens,
        )
        await self._nc.publish(subjects.events(stream_id), codec.encode(error))
        self.quotas.stream_ended(stream_id)
        self._metrics.errors.labels(code=str(ErrorCode.RUNNER_LOST)).inc()
        self._metrics.cancellations.labels(reason=str(CancelReason.RUNNER_LOST)).inc()
        log_event(LifecycleEvent.RUNNER_LOST, ROLE, stream_id, runner_id=record.runner_id, tokens=record.tokens)

    # -- create and dispatch -------------------------------------------------------------------

    def check_admission(self) -> list[RunnerHeartbeat]:
        """The runners not declared lost, or ``overloaded`` / ``unavailable`` at once (callers check before reading
        a body).

        A runner whose heartbeats are late is still being asked whether it is alive (:meth:`_check_runner`);
        until it is declared lost it counts here: a runner too busy to heartbeat on time (they came 2-3.3 s apart
        at 10,000 streams) made every new stream ``unavailable`` for as long as it was late.
        """
        if len(self._queued) >= self.config.max_queued_streams:
            raise Overloaded("too many streams are waiting for a runner", retry_after_s=1)
        runners = self._runners.registered()
        if not runners:
            raise Unavailable("no runner is available")
        return runners

    async def create(self, request: StreamRequest, *, owner: str | None = None) -> StreamRecord:
        """Admit a stream of ``owner`` (a tenant; ``None`` without API keys): record it as queued and start
        dispatching it to a runner."""
        live = self.check_admission()
        if owner is not None:
            self._check_streams(owner)
        # No await from the check to the stream's place in the queue (in _admit, before its record is written):
        # the POSTs that run while the record is written count it against the bound, once.
        return await self._admit(request, live, owner)

    def _check_streams(self, owner: str) -> None:
        """The owner's concurrent-stream limit; over it, first forget streams no runner has any more (their
        ``done`` message was lost), so a lost message costs a slot until the runners' next heartbeat at most."""
        try:
            self.quotas.check_streams(owner)
        except RateLimited:
            for stream_id in self.quotas.running(owner):
                if stream_id not in self._queued and not self._runners.holds(stream_id):
                    self.quotas.stream_ended(stream_id)
            self.quotas.check_streams(owner)

    async def _admit(self, request: StreamRequest, live: list[RunnerHeartbeat], owner: str | None) -> StreamRecord:
        stream_id = subjects.new_stream_id()
        model = request.model or live[0].model or DEFAULT_MODEL
        job = JobRequest(
            stream_id=stream_id,
            epoch=secrets.token_hex(4),
            gateway_id=self.gateway_id,
            model=model,
            messages=request.messages,
            max_tokens=request.max_tokens,
            created=int(time.time()),
            owner=owner,
        )
        queued = self._queued[stream_id] = _Queued(job)
        self._metrics.streams_queued.set(len(self._queued))
        if owner is not None:  # counted before the await too: the owner's next POST sees it
            self.quotas.stream_started(owner, stream_id)
            _remember(self._tenants, stream_id, owner)
        # Offered to the runners while its record is stored, not after: the offer leaves in the same write as the
        # record, and the first token is not behind the KV round trip (POST to first delta p50 5.9 -> 5.1 ms, a
        # runner's token 0.9 ms sooner).  A runner may so store the stream as running first: see _store_new.
        self._tasks.spawn(self._dispatch(queued), name=f"dispatch-{stream_id}")
        if self._unread is not None:
            self._unread.admitted(stream_id, time.monotonic())
            self._unread_wake.set()
        try:
            record = await self._store_new(job)
        except BaseException:
            # No 201, so nobody will read or stop it: stop it here, queued or taken by now.
            self._tasks.spawn(self._abandon(stream_id), name=f"abandon-{stream_id}")
            raise
        self._metrics.streams_created.inc()
        log_event(LifecycleEvent.CREATED, ROLE, stream_id, model=model, max_tokens=job.max_tokens)
        return record

    async def _store_new(self, job: JobRequest) -> StreamRecord:
        """Store a new stream's record as queued; the record stored (the runner's, if its write came first)."""
        record = job_record(job, StreamState.QUEUED)
        try:
            await self._kv.create(job.stream_id, codec.encode(record))
        except KeyWrongLastSequenceError:
            # The id is new, so the key can only hold this stream: the runner that took the job stored it
            # running (or already finished) before our write arrived.  Its record is the newer one.
            stored = await self._kv.get(job.stream_id)
            if stored.value is None:
                raise
            taken = codec.decode_as(stored.value, StreamRecord)
            if taken.epoch != job.epoch:
                raise
            return taken
        return record

    async def _abandon(self, stream_id: str) -> None:
        """Stop a stream whose admission failed after it was offered to the runners."""
        try:
            await self._stop_local(stream_id, CancelReason.DISCONNECT)
        except (TokenRelayError, NatsError, JetStreamError) as exc:
            log.warning("stream %s: could not stop it after its admission failed: %s", stream_id, exc)

    async def _dispatch(self, queued: _Queued) -> None:
        """Offer one queued stream to the runners until one takes it, it is stopped, or it waited too long.

        While the runners have room, every new stream is offered at once, side by side.  Once a runner refused
        one for capacity, the queue is served first come, first served: only its head asks again, at once when a
        runner says it finished one of this gateway's streams, else after a backoff (5 ms doubling to 100 ms:
        runners admitted by other gateways free slots without telling this one), and each stream taken makes the
        next one the head.  So the stream that waited longest gets the next free slot, and a full queue costs the
        runners one refused offer per backoff, not one per queued stream.  An offer that got no answer (a busy or
        missing runner) is no capacity signal and changes none of this: taking it for one serialised a busy
        gateway's whole queue behind one round trip at a time (10,000 readers of `bench.open_streams` collapsed).
        """
        job = queued.job
        started = time.monotonic()
        deadline = started + self.config.queue_timeout_s
        backoff_s = DISPATCH_BACKOFF_MIN_S
        try:
            while not queued.cancel.is_set():
                if self._runners_full and not self._is_head(queued):
                    if not await self._wait(queued, deadline - time.monotonic()):
                        await self._expire(queued)
                        return
                    continue
                queued.wake.clear()
                reply = await self._offer(job)
                if isinstance(reply, JobRejected):
                    self._runners_full = True
                elif reply is not None:
                    runner_id = reply.runner_id
                    dispatch_s = time.monotonic() - started
                    self._metrics.dispatch_seconds.observe(dispatch_s)
                    log_event(
                        LifecycleEvent.DISPATCHED, ROLE, job.stream_id, runner_id=runner_id, queued_ms=dispatch_s * 1000
                    )
                    _remember(self._owners, job.stream_id, runner_id)
                    self._runners.on_dispatch(job.stream_id, runner_id, time.monotonic())
                    if queued.cancel.is_set():
                        try:
                            result = await self._ask_owner(job.stream_id, runner_id, queued.cancel_reason)
                        except TokenRelayError as exc:
                            self._fail_stop(queued, exc)
                            return
                        self._settle(queued, result)
                    return
                if not await self._wait(queued, min(backoff_s, deadline - time.monotonic())) and (
                    time.monotonic() >= deadline
                ):
                    await self._expire(queued)
                    return
                backoff_s = min(backoff_s * 2, DISPATCH_BACKOFF_MAX_S)
            await self._end_unstarted(job, cancel=queued.cancel_reason)
            self._settle(queued, StopResult(job.stream_id, FinishReason.CANCELLED, 0))
            self.quotas.stream_ended(job.stream_id)
        finally:
            # Any other way out (NATS failed, the gateway is closing) must not leave a stop waiting forever.
            self._fail_stop(queued, Unavailable("the stream's dispatch ended before its stop was confirmed"))
            self._queued.pop(job.stream_id, None)
            self._metrics.streams_queued.set(len(self._queued))
            if self._queued:
                self._wake_head()
            else:
                self._runners_full = False

    def _is_head(self, queued: _Queued) -> bool:
        return next(iter(self._queued.values()), None) is queued

    def _wake_head(self) -> None:
        head = next(iter(self._queued.values()), None)
        if head is not None:
            head.wake.set()

    @staticmethod
    async def _wait(queued: _Queued, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for ``queued.wake``; whether it was set."""
        if timeout_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(queued.wake.wait(), timeout_s)
        return queued.wake.is_set()

    async def _expire(self, queued: _Queued) -> None:
        """End a stream that waited ``queue_timeout_s`` for a runner with ``overloaded``."""
        await self._end_unstarted(queued.job, error=ErrorCode.OVERLOADED)
        self._settle(queued, StopResult(queued.job.stream_id, FinishReason.ERROR, 0))
        self.quotas.stream_ended(queued.job.stream_id)

    async def _offer(self, job: JobRequest) -> JobAccepted | JobRejected | None:
        """Offer the job to the runners' queue group once: a runner's answer (it took the job, or it is at
        capacity), or ``None`` when none came (no runner, or none in time, and none says it took it since).

        An offer may only be taken until its ``answer_by``; one whose answer did not come in time is followed by
        asking the runners which of them holds the stream (``tokenrelay.holders.<id>``) before it can be offered
        again, so a runner that took it but answered late keeps it instead of a second runner generating it too.
        """
        timeout_s = self.config.dispatch_attempt_timeout_s
        offer = replace(job, answer_by=time.time() + OFFER_TAKE_FRACTION * timeout_s)
        try:
            msg = await self._nc.request(subjects.JOBS, codec.encode(offer), timeout=timeout_s)
            reply = codec.decode(msg.data)
        except NatsTimeout:
            return await self._holder(job, timeout_s)
        except (NoRespondersError, CodecError):
            return None
        return reply if isinstance(reply, JobAccepted | JobRejected) else None

    async def _holder(self, job: JobRequest, timeout_s: float) -> JobAccepted | None:
        """The runner that says it generates the stream, or ``None`` when none does."""
        try:
            msg = await self._nc.request(subjects.holders(job.stream_id), b"", timeout=timeout_s)
            reply = codec.decode(msg.data)
        except (NoRespondersError, NatsTimeout, CodecError):
            return None
        if isinstance(reply, JobAccepted) and reply.stream_id == job.stream_id:
            return reply
        return None

    @staticmethod
    def _settle(queued: _Queued, result: StopResult) -> None:
        """Answer the stop(s) waiting on a stream that was still queued."""
        if queued.result is not None and not queued.result.done():
            queued.result.set_result(result)

    @staticmethod
    def _fail_stop(queued: _Queued, error: TokenRelayError) -> None:
        """Fail the stop(s) waiting on a stream that was still queued, unless answered already."""
        if queued.result is not None and not queued.result.done():
            queued.result.set_exception(error)
            queued.result.exception()  # retrieved: a stop that gave up waiting leaves no "never retrieved" log

    async def _end_unstarted(
        self, job: JobRequest, *, cancel: CancelReason | None = None, error: ErrorCode | None = None
    ) -> None:
        """Publish start + terminal event for a stream no runner ever took, and record it finished."""
        start = StreamStart(
            stream_id=job.stream_id, epoch=job.epoch, model=job.model, created=job.created,
            runner_id=self.gateway_id, ts=time.time(),
        )  # fmt: skip
        terminal: StreamEnd | StreamError
        if error is not None:
            terminal = StreamError(seq=1, code=str(error), message="no runner took the stream in time", tokens=0)
        else:
            terminal = StreamEnd(
                seq=1, finish_reason=FinishReason.CANCELLED, tokens=0, ttft_ms=None, cancel_reason=cancel
            )
        subject = subjects.events(job.stream_id)
        await self._nc.publish(subject, codec.encode(start))
        await self._nc.publish(subject, codec.encode(terminal))
        record = job_record(
            job,
            StreamState.FINISHED,
            finish_reason=FinishReason.ERROR if error is not None else FinishReason.CANCELLED,
            error_code=str(error) if error is not None else None,
        )
        await self._kv.put(job.stream_id, codec.encode(record))
        self._metrics.streams_not_started.labels(finish_reason=str(record.finish_reason)).inc()
        log_event(
            LifecycleEvent.NOT_STARTED, ROLE, job.stream_id,
            finish_reason=str(record.finish_reason), error_code=record.error_code,
            cancel_reason=str(cancel) if cancel is not None else None,
        )  # fmt: skip

    # -- stop ----------------------------------------------------------------------------------

    async def stop(
        self, stream_id: str, reason: CancelReason = CancelReason.CLIENT, *, tenant: str | None = None
    ) -> StopResult:
        """Halt a stream; answer once its owner confirmed. Idempotent; a finished stream answers its state.

        A client's stop names its ``tenant``: ``not_found`` unless the stream is that tenant's (``None``: no keys,
        or a stop from inside the system).
        """
        started = time.monotonic()
        log_event(LifecycleEvent.STOP_REQUESTED, ROLE, stream_id, reason=str(reason))
        result = await self._stop(stream_id, reason, tenant)
        stop_s = time.monotonic() - started
        self._metrics.stop_seconds.observe(stop_s)
        if result.finish_reason is FinishReason.CANCELLED:
            self._metrics.cancellations.labels(reason=str(reason)).inc()
        log_event(
            LifecycleEvent.STOPPED, ROLE, stream_id,
            finish_reason=str(result.finish_reason) if result.finish_reason is not None else None,
            tokens=result.tokens, stop_ms=stop_s * 1000,
        )  # fmt: skip
        return result

    async def _stop(self, stream_id: str, reason: CancelReason, tenant: str | None) -> StopResult:
        # Streams dispatched here are stopped without a KV read (their tenant is known here too); others, unknown
        # ids and other tenants' streams go through the record, which says who owns it.
        if tenant is None or self._tenants.get(stream_id) == tenant:
            local = await self._stop_local(stream_id, reason)
            if local is not None:
                return local
        record = await self.owned_record(stream_id, tenant)
        if record.state is StreamState.FINISHED:
            return StopResult(stream_id, record.finish_reason, record.tokens)
        if record.runner_id is not None:
            return await self._ask_owner(stream_id, record.runner_id, reason)
        return await self._ask(subjects.gateway_cancel(record.gateway_id), stream_id, reason)

    async def _stop_local(self, stream_id: str, reason: CancelReason) -> StopResult | None:
        """Stop a stream this gateway dispatched, without reading the KV store."""
        queued = self._queued.get(stream_id)
        if queued is not None:
            if queued.result is None:
                queued.result = asyncio.get_running_loop().create_future()
                queued.cancel_reason = reason
                queued.cancel.set()
                queued.wake.set()
            return await asyncio.shield(queued.result)
        runner_id = self._owners.get(stream_id)
        if runner_id is not None:
            return await self._ask_owner(stream_id, runner_id, reason)
        return None

    async def _ask_owner(self, stream_id: str, runner_id: str, reason: CancelReason) -> StopResult:
        result = await self._ask(subjects.runner_cancel(runner_id), stream_id, reason)
        if result.finish_reason is None:
            # The runner no longer remembers it: the record has the final state.
            record = await self.record(stream_id)
            return StopResult(stream_id, record.finish_reason, record.tokens)
        return result

    async def _ask(self, subject: str, stream_id: str, reason: CancelReason) -> StopResult:
        request = CancelRequest(stream_id=stream_id, reason=reason)
        try:
            msg = await self._nc.request(subject, codec.encode(request), timeout=self.config.cancel_timeout_s)
            reply = codec.decode_as(msg.data, CancelReply)
        except (NoRespondersError, NatsTimeout) as exc:
            raise Unavailable("the stream's owner did not confirm the stop") from exc
        except CodecError as exc:
            raise Unavailable("the stream's owner answered garbage") from exc
        return StopResult(stream_id, reply.finish_reason, reply.tokens, reply.halted_ts)

    async def _on_stream_done(self, msg: Msg) -> None:
        """A runner finished a stream admitted here: its tenant's slot is free, and so is a runner's."""
        self._wake_head()
        try:
            stream_id = codec.decode_as(msg.data, StreamDone).stream_id
        except CodecError as exc:
            log.warning("malformed stream_done: %s", exc)
            return
        self.quotas.stream_ended(stream_id)
        if self._unread is not None:
            self._unread.ended(stream_id)

    # -- streams no reader came for ----------------------------------------------------------------

    async def _watch_unread(self, watch: UnreadWatch) -> None:
        """Check each stream admitted here once its ``unread_grace_s`` is over, unless it ended before."""
        while True:
            wait_s = watch.next_due_in(time.monotonic())
            if wait_s is None:
                self._unread_wake.clear()
                await self._unread_wake.wait()
                continue
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            for stream_id in watch.due(time.monotonic()):
                if self._may_run(stream_id):
                    self._tasks.spawn(self._cancel_if_unread(stream_id), name=f"unread-{stream_id}")

    def _may_run(self, stream_id: str) -> bool:
        """Queued here, or taken by a runner (finished ones too: this gateway remembers recent owners; the watch
        has forgotten those reported done, and a stop of one that ended meanwhile only answers its end)."""
        return stream_id in self._queued or stream_id in self._owners

    async def _cancel_if_unread(self, stream_id: str) -> None:
        """Cancel a stream (reason ``disconnect``) unless a streamer has a reader of it, or had one lately."""
        try:
            if await natsio.someone_reads(self._nc, stream_id, timeout_s=UNREAD_PROBE_TIMEOUT_S):
                return
        except NatsError as exc:  # we could not ask: leave it be rather than guess
            log.warning("stream %s: could not ask the streamers for readers: %s", stream_id, exc)
            return
        if not self._may_run(stream_id):
            return
        try:
            result = await self.stop(stream_id, CancelReason.DISCONNECT)
        except TokenRelayError as exc:
            log.warning("stream %s: could not cancel it after no reader came: %s", stream_id, exc)
            return
        if result.finish_reason is FinishReason.CANCELLED:  # not a stream that ended while the streamers were asked
            self._metrics.unread_cancels.inc()
            log_event(LifecycleEvent.ABANDONED, ROLE, stream_id, never_read=True, tokens=result.tokens)

    async def _on_cancel_request(self, msg: Msg) -> None:
        """A stop from elsewhere: another gateway, or a streamer whose readers all left."""
        self._tasks.spawn(self._answer_cancel(msg), name="answer-cancel")

    async def _answer_cancel(self, msg: Msg) -> None:
        try:
            request = codec.decode_as(msg.data, CancelRequest)
            if msg.subject == subjects.CANCELS:
                result: StopResult | None = await self.stop(request.stream_id, request.reason)
            else:
                result = await self._stop_local(request.stream_id, request.reason)
        except (CodecError, TokenRelayError) as exc:
            log.warning("cancel from %s failed: %s", msg.subject, exc)
            return
        reply = CancelReply(
            stream_id=request.stream_id,
            found=result is not None,
            finish_reason=result.finish_reason if result else None,
            tokens=result.tokens if result else 0,
            halted_ts=result.halted_ts if result else None,
        )
        await msg.respond(codec.encode(reply))

    # -- status and feedback ---------------------------------------------------------------------

    async def record(self, stream_id: str) -> StreamRecord:
        """The stream's record, or ``not_found``."""
        return await natsio.load_record(self._kv, stream_id)

    async def owned_record(self, stream_id: str, tenant: str | None) -> StreamRecord:
        """The stream's record if ``tenant`` owns it (any caller when ``None``: no keys), else ``not_found``."""
        record = await self.record(stream_id)
        check_owner(record.owner, tenant)
        return record

    async def feedback(self, stream_id: str, rating: str, comment: str | None, *, tenant: str | None = None) -> None:
        """Store feedback durably (``not_found`` unless the stream is ``tenant``'s); returns once JetStream has
        acknowledged it."""
        await self.owned_record(stream_id, tenant)
        item = Feedback(stream_id=stream_id, rating="up" if rating == "up" else "down", comment=comment, ts=time.time())
        await self._js.publish(subjects.feedback(stream_id), codec.encode(item))
        self._metrics.feedback.labels(rating=item.rating).inc()
        log_event(LifecycleEvent.FEEDBACK, ROLE, stream_id, rating=item.rating, comment_chars=len(comment or ""))
