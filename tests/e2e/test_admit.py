"""Spec of admission: a new stream is offered to the runners while its record is being stored.

The offer does not wait for the KV write, so a runner may take the job (and store the stream as running) before
the gateway's own write arrives, and the write may fail after a runner took the job.  These tests hold the
gateway's write back, against a real nats-server, a real KV bucket and a stand-in runner on NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any, cast

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from tokenrelay.gateway.metrics import GatewayMetrics
from tokenrelay.gateway.requests import StreamRequest
from tokenrelay.gateway.states import DispatchState, Owner
from tokenrelay.gateway.streams import StreamManager
from tokenrelay.runtime import natsio
from tokenrelay.runtime.config import GatewayConfig, HistoryConfig
from tokenrelay.testing.procs import NatsServer
from tokenrelay.wire import codec, subjects
from tokenrelay.wire.content import ChatMessage
from tokenrelay.wire.errors import Overloaded, Unavailable
from tokenrelay.wire.messages import (
    CancelReason,
    CancelReply,
    CancelRequest,
    FinishReason,
    JobAccepted,
    JobRejected,
    JobRequest,
    RunnerHeartbeat,
    StreamRecord,
    StreamState,
    job_record,
)

RUNNER_ID = "runner-stand-in"
REQUEST = StreamRequest(messages=(ChatMessage(role="user", content="admit me"),), max_tokens=5, model=None)


class HeldStore:
    """The streams bucket, with the gateway's ``create`` held until :attr:`release` is set (then done, or failed)."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self.release = asyncio.Event()
        self.fail = False

    async def create(self, key: str, value: bytes) -> int:
        await self.release.wait()
        if self.fail:
            raise NatsTimeout
        return await self.kv.create(key, value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.kv, name)


@dataclass
class StandInRunner:
    """Answers job offers as a runner would; what it was asked is kept."""

    nc: NATS
    kv: KeyValue
    accept: bool = True
    store_running: bool = False
    """Store the stream as running (as a runner does on start) before answering the offer."""
    hold_answer: asyncio.Event | None = None
    """When set: answer offers only once it is set."""
    answers_cancels: bool = True
    answers_holders: bool = False
    """Say it generates a stream it was offered, when asked which runner does (``tokenrelay.holders.<id>``)."""
    jobs: list[JobRequest] = field(default_factory=list)
    cancels: list[CancelRequest] = field(default_factory=list)
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    offered: asyncio.Event = field(default_factory=asyncio.Event)
    holders_asked: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def gone_after_taking(cls, nc: NATS, kv: KeyValue) -> StandInRunner:
        """Answers offers when :attr:`hold_answer` is set, and is gone by the time a stop comes."""
        return cls(nc, kv, hold_answer=asyncio.Event(), answers_cancels=False)

    @classmethod
    def slow_to_answer(cls, nc: NATS, kv: KeyValue) -> StandInRunner:
        """Takes offers but answers them only when :attr:`hold_answer` is set; says at once that it holds them."""
        return cls(nc, kv, hold_answer=asyncio.Event(), answers_holders=True)

    @classmethod
    def silent(cls, nc: NATS, kv: KeyValue) -> StandInRunner:
        """Reads offers, answers them only when :attr:`hold_answer` is set, and never claims a stream."""
        return cls(nc, kv, hold_answer=asyncio.Event())

    async def start(self) -> None:
        await self.nc.subscribe(subjects.jobs("synthetic"), cb=self._on_job)
        if self.answers_cancels:
            await self.nc.subscribe(subjects.runner_cancel(RUNNER_ID), cb=self._on_cancel)
        await self.nc.subscribe(subjects.HOLDERS_WILDCARD, cb=self._on_holders)
        await self.nc.flush()

    async def _on_holders(self, msg: Msg) -> None:
        self.holders_asked.set()
        stream_id = msg.subject.rpartition(".")[2]
        if self.answers_holders and self.accept and any(job.stream_id == stream_id for job in self.jobs):
            await msg.respond(codec.encode(JobAccepted(stream_id=stream_id, runner_id=RUNNER_ID)))

    async def _on_job(self, msg: Msg) -> None:
        job = codec.decode_as(msg.data, JobRequest)
        self.jobs.append(job)
        self.offered.set()
        if self.hold_answer is not None:
            await self.hold_answer.wait()
        if not self.accept:
            await msg.respond(codec.encode(JobRejected(stream_id=job.stream_id, code="overloaded", message="full")))
            self.answered.set()
            return
        if self.store_running:
            running = job_record(job, StreamState.RUNNING, runner_id=RUNNER_ID)
            await self.kv.put(job.stream_id, codec.encode(running))
        await msg.respond(codec.encode(JobAccepted(stream_id=job.stream_id, runner_id=RUNNER_ID)))
        self.answered.set()

    async def _on_cancel(self, msg: Msg) -> None:
        request = codec.decode_as(msg.data, CancelRequest)
        self.cancels.append(request)
        reply = CancelReply(stream_id=request.stream_id, found=True, finish_reason=FinishReason.CANCELLED, tokens=0)
        await msg.respond(codec.encode(reply))


@dataclass
class Admitting:
    manager: StreamManager
    store: HeldStore
    runner: StandInRunner


@pytest.fixture
async def admitting(nats: NatsServer) -> AsyncIterator[Admitting]:
    async with admitting_with(nats, StandInRunner) as admitting:
        yield admitting


@contextlib.asynccontextmanager
async def admitting_with(
    nats: NatsServer,
    stand_in: Callable[[NATS, KeyValue], StandInRunner],
    *,
    dispatch_attempt_timeout_s: float = 1.0,
    max_queued_streams: int = 1_000,
) -> AsyncIterator[Admitting]:
    """A gateway's stream manager on a held store, and a stand-in runner made by ``stand_in``, both heard."""
    nc = await natsio.connect(nats.url, name="test-gateway")
    runner_nc = await natsio.connect(nats.url, name="test-runner")
    try:
        kv = await natsio.ensure_streams_bucket(nc.jetstream(), HistoryConfig())
        store = HeldStore(kv)
        config = GatewayConfig(
            nats_url=nats.url,
            queue_timeout_s=30,
            dispatch_attempt_timeout_s=dispatch_attempt_timeout_s,
            max_queued_streams=max_queued_streams,
        )
        gateway_id = f"gateway-{secrets.token_hex(4)}"
        manager = StreamManager(
            config, nc=nc, kv=cast(KeyValue, store), metrics=GatewayMetrics(), gateway_id=gateway_id
        )
        await manager.start()
        runner = stand_in(runner_nc, kv)
        await runner.start()
        beat = RunnerHeartbeat(
            runner_id=RUNNER_ID, engine="synthetic", model="synthetic", active=0, capacity=8, ts=time.time()
        )
        await runner_nc.publish(subjects.RUNNER_HEARTBEAT, codec.encode(beat))
        await until(lambda: bool(manager.live_runners()), "the gateway heard the runner")
        yield Admitting(manager, store, runner)
        await manager.close()
    finally:
        await runner_nc.close()
        await nc.close()


async def until(condition: Callable[[], bool], what: str, *, timeout_s: float = 5) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within {timeout_s} s: {what}")


async def stored(kv: KeyValue, stream_id: str, *, until: StreamState) -> StreamRecord:
    async with asyncio.timeout(5):
        while True:
            try:
                entry = await kv.get(stream_id)
            except Exception:  # not there yet
                entry = None
            if entry is not None and entry.value is not None:
                record = codec.decode_as(entry.value, StreamRecord)
                if record.state is until:
                    return record
            await asyncio.sleep(0.01)


async def offered(admitting: Admitting) -> asyncio.Task[StreamRecord]:
    """A stream being admitted, once the runners got its offer (its record's write is still held)."""
    creating = asyncio.create_task(admitting.manager.create(REQUEST))
    async with asyncio.timeout(5):
        await admitting.runner.answered.wait()
    return creating


async def test_a_new_stream_is_offered_to_the_runners_before_its_record_is_stored(admitting: Admitting) -> None:
    creating = await offered(admitting)
    assert not creating.done()
    admitting.store.release.set()
    record = await creating
    assert record.stream_id == admitting.runner.jobs[0].stream_id
    assert record.state is StreamState.QUEUED
    assert (await stored(admitting.store.kv, record.stream_id, until=StreamState.QUEUED)).epoch == record.epoch


async def test_a_stream_whose_record_is_being_stored_counts_once_against_the_queue_bound(nats: NatsServer) -> None:
    async with admitting_with(nats, StandInRunner, max_queued_streams=2) as admitting:
        admitting.runner.accept = False  # at capacity: every stream stays in the gateway's queue
        manager = admitting.manager
        first = await offered(admitting)
        assert not first.done()  # its record's write is held
        manager.check_admission()  # one of two places taken: a second stream is admitted
        second = asyncio.create_task(manager.create(REQUEST))
        await until(lambda: manager.dispatch.queued == 2, "the second stream is queued")
        assert not second.done()
        with pytest.raises(Overloaded):
            manager.check_admission()
        admitting.store.release.set()
        await asyncio.gather(first, second)


async def test_a_record_the_runner_stored_first_is_the_stream_admitted(admitting: Admitting) -> None:
    admitting.runner.store_running = True
    creating = await offered(admitting)
    admitting.store.release.set()
    record = await creating  # the gateway's create found the key taken: not an error
    assert record.state is StreamState.RUNNING
    assert record.runner_id == RUNNER_ID
    assert record.epoch == admitting.runner.jobs[0].epoch
    stored_now = await stored(admitting.store.kv, record.stream_id, until=StreamState.RUNNING)
    assert stored_now == record  # the runner's record was not overwritten with "queued"


async def test_a_record_of_another_epoch_under_the_new_id_fails_the_admission(admitting: Admitting) -> None:
    admitting.runner.accept = False
    creating = await offered(admitting)
    job = admitting.runner.jobs[0]
    other = job_record(replace(job, epoch="someone-else"), StreamState.RUNNING)
    await admitting.store.kv.put(job.stream_id, codec.encode(other))
    admitting.store.release.set()
    with pytest.raises(KeyWrongLastSequenceError):
        await creating


async def test_a_stream_a_runner_took_is_stopped_when_its_record_cannot_be_stored(admitting: Admitting) -> None:
    admitting.store.fail = True
    creating = await offered(admitting)
    admitting.store.release.set()
    with pytest.raises(NatsTimeout):
        await creating
    await until(lambda: bool(admitting.runner.cancels), "the runner was asked to stop")
    [cancel] = admitting.runner.cancels
    assert cancel.stream_id == admitting.runner.jobs[0].stream_id
    assert cancel.reason is CancelReason.DISCONNECT


async def test_a_stream_still_queued_ends_cancelled_when_its_record_cannot_be_stored(admitting: Admitting) -> None:
    admitting.runner.accept = False  # at capacity: the stream waits in the gateway's queue
    admitting.store.fail = True
    creating = await offered(admitting)
    admitting.store.release.set()
    with pytest.raises(NatsTimeout):
        await creating
    stream_id = admitting.runner.jobs[0].stream_id
    record = await stored(admitting.store.kv, stream_id, until=StreamState.FINISHED)
    assert record.finish_reason is FinishReason.CANCELLED
    assert admitting.runner.cancels == []  # no runner had it


async def test_a_stop_that_lands_while_the_offer_is_answered_gets_the_owners_failure_not_a_hang(
    nats: NatsServer,
) -> None:
    # A runner that takes the job but is gone before the stop reaches it (nobody on its cancel subject).
    async with admitting_with(nats, StandInRunner.gone_after_taking) as admitting:
        assert admitting.runner.hold_answer is not None
        creating = asyncio.create_task(admitting.manager.create(REQUEST))
        async with asyncio.timeout(5):
            await admitting.runner.offered.wait()
        admitting.store.release.set()
        record = await creating
        stopping = asyncio.create_task(admitting.manager.stop(record.stream_id))
        await until(lambda: admitting.manager.dispatch.stopping(record.stream_id) is not None, "the stop waits")
        admitting.runner.hold_answer.set()
        with pytest.raises(Unavailable):
            async with asyncio.timeout(5):
                await stopping


ANSWER_WAIT_S = 0.2
"""The gateway's wait for an answer to an offer, in the tests of offers answered late."""


async def test_an_offer_carries_the_time_after_which_no_runner_may_take_it(admitting: Admitting) -> None:
    before = time.time()
    creating = await offered(admitting)
    admitting.store.release.set()
    await creating

    [job] = admitting.runner.jobs
    assert job.answer_by is not None
    assert before < job.answer_by <= time.time() + admitting.manager.config.dispatch_attempt_timeout_s


async def test_an_offer_answered_late_is_kept_by_the_runner_that_says_it_holds_the_stream_and_not_offered_again(
    nats: NatsServer,
) -> None:
    async with admitting_with(
        nats, StandInRunner.slow_to_answer, dispatch_attempt_timeout_s=ANSWER_WAIT_S
    ) as admitting:
        admitting.store.release.set()
        runner = admitting.runner
        record = await admitting.manager.create(REQUEST)
        async with asyncio.timeout(5):
            await runner.holders_asked.wait()  # no answer in time: the gateway asks which runner holds the stream

        stopped = await admitting.manager.stop(record.stream_id)  # the runner that said so owns it
        assert admitting.manager.dispatch.owner_of(record.stream_id) == Owner(RUNNER_ID)
        assert admitting.manager.dispatch.state_of(record.stream_id) is DispatchState.RUNNING  # never offered again
        assert runner.hold_answer is not None
        runner.hold_answer.set()  # the late answer is read now, and changes nothing

        assert [job.stream_id for job in runner.jobs] == [record.stream_id]  # offered once
        assert [cancel.stream_id for cancel in runner.cancels] == [record.stream_id]
        assert stopped.finish_reason is FinishReason.CANCELLED


async def test_an_offer_nobody_answered_or_claims_is_offered_again(nats: NatsServer) -> None:
    async with admitting_with(nats, StandInRunner.silent, dispatch_attempt_timeout_s=ANSWER_WAIT_S) as admitting:
        admitting.store.release.set()
        runner, dispatch = admitting.runner, admitting.manager.dispatch
        record = await admitting.manager.create(REQUEST)
        async with asyncio.timeout(5):
            await runner.holders_asked.wait()
        # The question unanswered too: the gateway offers the job again (the runner reads it once released).
        await until(lambda: dispatch.state_of(record.stream_id) is DispatchState.OFFERED, "offered again")
        assert runner.hold_answer is not None
        runner.hold_answer.set()

        await until(lambda: len(runner.jobs) >= 2, "the job was offered again")
        assert {job.stream_id for job in runner.jobs} == {record.stream_id}
        assert runner.jobs[0].answer_by is not None and runner.jobs[1].answer_by is not None
        assert runner.jobs[1].answer_by > runner.jobs[0].answer_by  # every offer has a deadline of its own
