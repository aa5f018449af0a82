"""A rolling restart under load, as a deploy does it: each runner in turn is told to stop (SIGTERM: it drains) while
its replacement starts, then each streamer in turn (its readers resume on the other one through the shared port).
Users keep starting streams with the Python client throughout; every stream ends whole, no token lost or repeated."""

from __future__ import annotations

import asyncio
import signal

from tests.helpers import synthetic_args
from tokenrelay.cli.supervisor import http_ok
from tokenrelay.client import Client
from tokenrelay.testing.procs import NatsServer, Role, start_role, stop_process, system, wait_until
from tokenrelay.testing.synthetic import expected_text

LENGTH_TOKENS = 100_000
RUNNER = synthetic_args(tokens_per_s=50, length_tokens=LENGTH_TOKENS)
TOKENS = 60
"""A stream lasts about 1.2 s: well inside a runner's drain."""
USERS = 6


async def healthy(role: Role) -> None:
    await asyncio.to_thread(wait_until, lambda: http_ok(f"{role.url}/healthz"), what=f"{role.name} health")


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
