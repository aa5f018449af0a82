"""A runner told to stop (SIGTERM, as a rolling deploy does) takes no new stream, lets its streams finish within
``--drain-timeout-s`` and exits 0; what still runs then moves to another runner (``runner_lost`` when there is
none); SIGINT stops it at once (``shutting_down``).  A
gateway told to stop admits nothing more and closes its control sockets with 1012 (service restart)."""

from __future__ import annotations

import asyncio
import signal

import orjson
from websockets.asyncio.client import connect

from tokenrelay.testing.http import create_stream, get_json, metric
from tokenrelay.testing.procs import NatsServer, Role, system
from tokenrelay.testing.sse import read_stream
from tokenrelay.testing.synthetic import expected_text, synthetic_args

TOKENS_PER_S = 100
RUNNER = synthetic_args(tokens_per_s=TOKENS_PER_S, length_tokens=100_000)


async def ready_status(url: str) -> int:
    status, _ = await get_json(f"{url}/readyz")
    return status


async def until_not_ready(url: str, timeout_s: float = 10) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while await ready_status(url) == 200:
        assert loop.time() < deadline, "the draining runner still says it is ready"
        await asyncio.sleep(0.05)


def test_a_runner_told_to_stop_finishes_its_stream_takes_no_new_one_and_exits_0(nats: NatsServer) -> None:
    with system(nats.url, runner_args=RUNNER, runners=2) as sut:

        async def main() -> Role:
            created = await create_stream(sut.gateway_url, "drain me", max_tokens=3 * TOKENS_PER_S)
            reading = asyncio.create_task(read_stream(created["events_url"]))
            owner = await generating(sut.runners)
            other = next(runner for runner in sut.runners if runner is not owner)
            await asyncio.sleep(1.0)
            owner.process.send_signal(signal.SIGTERM)
            await until_not_ready(owner.url)
            during = await create_stream(sut.gateway_url, "while draining", max_tokens=5)
            assert (await read_stream(during["events_url"])).terminal.json()["finish_reason"] == "length"
            assert await metric(other.url, "tokenrelay_runner_streams_total") == 1  # the other runner took it
            stream = await reading
            assert stream.terminal.event == "stop" and stream.terminal.json()["finish_reason"] == "length"
            assert stream.text == expected_text("drain me", 3 * TOKENS_PER_S, 100_000)
            return owner

        owner = asyncio.run(main())
        assert owner.process.wait(timeout=30) == 0


async def generating(runners: list[Role], timeout_s: float = 10) -> Role:
    """The runner generating the one stream there is."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        for runner in runners:
            if await metric(runner.url, "tokenrelay_runner_active_streams") == 1:
                return runner
        assert loop.time() < deadline, "no runner generates the stream"
        await asyncio.sleep(0.05)


def test_streams_still_running_at_the_drain_timeout_move_to_another_runner_and_end_whole(nats: NatsServer) -> None:
    with system(nats.url, runner_args=[*RUNNER, "--drain-timeout-s", "0.5"], runners=2) as sut:

        async def main() -> Role:
            created = await create_stream(sut.gateway_url, "too long to wait for", max_tokens=3 * TOKENS_PER_S)
            reading = asyncio.create_task(read_stream(created["events_url"]))
            owner = await generating(sut.runners)
            await asyncio.sleep(0.5)
            owner.process.send_signal(signal.SIGTERM)
            stream = await reading
            assert stream.of("error") == []
            assert stream.terminal.event == "stop" and stream.terminal.json()["finish_reason"] == "length"
            assert stream.text == expected_text("too long to wait for", 3 * TOKENS_PER_S, 100_000)
            assert await metric(sut.gateway_url, "tokenrelay_gateway_stream_moves_total", outcome="moved") == 1
            return owner

        owner = asyncio.run(main())
        assert owner.process.wait(timeout=30) == 0


def test_with_no_runner_to_move_to_a_stream_past_the_drain_timeout_ends_with_an_error(nats: NatsServer) -> None:
    with system(nats.url, runner_args=[*RUNNER, "--drain-timeout-s", "0.5"]) as sut:

        async def main() -> None:
            created = await create_stream(sut.gateway_url, "too long to wait for", max_tokens=50 * TOKENS_PER_S)
            reading = asyncio.create_task(read_stream(created["events_url"]))
            await asyncio.sleep(0.5)
            sut.runners[0].process.send_signal(signal.SIGTERM)
            stream = await reading
            assert stream.terminal.event == "error" and stream.terminal.json()["code"] == "runner_lost"

        asyncio.run(main())
        assert sut.runners[0].process.wait(timeout=30) == 0


def test_sigint_stops_a_runner_at_once_without_draining(nats: NatsServer) -> None:
    with system(nats.url, runner_args=RUNNER) as sut:

        async def main() -> None:
            created = await create_stream(sut.gateway_url, "stop now", max_tokens=50 * TOKENS_PER_S)
            reading = asyncio.create_task(read_stream(created["events_url"]))
            await asyncio.sleep(0.5)
            sut.runners[0].process.send_signal(signal.SIGINT)
            stream = await reading
            assert stream.terminal.json()["code"] == "shutting_down"
            assert len(stream.of("delta")) < 50 * TOKENS_PER_S

        asyncio.run(main())


def test_a_gateway_told_to_stop_closes_control_sockets_with_service_restart_and_exits_0(nats: NatsServer) -> None:
    with system(nats.url, runner_args=RUNNER) as sut:

        async def main() -> None:
            async with connect(f"{sut.gateway_url.replace('http', 'ws')}/v1/control") as ws:
                await ws.send(orjson.dumps({"type": "start", "prompt": "before", "max_tokens": 2}).decode())
                assert orjson.loads(await ws.recv())["type"] == "started"
                sut.gateway.process.send_signal(signal.SIGTERM)
                await ws.wait_closed()
                assert ws.close_code == 1012  # service restart: the client opens its next socket elsewhere

        asyncio.run(main())
        assert sut.gateway.process.wait(timeout=30) == 0
