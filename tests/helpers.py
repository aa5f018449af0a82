"""Small client-side helpers shared by the integration tests."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, TypeVar

import orjson

from tokenrelay.testing.http import get_json

T = TypeVar("T")

WAIT_TIMEOUT_S = 30.0
"""How long a test waits for a condition before it fails naming what it waited for (generous: slow CI machines)."""
POLL_INTERVAL_S = 0.02
"""How often a condition is checked again while a test waits for it."""

STOPPED_TOKENS = 30_000
"""The ``max_tokens`` of a stream a test stops, cuts or walks away from: minutes of tokens at any test's pace, so no
such stream ends by itself first however slow the machine (slow CI runs let streams of short texts end before the
stop, the cut or the SIGTERM that the test was about)."""


LoopFactory = Callable[[], asyncio.AbstractEventLoop] | None
"""What ``asyncio.Runner`` makes its loop with (``None``: asyncio's own); the ``loop_factory`` fixture gives both."""


def run_on_loop(loop_factory: LoopFactory, main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` to completion on a fresh loop of the given kind."""
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main)


def export_feedback(nats_url: str, env: Mapping[str, str] | None = None) -> list[dict[str, object]]:
    """Every stored feedback item, as ``tokenrelay feedback export`` writes them (``env`` laid over this process's
    environment: a NATS user of its own)."""
    result = subprocess.run(
        [sys.executable, "-m", "tokenrelay", "feedback", "export", "--nats-url", nats_url],
        capture_output=True, check=True, timeout=60, env={**os.environ, **env} if env is not None else None,
    )  # fmt: skip
    return [orjson.loads(line) for line in result.stdout.splitlines()]


async def eventually(
    probe: Callable[[], Awaitable[T]],
    until: Callable[[T], object],
    *,
    what: str,
    timeout_s: float = WAIT_TIMEOUT_S,
    poll_interval_s: float = POLL_INTERVAL_S,
) -> T:
    """Await ``probe()`` until ``until`` holds for its value, and return that value.

    Fails after ``timeout_s`` with ``what`` (what the test waited for) and the last value seen.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = await probe()
        if until(value):
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"waited {timeout_s} s for {what}; last seen: {value!r}")
        await asyncio.sleep(poll_interval_s)


async def eventually_true(
    check: Callable[[], object],
    *,
    what: str,
    timeout_s: float = WAIT_TIMEOUT_S,
    poll_interval_s: float = POLL_INTERVAL_S,
) -> None:
    """Wait until ``check()`` is true (a condition on the test's own state); fail after ``timeout_s`` naming
    ``what``."""

    async def probe() -> object:
        return check()

    await eventually(probe, bool, what=what, timeout_s=timeout_s, poll_interval_s=poll_interval_s)


async def wait_running(gateway_url: str, stream_id: str) -> dict[str, Any]:
    """Poll the stream's status until a runner generates it (``running``); return that status."""

    async def status() -> dict[str, Any]:
        code, body = await get_json(f"{gateway_url}/v1/streams/{stream_id}")
        assert code == 200, body
        return dict(body)

    return await eventually(status, lambda body: body["state"] == "running", what=f"stream {stream_id} to run")
