"""The gateway's queue with real processes: streams that wait for a runner get one in the order they were admitted,
and a runner takes an offer at most once and only within its ``answer_by``.

What the gateway decides (who asks again, when, and which stream ends ``overloaded``) is specified without a server
in ``tests/unit/gateway/test_dispatch.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import replace

import nats
import pytest
from nats.errors import TimeoutError as NatsTimeout

from tokenrelay.testing.http import create_stream, metric, post, wait_finished, wait_for_metric
from tokenrelay.testing.procs import NatsServer, System, system
from tokenrelay.testing.sse import read_stream
from tokenrelay.wire import codec, subjects
from tokenrelay.wire.content import ChatMessage
from tokenrelay.wire.messages import CancelReason, CancelRequest, JobAccepted, JobRejected, JobRequest

WAITING_STREAMS = 6


@pytest.fixture(scope="module")
def one_slot(nats: NatsServer) -> Iterator[System]:
    runner_args = [
        "--max-concurrency", "1",
        "--synthetic-tokens-per-s", "100",
        "--synthetic-ttft-ms", "0",
        "--synthetic-length-tokens", "100000",  # the busy stream's text does not end by itself
    ]  # fmt: skip
    with system(nats.url, runner_args=runner_args, gateway_args=["--queue-timeout-s", "30"]) as running:
        yield running


async def test_streams_waiting_for_a_runner_start_in_the_order_they_were_admitted(one_slot: System) -> None:
    runner_url = one_slot.runners[0].url
    busy = await create_stream(one_slot.gateway_url, "occupy the only slot", max_tokens=30_000)
    await wait_for_metric(runner_url, "tokenrelay_runner_active_streams", 1)
    waiting = [await create_stream(one_slot.gateway_url, f"in line {i}", max_tokens=3) for i in range(WAITING_STREAMS)]
    readers = [asyncio.create_task(read_stream(created["events_url"])) for created in waiting]
    # The runner reads offers in the order the gateway sent them, and at most one per waiting stream (and one retry
    # of the head) can still be on its way: once it refused that many and one more, none of them can take the slot
    # out of turn, and the queue is served first come, first served.
    refused = await metric(runner_url, "tokenrelay_runner_jobs_rejected_total")
    await wait_for_metric(runner_url, "tokenrelay_runner_jobs_rejected_total", refused + WAITING_STREAMS + 2)
    assert await metric(one_slot.gateway_url, "tokenrelay_gateway_streams_queued") == WAITING_STREAMS
    await post(busy["stop_url"])
    streams = await asyncio.gather(*readers)
    # One slot: each stream runs to its end before the next one starts, so their starts arrive in dispatch order.
    started = sorted(range(WAITING_STREAMS), key=lambda i: streams[i].events[0].at)
    assert started == list(range(WAITING_STREAMS))
    assert [s.terminal.json()["finish_reason"] for s in streams] == ["length"] * WAITING_STREAMS
    assert (await wait_finished(one_slot.gateway_url, busy["id"]))["finish_reason"] == "cancelled"


async def test_a_job_offered_again_after_a_late_answer_is_accepted_again_and_generated_once(one_slot: System) -> None:
    # What a gateway does when the runner's answer to its offer came after the attempt's timeout: offer again.
    job = JobRequest(
        stream_id=subjects.new_stream_id(), epoch="e-retry", gateway_id="test-gateway", model="synthetic",
        messages=(ChatMessage(role="user", content="offered twice"),), max_tokens=30_000, created=0,
    )  # fmt: skip
    runner_url = one_slot.runners[0].url
    active_before = await metric(runner_url, "tokenrelay_runner_active_streams")
    nc = await nats.connect(one_slot.nats_url)

    async def offer(one: JobRequest) -> object:
        return codec.decode((await nc.request(subjects.jobs(one.model), codec.encode(one), timeout=10)).data)

    try:
        replies = [await offer(job), await offer(job)]
        try:
            assert [type(reply) for reply in replies] == [JobAccepted, JobAccepted]
            assert replies[0] == replies[1]
            assert await metric(runner_url, "tokenrelay_runner_active_streams") == active_before + 1
            # A job for the same stream id in another epoch is another job: at capacity, refused.
            assert isinstance(await offer(replace(job, epoch="e-other")), JobRejected)
        finally:
            if isinstance(replies[0], JobAccepted):  # free the only slot for the other tests
                cancel = CancelRequest(stream_id=job.stream_id, reason=CancelReason.CLIENT)
                await nc.request(subjects.runner_cancel(replies[0].runner_id), codec.encode(cancel), timeout=10)
    finally:
        await nc.close()


def a_job(content: str, **changes: object) -> JobRequest:
    job = JobRequest(
        stream_id=subjects.new_stream_id(), epoch="e-1", gateway_id="test-gateway", model="synthetic",
        messages=(ChatMessage(role="user", content=content),), max_tokens=30_000, created=0,
    )  # fmt: skip
    return replace(job, **changes)  # type: ignore[arg-type]


async def test_a_runner_leaves_an_offer_unanswered_and_untaken_once_its_answer_by_has_passed(one_slot: System) -> None:
    runner_url = one_slot.runners[0].url
    stale_before = await metric(runner_url, "tokenrelay_runner_jobs_stale_total")
    active_before = await metric(runner_url, "tokenrelay_runner_active_streams")
    job = a_job("read too late", answer_by=time.time() - 1)
    nc = await nats.connect(one_slot.nats_url)
    try:
        with pytest.raises(NatsTimeout):
            await nc.request(subjects.jobs(job.model), codec.encode(job), timeout=1)
        with pytest.raises(NatsTimeout):  # and no runner says it generates the stream
            await nc.request(subjects.holders(job.stream_id), b"", timeout=0.5)
    finally:
        await nc.close()

    assert await wait_for_metric(runner_url, "tokenrelay_runner_jobs_stale_total", stale_before + 1) == stale_before + 1
    assert await metric(runner_url, "tokenrelay_runner_active_streams") == active_before


async def test_the_runner_generating_a_stream_answers_which_runner_holds_it(one_slot: System) -> None:
    job = a_job("whose is it", answer_by=time.time() + 10)
    nc = await nats.connect(one_slot.nats_url)
    try:
        accepted = codec.decode((await nc.request(subjects.jobs(job.model), codec.encode(job), timeout=10)).data)
        assert isinstance(accepted, JobAccepted)
        try:
            held = codec.decode((await nc.request(subjects.holders(job.stream_id), b"", timeout=10)).data)
            assert held == accepted
        finally:  # free the only slot for the other tests
            cancel = CancelRequest(stream_id=job.stream_id, reason=CancelReason.CLIENT)
            await nc.request(subjects.runner_cancel(accepted.runner_id), codec.encode(cancel), timeout=10)
    finally:
        await nc.close()
