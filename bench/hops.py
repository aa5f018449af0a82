"""What one hop between two Python processes costs on this machine: the floor under the TTFT that tokenrelay adds.

tokenrelay's roles are separate processes that talk only over NATS, so a stream's first token crosses hops that a
client talking straight to the inference server does not.  This measures each kind of hop with nothing else running,
between this process and a peer process (``--role peer``) on the same event loop tokenrelay uses:

* **NATS request/reply**: a request to the peer through nats-server and its reply (the gateway's offer to a runner,
  the streamer's admission request to the gateway);
* **NATS one way**: a publish until the peer's subscription callback runs (a token from the runner to the
  streamer), timed from the send stamp in the message (``time.perf_counter`` is one clock for every process);
* **KV write**: a JetStream key-value put acknowledged by nats-server (the stream's record, written at its start);
* **HTTP round trip**: an aiohttp request to the peer on a kept-alive connection and its answer (one more process
  on the way: the runner's request to the upstream).

Then it starts a tokenrelay system (synthetic engine) on the same nats-server and reads native streams one at a time,
timing each step with aiohttp's client tracing: the ``POST`` (its headers sent -> its answer), the ``GET`` (its
headers sent -> the response's headers), the first delta after those, and TTFT; each next to the hops it crosses.

From the medians it adds up the hops on each API's first-token critical path beyond what ``direct`` (the client's own
request to the upstream) crosses (:data:`PATHS`): the least TTFT that path can add on this machine however cheap each
process's own work is.

    python -m bench.hops
    python -m bench.hops --samples 200
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import aiohttp
import nats
import orjson
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bench.stats import percentile, write_json
from tokenrelay.cli.ports import free_port
from tokenrelay.runtime.service import run_on_loop
from tokenrelay.testing.procs import nats_server, system
from tokenrelay.testing.synthetic import synthetic_args

REQUEST_SUBJECT = "bench.hops.request"
ONE_WAY_SUBJECT = "bench.hops.one-way"
RESULT_SUBJECT = "bench.hops.one-way.result"
PAYLOAD_BYTES = 200
"""About one delta event of the runner's."""
SPACING_S = 0.002
"""Between samples: each hop is timed alone, on an idle loop."""
WARMUP_SAMPLES = 50
"""Left out of every figure (connections, caches, lazy imports)."""
TIMEOUT_S = 5.0

HOPS = ("nats_request_reply", "nats_one_way", "kv_write", "http_round_trip")
PATHS: dict[str, tuple[tuple[str, int], ...]] = {
    # The POST is answered once its record is stored (the offer goes out meanwhile), then the GET is one request
    # more than direct makes; the token's own way (offer one way, runner, publish one way) runs beside them.
    "native API": (("kv_write", 1), ("http_round_trip", 1)),
    # The client's request reaches the streamer (one process more than direct: a round trip), the streamer's
    # admission request the gateway, its offer the runner, whose request to the upstream stands for direct's, and the
    # token comes back to the streamer: three NATS hops one way (the replies run beside the token).
    "OpenAI API": (("http_round_trip", 1), ("nats_one_way", 3)),
}
"""The hops on each API's first-token critical path beyond direct's, each with how many times it is crossed."""
NATIVE_STEPS = ("post", "get_headers", "first_delta", "ttft")
"""What is timed of each native stream (ms): POST answered, GET's headers, first delta after them, the whole."""
NATIVE_STEP_HOPS: dict[str, tuple[tuple[str, int], ...]] = {
    "post": (("http_round_trip", 1), ("kv_write", 1)),  # answered once the record is stored
    "get_headers": (("http_round_trip", 1),),  # no NATS on the way when the stream's start was seen
}
NATIVE_TOKENS = 5
NATIVE_TOKENS_PER_S = 1000.0


# --- the peer process ----------------------------------------------------------------------------


async def peer(nats_url: str, port: int) -> None:
    """Answer requests, report one-way arrival times, answer HTTP; until killed."""
    nc = await nats.connect(nats_url)

    async def on_request(msg: Msg) -> None:
        await msg.respond(msg.data)

    async def on_one_way(msg: Msg) -> None:
        arrived = time.perf_counter()
        await nc.publish(RESULT_SUBJECT, orjson.dumps(arrived - orjson.loads(msg.data)["sent"]))

    async def hop(_: web.Request) -> web.Response:
        return web.Response(body=b"x" * PAYLOAD_BYTES)

    await nc.subscribe(REQUEST_SUBJECT, cb=on_request)
    await nc.subscribe(ONE_WAY_SUBJECT, cb=on_one_way)
    await nc.flush()
    app = web.Application()
    app.router.add_get("/hop", hop)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


# --- the measuring process -----------------------------------------------------------------------


async def _timed(samples: int, once: Callable[[], Awaitable[float | None]]) -> list[float]:
    """Milliseconds of each of ``samples`` hops after the warm-up (``once`` returns its own time in s, or ``None``
    to be timed from outside)."""
    out = []
    for _ in range(WARMUP_SAMPLES + samples):
        started = time.perf_counter()
        own = await once()
        out.append((own if own is not None else time.perf_counter() - started) * 1e3)
        await asyncio.sleep(SPACING_S)
    return out[WARMUP_SAMPLES:]


async def measure(nats_url: str, http_url: str, samples: int) -> dict[str, list[float]]:
    """Every hop ``samples`` times against the peer."""
    nc: NATS = await nats.connect(nats_url)
    payload = b"x" * PAYLOAD_BYTES
    kv = await nc.jetstream().create_key_value(bucket="bench-hops")
    results: asyncio.Queue[float] = asyncio.Queue(maxsize=1)

    async def on_result(msg: Msg) -> None:
        results.put_nowait(orjson.loads(msg.data))

    await nc.subscribe(RESULT_SUBJECT, cb=on_result)

    async def request() -> None:
        await nc.request(REQUEST_SUBJECT, payload, timeout=TIMEOUT_S)

    async def one_way() -> float:
        await nc.publish(ONE_WAY_SUBJECT, orjson.dumps({"sent": time.perf_counter(), "pad": "x" * PAYLOAD_BYTES}))
        return await asyncio.wait_for(results.get(), TIMEOUT_S)

    async def kv_write() -> None:
        await kv.put("record", payload)

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as session:

            async def http() -> None:
                async with session.get(f"{http_url}/hop") as response:
                    await response.read()

            return {
                "nats_request_reply": await _timed(samples, request),
                "nats_one_way": await _timed(samples, one_way),
                "kv_write": await _timed(samples, kv_write),
                "http_round_trip": await _timed(samples, http),
            }
    finally:
        await nc.close()


async def native_steps(gateway_url: str, samples: int) -> dict[str, list[float]]:
    """Native streams one at a time, each read to its end on kept-alive connections: each step's ms."""
    marks: dict[str, float] = {}
    trace = aiohttp.TraceConfig()

    async def headers_sent(*_: object) -> None:
        marks["sent"] = time.perf_counter()

    async def answered(*_: object) -> None:
        marks["answered"] = time.perf_counter()

    trace.on_request_headers_sent.append(headers_sent)
    trace.on_request_end.append(answered)
    out: dict[str, list[float]] = {step: [] for step in NATIVE_STEPS}
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    async with aiohttp.ClientSession(trace_configs=[trace], timeout=timeout) as session:
        for number in range(WARMUP_SAMPLES + samples):
            started = time.perf_counter()
            body = {"prompt": "hops", "max_tokens": NATIVE_TOKENS}
            async with session.post(f"{gateway_url}/v1/streams", json=body) as response:
                created = await response.json()
            post = marks["answered"] - marks["sent"]
            first = math.nan
            async with session.get(created["events_url"]) as response:
                get, headers_at = marks["answered"] - marks["sent"], marks["answered"]
                async for line in response.content:
                    if math.isnan(first) and line.startswith(b"event: delta"):
                        first = time.perf_counter()
            if number >= WARMUP_SAMPLES:
                for step, seconds in zip(NATIVE_STEPS, (post, get, first - headers_at, first - started), strict=True):
                    out[step].append(seconds * 1e3)
            await asyncio.sleep(SPACING_S)
    return out


def crossing(medians: dict[str, float], hops: tuple[tuple[str, int], ...]) -> float:
    """What crossing ``hops`` (each so many times) costs at these hop medians (ms)."""
    return sum(medians[hop] * times for hop, times in hops)


def floors(medians: dict[str, float]) -> dict[str, float]:
    """The least each API's first token can add over direct: its hops' medians summed (ms)."""
    return {path: crossing(medians, hops) for path, hops in PATHS.items()}


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {"p10": percentile(values, 10), "p50": statistics.median(values), "p90": percentile(values, 90)}


def summarize(
    hops: dict[str, list[float]], *, samples: int, native: dict[str, list[float]] | None = None
) -> dict[str, Any]:
    """Each hop's p10/p50/p90 and the paths' floors from the medians; each native step's, beside its hops'."""
    figures = {name: _spread(values) for name, values in hops.items()}
    medians = {name: figure["p50"] for name, figure in figures.items()}
    summary: dict[str, Any] = {
        "samples": samples,
        "hops_ms": figures,
        "paths": {path: [{"hop": hop, "times": times} for hop, times in PATHS[path]] for path in PATHS},
        "floor_ms": floors(medians),
    }
    if native is not None:
        summary["native_ms"] = {step: _spread(values) for step, values in native.items()}
        summary["native_hops_ms"] = {step: crossing(medians, step_hops) for step, step_hops in NATIVE_STEP_HOPS.items()}
    return summary


def format_table(summary: dict[str, Any]) -> str:
    lines = [f"{'hop (ms)':<22}{'p10':>8}{'p50':>8}{'p90':>8}"]
    for name, f in summary["hops_ms"].items():
        lines.append(f"{name:<22}{f['p10']:>8.3f}{f['p50']:>8.3f}{f['p90']:>8.3f}")
    lines.append("")
    for path, floor in summary["floor_ms"].items():
        parts = " + ".join(f"{t} x {hop}" for hop, t in PATHS[path])
        lines.append(f"first token over direct, {path}: at least {floor:.2f} ms ({parts})")
    if "native_ms" in summary:
        lines += ["", f"{'native stream, one at a time (ms)':<36}{'p10':>8}{'p50':>8}{'p90':>8}{'its hops':>10}"]
        for step, f in summary["native_ms"].items():
            hops = summary["native_hops_ms"].get(step)
            shown = f"{hops:>10.3f}" if hops is not None else f"{'':>10}"
            lines.append(f"{step:<36}{f['p10']:>8.3f}{f['p50']:>8.3f}{f['p90']:>8.3f}{shown}")
    return "\n".join(lines)


@contextlib.contextmanager
def peer_process(nats_url: str, port: int) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.hops", "--role", "peer", "--nats-url", nats_url, "--port", str(port)],
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != b"ready":
            raise RuntimeError("the peer process did not start")
        yield process
    finally:
        process.kill()
        process.wait()


def run(samples: int) -> dict[str, Any]:
    """Start nats-server and the peer, measure every hop; then a tokenrelay system's native steps; summarize."""
    runner = synthetic_args(tokens_per_s=NATIVE_TOKENS_PER_S, length_tokens=NATIVE_TOKENS)
    with nats_server() as server:
        port = free_port()
        with peer_process(server.url, port):
            hops = run_on_loop(measure(server.url, f"http://127.0.0.1:{port}", samples))
        with system(server.url, runner_args=runner) as sut:
            native = run_on_loop(native_steps(sut.gateway_url, samples))
    return summarize(hops, samples=samples, native=native)


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(prog="python -m bench.hops", description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=1000, help="of each hop, after a warm-up of 50")
    parser.add_argument("--role", choices=("measure", "peer"), default="measure", help=argparse.SUPPRESS)
    parser.add_argument("--nats-url", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "peer":
        run_on_loop(peer(args.nats_url, args.port))
        return None
    summary = run(args.samples)
    print(format_table(summary))
    print(f"wrote {write_json('hops', summary)}")
    return summary


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
