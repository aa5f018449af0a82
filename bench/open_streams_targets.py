"""``bench.open_streams``'s targets: the servers each phase reads from, started on a fresh nats-server."""

from __future__ import annotations

import argparse
import contextlib
import math
import resource
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.baselines.common import forwarder
from tokenrelay.testing.procs import nats_server, system

IDLE_TTFT_MS = 1e9
"""The forwarder's publisher waits this long before a first token: its readers stay idle."""
STREAM_MAX_TOKENS = 1_000_000
"""Every stream's ``max_tokens``: none ends during a run, whatever the ramp's real pace; closing the readers
ends them (the streamer cancels a generation its readers left)."""
BASELINE_FD_MARGIN = 256
"""Descriptors the one forwarder process keeps besides its readers when ``--baseline-readers`` is not given."""


@dataclass
class Target:
    """The servers under test: where streams are created, whose ``/metrics`` to read, which pids to watch."""

    name: str
    create_url: str
    metrics_urls: dict[str, str]
    """Each reader-serving process's own base URL, by role (``streamer-0``, ...; ``forwarder``)."""
    pids: dict[str, int]
    """Processes whose CPU and RSS are reported, by role (``streamer-0``, ``runner-0``, ``nats``, ...)."""
    readers: int
    readers_per_stream: int = 1
    log_dir: str | None = None
    """Where the servers' logs are (``<role>.log``), read for warnings and tracebacks at the end."""
    nats_url: str | None = None
    gateway_url: str | None = None


def proc_open_files_limit(pid: int) -> int | None:
    """The soft ``Max open files`` of a process (``None`` if unknown or unlimited)."""
    try:
        limits = Path(f"/proc/{pid}/limits").read_text()
    except OSError:
        return None
    for line in limits.splitlines():
        if line.startswith("Max open files"):
            soft = line.split()[3]
            return int(soft) if soft.isdigit() else None
    return None


@contextlib.contextmanager
def tokenrelay_target(nats_url: str, nats_pid: int, args: argparse.Namespace) -> Iterator[Target]:
    """Gateway, ``--streamers`` streamers (one shared port when several) and ``--runners`` runners."""
    streams = math.ceil(args.readers / args.readers_per_stream)
    runner_args = [
        "--max-concurrency", str(streams + 16),
        "--synthetic-tokens-per-s", str(args.tokens_per_s),
        "--synthetic-length-tokens", str(STREAM_MAX_TOKENS),
    ]  # fmt: skip
    # Every stream may wait for the runner at once: the ramp, not the gateway's queue, is what is measured.
    gateway_args = ["--max-tokens-limit", str(STREAM_MAX_TOKENS), "--max-queued-streams", str(streams + 16)]
    if args.unread_grace_s is not None:
        gateway_args += ["--unread-grace-s", str(args.unread_grace_s)]
    with system(
        nats_url,
        runners=args.runners,
        streamers=args.streamers,
        share_streamer_port=args.streamers > 1,
        runner_args=runner_args,
        streamer_args=["--max-readers-per-stream", str(args.readers_per_stream)],
        gateway_args=gateway_args,
    ) as sut:
        pids = {s.name: s.process.pid for s in sut.streamers} | {"gateway": sut.gateway.process.pid, "nats": nats_pid}
        pids |= {runner.name: runner.process.pid for runner in sut.runners}
        yield Target(
            "tokenrelay",
            f"{sut.gateway_url}/v1/streams",
            {s.name: s.url for s in sut.streamers},
            pids,
            readers=args.readers,
            readers_per_stream=args.readers_per_stream,
            log_dir=sut.log_dir,
            nats_url=nats_url,
            gateway_url=sut.gateway_url,
        )


@contextlib.contextmanager
def forwarder_target(nats_url: str, nats_pid: int, args: argparse.Namespace) -> Iterator[Target]:
    """The bare forwarder; its publisher idle (``--baseline-tokens-per-s 0``) or at that pace."""
    rate = args.baseline_tokens_per_s
    ttft_ms = IDLE_TTFT_MS if rate == 0 else 0.0
    with forwarder(nats_url, ttft_ms=ttft_ms, tokens_per_s=rate or 1.0) as url:
        yield Target(
            "forwarder", f"{url}/v1/streams", {"forwarder": url}, {"nats": nats_pid}, readers=baseline_readers(args)
        )


def baseline_readers(args: argparse.Namespace) -> int:
    """``--baseline-readers``, or ``--readers`` capped to what one process's open-files limit holds."""
    if args.baseline_readers:
        return int(args.baseline_readers)
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    cap = sys.maxsize if limit == resource.RLIM_INFINITY else limit - BASELINE_FD_MARGIN
    return int(min(args.readers, max(1, cap)))


@contextlib.asynccontextmanager
async def started(phase: str, args: argparse.Namespace) -> AsyncIterator[Target]:
    """A fresh nats-server and the phase's servers; stopped afterwards."""
    with nats_server() as broker:
        make = tokenrelay_target if phase == "tokenrelay" else forwarder_target
        with make(broker.url, broker.process.pid, args) as target:
            yield target
