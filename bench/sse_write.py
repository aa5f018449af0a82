"""Server CPU per SSE event: aiohttp-sse's ``send()`` against a plain ``write()`` of a pre-encoded frame.

The streamer's hot path writes frames that are encoded once per event and shared by every reader
(``streamer/frames.py``) with ``StreamResponse.write()``.  aiohttp-sse is the obvious alternative;
this measures what each costs the *server* per event, so the choice rests on a number.

A server subprocess offers three endpoints that each send ``--events`` delta events to one client as
fast as it takes them, and report the CPU time (``time.process_time``) the handler's process spent:

* ``/sse``: ``EventSourceResponse.send(data, event=..., id=...)`` per event (aiohttp-sse);
* ``/write``: ``StreamResponse.write(frame)`` with a frame encoded per event (``tokenrelay.streamer.sse.encode_event``);
* ``/shared``: ``StreamResponse.write(frame)`` of one frame encoded once and reused (the streamer's fan-out);
* ``/chunk``: the same shared frame framed as one HTTP/1.1 chunk and handed to the transport
  (``tokenrelay.streamer.writer.DirectWrite``, what the streamer's writer does).

Each write is followed by ``drain`` in all three, as the streamer does.  The client reads in this
process.  Runs alternate the endpoints so drift hits all of them alike.

    python -m bench.sse_write --events 20000 --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time

import aiohttp
import orjson
from aiohttp import web
from aiohttp_sse import EventSourceResponse

from bench.stats import write_json
from tokenrelay.cli.supervisor import free_port, http_ok
from tokenrelay.streamer.sse import encode_event
from tokenrelay.streamer.writer import DirectWrite
from tokenrelay.testing.procs import stop_process, wait_until

TEXT = " token"
ENDPOINTS = ("sse", "write", "shared", "chunk")


def _data(index: int) -> str:
    return orjson.dumps({"text": TEXT, "index": index, "ts": 1795308654.1034038}).decode()


class _Server:
    def __init__(self) -> None:
        self.last_cpu_s = 0.0

    async def sse(self, request: web.Request) -> web.StreamResponse:
        events = int(request.query["n"])
        response = EventSourceResponse()
        response.ping_interval = 3600  # no pings during the measurement
        await response.prepare(request)
        started = time.process_time()
        for index in range(1, events + 1):
            await response.send(_data(index), event="delta", id=f"e:{index}")
        self.last_cpu_s = time.process_time() - started
        prepared: web.StreamResponse = response  # aiohttp-sse ships no types
        return prepared

    async def write(self, request: web.Request) -> web.StreamResponse:
        events = int(request.query["n"])
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        writer = await response.prepare(request)
        assert writer is not None
        started = time.process_time()
        for index in range(1, events + 1):
            await response.write(encode_event(_data(index), event="delta", id=f"e:{index}"))
            await writer.drain()
        self.last_cpu_s = time.process_time() - started
        return response

    async def shared(self, request: web.Request) -> web.StreamResponse:
        events = int(request.query["n"])
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        writer = await response.prepare(request)
        assert writer is not None
        frame = encode_event(_data(1), event="delta", id="e:1")
        started = time.process_time()
        for _ in range(events):
            await response.write(frame)
            await writer.drain()
        self.last_cpu_s = time.process_time() - started
        return response

    async def chunk(self, request: web.Request) -> web.StreamResponse:
        events = int(request.query["n"])
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        writer = await response.prepare(request)
        assert writer is not None
        out = DirectWrite.of(writer, request.transport)
        assert out is not None
        frame = encode_event(_data(1), event="delta", id="e:1")
        started = time.process_time()
        for _ in range(events):
            out.write(frame)
            await writer.drain()
        self.last_cpu_s = time.process_time() - started
        return response

    async def cpu(self, _: web.Request) -> web.Response:
        return web.json_response({"cpu_s": self.last_cpu_s})


def serve(port: int) -> None:
    """The server subprocess."""
    server = _Server()
    app = web.Application()
    app.router.add_get("/sse", server.sse)
    app.router.add_get("/write", server.write)
    app.router.add_get("/shared", server.shared)
    app.router.add_get("/chunk", server.chunk)
    app.router.add_get("/cpu", server.cpu)
    app.router.add_get("/healthz", server.cpu)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def _measure(base: str, endpoint: str, events: int) -> float:
    """Server CPU µs per event for one run of ``endpoint``."""
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.get(f"{base}/{endpoint}", params={"n": str(events)}) as response:
            async for _ in response.content.iter_any():
                pass
        async with session.get(f"{base}/cpu") as response:
            cpu_s = float((await response.json())["cpu_s"])
    return cpu_s / events * 1e6


async def _runs(base: str, events: int, runs: int) -> dict[str, list[float]]:
    await _measure(base, "write", 1000)  # warm-up
    per_event: dict[str, list[float]] = {name: [] for name in ENDPOINTS}
    for _ in range(runs):
        for name in ENDPOINTS:
            per_event[name].append(await _measure(base, name, events))
    return per_event


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000, help="events per run")
    parser.add_argument("--runs", type=int, default=5, help="runs of each endpoint (alternating)")
    args = parser.parse_args()
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "bench.sse_write", "--serve", str(port)])
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_ok(f"{base}/healthz"), what="sse_write server")
        per_event = asyncio.run(_runs(base, args.events, args.runs))
    finally:
        stop_process(process)
    medians = {name: statistics.median(values) for name, values in per_event.items()}
    print(f"server CPU per SSE event, {args.events} events per run, median of {args.runs} runs")
    print(f"{'':<48} {'us/event':>9} {'x shared':>9}")
    labels = {
        "sse": "aiohttp-sse send()",
        "write": "write() of a frame encoded per event",
        "shared": "write() of one shared pre-encoded frame",
        "chunk": "the shared frame as one chunk to the transport",
    }
    for name in ENDPOINTS:
        print(f"{labels[name]:<48} {medians[name]:>9.2f} {medians[name] / medians['shared']:>9.2f}")
    path = write_json("sse_write", {"args": vars(args), "us_per_event": per_event, "medians": medians})
    print(f"wrote {path}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]))
    else:
        main()
