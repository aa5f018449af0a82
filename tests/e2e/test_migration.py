"""A stream whose runner is lost moves to another runner of its model: readers see no error, no gap, no repeat, and
the text equals an uninterrupted run's.  With ``--max-migrations 0`` it ends ``runner_lost`` as before.  A runner
that was only paused (SIGSTOP) and wakes after its stream moved adds nothing to it: it is fenced.  The moves run on
a three-node NATS cluster (every JetStream object in three copies), as a deployment that outgrew one machine has."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator

import pytest

from tests.e2e.test_drain import generating
from tests.helpers import eventually
from tokenrelay.cli.supervisor import http_ok
from tokenrelay.runtime import natsio
from tokenrelay.testing.cluster import NatsCluster, nats_cluster
from tokenrelay.testing.http import create_stream, get_json, metric
from tokenrelay.testing.offers import OfferLog
from tokenrelay.testing.procs import NatsServer, Role, start_role, stop_process, system, wait_until
from tokenrelay.testing.sse import Stream, read_stream
from tokenrelay.testing.synthetic import expected_text, synthetic_args
from tokenrelay.wire import codec, subjects
from tokenrelay.wire.messages import StreamDelta, StreamEnd, StreamFence

TOKENS_PER_S = 50
STREAM_TOKENS = 200
RUNNER = synthetic_args(tokens_per_s=TOKENS_PER_S, length_tokens=100_000)
STALE = ["--runner-stale-after-s", "1"]
"""The runner is declared lost ~2 s after it went silent (1 s silent, 1 s more unanswered ping)."""


def offsets(stream: Stream) -> list[int]:
    """The token offsets of the stream's content events' ids (``<epoch>:<offset>``)."""
    return [int(event.id.split(":")[1]) for event in stream.events if event.id and event.event == "delta"]


def assert_whole(stream: Stream, prompt: str) -> None:
    assert [event.event for event in stream.events if event.event == "error"] == []
    assert stream.terminal.event == "stop", stream.terminal
    assert stream.terminal.json()["finish_reason"] == "length"
    assert stream.terminal.json()["tokens"] == STREAM_TOKENS
    marks = offsets(stream)
    assert marks == sorted(set(marks)), "token offsets repeat or go back"
    assert stream.text == expected_text(prompt, STREAM_TOKENS, 100_000)


async def published_past_the_fence(nats_url: str, stream_id: str) -> int:
    """Events the first owner (generation 0) published at or past the first move's fence, as JetStream stored them."""
    nc = await natsio.connect(nats_url, name="test-history")
    try:
        stored = await natsio.direct_get(nc, subjects.EVENTS_STREAM, subjects.events(stream_id))
    finally:
        await nc.close()
    events = [codec.decode_received_event(data) for _, data in stored]
    fence = next(event.fence for event in events if isinstance(event, StreamFence))
    return sum(1 for e in events if isinstance(e, StreamDelta | StreamEnd) and e.gen == 0 and e.seq >= fence)


async def other_than(runners: list[Role], owner: Role) -> Role:
    return next(runner for runner in runners if runner is not owner)


@pytest.fixture
def cluster() -> Iterator[NatsCluster]:
    with nats_cluster(3) as running:
        yield running


def test_a_stream_whose_runner_is_killed_continues_on_the_other_runner_with_the_same_text(cluster: NatsCluster) -> None:
    with system(cluster.url, runner_args=RUNNER, runners=2, gateway_args=STALE) as sut:

        async def main() -> None:
            created = await create_stream(sut.gateway_url, "move me", max_tokens=STREAM_TOKENS)
            reading = asyncio.create_task(read_stream(created["events_url"]))
            owner = await generating(sut.runners)
            other = await other_than(sut.runners, owner)
            await asyncio.sleep(1.0)
            owner.process.send_signal(signal.SIGKILL)
            stream = await reading
            assert_whole(stream, "move me")
            assert await metric(other.url, "tokenrelay_runner_streams_total") == 1
            assert await metric(sut.gateway_url, "tokenrelay_gateway_stream_moves_total", outcome="moved") == 1
            status, record = await get_json(f"{sut.gateway_url}/v1/streams/{created['id']}")
            assert status == 200
            assert record["state"] == "finished" and record["tokens"] == STREAM_TOKENS
            late = await read_stream(created["events_url"])  # from history: both generations, fenced
            assert_whole(late, "move me")

        asyncio.run(main())


def test_with_max_migrations_0_a_killed_runner_s_stream_ends_runner_lost(nats: NatsServer) -> None:
    with system(nats.url, runner_args=RUNNER, runners=2, gateway_args=[*STALE, "--max-migrations", "0"]) as sut:

        async def main() -> None:
            created = await create_stream(sut.gateway_url, "do not move me", max_tokens=STREAM_TOKENS)
            reading = asyncio.create_task(read_stream(created["events_url"]))
            owner = await generating(sut.runners)
            await asyncio.sleep(1.0)
            owner.process.send_signal(signal.SIGKILL)
            stream = await reading
            assert stream.terminal.event == "error" and stream.terminal.json()["code"] == "runner_lost"

        asyncio.run(main())


def test_a_paused_runner_that_wakes_after_its_stream_moved_adds_no_token_to_it(cluster: NatsCluster) -> None:
    with system(cluster.url, runner_args=RUNNER, runners=2, gateway_args=STALE) as sut:

        async def main() -> None:
            offers = await OfferLog.watching(sut.nats_url)
            created = await create_stream(sut.gateway_url, "fence me", max_tokens=STREAM_TOKENS)
            reading = asyncio.create_task(read_stream(created["events_url"]))
            owner = await generating(sut.runners)
            other = await other_than(sut.runners, owner)
            await asyncio.sleep(1.0)
            os.kill(owner.process.pid, signal.SIGSTOP)
            try:
                await eventually(
                    lambda: metric(other.url, "tokenrelay_runner_active_streams"), lambda n: n == 1, what="the move"
                )
                await asyncio.sleep(0.5)
            finally:
                os.kill(owner.process.pid, signal.SIGCONT)
            stream = await reading
            assert_whole(stream, "fence me")
            await eventually(  # cancelled on the woken runner
                lambda: metric(owner.url, "tokenrelay_runner_active_streams"), lambda n: n == 0, what="its cancel"
            )
            assert await metric(sut.gateway_url, "tokenrelay_gateway_runners_returned_total") == 1
            offered = offers.of(created["id"])
            await offers.close()
            assert [job.continuation for job in offered.group] == [None], "the continuation went to the queue group"
            assert len(offered.addressed) == 1, f"the continuation was offered to the paused runner: {offered}"
            assert all(job.continuation is not None for jobs in offered.addressed.values() for job in jobs)
            void = await published_past_the_fence(sut.nats_url, created["id"])
            assert void > 0, "the woken runner published nothing past the cut-off: nothing was fenced"
            late = await read_stream(created["events_url"])  # the history holds what it published after waking
            assert_whole(late, "fence me")
            status, record = await get_json(f"{sut.gateway_url}/v1/streams/{created['id']}")
            assert status == 200 and record["state"] == "finished" and record["tokens"] == STREAM_TOKENS

        asyncio.run(main())


def test_a_stream_moves_even_when_the_gateway_that_admitted_it_died_with_its_runner(cluster: NatsCluster) -> None:
    with system(cluster.url, runner_args=RUNNER, runners=2, gateway_args=STALE) as sut:
        other_gateway = start_role("gateway", cluster.url, sut.log_dir, "gateway-2", STALE)
        try:

            async def main() -> None:
                await asyncio.to_thread(wait_until, lambda: http_ok(f"{other_gateway.url}/readyz"), what="gateway-2")
                created = await create_stream(sut.gateway_url, "orphan", max_tokens=STREAM_TOKENS)
                reading = asyncio.create_task(read_stream(created["events_url"]))
                owner = await generating(sut.runners)
                await asyncio.sleep(1.0)
                sut.gateway.process.send_signal(signal.SIGKILL)
                owner.process.send_signal(signal.SIGKILL)
                assert_whole(await reading, "orphan")
                moved = await metric(other_gateway.url, "tokenrelay_gateway_stream_moves_total", outcome="moved")
                assert moved == 1
                status, record = await get_json(f"{other_gateway.url}/v1/streams/{created['id']}")
                assert status == 200 and record["state"] == "finished" and record["tokens"] == STREAM_TOKENS

            asyncio.run(main())
        finally:
            stop_process(other_gateway.process, sig=signal.SIGINT)
