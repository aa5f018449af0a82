"""Spec of a runner's node with moved streams: it refuses a continuation its engine cannot continue, announces what
it can, takes offers addressed to it alone, refuses a model it does not serve, and cancels a stream it finds a newer
generation owns, serving its history no more (in-memory broker and bucket, an engine that waits for ever without
sleeping)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

from tests.unit.runner.fakes import FakeKV, FakeMsg, FakeNats
from tokenrelay.runner.engines import GenerationRequest, Piece
from tokenrelay.runner.metrics import RunnerMetrics
from tokenrelay.runner.node import Runner
from tokenrelay.runtime.config import RunnerConfig
from tokenrelay.wire import codec, subjects
from tokenrelay.wire.content import ChatMessage
from tokenrelay.wire.errors import ErrorCode
from tokenrelay.wire.messages import (
    CancelReason,
    CancelRequest,
    Continuation,
    Continues,
    FinishReason,
    JobAccepted,
    JobRejected,
    JobRequest,
    ReplayRequest,
    StreamEnd,
    StreamRecord,
    StreamState,
    job_record,
)
from tokenrelay.wire.replay import decode_page

STREAM = "0" * 32


class Waiting:
    """Yields one token, then waits until the stream is cancelled."""

    name = "waiting"
    model = "m"

    def __init__(self, continues: Continues) -> None:
        self.continues = continues
        self.forever = asyncio.Event()

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Piece]:
        yield "a"
        await self.forever.wait()

    async def aclose(self) -> None:
        """Nothing to release."""


def job(continuation: Continuation | None = None) -> JobRequest:
    return JobRequest(
        stream_id=STREAM, epoch="e1", gateway_id="g1", model="m", messages=(ChatMessage(role="user", content="hi"),),
        max_tokens=100, created=1, continuation=continuation,
    )  # fmt: skip


def runner(continues: Continues, kv: FakeKV | None = None) -> tuple[Runner, FakeNats]:
    nc = FakeNats()
    node = Runner(
        RunnerConfig(), nc=nc, kv=kv or FakeKV(), engine=Waiting(continues), runner_id="r1",  # type: ignore[arg-type]
        metrics=RunnerMetrics(),
    )  # fmt: skip
    return node, nc


async def offer(node: Runner, offered: JobRequest) -> JobAccepted | JobRejected:
    msg = FakeMsg(codec.encode(offered))
    await node._on_job(msg)  # type: ignore[arg-type]
    answer = codec.decode(msg.answers[0])
    assert isinstance(answer, JobAccepted | JobRejected)
    return answer


async def test_a_runner_refuses_a_continuation_its_engine_cannot_continue() -> None:
    node, _ = runner(Continues.NOTHING)
    answer = await offer(node, job(Continuation(gen=1, seq=3, tokens=2, text="ab")))
    assert isinstance(answer, JobRejected) and answer.code == ErrorCode.UNSUPPORTED_PARAMETER
    assert node.active == 0


async def test_a_text_only_runner_refuses_a_continuation_of_reasoning_or_tool_calls() -> None:
    node, _ = runner(Continues.TEXT)
    answer = await offer(node, job(Continuation(gen=1, seq=3, tokens=2, typed=True)))
    assert isinstance(answer, JobRejected) and answer.code == ErrorCode.UNSUPPORTED_PARAMETER


async def test_a_runner_takes_jobs_addressed_to_it_alone_on_its_own_subject() -> None:
    node, nc = runner(Continues.TEXT)
    await node.start()
    try:
        msg = FakeMsg(codec.encode(job(Continuation(gen=1, seq=3, tokens=2, text="ab"))))
        await nc.subscriptions[subjects.runner_jobs("r1")](msg)
        assert isinstance(codec.decode(msg.answers[0]), JobAccepted)
    finally:
        await node.stop()


async def test_a_runner_refuses_a_job_of_a_model_it_does_not_serve() -> None:
    node, _ = runner(Continues.TEXT)
    answer = await offer(node, replace(job(Continuation(gen=1, seq=3, tokens=2)), model="other"))
    assert isinstance(answer, JobRejected) and answer.code == ErrorCode.MODEL_NOT_FOUND
    assert node.active == 0


async def test_a_runner_announces_what_its_engine_can_continue() -> None:
    node, _ = runner(Continues.TEXT)
    assert node._beat().continues is Continues.TEXT


async def held(nc: FakeNats) -> bool:
    """Whether the runner answers a replay of the stream as holding its events."""
    msg = FakeMsg(codec.encode(ReplayRequest(stream_id=STREAM, max_events=10)), subject=subjects.replay(STREAM))
    await nc.subscriptions[subjects.replay(STREAM)](msg)
    return decode_page(msg.answers[0]).header.held


async def settle(node: Runner) -> None:
    """Let the stream's generation begin, and every record write, the cancels they start and the generations those
    end finish."""
    generation = node._active[STREAM]
    await asyncio.sleep(0)  # one pass of the loop: the generation begins and writes its first record
    await generation.records_saved()
    await node._cancel_tasks.wait()
    await generation.records_saved()


async def test_a_runner_takes_a_continuation_and_serves_no_history_for_it() -> None:
    node, nc = runner(Continues.TEXT)
    answer = await offer(node, job(Continuation(gen=1, seq=3, tokens=2, text="ab")))
    assert isinstance(answer, JobAccepted)
    assert not await held(nc)
    generation = node._active[STREAM]
    await asyncio.sleep(0)  # one pass of the loop: the generation begins before it is cancelled
    await generation.cancel(CancelReason.CLIENT)


async def test_a_runner_that_finds_a_newer_generation_in_the_record_cancels_its_stream() -> None:
    kv = FakeKV()
    kv.store(STREAM, codec.encode(job_record(job(Continuation(gen=1, seq=3, tokens=2)), StreamState.RUNNING)))
    node, nc = runner(Continues.ANY, kv)
    assert isinstance(await offer(node, job()), JobAccepted)  # the first owner, woken up
    await settle(node)
    assert node.active == 0
    ends = [e for s, data in nc.published if s == subjects.events(STREAM) and (e := codec.decode_event(data))]
    end = ends[-1]
    assert isinstance(end, StreamEnd)
    assert (end.finish_reason, end.cancel_reason, end.gen) == (FinishReason.CANCELLED, CancelReason.RUNNER_LOST, 0)
    assert not await held(nc)
    assert codec.decode_as(kv.values[STREAM][0], StreamRecord).generation == 1  # never overwritten


async def test_a_runner_lost_cancel_drops_the_streams_history() -> None:
    node, nc = runner(Continues.ANY)
    assert isinstance(await offer(node, job()), JobAccepted)
    assert await held(nc)
    cancel = FakeMsg(codec.encode(CancelRequest(stream_id=STREAM, reason=CancelReason.RUNNER_LOST)))
    await node._on_cancel(cancel)  # type: ignore[arg-type]
    await settle(node)
    assert node.active == 0
    assert not await held(nc)
