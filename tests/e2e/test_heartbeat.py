"""A stream whose engine is silent still gets ``: ping`` comments, so proxies keep the connection."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tokenrelay.testing.http import create_stream
from tokenrelay.testing.procs import NatsServer, System, system
from tokenrelay.testing.sse import read_stream


@pytest.fixture(scope="module")
def sut(nats: NatsServer) -> Iterator[System]:
    with system(
        nats.url,
        runner_args=["--synthetic-ttft-ms", "1500", "--synthetic-tokens-per-s", "0"],
        streamer_args=["--heartbeat-s", "0.2"],
    ) as running:
        yield running


async def test_reader_gets_ping_comments_while_the_engine_is_silent(sut: System) -> None:
    created = await create_stream(sut.gateway_url, "think first", max_tokens=3)
    stream = await read_stream(created["events_url"])
    # 1.5 s of engine silence with a 0.2 s heartbeat: several pings, all before the first delta.
    assert stream.comments.count("ping") >= 3
    assert stream.terminal.json()["finish_reason"] == "length"
