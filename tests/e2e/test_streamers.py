"""Several streamer processes on one port (``--reuse-port``): the kernel spreads readers over them, each serves
whole streams, and each still answers on a port of its own (``--process-port``) for its health and metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tokenrelay.testing.http import create_stream, get_json, metric
from tokenrelay.testing.procs import NatsServer, System, system
from tokenrelay.testing.sse import read_stream
from tokenrelay.testing.synthetic import expected_text

STREAMS = 40
TOKENS = 5


@pytest.fixture(scope="module")
def two(nats: NatsServer) -> Iterator[System]:
    runner_args = ["--synthetic-tokens-per-s", "200", "--synthetic-ttft-ms", "0"]
    with system(nats.url, streamers=2, share_streamer_port=True, runner_args=runner_args) as running:
        yield running


async def test_events_urls_name_the_shared_port_and_every_stream_arrives_whole(two: System) -> None:
    prompts = [f"shared port {i}" for i in range(STREAMS)]
    created = [await create_stream(two.gateway_url, prompt, max_tokens=TOKENS) for prompt in prompts]
    assert all(one["events_url"].startswith(f"{two.streamer_url}/v1/streams/") for one in created)
    streams = await asyncio.gather(*(read_stream(one["events_url"]) for one in created))
    assert [s.text for s in streams] == [expected_text(prompt, TOKENS) for prompt in prompts]
    assert {s.terminal.json()["finish_reason"] for s in streams} == {"length"}


async def test_the_kernel_spreads_readers_over_both_streamers(two: System) -> None:
    readers = "tokenrelay_streamer_readers_total"
    before = [await metric(s.url, readers) for s in two.streamers]
    created = [await create_stream(two.gateway_url, f"spread {i}", max_tokens=TOKENS) for i in range(STREAMS)]
    await asyncio.gather(*(read_stream(one["events_url"]) for one in created))
    served = [await metric(s.url, readers) - b for s, b in zip(two.streamers, before, strict=True)]
    # Each connection comes from its own source port; the chance that 40 of them hash to one listener is 2**-39.
    assert sum(served) == STREAMS
    assert all(n > 0 for n in served), served


async def test_each_streamer_answers_health_on_its_own_port(two: System) -> None:
    for streamer in two.streamers:
        status, body = await get_json(f"{streamer.url}/healthz")
        assert (status, body["status"]) == (200, "ok")
    assert len({s.url for s in two.streamers} | {two.streamer_url}) == 3
