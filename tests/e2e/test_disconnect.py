"""A client that leaves and does not return, or never comes, cancels its generation; one that returns in time loses
nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tokenrelay.testing.http import create_stream, wait_finished, wait_for_metric
from tokenrelay.testing.procs import NatsServer, System, system
from tokenrelay.testing.sse import read_stream
from tokenrelay.testing.synthetic import expected_text

GRACE_S = 2.0
"""Long enough that a reader coming straight back is in time however slow the machine; the reader that does not
come back is waited for, not timed."""


RUNNER_ARGS = ["--synthetic-tokens-per-s", "20", "--synthetic-ttft-ms", "0", "--synthetic-length-tokens", "100000"]
"""No text ends by itself: a short one could end before the reader's grace period runs out on a slow machine."""


@pytest.fixture(scope="module")
def sut(nats: NatsServer) -> Iterator[System]:
    with system(nats.url, runner_args=RUNNER_ARGS, streamer_args=["--disconnect-grace-s", str(GRACE_S)]) as running:
        yield running


async def test_a_reader_that_leaves_and_does_not_return_cancels_the_generation(sut: System) -> None:
    created = await create_stream(sut.gateway_url, "nobody is listening", max_tokens=5_000)
    first = await read_stream(created["events_url"], stop_after=3)
    assert len(first.events) == 3
    final = await wait_finished(sut.gateway_url, created["id"])
    assert final["finish_reason"] == "cancelled"
    assert final["cancel_reason"] == "disconnect"
    assert final["tokens"] < 5_000
    await wait_for_metric(sut.runners[0].url, 'tokenrelay_runner_cancellations_total{reason="disconnect"}', 1)
    await wait_for_metric(sut.streamer_url, "tokenrelay_streamer_disconnect_cancels_total", 1)


async def test_a_reader_that_returns_within_the_grace_period_gets_the_full_text(sut: System) -> None:
    created = await create_stream(sut.gateway_url, "brief network blip", max_tokens=30)
    first = await read_stream(created["events_url"], stop_after=4)
    cursor = first.events[-1].id
    assert cursor is not None
    rest = await read_stream(created["events_url"], headers={"Last-Event-ID": cursor})
    assert first.text + rest.text == expected_text("brief network blip", 30, 100000)
    assert rest.terminal.json()["finish_reason"] == "length"
    assert "start" not in [e.event for e in rest.events]


UNREAD_GRACE_S = 0.5
"""The gateway's grace for a stream no reader came for: shorter than the streamer's, so a reader that left and is in
its grace period meets the gateway's check."""


@pytest.fixture(scope="module")
def unread_sut(nats: NatsServer) -> Iterator[System]:
    with system(
        nats.url,
        runner_args=RUNNER_ARGS,
        streamer_args=["--disconnect-grace-s", str(GRACE_S)],
        gateway_args=["--unread-grace-s", str(UNREAD_GRACE_S)],
    ) as running:
        yield running


async def test_a_stream_no_reader_ever_connects_to_is_cancelled_after_the_unread_grace_period(
    unread_sut: System,
) -> None:
    created = await create_stream(unread_sut.gateway_url, "posted, then the client crashed", max_tokens=5_000)

    final = await wait_finished(unread_sut.gateway_url, created["id"])

    assert final["finish_reason"] == "cancelled"
    assert final["cancel_reason"] == "disconnect"
    assert final["tokens"] < 5_000
    await wait_for_metric(unread_sut.gateway_url, "tokenrelay_gateway_unread_cancels_total", 1)


async def test_a_stream_read_from_its_start_runs_past_the_unread_grace_period_to_its_end(unread_sut: System) -> None:
    created = await create_stream(unread_sut.gateway_url, "read at once", max_tokens=30)  # 1.5 s at 20 tokens/s

    stream = await read_stream(created["events_url"])

    assert stream.terminal.json()["finish_reason"] == "length"
    assert stream.text == expected_text("read at once", 30, 100000)


async def test_a_reader_in_its_grace_period_keeps_the_stream_past_the_gateways_unread_check(unread_sut: System) -> None:
    created = await create_stream(unread_sut.gateway_url, "left and came back", max_tokens=60)  # 3 s
    first = await read_stream(created["events_url"], stop_after=3)
    cursor = first.events[-1].id
    assert cursor is not None

    await asyncio.sleep(2 * UNREAD_GRACE_S)  # the gateway's check comes and goes; the streamer's grace still runs
    rest = await read_stream(created["events_url"], headers={"Last-Event-ID": cursor})

    assert rest.terminal.json()["finish_reason"] == "length"
    assert first.text + rest.text == expected_text("left and came back", 60, 100000)
