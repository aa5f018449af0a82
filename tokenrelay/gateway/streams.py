"""The gateway's streams over NATS: the shell that feeds the dispatcher (``gateway/dispatch.py``) with what arrives
and carries out what it decides, and the stream's status and feedback.

Ownership: while a stream waits for a runner it is owned by the gateway that admitted it (cancels reach it on
``tokenrelay.gateway.<id>.cancel``); once a runner accepts, that runner owns it (``tokenrelay.runner.<id>.cancel``),
until it moves to another runner (``gateway/migration.py``).  Exactly one owner answers a stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import assert_never

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.errors import Error as JetStreamError
from nats.js.kv import KeyValue

from tokenrelay.gateway import ROLE, models, records
from tokenrelay.gateway.actions import (
    Action,
    AskHolders,
    AskOwner,
    CancelOwner,
    Dispatched,
    EndUnstarted,
    Offer,
    StopResult,
)
from tokenrelay.gateway.dispatch import Dispatcher
from tokenrelay.gateway.lost_runners import RunnerWatch
from tokenrelay.gateway.metrics import GatewayMetrics, OfferOutcome
from tokenrelay.gateway.migration import mover_for
from tokenrelay.gateway.quotas import TenantQuotas
from tokenrelay.gateway.requests import JOB_HEADROOM_BYTES, StreamRequest, check_job_bytes
from tokenrelay.gateway.unread import UnreadWatch
from tokenrelay.gateway.unread_checks import UnreadChecks
from tokenrelay.runtime import natsio, payloads
from tokenrelay.runtime.auth import check_owner
from tokenrelay.runtime.config import GatewayConfig
from tokenrelay.runtime.lifecycle import LifecycleEvent, log_event
from tokenrelay.runtime.payloads import PayloadStore
from tokenrelay.runtime.tasks import TaskSet
from tokenrelay.wire import codec, subjects
from tokenrelay.wire.codec import CodecError, UnknownMessageType
from tokenrelay.wire.errors import RateLimited, ShuttingDown, TokenRelayError, Unavailable
from tokenrelay.wire.messages import (
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
    StreamRecord,
    StreamState,
)

log = logging.getLogger(__name__)

DISPATCH_ENDED = "the stream's dispatch ended before its stop was confirmed"
"""What a stop waiting on a stream's dispatch is told when the dispatch ends without an answer for it."""


class StreamManager:
    """Admission, dispatch and stop for the streams of one gateway, over NATS; :attr:`dispatch` decides."""

    def __init__(
        self, config: GatewayConfig, *, nc: NATS, kv: KeyValue, metrics: GatewayMetrics, gateway_id: str,
        payloads: PayloadStore | None = None, jobs: KeyValue | None = None,
    ) -> None:  # fmt: skip
        self.config = config
        self._payloads = payloads  # where a job over the broker's max_payload leaves its messages (None: refused)
        self.gateway_id = gateway_id
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream()
        self._kv = kv
        self._metrics = metrics
        self.dispatch = Dispatcher(
            max_queued_streams=config.max_queued_streams,
            queue_timeout_s=config.queue_timeout_s,
            offer_timeout_s=config.dispatch_attempt_timeout_s,
            runner_stale_after_s=config.runner_stale_after_s,
        )
        self.quotas = TenantQuotas(config.quotas)
        self._runner_watch = RunnerWatch(
            nc=nc, kv=kv, dispatch=self.dispatch, metrics=metrics, quotas=self.quotas,
            stale_after_s=config.runner_stale_after_s,
            mover=mover_for(config, nc=nc, records=kv, jobs=jobs, dispatch=self.dispatch),
        )  # fmt: skip
        self._ending: dict[str, asyncio.Future[StopResult]] = {}
        """How streams whose dispatch is ending end, for the stops that came meanwhile to wait on."""
        self._clock_wake = asyncio.Event()
        self._clock_due: float | None = None
        """When the clock task waits to tell the dispatcher the time (``None``: for nothing)."""
        self._closed = False
        self._unread: UnreadChecks | None = None
        self.draining = False
        """Told to stop: admits nothing (``shutting_down``) while what it queued goes to runners."""
        if config.unread_grace_s > 0:
            watch = UnreadWatch(grace_s=config.unread_grace_s)
            self._unread = UnreadChecks(watch, nc=nc, metrics=metrics, may_run=self.dispatch.may_run, stop=self.stop)
        self._subs: list[Subscription] = []
        self._tasks = TaskSet()

    async def start(self) -> None:
        """Listen to runner heartbeats, to cancels, and watch the clock and for lost runners."""
        nc = self._nc
        self._subs.append(await nc.subscribe(subjects.RUNNER_HEARTBEAT, cb=self._runner_watch.on_heartbeat))
        self._subs.append(await nc.subscribe(subjects.gateway_cancel(self.gateway_id), cb=self._on_cancel_request))
        self._subs.append(await nc.subscribe(subjects.gateway_done(self.gateway_id), cb=self._on_stream_done))
        self._subs.append(
            await nc.subscribe(subjects.CANCELS, queue=subjects.GATEWAY_QUEUE_GROUP, cb=self._on_cancel_request)
        )
        await nc.flush()
        self._tasks.spawn(self._run_clock(), name="dispatch-clock")
        self._tasks.spawn(self._runner_watch.run(), name="watch-runners")
        if self._unread is not None:
            self._tasks.spawn(self._unread.run(), name="watch-unread")

    async def close(self) -> None:
        """Stop listening and abandon dispatches in flight (their stops get ``unavailable``)."""
        self._closed = True
        for sub in self._subs:
            await natsio.unsubscribe_quietly(sub)
        self._tasks.cancel()
        for stream_id in list(self._ending):
            self._settle(stream_id, Unavailable(DISPATCH_ENDED))

    def live_runners(self) -> list[RunnerHeartbeat]:
        """Runners heard from within ``runner_stale_after_s``."""
        return self._runner_watch.live()

    def live_models(self) -> list[str]:
        """The models the runners heard from within ``runner_stale_after_s`` serve, each once."""
        return self.dispatch.live_models(time.monotonic())

    # -- create ----------------------------------------------------------------------------------

    def check_admission(self) -> list[RunnerHeartbeat]:
        """The runners not declared lost, or ``overloaded`` (every model's queue is full) / ``unavailable`` at once
        (callers check before reading a body); see :meth:`Dispatcher.check_admission`; ``shutting_down`` draining."""
        if self.draining:
            raise ShuttingDown("this gateway is shutting down; another one admits the stream")
        return self.dispatch.check_admission()

    async def create(self, request: StreamRequest, *, owner: str | None = None) -> StreamRecord:
        """Admit a stream of ``owner`` (a tenant; ``None`` without API keys) for its model, with parameters its
        runners can honour (``gateway/models.py``): record it as queued and start dispatching it to one of them."""
        runners = self.check_admission()
        model = self.dispatch.choose_model(request.model, default_model=self.config.default_model)
        models.check_params(request.params, model=model, runners=runners)
        if request.prompt is not None:
            models.check_raw_prompt(model=model, runners=runners)
        if owner is not None:
            self._check_streams(owner)
        # No await from the check to the stream's place in the queue (in _admit, before its record is written):
        # the POSTs that run while the record is written count it against the bound, once.
        return await self._admit(request, model, owner)

    def _check_streams(self, owner: str) -> None:
        """The owner's concurrent-stream limit; over it, first forget streams no runner has any more (their
        ``done`` message was lost), so a lost message costs a slot until the runners' next heartbeat at most."""
        try:
            self.quotas.check_streams(owner)
        except RateLimited:
            for stream_id in self.quotas.running(owner):
                if not self.dispatch.holds(stream_id):
                    self.quotas.stream_ended(stream_id)
            self.quotas.check_streams(owner)

    async def _admit(self, request: StreamRequest, model: str, owner: str | None) -> StreamRecord:
        stream_id = subjects.new_stream_id()
        job = JobRequest(
            stream_id=stream_id, epoch=secrets.token_hex(4), gateway_id=self.gateway_id, model=model,
            messages=request.messages, prompt=request.prompt, max_tokens=request.max_tokens,
            max_tokens_set=request.max_tokens_set, created=int(time.time()), owner=owner, params=request.params,
            detached=request.detached, stored=request.stored,
        )  # fmt: skip
        # Over the broker's max_payload, its messages go to the payload store (no store: check_job_bytes refuses it).
        limit = self._nc.max_payload - JOB_HEADROOM_BYTES
        carried = await payloads.carry_job(job, self._payloads, max_payload_bytes=limit)
        if carried is not job:
            self._recheck(carried, owner)
        job = carried
        check_job_bytes(len(codec.encode(job)), max_payload_bytes=self._nc.max_payload)
        actions = self.dispatch.admit(job, time.monotonic())
        if owner is not None:  # counted before the await too: the owner's next POST sees it
            self.quotas.stream_started(owner, stream_id)
        # Offered while its record is stored, not after: the first token is not behind the KV round trip (POST to
        # first delta p50 5.9 -> 5.1 ms).  A runner may so store the stream as running first: see records.store_new.
        self._apply(actions)
        self._runner_watch.keep(job)  # for whoever moves it should its runner be lost
        if self._unread is not None and not job.detached:  # a background response runs with no reader
            self._unread.admitted(stream_id)
        try:
            record = await records.store_new(self._kv, job)
        except BaseException:
            # No 201, so nobody will read or stop it: stop it here, queued or taken by now.
            self._tasks.spawn(self._abandon(stream_id), name=f"abandon-{stream_id}")
            raise
        self._metrics.streams_created.labels(model=model).inc()
        log_event(LifecycleEvent.CREATED, ROLE, stream_id, model=model, max_tokens=job.max_tokens)
        return record

    def _recheck(self, job: JobRequest, owner: str | None) -> None:
        """The checks again after storing the job's content (no await from them to its place in the queue)."""
        try:
            self.check_admission()
            if owner is not None:
                self._check_streams(owner)
        except TokenRelayError:
            if self._payloads is not None and job.payload is not None:
                self._tasks.spawn(self._payloads.delete(job.payload), name=f"forget-{job.stream_id}")
            raise

    async def _abandon(self, stream_id: str) -> None:
        """Stop a stream whose admission failed after it was offered to the runners."""
        try:
            await self._stop_local(stream_id, CancelReason.DISCONNECT)
        except (TokenRelayError, NatsError, JetStreamError) as exc:
            log.warning("stream %s: could not stop it after its admission failed: %s", stream_id, exc)

    # -- the dispatcher's actions ----------------------------------------------------------------

    def _apply(self, actions: Iterable[Action]) -> None:
        """Carry out what the dispatcher decided; each NATS exchange reports its outcome back to it."""
        if self._closed:
            return
        for action in actions:
            match action:
                case Offer():
                    self._tasks.spawn(self._offer(action), name=f"offer-{action.job.stream_id}")
                case AskHolders():
                    self._tasks.spawn(self._ask_holders(action), name=f"holders-{action.stream_id}")
                case Dispatched():
                    self._metrics.dispatch_seconds.observe(action.queued_s)
                    log_event(
                        LifecycleEvent.DISPATCHED, ROLE, action.stream_id,
                        runner_id=action.owner.runner_id, queued_ms=action.queued_s * 1000,
                    )  # fmt: skip
                case EndUnstarted():
                    stream_id = action.job.stream_id
                    if stream_id not in self._ending:  # a stop that comes while it is ended gets its end
                        self._ending[stream_id] = asyncio.get_running_loop().create_future()
                    self._tasks.spawn(self._end_unstarted(action), name=f"end-{stream_id}")
                case CancelOwner():
                    self._tasks.spawn(self._cancel_for_stop(action), name=f"cancel-{action.stream_id}")
                case _:
                    assert_never(action)
        self._metrics.streams_queued.set(self.dispatch.queued)
        due = self.dispatch.next_due_at()
        if due is not None and (self._clock_due is None or due < self._clock_due):
            self._clock_wake.set()

    async def _run_clock(self) -> None:
        """Tell the dispatcher the time whenever a stream's backoff or deadline is due."""
        while True:
            self._clock_due = self.dispatch.next_due_at()
            wait_s = None if self._clock_due is None else max(0.0, self._clock_due - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._clock_wake.wait(), wait_s)
            self._clock_wake.clear()
            self._apply(self.dispatch.tick(time.monotonic()))

    async def _offer(self, offer: Offer) -> None:
        """Offer the job once, to the queue group or the runner it is addressed to, to be taken by its ``answer_by``."""
        stream_id = offer.job.stream_id
        sent = replace(offer.job, answer_by=time.time() + offer.take_within_s)
        subject = subjects.jobs(sent.model) if offer.runner_id is None else subjects.runner_jobs(offer.runner_id)
        try:
            msg = await self._nc.request(subject, codec.encode(sent), timeout=offer.timeout_s)
            reply = codec.decode(msg.data)
        except NatsTimeout:
            self._metrics.offered(offer.runner_id, OfferOutcome.TIMED_OUT)
            self._apply(self.dispatch.offer_timed_out(stream_id, time.monotonic()))
            return
        except (NoRespondersError, CodecError):
            reply = None
        except BaseException:
            self._dispatch_failed(stream_id)
            raise
        now = time.monotonic()
        if isinstance(reply, JobAccepted):
            self._metrics.offered(offer.runner_id, OfferOutcome.ACCEPTED)
            self._apply(self.dispatch.offer_accepted(stream_id, reply.runner_id, now))
        elif isinstance(reply, JobRejected):
            self._metrics.offered(offer.runner_id, OfferOutcome.REFUSED)
            self._apply(self.dispatch.offer_refused(stream_id, now))
        else:
            self._metrics.offered(offer.runner_id, OfferOutcome.UNANSWERED)
            self._apply(self.dispatch.offer_unanswered(stream_id, now))

    async def _ask_holders(self, ask: AskHolders) -> None:
        """Ask which runner says it generates the stream (``tokenrelay.holders.<id>``)."""
        try:
            msg = await self._nc.request(subjects.holders(ask.stream_id), b"", timeout=ask.timeout_s)
            reply = codec.decode(msg.data)
        except (NoRespondersError, NatsTimeout, CodecError):
            reply = None
        except BaseException:
            self._dispatch_failed(ask.stream_id)
            raise
        holder = reply.runner_id if isinstance(reply, JobAccepted) and reply.stream_id == ask.stream_id else None
        self._apply(self.dispatch.holders_answered(ask.stream_id, holder, time.monotonic()))

    def _dispatch_failed(self, stream_id: str) -> None:
        """An offer or a question could not be made (NATS failed, or the gateway is closing): the stream leaves
        the queue, and a stop waiting on it must not wait forever."""
        if self._closed:
            return
        self._apply(self.dispatch.abandon(stream_id, time.monotonic()))
        self._settle(stream_id, Unavailable(DISPATCH_ENDED))

    async def _end_unstarted(self, end: EndUnstarted) -> None:
        """End a stream no runner took (stopped while queued, or ``queue_timeout_s`` passed: ``overloaded``)."""
        stream_id = end.job.stream_id
        try:
            record = await records.end_unstarted(self._nc, self._kv, end, gateway_id=self.gateway_id)
        except BaseException:
            self._settle(stream_id, Unavailable(DISPATCH_ENDED))
            raise
        self._metrics.streams_not_started.labels(model=end.job.model, finish_reason=str(record.finish_reason)).inc()
        log_event(
            LifecycleEvent.NOT_STARTED, ROLE, stream_id,
            finish_reason=str(record.finish_reason), error_code=record.error_code,
            cancel_reason=str(end.cancel_reason) if end.cancel_reason is not None else None,
        )  # fmt: skip
        self._settle(stream_id, StopResult(stream_id, end.finish_reason, 0))
        self.quotas.stream_ended(stream_id)

    async def _cancel_for_stop(self, cancel: CancelOwner) -> None:
        """A runner took a stream whose stop came while it was offered: the stop gets the owner's answer."""
        try:
            result = await self._ask_owner(cancel.stream_id, cancel.owner.runner_id, cancel.reason)
        except TokenRelayError as exc:
            self._settle(cancel.stream_id, exc)
            return
        except BaseException:
            self._settle(cancel.stream_id, Unavailable(DISPATCH_ENDED))
            raise
        self._settle(cancel.stream_id, result)

    def _settle(self, stream_id: str, outcome: StopResult | TokenRelayError) -> None:
        """Answer the stops waiting on the end of a stream's dispatch, unless answered already."""
        waiter = self._ending.pop(stream_id, None)
        if waiter is None or waiter.done():
            return
        if isinstance(outcome, StopResult):
            waiter.set_result(outcome)
        else:
            waiter.set_exception(outcome)
            waiter.exception()  # retrieved: a stop that gave up waiting leaves no "never retrieved" log

    # -- stop ----------------------------------------------------------------------------------

    async def stop(
        self, stream_id: str, reason: CancelReason = CancelReason.CLIENT, *, tenant: str | None = None
    ) -> StopResult:
        """Halt a stream; answer once its owner confirmed. Idempotent; a finished stream answers its state.

        A client's stop names its ``tenant``: ``not_found`` unless the stream is that tenant's (``None``: no keys,
        or a stop from inside the system)."""
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
        if tenant is None or self.dispatch.tenant_of(stream_id) == tenant:
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
        """Stop a stream this gateway dispatched, without reading the KV store (``None``: not one it knows)."""
        waiter = self._ending.get(stream_id)
        if waiter is None:
            route = self.dispatch.stop(stream_id, reason, time.monotonic())
            if route is None:
                return None
            if isinstance(route, AskOwner):
                return await self._ask_owner(stream_id, route.owner.runner_id, reason)
            waiter = self._ending[stream_id] = asyncio.get_running_loop().create_future()
            self._apply(route.actions)
        return await asyncio.shield(waiter)

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
        try:
            stream_id = codec.decode_as(msg.data, StreamDone).stream_id
        except UnknownMessageType as exc:  # a newer process's message, not a stream that finished
            self._metrics.unknown_message(exc.tag)
            return
        except CodecError as exc:
            log.warning("malformed stream_done: %s", exc)
            self._apply(self.dispatch.stream_done(None, time.monotonic()))  # a slot is free all the same
            return
        self._apply(self.dispatch.stream_done(stream_id, time.monotonic()))
        self.quotas.stream_ended(stream_id)
        if self._unread is not None:
            self._unread.ended(stream_id)

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
        except UnknownMessageType as exc:
            self._metrics.unknown_message(exc.tag)
            return
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
