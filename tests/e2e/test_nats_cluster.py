"""Every role on a three-node NATS cluster: ``--nats-url`` names all of its servers, a role connects to any of them
(the first one listed may be down), every JetStream asset keeps three copies, and losing a node loses nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import nats
import openai
import orjson
import pytest
from websockets.asyncio.client import connect

from tests.helpers import eventually, export_feedback
from tokenrelay.cli.supervisor import free_port
from tokenrelay.testing.cluster import NatsCluster, nats_cluster
from tokenrelay.testing.http import create_stream, get_json, post
from tokenrelay.testing.procs import System, system
from tokenrelay.testing.sse import read_stream
from tokenrelay.testing.synthetic import expected_text, synthetic_args

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


ASSETS = (
    "TOKENRELAY_EVENTS", "TOKENRELAY_FEEDBACK", "KV_tokenrelay_streams", "OBJ_tokenrelay_payloads",
    "KV_tokenrelay_responses", "OBJ_tokenrelay_response_events",
)  # fmt: skip
"""Every JetStream stream tokenrelay declares (a bucket's and a store's included)."""


async def replicas_of(url: str) -> dict[str, tuple[int, str | None]]:
    """Each asset's replicas and its leader's name."""
    nc = await nats.connect(url.split(","))
    try:
        js, found = nc.jetstream(), {}
        for name in ASSETS:
            info = await js.stream_info(name)
            found[name] = (info.config.num_replicas or 1, info.cluster.leader if info.cluster else None)
        return found
    finally:
        await nc.close()


async def rate(gateway_url: str, stream_id: str) -> None:
    async with connect(f"{gateway_url.replace('http', 'ws')}/v1/control") as ws:
        await ws.send(orjson.dumps({"type": "feedback", "stream_id": stream_id, "rating": "up"}).decode())
        assert orjson.loads(await ws.recv())["type"] == "ack"


async def use_every_asset(sut: System) -> str:
    """A stream read whole, its feedback, a stored response: every asset declared and written. The stream's id."""
    created = await create_stream(sut.gateway_url, "replicated", max_tokens=5)
    await read_stream(created["events_url"])
    await rate(sut.gateway_url, created["id"])
    sdk = openai.AsyncOpenAI(base_url=f"{sut.streamer_url}/v1", api_key="x", max_retries=0)
    await sdk.responses.create(model="synthetic", input="stored", max_output_tokens=3)
    return str(created["id"])


def test_on_a_cluster_of_three_every_stream_bucket_and_store_keeps_three_copies(cluster: NatsCluster) -> None:
    with system(cluster.url, runner_args=RUNNER) as running:
        asyncio.run(use_every_asset(running))
        found = asyncio.run(replicas_of(cluster.url))
    assert {name: replicas for name, (replicas, _) in found.items()} == dict.fromkeys(ASSETS, 3)


def test_replicas_asked_for_are_given_to_assets_that_exist_with_fewer(cluster: NatsCluster) -> None:
    one = ["--replicas", "1"]
    with system(cluster.url, runner_args=[*RUNNER, *one], gateway_args=one, streamer_args=one) as running:
        asyncio.run(use_every_asset(running))
    assert asyncio.run(replicas_of(cluster.url))["KV_tokenrelay_streams"][0] == 1
    with system(cluster.url, runner_args=RUNNER) as running:  # the default: 3 on this cluster
        asyncio.run(stream_whole(running.gateway_url, "scaled up"))
    assert asyncio.run(replicas_of(cluster.url))["KV_tokenrelay_streams"][0] == 3


SLOW_RUNNER = synthetic_args(tokens_per_s=50, length_tokens=1000)
LONG_TOKENS = 200
"""At 50 tokens a second: 4 s, killed 3 s in."""
KILL_AFTER_S = 3.0


async def admitted_again(gateway_url: str, timeout_s: float = 60) -> float:
    """Seconds until the gateway admits a new stream again."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        status, _ = await post(f"{gateway_url}/v1/streams", {"prompt": "again?", "max_tokens": 2})
        if status == 201:
            return loop.time() - start
        assert loop.time() - start < timeout_s, f"no stream admitted for {timeout_s} s: {status}"
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("victim", [0, 1, 2])
def test_losing_any_one_node_loses_no_token_record_or_feedback(cluster: NatsCluster, victim: int) -> None:
    with system(cluster.url, runner_args=SLOW_RUNNER, streamers=2) as running:
        rated = asyncio.run(use_every_asset(running))
        leaders = {leader for _, leader in asyncio.run(replicas_of(cluster.url)).values()}
        assert leaders <= {node.name for node in cluster.nodes}

        async def main() -> None:
            created = await create_stream(running.gateway_url, "survive a node", max_tokens=LONG_TOKENS)
            reading = asyncio.create_task(read_stream(created["events_url"], timeout_s=120))
            await asyncio.sleep(KILL_AFTER_S)
            cluster.nodes[victim].kill()
            stream = await reading
            assert stream.terminal.event == "stop", stream.events[-1]
            assert stream.text == expected_text("survive a node", LONG_TOKENS, 1000)
            window_s = await admitted_again(running.gateway_url)
            print(f"node {cluster.nodes[victim].name} lost: streams admitted again after {window_s:.1f} s")
            # A runner writes a stream's last record again until a leader takes it.
            record = await eventually(
                lambda: get_json(f"{running.gateway_url}/v1/streams/{created['id']}"),
                lambda answer: answer[0] == 200 and answer[1]["state"] == "finished",
                what="the stream's record to say finished",
            )
            assert record[1]["tokens"] == LONG_TOKENS
            late = await read_stream(created["events_url"].replace(running.streamer_url, running.streamers[1].url))
            assert late.text == stream.text

        asyncio.run(main())
    survivors = ",".join(node.url for node in cluster.live())
    assert rated in {item["stream_id"] for item in export_feedback(survivors)}
