"""Every role on a three-node NATS cluster: ``--nats-url`` names all of its servers, and a role connects to any of
them (the first one listed may be down) and streams end whole."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.helpers import expected_text, synthetic_args
from tokenrelay.cli.supervisor import free_port
from tokenrelay.testing.cluster import NatsCluster, nats_cluster
from tokenrelay.testing.http import create_stream
from tokenrelay.testing.procs import system
from tokenrelay.testing.sse import read_stream

RUNNER = synthetic_args(tokens_per_s=500, length_tokens=1000)


@pytest.fixture
def cluster() -> Iterator[NatsCluster]:
    with nats_cluster(3) as running:
        yield running


async def stream_whole(gateway_url: str, prompt: str) -> None:
    created = await create_stream(gateway_url, prompt, max_tokens=30)
    stream = await read_stream(created["events_url"])
    assert stream.terminal.event == "stop"
    assert stream.text == expected_text(prompt, 30, 1000)


def test_roles_given_every_server_of_the_cluster_stream_whole(cluster: NatsCluster) -> None:
    assert cluster.url.count(",") == 2
    with system(cluster.url, runner_args=RUNNER, streamers=2) as running:
        asyncio.run(stream_whole(running.gateway_url, "clustered"))


def test_roles_connect_while_a_server_listed_first_does_not_answer(cluster: NatsCluster) -> None:
    nobody = f"nats://127.0.0.1:{free_port()}"  # nothing listens there
    with system(f"{nobody},{cluster.url}", runner_args=RUNNER) as running:
        asyncio.run(stream_whole(running.gateway_url, "first server silent"))
