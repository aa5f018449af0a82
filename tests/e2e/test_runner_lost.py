"""A runner that dies mid-stream turns into a ``runner_lost`` error for its readers, never silence."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator

import pytest

from tests.helpers import eventually
from tokenrelay.testing.http import create_stream, metric, wait_finished, wait_for_metric
from tokenrelay.testing.procs import NatsServer, System, system
from tokenrelay.testing.sse import read_stream

STALE_AFTER_S = 1.0
GENEROUS_BOUND_S = 10.0  # detection is STALE_AFTER_S plus a check interval; this only guards against "never"
RUNNER_ARGS = ["--synthetic-tokens-per-s", "20", "--synthetic-ttft-ms", "0", "--synthetic-length-tokens", "100000"]
"""No text ends by itself: without a length, "doomed" was a 57-token text (2.9 s) that a slow run could let end before
its runner was killed."""

PAUSED_STALE_AFTER_S = 4.0
PAUSE_S = 6.0
"""A pause that outlasts the stale period and then some, and ends within the ping's own ``runner_stale_after_s``.

The last heartbeat came 0-1 s (the heartbeat interval) before the pause; the gateway checks every
stale/4 (1 s), so it pings 4-6 s after that heartbeat, at most 5 s into the pause, and waits 4 s for an
answer: 8-10 s after the heartbeat, at least 7 s into the pause.  Resuming at 6 s leaves about 1 s each side.
"""


@pytest.fixture(scope="module")
def sut(nats: NatsServer) -> Iterator[System]:
    with system(
        nats.url,
        runner_args=RUNNER_ARGS,
        gateway_args=["--runner-stale-after-s", str(STALE_AFTER_S)],
    ) as running:
        yield running


async def test_killing_the_runner_mid_stream_ends_readers_with_runner_lost(sut: System) -> None:
    created = await create_stream(sut.gateway_url, "doomed", max_tokens=10_000)
    reader = asyncio.create_task(read_stream(created["events_url"]))
    # A token is counted just before its publish is queued; the 4th being counted means the 3rd's bytes were
    # handed to the socket (the client's flusher runs while the engine waits 50 ms for the next token), so
    # SIGKILL cannot take them back.
    await wait_for_metric(sut.runners[0].url, "tokenrelay_runner_tokens_total", 4)
    killed_at = time.monotonic()
    os.kill(sut.runners[0].process.pid, signal.SIGKILL)
    stream = await asyncio.wait_for(reader, GENEROUS_BOUND_S)
    assert stream.terminal.event == "error"
    assert stream.terminal.json()["code"] == "runner_lost"
    assert stream.terminal.at - killed_at < GENEROUS_BOUND_S
    assert stream.of("delta")[-1].json()["index"] >= 3  # the 3 tokens published before the kill (in 2 events or more)
    assert await metric(sut.gateway_url, "tokenrelay_gateway_runner_checks_total", outcome="lost") >= 1
    final = await wait_finished(sut.gateway_url, created["id"])
    assert (final["finish_reason"], final["error_code"]) == ("error", "runner_lost")
    # A reader arriving afterwards gets the text that was produced, then the same error.
    late = await read_stream(created["events_url"])
    assert late.text == stream.text
    assert late.terminal.json()["code"] == "runner_lost"


async def test_a_runner_frozen_past_its_stale_period_answers_its_ping_and_its_stream_ends_normally(
    nats: NatsServer,
) -> None:
    """SIGSTOP stands in for a runner whose event loop is too busy to heartbeat (it kept generating meanwhile)."""
    gateway_args = ["--runner-stale-after-s", str(PAUSED_STALE_AFTER_S)]
    with system(nats.url, runner_args=RUNNER_ARGS, gateway_args=gateway_args) as paused:
        created = await create_stream(paused.gateway_url, "frozen for a while", max_tokens=160)
        reader = asyncio.create_task(read_stream(created["events_url"]))
        runner = paused.runners[0]
        await wait_for_metric(runner.url, "tokenrelay_runner_tokens_total", 2)
        loop = asyncio.get_running_loop()
        frozen_at = loop.time()
        os.kill(runner.process.pid, signal.SIGSTOP)
        try:
            # Its heartbeats are late now (the gateway counts no runner available), and its check is pending.
            await eventually(
                lambda: metric(paused.gateway_url, "tokenrelay_gateway_runners_available"),
                lambda available: available == 0,
                what="the gateway to count the frozen runner as unavailable",
                timeout_s=PAUSE_S,
            )
            # A runner not declared lost still admits: the stream waits in the queue until it wakes up.
            late = await create_stream(paused.gateway_url, "admitted while it was frozen", max_tokens=5)
            # The pause's length is the scenario: it must outlast the stale period and end before the ping's timeout.
            await asyncio.sleep(max(0.0, frozen_at + PAUSE_S - loop.time()))
        finally:
            os.kill(runner.process.pid, signal.SIGCONT)
        stream = await asyncio.wait_for(reader, 60)
        admitted = await read_stream(late["events_url"])
        checks = await metric(paused.gateway_url, "tokenrelay_gateway_runner_checks_total", outcome="answered")
        lost = await metric(paused.gateway_url, "tokenrelay_gateway_runner_checks_total", outcome="lost")
    assert stream.terminal.event == "stop", stream.terminal.data
    assert (stream.terminal.json()["finish_reason"], stream.terminal.json()["tokens"]) == ("length", 160)
    assert (checks, lost) == (1, 0)
    assert (admitted.terminal.event, admitted.terminal.json()["tokens"]) == ("stop", 5)
