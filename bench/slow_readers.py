"""Readers that never read: bounded streamer memory, closed as ``slow_consumer``, no harm to the others.

Each phase starts a fresh system (NATS, gateway, one streamer, one runner) and runs for
``--duration-s`` with ``--normal`` readers that read every token as it comes, plus
``--stalled`` more streams of ``--tokens`` tokens each, all generated at ``--tokens-per-s``:

* ``unread``  — the extra streams are generated but nobody connects to them (the baseline:
  the same generation load on the same two cores, without the stalled clients);
* ``stalled`` — each extra stream has a client that opens its events with a tiny receive
  window and never reads a byte;
* ``alone``   — no extra streams at all (for reference).

Token lag is per NATS message: the runner stamps each published batch (``ts``, wall clock; same
machine), the bench subscribes to the normal streams' subjects and joins each batch with the
SSE event that carried its last token.  The streamer's RSS is sampled from ``/proc`` every
``--sample-s``.  Cancel-on-disconnect is off in every phase, so closing a stalled reader does
not lighten the load.

    python -m bench.slow_readers --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import contextlib
import socket
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nats

from bench.stats import median_of_runs, proc_cpu_s, summary, table, write_json
from tokenrelay.testing.http import create_stream, metric, stalled_reader
from tokenrelay.testing.procs import nats_server, system
from tokenrelay.testing.sse import Parser, Stream
from tokenrelay.wire import codec, subjects
from tokenrelay.wire.messages import StreamDelta

PHASES = ("unread", "stalled", "alone")
STALLED_RCVBUF_BYTES = 1  # the kernel raises it to its minimum (~2 KiB)
ALLOWANCE_BYTES = 32 << 20
"""Fixed allowance on top of ``stalled x max-reader-buffer-bytes`` (connections, sockets, allocator slack)."""
SLOW_CONSUMER = 'tokenrelay_streamer_reader_errors_total{code="slow_consumer"}'


@dataclass
class NormalReader:
    """One reading client: when each SSE delta arrived, and each NATS batch's stamp."""

    stream_id: str
    events_url: str
    arrivals: list[tuple[int, float]] = field(default_factory=list)
    stamps: dict[int, float] = field(default_factory=dict)
    terminal: str | None = None


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def read_normal(reader: NormalReader, session: aiohttp.ClientSession) -> None:
    """Read every event as it arrives, noting (index, wall-clock arrival) of each delta."""
    parser, decoder = Parser(), codecs.getincrementaldecoder("utf-8")()
    out = Stream(0, {})
    async with session.get(reader.events_url) as response:
        async for chunk in response.content.iter_any():
            now = time.time()
            seen = len(out.events)
            parser.feed(decoder.decode(chunk), now, out)
            for event in out.events[seen:]:
                if event.event == "delta":
                    reader.arrivals.append((event.json()["index"], now))
                elif event.event in ("stop", "error"):
                    reader.terminal = event.data
            out.events.clear()


def lags_ms(reader: NormalReader, since: float) -> list[float]:
    """For every stamped batch, the time from its publish to the arrival of the SSE event that carried it."""
    out: list[float] = []
    stamped = sorted(reader.stamps.items())
    i = 0
    for index, arrived in reader.arrivals:
        while i < len(stamped) and stamped[i][0] <= index:
            ts = stamped[i][1]
            if ts >= since:
                out.append((arrived - ts) * 1000)
            i += 1
    return out


async def run_phase(phase: str, args: argparse.Namespace) -> dict[str, Any]:
    runner_args = [
        "--synthetic-tokens-per-s",
        str(args.tokens_per_s),
        "--synthetic-length-tokens",
        str(args.tokens),
        "--max-concurrency",
        str(args.normal + args.stalled + 10),
    ]
    streamer_args = [
        "--max-reader-buffer-bytes",
        str(args.max_reader_buffer_bytes),
        "--write-timeout-s",
        str(args.write_timeout_s),
        "--disconnect-grace-s",
        "0",
        "--socket-send-buffer-bytes",
        str(args.socket_send_buffer_bytes),
    ]
    # The unread phase's streams must run unread to their end: no check cancels them (as --disconnect-grace-s 0 keeps
    # the stalled readers' streams running).
    gateway_args = ["--max-tokens-limit", str(args.tokens), "--unread-grace-s", "0"]
    with (
        nats_server() as broker,
        system(broker.url, runner_args=runner_args, streamer_args=streamer_args, gateway_args=gateway_args) as sut,
    ):
        pid = sut.streamer.process.pid
        nc = await nats.connect(broker.url)
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        readers: list[NormalReader] = []
        tasks: list[asyncio.Task[None]] = []
        stalled: list[socket.socket] = []
        rss_samples: list[tuple[float, int]] = []
        try:
            for i in range(args.normal):
                created = await create_stream(sut.gateway_url, f"normal {i}", max_tokens=args.tokens)
                reader = NormalReader(created["id"], created["events_url"])

                async def stamp(msg: Any, reader: NormalReader = reader) -> None:
                    event = codec.decode_event(msg.data)
                    if isinstance(event, StreamDelta):
                        reader.stamps[event.index] = event.ts

                await nc.subscribe(subjects.events(reader.stream_id), cb=stamp)
                readers.append(reader)
                tasks.append(asyncio.create_task(read_normal(reader, session)))
            await asyncio.sleep(1.0)  # the normal readers' connections are open and flowing
            rss_before = rss_bytes(pid)
            cpu_before = proc_cpu_s(pid) or 0.0
            started = time.time()
            if phase != "alone":
                for i in range(args.stalled):
                    created = await create_stream(sut.gateway_url, f"extra {i}", max_tokens=args.tokens)
                    if phase == "stalled":
                        stalled.append(stalled_reader(created["events_url"], receive_buffer_bytes=STALLED_RCVBUF_BYTES))
            ramped = time.time()
            deadline = started + args.duration_s
            while time.time() < deadline:
                rss_samples.append((time.time() - started, rss_bytes(pid)))
                await asyncio.sleep(args.sample_s)
            cpu_s = (proc_cpu_s(pid) or 0.0) - cpu_before
            slow_consumers = await metric(sut.streamer_url, SLOW_CONSUMER)
            open_readers = await metric(sut.streamer_url, "tokenrelay_streamer_readers_open")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for sock in stalled:
                sock.close()
            await session.close()
            await nc.close()
    since = ramped + args.warmup_s
    lags = [lag for reader in readers for lag in lags_ms(reader, since)]
    peak = max(rss for _, rss in rss_samples)
    return {
        "lag_ms": summary(lags),
        "rss_before_mib": rss_before / 2**20,
        "rss_peak_mib": peak / 2**20,
        "rss_growth_mib": (peak - rss_before) / 2**20,
        "rss_samples": rss_samples,
        "streamer_cpu_s": cpu_s,
        "slow_consumer_closes": slow_consumers,
        "readers_open_at_end": open_readers,
        "normal_readers_ended": sum(1 for r in readers if r.terminal is not None),
        "ramp_s": ramped - started,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stalled", type=int, default=500, help="clients that open a stream and never read")
    parser.add_argument("--normal", type=int, default=100, help="clients that read every token")
    parser.add_argument("--tokens", type=int, default=20_000, help="max_tokens of every stream")
    parser.add_argument("--tokens-per-s", type=float, default=10, help="the synthetic engine's rate, per stream")
    parser.add_argument("--duration-s", type=float, default=60)
    parser.add_argument("--warmup-s", type=float, default=2, help="lag ignored this long after the ramp")
    parser.add_argument("--max-reader-buffer-bytes", type=int, default=16384)
    parser.add_argument("--write-timeout-s", type=float, default=60, help="long, so the buffer limit closes them")
    parser.add_argument(
        "--socket-send-buffer-bytes",
        type=int,
        default=1,
        help="the streamer's SO_SNDBUF (1: the kernel's minimum, ~4.6 KiB); 0 = the kernel's autotuning, "
        "which lets a stalled reader's socket absorb minutes of tokens before any write blocks",
    )
    parser.add_argument("--sample-s", type=float, default=0.5)
    parser.add_argument("--phases", default=",".join(PHASES))
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    phases = args.phases.split(",")
    runs: list[dict[str, dict[str, Any]]] = []
    for run in range(args.runs):
        results: dict[str, dict[str, Any]] = {}
        for phase in phases:
            results[phase] = await run_phase(phase, args)
            r = results[phase]
            print(
                f"run {run + 1} {phase:>8}: lag p50 {r['lag_ms']['p50']:.2f} p99 {r['lag_ms']['p99']:.2f} ms, "
                f"RSS {r['rss_before_mib']:.1f} -> {r['rss_peak_mib']:.1f} MiB, "
                f"streamer CPU {r['streamer_cpu_s']:.1f} s, slow_consumer {r['slow_consumer_closes']:.0f}",
                flush=True,
            )
        runs.append(results)
    lag = {p: median_of_runs([r[p]["lag_ms"] for r in runs]) for p in phases}
    print()
    print(
        table(
            f"normal readers' token lag (runner publish -> SSE event), {args.normal} readers at {args.tokens_per_s:g} "
            f"tokens/s, median of {args.runs} runs' percentiles",
            [(f"{p} ({args.stalled} extra streams)" if p != "alone" else p, lag[p]) for p in phases],
        )
    )
    if "stalled" in phases:
        bound_mib = (args.stalled * args.max_reader_buffer_bytes + ALLOWANCE_BYTES) / 2**20
        growth = statistics.median(r["stalled"]["rss_growth_mib"] for r in runs)
        closes = statistics.median(r["stalled"]["slow_consumer_closes"] for r in runs)
        print(
            f"\nstalled: streamer RSS growth {growth:.1f} MiB (bound {args.stalled} x "
            f"{args.max_reader_buffer_bytes} B + {ALLOWANCE_BYTES >> 20} MiB = {bound_mib:.1f} MiB); "
            f"slow_consumer closes {closes:.0f} of {args.stalled}"
        )
        for baseline in ("unread", "alone"):
            if baseline in phases:
                ratio = lag["stalled"]["p99"] / lag[baseline]["p99"]
                print(f"p99 lag stalled / {baseline}: {ratio:.2f}x")
    print(f"wrote {write_json('slow_readers', {'args': vars(args), 'runs': runs, 'lag_medians': lag})}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
