"""A rolling restart under load, as a deploy does it: each runner in turn is told to stop (SIGTERM: it drains) while
its replacement starts, then each streamer in turn (its readers resume on the other one through the shared port);
and each of two gateways behind nginx in turn (it drains, closes its control sockets with 1012 and exits 0; its
replacement takes its port). Users keep starting streams with the Python client throughout; every stream ends whole,
no token lost or repeated."""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tests.e2e.test_nginx import nginx_binary
from tokenrelay.cli.supervisor import free_port, http_ok
from tokenrelay.client import Client
from tokenrelay.testing.http import metric
from tokenrelay.testing.nginx import nginx_proxy
from tokenrelay.testing.procs import NatsServer, Role, start_role, stop_process, system, wait_until
from tokenrelay.testing.synthetic import expected_text, synthetic_args
from tokenrelay.wire.errors import TokenRelayError

LENGTH_TOKENS = 100_000
RUNNER = synthetic_args(tokens_per_s=50, length_tokens=LENGTH_TOKENS)
TOKENS = 60
"""A stream lasts about 1.2 s: well inside a runner's drain."""
USERS = 6
DEPLOY_CONF = Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf"


async def healthy(role: Role) -> None:
    await asyncio.to_thread(wait_until, lambda: http_ok(f"{role.url}/healthz"), what=f"{role.name} health")


async def ready(role: Role) -> None:
    await asyncio.to_thread(wait_until, lambda: http_ok(f"{role.url}/readyz"), what=f"{role.name} ready")


def netloc(url: str) -> str:
    return urlsplit(url).netloc


def test_restarting_runners_then_streamers_one_at_a_time_under_load_loses_and_repeats_no_token(
    nats: NatsServer,
) -> None:
    with system(nats.url, runner_args=RUNNER, runners=2, streamers=2, share_streamer_port=True) as sut:
        assert sut.shared_streamer_url is not None
        shared_port = int(sut.shared_streamer_url.rsplit(":", 1)[1])
        replacements: list[Role] = []

        async def restart(old: Role, role: str, extra: list[str], port: int | None = None) -> None:
            old.process.send_signal(signal.SIGTERM)
            new = start_role(role, nats.url, sut.log_dir, f"{old.name}-new", extra, port=port)
            replacements.append(new)
            await healthy(new)
            assert await asyncio.to_thread(old.process.wait, 60) == 0

        async def main() -> list[tuple[str, str, str | None]]:
            done: list[tuple[str, str, str | None]] = []
            stop = asyncio.Event()
            async with Client(sut.gateway_url) as client:

                async def user(i: int) -> None:
                    n = 0
                    while not stop.is_set():
                        prompt, n = f"user {i} stream {n}", n + 1
                        stream = await client.start(prompt=prompt, max_tokens=TOKENS)
                        done.append((prompt, "".join([text async for text in stream]), stream.finish_reason))

                users = [asyncio.create_task(user(i)) for i in range(USERS)]
                await asyncio.sleep(1.0)
                for runner in sut.runners:
                    await restart(runner, "runner", RUNNER)
                for i, streamer in enumerate(sut.streamers):
                    own = int(streamer.url.rsplit(":", 1)[1])
                    extra = ["--reuse-port", "on", "--process-port", str(own)]
                    await restart(streamer, "streamer", extra, port=shared_port)
                    replacements[-1] = Role(f"streamer-{i}-new", streamer.url, replacements[-1].process)
                await asyncio.sleep(1.0)
                stop.set()
                await asyncio.gather(*users)
            return done

        try:
            done = asyncio.run(main())
        finally:
            for role in replacements:
                stop_process(role.process, sig=signal.SIGINT)
    assert len(done) >= 2 * USERS  # streams started before, during and after the restarts
    for prompt, text, finish_reason in done:
        assert finish_reason == "length", (prompt, finish_reason)
        assert text == expected_text(prompt, TOKENS, LENGTH_TOKENS), prompt


# Gateways behind nginx

GATEWAY_USERS = 40
"""One client each, so their control sockets spread over both gateways; enough of them that some start is in flight
when a gateway closes its sockets, and some socket is opened again while a gateway is down."""
BETWEEN_RESTARTS_S = 1.0
"""The pause between one gateway's replacement being ready and the next gateway's restart: no wait for nginx, whose
gateway upstream (``max_fails=0``) never leaves a restarted gateway out."""


@dataclass
class Attempt:
    """One ``start`` a user made: the stream it read to the end, or the error ``start`` raised."""

    prompt: str
    started_at: float
    """``time.monotonic()`` as the user asked for the stream."""
    text: str = ""
    finish_reason: str | None = None
    error: str | None = None


async def keep_starting(url: str, user: int, stop: asyncio.Event, attempts: list[Attempt]) -> int:
    """One user with a client of its own: start a stream through the proxy and read it whole, again and again until
    ``stop``; returns how many times the client opened its control socket."""
    async with Client(url) as client:
        for n in itertools.count():
            if stop.is_set():
                break
            attempt = Attempt(f"user {user} stream {n}", time.monotonic())
            attempts.append(attempt)
            try:
                stream = await client.start(prompt=attempt.prompt, max_tokens=TOKENS)
            except TokenRelayError as exc:
                attempt.error = f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(0.2)  # the test fails on it; do not spin meanwhile
                continue
            attempt.text = "".join([text async for text in stream])
            attempt.finish_reason = stream.finish_reason
        return client.control_sockets_opened


def test_restarting_gateways_behind_nginx_one_at_a_time_under_load_loses_and_repeats_no_stream(
    nats: NatsServer,
) -> None:
    binary = nginx_binary()
    port = free_port()  # first, so the gateways hand out URLs through the proxy
    url = f"http://127.0.0.1:{port}"
    through_proxy = ["--streamer-url", url, "--public-url", url]
    with system(
        nats.url, runner_args=RUNNER, runners=2, streamers=2, share_streamer_port=True, gateway_args=through_proxy
    ) as sut:
        second = start_role("gateway", nats.url, sut.log_dir, "gateway-1", through_proxy)
        gateways, replacements = [sut.gateway, second], [second]
        attempts: list[Attempt] = []
        restarts: list[float] = []  # when the first gateway was told to stop, when the last replacement was ready

        async def restart(old: Role) -> None:
            restarts.append(time.monotonic())
            old.process.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(old.process.wait, 60) == 0
            own = int(old.url.rsplit(":", 1)[1])
            new = start_role("gateway", nats.url, sut.log_dir, f"{old.name}-new", through_proxy, port=own)
            replacements.append(new)
            await ready(new)
            restarts.append(time.monotonic())

        async def main() -> list[int]:
            stop = asyncio.Event()
            users = [asyncio.create_task(keep_starting(url, i, stop, attempts)) for i in range(GATEWAY_USERS)]
            await asyncio.sleep(1.0)
            for gateway in gateways:
                await restart(gateway)
                await asyncio.sleep(BETWEEN_RESTARTS_S)
            stop.set()
            return await asyncio.gather(*users)

        try:
            asyncio.run(ready(second))
            gateway_addresses = [netloc(gateway.url) for gateway in gateways]
            with nginx_proxy(
                binary, DEPLOY_CONF, gateway=gateway_addresses, streamer=netloc(sut.streamer_url), port=port
            ):
                sockets_opened = asyncio.run(main())
            generated = asyncio.run(streams_finished(sut.runners))
        finally:
            for role in replacements:
                stop_process(role.process, sig=signal.SIGINT)
    first_stop, last_ready = restarts[0], restarts[-1]
    assert any(a.started_at < first_stop for a in attempts), "no stream started before the restarts"
    assert any(first_stop <= a.started_at <= last_ready for a in attempts), "no stream started during the restarts"
    assert any(a.started_at > last_ready for a in attempts), "no stream started after the restarts"
    for attempt in attempts:
        assert attempt.error is None, attempt
        assert attempt.finish_reason == "length", attempt
        assert attempt.text == expected_text(attempt.prompt, TOKENS, LENGTH_TOKENS), attempt.prompt
    assert generated == len(attempts)  # no stream ran that no user reads (a start's lost reply), none ran twice
    assert all(opened >= 2 for opened in sockets_opened)  # every socket moved: each gateway was restarted


async def streams_finished(runners: list[Role]) -> int:
    """How many streams the runners generated to their ``max_tokens``."""
    counts = [await metric(r.url, "tokenrelay_runner_streams_total", finish_reason="length") for r in runners]
    return round(sum(counts))
