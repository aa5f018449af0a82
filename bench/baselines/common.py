"""Start the baselines as processes, for benchmarks and tests.

Each context manager starts its processes on free 127.0.0.1 ports (from the repository root, so
``python -m bench.baselines.…`` resolves wherever the caller runs), waits for ``/healthz``,
yields the base URL that takes ``POST /v1/streams``, and stops what it started by PID.

    with forwarder(nats_url) as base_url: ...
    with forwarder_processes(nats_url) as urls: ...  # urls.url, urls.publisher_url (both serve /metrics)
    with naive_relay(tokens_per_s=200) as base_url: ...
    with refuser() as base_url: ...  # answers every POST /v1/streams with 503 overloaded
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.baselines import DEFAULT_TOKENS_PER_S, DEFAULT_TTFT_MS
from tokenrelay.cli.supervisor import free_port, http_ok
from tokenrelay.runtime.config import DEFAULT_SYNTHETIC_STEP_MS
from tokenrelay.testing.procs import stop_process, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"


class BaselineExited(RuntimeError):
    """A baseline process ended before it became healthy; the message holds its output."""


@dataclass(frozen=True, slots=True)
class ForwarderURLs:
    """The bare forwarder's two processes, each serving ``/healthz`` and ``/metrics``."""

    url: str
    """The forwarder (tokenrelay's streamer's counterpart): the base URL that takes ``POST /v1/streams``."""
    publisher_url: str
    """The publisher (tokenrelay's runner's counterpart): ops endpoints only."""


@contextlib.contextmanager
def forwarder(
    nats_url: str,
    *,
    ttft_ms: float = DEFAULT_TTFT_MS,
    tokens_per_s: float = DEFAULT_TOKENS_PER_S,
    step_ms: float = DEFAULT_SYNTHETIC_STEP_MS,
    event_loop: str = "asyncio",
    start_at: str = "get",
) -> Iterator[str]:
    """The bare forwarder: a publisher (paced by ``ttft_ms``, ``tokens_per_s``, ``step_ms``) and a forwarder on NATS
    that starts each stream at ``start_at`` (``get`` or ``post``)."""
    with forwarder_processes(
        nats_url, ttft_ms=ttft_ms, tokens_per_s=tokens_per_s, step_ms=step_ms, event_loop=event_loop,
        start_at=start_at,
    ) as urls:  # fmt: skip
        yield urls.url


@contextlib.contextmanager
def forwarder_processes(
    nats_url: str,
    *,
    ttft_ms: float = DEFAULT_TTFT_MS,
    tokens_per_s: float = DEFAULT_TOKENS_PER_S,
    step_ms: float = DEFAULT_SYNTHETIC_STEP_MS,
    event_loop: str = "asyncio",
    start_at: str = "get",
    store: bool = False,
) -> Iterator[ForwarderURLs]:
    """:func:`forwarder`, yielding both processes' URLs (to sample the publisher's ``/metrics`` too); ``store``: the
    publisher keeps every frame in JetStream."""
    pacing = [
        "--ttft-ms", str(ttft_ms), "--tokens-per-s", str(tokens_per_s), "--step-ms", str(step_ms),
        "--event-loop", event_loop,
    ]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-forwarder-") as logs, contextlib.ExitStack() as stack:
        module = "bench.baselines.forwarder"
        publisher = stack.enter_context(
            _process(
                module, ["--role", "publisher", "--nats-url", nats_url, *pacing, *(["--store"] if store else [])], logs
            )
        )
        forwarder = ["--role", "forwarder", "--nats-url", nats_url, "--event-loop", event_loop, "--start-at", start_at]
        url = stack.enter_context(_process(module, forwarder, logs))
        yield ForwarderURLs(url, publisher)


@contextlib.contextmanager
def naive_relay(
    *,
    ttft_ms: float = DEFAULT_TTFT_MS,
    tokens_per_s: float = DEFAULT_TOKENS_PER_S,
    step_ms: float = DEFAULT_SYNTHETIC_STEP_MS,
    event_loop: str = "asyncio",
) -> Iterator[str]:
    """The naive single-process relay, paced by ``ttft_ms``, ``tokens_per_s`` and ``step_ms``."""
    pacing = [
        "--ttft-ms", str(ttft_ms), "--tokens-per-s", str(tokens_per_s), "--step-ms", str(step_ms),
        "--event-loop", event_loop,
    ]  # fmt: skip
    with (
        tempfile.TemporaryDirectory(prefix="bench-naive-relay-") as logs,
        _process("bench.baselines.naive_relay", pacing, logs) as url,
    ):
        yield url


@contextlib.contextmanager
def refuser(*, event_loop: str = "auto") -> Iterator[str]:
    """The refuser (:mod:`bench.baselines.refuser`): every ``POST /v1/streams`` answers ``503 overloaded``."""
    with (
        tempfile.TemporaryDirectory(prefix="bench-refuser-") as logs,
        _process("bench.baselines.refuser", ["--event-loop", event_loop], logs) as url,
    ):
        yield url


@contextlib.contextmanager
def _process(module: str, args: Sequence[str], log_dir: str) -> Iterator[str]:
    """``python -m module args --port <free>``; yields its URL once ``/healthz`` answers; stops it by PID."""
    port = free_port(HOST)
    url = f"http://{HOST}:{port}"
    log_path = Path(log_dir, f"{module.rpartition('.')[2]}-{port}.log")
    argv = [sys.executable, "-m", module, *args, "--host", HOST, "--port", str(port)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=log, stderr=log)
    try:
        wait_until(lambda: _healthy_or_exited(module, process, url, log_path), what=f"{module} health")
        yield url
    finally:
        stop_process(process)


def _healthy_or_exited(module: str, process: subprocess.Popen[bytes], url: str, log_path: Path) -> bool:
    if process.poll() is not None:
        raise BaselineExited(f"{module} exited with {process.returncode}:\n{log_path.read_text()}")
    return http_ok(f"{url}/healthz")
