"""Cancel latency and wasted tokens: many concurrent streams, each stopped at a random point over the WebSocket.

For every stream it measures (a) WS ``stop`` sent -> ``stopped`` received, (b) WS ``stop`` sent ->
engine halted (the runner's ``halted_ts``; same machine, same clock), and the tokens the engine
produced after the cancel reached the runner.  The floor, measured in the same run on the same
broker, is a plain NATS request/reply round trip.

    python -m bench.cancel --streams 200 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from typing import Any

import nats
import orjson
from websockets.asyncio.client import ClientConnection, connect

from bench.stats import median_of_runs, summary, table, write_json
from tokenrelay.testing.http import metric
from tokenrelay.testing.procs import nats_server, system
from tokenrelay.testing.sse import read_stream

NATS_RTT_SAMPLES = 2000


async def nats_round_trips(url: str, samples: int) -> list[float]:
    """Request/reply latencies (ms) between two connections through the broker."""
    responder, requester = await nats.connect(url), await nats.connect(url)

    async def echo(msg: Any) -> None:
        await msg.respond(msg.data)

    await responder.subscribe("bench.echo", cb=echo)
    await responder.flush()
    out = []
    for _ in range(samples):
        start = time.perf_counter()
        await requester.request("bench.echo", b"x", timeout=2)
        out.append((time.perf_counter() - start) * 1000)
    await requester.close()
    await responder.close()
    return out


class Control:
    """One control WebSocket shared by all streams, replies matched by ``ref``."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.next_ref = 0
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.ws:
            reply = orjson.loads(raw)
            future = self.pending.pop(reply.get("ref"), None)
            if future is not None:
                future.set_result(reply)

    async def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        self.next_ref += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[self.next_ref] = future
        await self.ws.send(orjson.dumps({**message, "ref": self.next_ref}).decode())
        return await future


async def one_stream(control: Control, index: int, rng: random.Random) -> dict[str, Any]:
    started = await control.ask({"type": "start", "prompt": f"cancel bench {index}", "max_tokens": 30_000})
    reader = asyncio.create_task(read_stream(started["events_url"]))
    await asyncio.sleep(rng.uniform(0.5, 2.5))
    sent_mono, sent_wall = time.perf_counter(), time.time()
    stopped = await control.ask({"type": "stop", "stream_id": started["stream_id"]})
    received = time.perf_counter()
    stream = await reader
    sse_tokens = stream.terminal.json().get("tokens") if stream.terminal.event == "stop" else None
    return {
        "stop_to_stopped_ms": (received - sent_mono) * 1000,
        "stop_to_halted_ms": (stopped["halted_ts"] - sent_wall) * 1000 if stopped.get("halted_ts") else None,
        "finish_reason": stopped["finish_reason"],
        "tokens": stopped["tokens"],
        "sse_tokens": sse_tokens,
    }


async def run_once(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    runner_args = [
        "--synthetic-tokens-per-s", str(args.tokens_per_s), "--synthetic-ttft-ms", "20",
        "--max-concurrency", str(max(256, args.streams)), "--synthetic-length-tokens", "100000",
    ]  # fmt: skip
    with nats_server() as broker, system(broker.url, runner_args=runner_args) as sut:
        floor = await nats_round_trips(broker.url, NATS_RTT_SAMPLES)
        wasted_before = await metric(sut.runners[0].url, "tokenrelay_runner_tokens_after_cancel_total")
        rng = random.Random(seed)
        async with connect(sut.gateway_url.replace("http", "ws") + "/v1/control", max_size=None) as ws:
            control = Control(ws)
            results = await asyncio.gather(*(one_stream(control, i, rng) for i in range(args.streams)))
            control.reader.cancel()
        wasted = await metric(sut.runners[0].url, "tokenrelay_runner_tokens_after_cancel_total") - wasted_before
    cancelled = [r for r in results if r["finish_reason"] == "cancelled"]
    return {
        "nats_rtt_ms": summary(floor),
        "stop_to_stopped_ms": summary([r["stop_to_stopped_ms"] for r in cancelled]),
        "stop_to_halted_ms": summary([r["stop_to_halted_ms"] for r in cancelled if r["stop_to_halted_ms"] is not None]),
        "tokens_after_cancel_total": wasted,
        "streams": len(results),
        "cancelled": len(cancelled),
        "sse_matches_stopped": sum(1 for r in cancelled if r["sse_tokens"] == r["tokens"]),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=200, help="concurrent streams per run")
    parser.add_argument("--runs", type=int, default=3, help="independent runs (fresh processes each)")
    parser.add_argument("--tokens-per-s", type=float, default=20, help="synthetic engine pace")
    args = parser.parse_args()
    runs = [await run_once(args, seed) for seed in range(args.runs)]
    keys = ("nats_rtt_ms", "stop_to_stopped_ms", "stop_to_halted_ms")
    medians = {k: median_of_runs([r[k] for r in runs]) for k in keys}
    print(
        table(
            f"cancel latency: {args.streams} concurrent streams at {args.tokens_per_s:g} tokens/s, "
            f"median of {args.runs} runs' percentiles",
            [
                ("NATS request/reply round trip (floor)", medians["nats_rtt_ms"]),
                ("WS stop sent -> stopped received", medians["stop_to_stopped_ms"]),
                ("WS stop sent -> engine halted", medians["stop_to_halted_ms"]),
            ],
        )
    )
    ratio = medians["stop_to_halted_ms"]["p99"] / medians["nats_rtt_ms"]["p99"]
    print(f"stop -> halted p99 / NATS round trip p99: {ratio:.1f}x")
    print(f"tokens produced after the cancel reached the runner: {[r['tokens_after_cancel_total'] for r in runs]}")
    print(f"SSE stop event token count == stopped reply's: {[r['sse_matches_stopped'] for r in runs]} of "
          f"{[r['cancelled'] for r in runs]}")  # fmt: skip
    path = write_json("cancel", {"args": vars(args), "runs": runs, "medians": medians, "halted_vs_rtt_p99": ratio})
    print(f"wrote {path}")


if __name__ == "__main__":
    asyncio.run(main())
