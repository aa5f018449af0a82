"""Cancellation: one owner per stream, queued streams never start, stop confirms the halt."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.helpers import wait_running
from tokenrelay.testing.http import create_stream, metric, post, wait_finished
from tokenrelay.testing.procs import NatsServer, System, system
from tokenrelay.testing.sse import read_stream


@pytest.fixture(scope="module")
def sut(nats: NatsServer) -> Iterator[System]:
    runner_args = [
        "--max-concurrency", "1",
        "--synthetic-tokens-per-s", "100",
        "--synthetic-ttft-ms", "0",
        # No text ends by itself: "occupy the only slot" is 24 tokens, so the busy stream used to end after 0.24 s
        # and free the slot mid-test on a slow machine (a clean-clone CI run saw one stream too few served).
        "--synthetic-length-tokens", "100000",
    ]  # fmt: skip
    with system(nats.url, runner_args=runner_args, gateway_args=["--queue-timeout-s", "30"]) as running:
        yield running


async def test_stopping_a_queued_stream_means_it_never_starts(sut: System) -> None:
    busy = await create_stream(sut.gateway_url, "occupy the only slot", max_tokens=30_000)
    waiting = await create_stream(sut.gateway_url, "wait in line", max_tokens=50)
    status, body = await post(waiting["stop_url"])
    assert (status, body) == (200, {"id": waiting["id"], "finish_reason": "cancelled", "tokens": 0})
    stream = await read_stream(waiting["events_url"])
    assert [e.event for e in stream.events] == ["start", "stop"]
    assert stream.terminal.json()["finish_reason"] == "cancelled" and stream.terminal.json()["tokens"] == 0
    final = await wait_finished(sut.gateway_url, waiting["id"])
    assert final["finish_reason"] == "cancelled" and final["tokens"] == 0
    # Free the slot: the cancelled stream must not be picked up afterwards.
    served_before = await metric(sut.runners[0].url, "tokenrelay_runner_streams_total")
    await post(busy["stop_url"])
    await wait_finished(sut.gateway_url, busy["id"])
    after = await create_stream(sut.gateway_url, "next in line", max_tokens=2)
    await wait_finished(sut.gateway_url, after["id"])
    assert await metric(sut.runners[0].url, "tokenrelay_runner_streams_total") == served_before + 2


async def test_concurrent_stops_of_one_stream_all_answer_the_same_final_state(sut: System) -> None:
    created = await create_stream(sut.gateway_url, "stop me thrice", max_tokens=30_000)
    await wait_running(sut.gateway_url, created["id"])  # the three stops race at its runner, not in the queue
    answers = await asyncio.gather(*(post(created["stop_url"]) for _ in range(3)))
    assert {status for status, _ in answers} == {200}
    assert len({(b["finish_reason"], b["tokens"]) for _, b in answers}) == 1
    assert answers[0][1]["finish_reason"] == "cancelled"
