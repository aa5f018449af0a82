"""A runner process's core: take jobs from the queue group, own their generations, answer cancels.

Why a queue group and not a JetStream work queue: a job is only worth running while its
client is waiting, and a stream whose runner dies must fail fast rather than be redelivered
minutes later.  Core request/reply on a queue group gives the gateway an immediate answer
(accepted, or rejected at capacity, or "no responders" when no runner is up) in one round trip,
adds nothing to the time to first token, and spreads jobs over any number of runners.
A runner at capacity rejects the job; the gateway retries, and the queue group's random choice
lands the retry on another runner.

Jobs are offered per model (``tokenrelay.jobs.<model>``): a runner subscribes to the subjects of the models its
engine serves, and announces them in its heartbeats, so a job only ever reaches a runner of its model.

A stream whose runner was lost is offered again, as a continuation, to a runner whose engine can continue it (it
announces what it can in its heartbeats); one that cannot refuses it ``unsupported_parameter``.  A runner that was
only partitioned or stopped and wakes up finds, when it writes the stream's record, that a newer generation owns
it: the write is refused (:mod:`~tokenrelay.runner.records`) and the stream cancelled here (``runner_lost``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import OrderedDict
from dataclasses import replace
from typing import TypeVar

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.kv import KeyValue

from tokenrelay.runner.engines import Engine
from tokenrelay.runner.engines.base import announced_params, can_continue, continues_of
from tokenrelay.runner.generation import HANDED_OFF, Generation, Outcome
from tokenrelay.runner.metrics import OTHER_MODEL, RunnerMetrics
from tokenrelay.runner.pace import PublishPace
from tokenrelay.runner.records import write_fenced
from tokenrelay.runner.replayserver import ReplayServer
from tokenrelay.runtime import natsio
from tokenrelay.runtime.config import RunnerConfig
from tokenrelay.runtime.payloads import PayloadStore
from tokenrelay.runtime.responses import EventsKeeper
from tokenrelay.runtime.tasks import TaskSet
from tokenrelay.wire import codec, subjects
from tokenrelay.wire.codec import CodecError, UnknownMessageType
from tokenrelay.wire.errors import ErrorCode
from tokenrelay.wire.messages import (
    CancelReason,
    CancelReply,
    CancelRequest,
    Continues,
    FinishReason,
    JobAccepted,
    JobRejected,
    JobRequest,
    RunnerHeartbeat,
    StreamDone,
    StreamerLag,
    StreamRecord,
    StreamState,
)
from tokenrelay.wire.pages import listed_on, pages_for

T = TypeVar("T")

log = logging.getLogger(__name__)

FINISHED_MEMORY_STREAMS = 10_000
"""Outcomes of this many recently finished streams are kept to answer late cancels."""
SHUTDOWN_GRACE_S = 2.0


def served_models(engine: Engine) -> tuple[str, ...]:
    """The models ``engine`` serves: those it lists in a ``models`` attribute (an engine may serve several),
    else its ``model``."""
    listed = getattr(engine, "models", None)
    models = tuple(str(model) for model in listed) if isinstance(listed, (tuple, list)) else ()
    return tuple(dict.fromkeys(models or (engine.model,)))


RECORD_WRITE_TIMEOUT_S = 30.0
"""How long a runner keeps trying to write a stream's record while JetStream elects a leader."""


class Runner:
    """Owns every generation running in this process."""

    def __init__(
        self,
        config: RunnerConfig,
        *,
        nc: NATS,
        kv: KeyValue,
        engine: Engine,
        runner_id: str,
        metrics: RunnerMetrics | None = None,
        payloads: PayloadStore | None = None,
    ) -> None:
        self.config = config
        self._payloads = payloads
        """Where the gateway leaves the content of a job larger than the broker's ``max_payload``."""
        self._keeper = EventsKeeper(nc.jetstream())
        """Keeps the events of stored responses (``POST /v1/responses``) as their streams end."""
        self.runner_id = runner_id
        self.metrics = metrics or RunnerMetrics()
        self._nc = nc
        self._kv = kv
        self._engine = engine
        self.models = served_models(engine)
        """The models this runner takes jobs of."""
        self.continues = continues_of(engine)
        """What this runner's engine can continue of a stream that moved here."""
        self._active: dict[str, Generation] = {}
        self._finished: OrderedDict[str, Outcome] = OrderedDict()
        self._subs: list[Subscription] = []
        self._beats = 0
        """Heartbeats sent: which page of the streams the next one lists (``wire/pages.py``)."""
        self._revisions: dict[str, int] = {}
        """The revision of each unfinished stream's record as this runner last wrote it (a generation's writes are
        in order: the finished one removes it)."""
        self._job_subs: list[Subscription] = []
        """The job subscriptions (one per model): dropped first when the runner drains."""
        self._idle = asyncio.Event()
        """Set while no stream generates here."""
        self._idle.set()
        self.draining = False
        """Told to stop: takes no job, lets its streams finish (:meth:`drain`)."""
        self.pace = PublishPace(
            config.publish_interval_ms / 1000,
            max_interval_s=max(config.max_publish_interval_ms, config.publish_interval_ms) / 1000,
        )
        """Every stream's publish interval here, from the streamers' lateness reports."""
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._cancel_tasks = TaskSet()
        """Cancels being answered and finishes being told, each in a task of its own."""
        self.replay = ReplayServer(
            nc,
            max_bytes_per_stream=config.replay_max_bytes_per_stream,
            linger_s=config.replay_linger_s,
            unknown=self.metrics.unknown_message,
            linger_streams=config.replay_linger_streams,
            max_age_s=config.history.ttl_s,
        )
        self.metrics.capacity.set(config.max_concurrency)
        self.metrics.publish_interval.set_function(lambda: self.pace.interval_s)

    @property
    def active(self) -> int:
        """Streams generating now."""
        return len(self._active)

    async def start(self) -> None:
        """Subscribe to jobs and cancels, and start heartbeating."""
        for model in self.models:
            subject = subjects.jobs(model)
            sub = await self._nc.subscribe(subject, queue=subjects.RUNNER_QUEUE_GROUP, cb=self._on_job)
            self._job_subs.append(sub)
        # Offers addressed to this runner alone (a moved stream's continuation, a new stream whose offer through the
        # group went unanswered): a paused member of the queue group still gets its share of the group's offers.
        self._job_subs.append(await self._nc.subscribe(subjects.runner_jobs(self.runner_id), cb=self._on_job))
        self._subs.append(await self._nc.subscribe(subjects.runner_cancel(self.runner_id), cb=self._on_cancel))
        self._subs.append(await self._nc.subscribe(subjects.runner_ping(self.runner_id), cb=self._on_ping))
        self._subs.append(await self._nc.subscribe(subjects.HOLDERS_WILDCARD, cb=self._on_holders))
        if self.pace.adapts:
            self._subs.append(await self._nc.subscribe(subjects.STREAMER_LAG, cb=self._on_streamer_lag))
        await self._nc.flush()
        await self._heartbeat()
        self._heartbeat_task = asyncio.create_task(self._heartbeat_loop())
        log.info("runner %s ready (engine=%s models=%s)", self.runner_id, self._engine.name, ", ".join(self.models))

    async def drain(self, timeout_s: float) -> bool:
        """Take no new job, and wait up to ``timeout_s`` for the streams generating here to finish (cancels, history
        requests and heartbeats are still answered meanwhile); whether they all did."""
        self.draining = True
        for sub in self._job_subs:
            await natsio.unsubscribe_quietly(sub)
        self._job_subs.clear()
        await self._nc.flush()  # no offer reaches this runner once the server has the unsubscribes
        log.info("runner %s draining: %d streams to finish within %.0f s", self.runner_id, len(self._active), timeout_s)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            log.warning(
                "runner %s: %d streams still running after the drain timeout", self.runner_id, len(self._active)
            )
            return False
        return True

    async def hand_off(self) -> None:
        """Past the drain timeout: leave the streams still generating here to other runners.  It stops answering
        (cancels, pings, history), stops each generation without ending its stream, and says it is leaving in a
        last heartbeat, so the gateways find it gone at once and move its streams (``gateway/migration.py``).  An
        engine that continues nothing keeps today's end instead: :meth:`stop` ends them ``shutting_down``."""
        if self.continues is Continues.NOTHING or not self._active:
            return
        for sub in self._subs:
            await natsio.unsubscribe_quietly(sub)
        self._subs.clear()
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
        left = tuple(self._active)
        generations = [generation.hand_off() for generation in self._active.values()]
        await asyncio.wait_for(asyncio.gather(*generations, return_exceptions=True), SHUTDOWN_GRACE_S)
        await self._nc.publish(
            subjects.RUNNER_HEARTBEAT,
            codec.encode(replace(self._beat(), streams=left, page=0, pages=1, active=0, leaving=True)),
        )
        await self._nc.flush()
        log.warning("runner %s left %d streams to other runners", self.runner_id, len(left))

    async def stop(self) -> None:
        """Stop taking jobs, end what is running as ``shutting_down``, and release the engine."""
        for sub in [*self._job_subs, *self._subs]:
            await natsio.unsubscribe_quietly(sub)
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
        tasks = [g.abort(str(ErrorCode.SHUTTING_DOWN), "the runner is shutting down") for g in self._active.values()]
        if tasks:
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), SHUTDOWN_GRACE_S)
        await self.replay.close()
        await self._engine.aclose()

    async def _on_job(self, msg: Msg) -> None:
        job = _decode_or_drop(msg, JobRequest, "job", self.metrics)
        if job is None:
            return
        active = self._active.get(job.stream_id)
        if active is not None and active.job.epoch == job.epoch:
            # The same job offered again: the gateway gave up waiting for this runner's answer to the first
            # offer (a busy runner, a busy broker) and asked again.  It is ours: say so again.  "At capacity"
            # would have the gateway end, as never started, a stream that is running here.
            await msg.respond(codec.encode(JobAccepted(stream_id=job.stream_id, runner_id=self.runner_id)))
            return
        if job.answer_by is not None and time.time() > job.answer_by:
            # The gateway stopped waiting for this answer (this runner was too busy to read the offer in time) and
            # may offer the stream again: taking it now could make two runners generate it.  No answer at all.
            self.metrics.jobs_stale.inc()
            return
        if job.model not in self.models:  # addressed to this runner by a gateway that took it for another one
            reply = JobRejected(
                stream_id=job.stream_id, code=str(ErrorCode.MODEL_NOT_FOUND), message="not a model of this runner"
            )
            await msg.respond(codec.encode(reply))
            return
        if self.draining:  # an offer sent before the server had this runner's unsubscribe: another runner takes it
            reply = JobRejected(stream_id=job.stream_id, code=str(ErrorCode.SHUTTING_DOWN), message="draining")
            await msg.respond(codec.encode(reply))
            return
        if job.continuation is not None and not can_continue(self.continues, job.continuation):
            # Another runner of the model may: the gateway offers it there.
            what = "reasoning or tool calls" if job.continuation.typed else "a stream"
            reply = JobRejected(
                stream_id=job.stream_id,
                code=str(ErrorCode.UNSUPPORTED_PARAMETER),
                message=f"this runner's engine cannot continue {what} that moved from another runner",
            )
            await msg.respond(codec.encode(reply))
            return
        if len(self._active) >= self.config.max_concurrency or active is not None:
            self.metrics.jobs_rejected.inc()
            reply = JobRejected(stream_id=job.stream_id, code=str(ErrorCode.OVERLOADED), message="at capacity")
            await msg.respond(codec.encode(reply))
            return
        generation = Generation(
            job,
            engine=self._engine,
            nc=self._nc,
            runner_id=self.runner_id,
            pace=self.pace,
            metrics=self.metrics,
            write_record=self._write_record,
            # A moved stream's history is read from JetStream, where its fences are.
            replay_log=await self.replay.open(job.stream_id, held=job.continuation is None),
            payloads=self._payloads,
            keeper=self._keeper,
        )
        self._active[job.stream_id] = generation
        self._idle.clear()
        self.metrics.active_streams.set(len(self._active))
        # Reply before the first event so the gateway knows the owner before any cancel can race it.
        await msg.respond(codec.encode(JobAccepted(stream_id=job.stream_id, runner_id=self.runner_id)))
        task = generation.start()
        task.add_done_callback(functools.partial(self._on_done, job))

    async def _on_holders(self, msg: Msg) -> None:
        """ "Which runner generates this stream?": the one that does says so, as it would to the offer."""
        stream_id = msg.subject.rpartition(".")[2]
        if msg.reply and stream_id in self._active:
            await msg.respond(codec.encode(JobAccepted(stream_id=stream_id, runner_id=self.runner_id)))

    def _on_done(self, job: JobRequest, task: asyncio.Task[Outcome]) -> None:
        stream_id = job.stream_id
        self._active.pop(stream_id, None)
        if not self._active:
            self._idle.set()
        self.metrics.active_streams.set(len(self._active))
        self.replay.finished(stream_id)
        # The admitting gateway counts its tenants' streams (gateway/quotas.py) and offers its queue's head
        # the slot this stream held (gateway/dispatch.py).
        handed_off = not task.cancelled() and task.exception() is None and task.result().error_code == HANDED_OFF
        if handed_off:
            return  # another runner continues it: its gateway is not told, and its content is needed still
        self._cancel_tasks.spawn(self._tell_done(job.gateway_id, stream_id))
        if job.payload is not None and self._payloads is not None:  # its content is not needed any more
            self._cancel_tasks.spawn(self._payloads.delete(job.payload))
        if not task.cancelled() and task.exception() is None:
            self._finished[stream_id] = task.result()
            while len(self._finished) > FINISHED_MEMORY_STREAMS:
                self._finished.popitem(last=False)

    async def _on_cancel(self, msg: Msg) -> None:
        # nats-py runs one subscription's callbacks one after another: answer each cancel in a task of
        # its own so a halt that takes a while never delays the next stream's cancel.
        self._cancel_tasks.spawn(self._cancel(msg))

    async def _cancel(self, msg: Msg) -> None:
        request = _decode_or_drop(msg, CancelRequest, "cancel", self.metrics)
        if request is None:
            return
        if request.reason is CancelReason.RUNNER_LOST:  # it moved on: what is held here may be void
            self.replay.drop(request.stream_id)
        generation = self._active.get(request.stream_id)
        halted_ts = None
        if generation is not None:
            received = time.time()
            outcome: Outcome | None = await generation.cancel(request.reason)
            halted_ts = generation.halted_ts
            if halted_ts is not None:
                self.metrics.cancel_seconds.observe(max(0.0, halted_ts - received))
        else:
            outcome = self._finished.get(request.stream_id)
        reply = CancelReply(
            stream_id=request.stream_id,
            found=outcome is not None,
            finish_reason=outcome.finish_reason if outcome else None,
            tokens=outcome.tokens if outcome else 0,
            halted_ts=halted_ts,
        )
        await msg.respond(codec.encode(reply))

    async def _tell_done(self, gateway_id: str, stream_id: str) -> None:
        try:
            await self._nc.publish(subjects.gateway_done(gateway_id), codec.encode(StreamDone(stream_id=stream_id)))
        except Exception as exc:  # the gateway's fallback is this runner's next heartbeat
            log.warning("could not tell gateway %s that %s finished: %s", gateway_id, stream_id, exc)

    async def _write_record(self, record: StreamRecord) -> None:
        self._count(record)
        data = codec.encode(record)
        # A record is the stream's state for status, stop and late readers: worth waiting out a leader election.
        stream_id = record.stream_id
        last = self._revisions.pop(stream_id, None)
        written = await natsio.retrying(
            f"stream {stream_id}: record", lambda: write_fenced(self._kv, record, data, last=last),
            timeout_s=RECORD_WRITE_TIMEOUT_S,
        )  # fmt: skip
        if written is None:
            self._superseded(record)
        elif record.state is not StreamState.FINISHED:  # its next write needs no read first
            self._revisions[stream_id] = written

    def _superseded(self, record: StreamRecord) -> None:
        """A newer generation owns the stream: stop generating it here, and serve none of its events any more."""
        log.warning(
            "stream %s moved on from this runner (generation %d superseded): cancelling it here",
            record.stream_id, record.generation,
        )  # fmt: skip
        self.replay.drop(record.stream_id)
        generation = self._active.get(record.stream_id)
        if generation is not None and generation.gen == record.generation:
            # Its terminal event carries its own generation: readers drop it past the newer one's fence.
            self._cancel_tasks.spawn(_cancel_superseded(generation))

    def _count(self, record: StreamRecord) -> None:
        """Per-model metrics from the records a generation writes: ``running`` once it started, ``finished``
        once it ended (with its tokens and TTFT).  Every generation writes both, so no count is missed."""
        model = record.model if record.model in self.models else OTHER_MODEL  # the label set stays bounded
        if record.state is StreamState.RUNNING:
            self.metrics.model_streams_started.labels(model=model).inc()
        elif record.state is StreamState.FINISHED:
            reason = str(record.finish_reason or FinishReason.ERROR)
            self.metrics.model_streams_finished.labels(model=model, finish_reason=reason).inc()
            self.metrics.model_tokens.labels(model=model).inc(record.tokens)
            if record.ttft_ms is not None:
                self.metrics.model_ttft.labels(model=model).observe(record.ttft_ms / 1000)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_interval_s)
            self.replay.sweep()
            self.pace.expire(time.monotonic())
            try:
                await self._heartbeat()
            except Exception as exc:
                log.warning("heartbeat failed: %s", exc)

    def _beat(self) -> RunnerHeartbeat:
        pages = pages_for(len(self._active))
        page, self._beats = self._beats % pages, self._beats + 1
        return RunnerHeartbeat(
            runner_id=self.runner_id,
            engine=self._engine.name,
            model=self._engine.model,
            models=self.models,
            active=len(self._active),
            capacity=self.config.max_concurrency,
            ts=time.time(),
            streams=listed_on(self._active, page, pages),
            page=page,
            pages=pages,
            accepts_params=announced_params(self._engine),
            continues=self.continues,
        )

    async def _heartbeat(self) -> None:
        await self._nc.publish(subjects.RUNNER_HEARTBEAT, codec.encode(self._beat()))

    async def _on_streamer_lag(self, msg: Msg) -> None:
        report = _decode_or_drop(msg, StreamerLag, "streamer lag report", self.metrics)
        if report is not None:
            self.pace.report(report.streamer_id, report.lag_s, time.monotonic())

    async def _on_ping(self, msg: Msg) -> None:
        """A gateway missed our heartbeats and asks whether we are alive: answer with one."""
        if msg.reply:
            await msg.respond(codec.encode(self._beat()))


async def _cancel_superseded(generation: Generation) -> None:
    await generation.cancel(CancelReason.RUNNER_LOST)


def _decode_or_drop(msg: Msg, cls: type[T], what: str, metrics: RunnerMetrics) -> T | None:
    """The message as a ``cls``, or ``None`` (logged and dropped) when it is not one; one of a type this runner
    does not know (a newer process's) is counted by type and logged once per type."""
    try:
        return codec.decode_as(msg.data, cls)
    except UnknownMessageType as exc:
        metrics.unknown_message(exc.tag)
        return None
    except CodecError as exc:
        log.warning("dropping malformed %s: %s", what, exc)
        return None
