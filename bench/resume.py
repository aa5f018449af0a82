"""Time from (re)connecting to the first replayed token, for late readers and resumed readers.

Late readers connect after their stream finished (the whole text comes from JetStream history);
resumed readers drop their connection mid-stream and reconnect with their last cursor on the
other streamer.  The floor, in the same run, is a GET /healthz on the streamer over a new
connection, which is what every reconnect pays before any history is read.

    python -m bench.resume --streams 50 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp

from bench.stats import median_of_runs, summary, table, write_json
from tokenrelay.testing.http import create_stream, wait_finished
from tokenrelay.testing.procs import nats_server, system
from tokenrelay.testing.sse import read_stream

TOKENS = 500


async def _first_delta_ms(url: str, cursor: str | None = None) -> float:
    headers = {"Last-Event-ID": cursor} if cursor else None
    start = time.perf_counter()
    stream = await read_stream(url, headers=headers, stop_after=1 if cursor else 2)
    delta = stream.of("delta")[0]
    return (delta.at - start) * 1000


async def _healthz_ms(url: str) -> float:
    start = time.perf_counter()
    async with aiohttp.ClientSession() as session, session.get(f"{url}/healthz") as response:
        await response.read()
    return (time.perf_counter() - start) * 1000


async def run_once(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    runner_args = ["--synthetic-tokens-per-s", "200", "--synthetic-ttft-ms", "0", "--synthetic-length-tokens", "100000"]
    with nats_server() as broker, system(broker.url, streamers=2, runner_args=runner_args) as sut:
        floor = [await _healthz_ms(sut.streamer_url) for _ in range(args.streams)]
        finished = [await create_stream(sut.gateway_url, f"late {i}", max_tokens=TOKENS) for i in range(args.streams)]
        for created in finished:
            await wait_finished(sut.gateway_url, created["id"])
        late = [await _first_delta_ms(c["events_url"]) for c in finished]
        resumed = []
        for i in range(args.streams):
            created = await create_stream(sut.gateway_url, f"resume {i}", max_tokens=TOKENS)
            first = await read_stream(created["events_url"], stop_after=20)
            other = f"{sut.streamers[1].url}/v1/streams/{created['id']}/events"
            resumed.append(await _first_delta_ms(other, first.events[-1].id))
    return {"healthz_ms": summary(floor), "late_ms": summary(late), "resumed_ms": summary(resumed)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=50, help="late readers and resumed readers per run")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs = [await run_once(args) for _ in range(args.runs)]
    medians = {k: median_of_runs([r[k] for r in runs]) for k in runs[0]}
    print(
        table(
            f"reconnect -> first token, {args.streams} readers each, median of {args.runs} runs' percentiles",
            [
                ("GET /healthz on a new connection (floor)", medians["healthz_ms"]),
                (f"late reader: connect -> first delta ({TOKENS} tokens stored)", medians["late_ms"]),
                ("resumed reader: reconnect on other streamer -> next delta", medians["resumed_ms"]),
            ],
        )
    )
    print(f"late p50 / floor p50: {medians['late_ms']['p50'] / medians['healthz_ms']['p50']:.1f}x")
    print(f"wrote {write_json('resume', {'args': vars(args), 'runs': runs, 'medians': medians})}")


if __name__ == "__main__":
    asyncio.run(main())
