"""``tokenrelay loadtest`` splits token lag by whether a delta was published before or after the reader's ``GET``.

A fake server (one aiohttp app on 127.0.0.1) answers the ``POST`` and streams fixed events, so which
histogram each delta lands in does not depend on any timing.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

from tokenrelay.loadtest.driver import run_loadtest
from tokenrelay.loadtest.plan import LoadTestConfig, parse_int_mix
from tokenrelay.loadtest.stats import RunTotals

HOUR_S = 3600.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def frame(event: str, data: dict[str, object], event_id: str | None = None) -> bytes:
    head = f"event: {event}\n" + (f"id: {event_id}\n" if event_id else "")
    return head.encode() + b"data: " + orjson.dumps(data) + b"\n\n"


async def create(request: web.Request) -> web.Response:
    base = f"http://{request.host}"
    body = {"id": "s1", "events_url": f"{base}/v1/streams/s1/events", "stop_url": f"{base}/v1/streams/s1/stop"}
    return web.json_response(body, status=201)


async def events(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    now = time.time()
    await response.write(frame("start", {"stream_id": "s1", "model": "m", "created": 0}))
    # Two tokens from history (stamped an hour before the GET), then three live ones (stamped after it).
    await response.write(frame("delta", {"text": "ab", "index": 2, "ts": now - HOUR_S}, "e:2"))
    for index in (3, 4, 5):
        await response.write(frame("delta", {"text": "c", "index": index, "ts": now + HOUR_S}, f"e:{index}"))
    await response.write(frame("stop", {"finish_reason": "length", "tokens": 5, "ttft_ms": 1.0}))
    return response


async def run_against(handler: Handler, *, streams: int, ramp_per_s: float = 0, max_tokens: str) -> RunTotals:
    """A load test against a fake server whose every stream's events come from ``handler``."""
    app = web.Application()
    app.router.add_post("/v1/streams", create)
    app.router.add_get("/v1/streams/s1/events", handler)
    async with TestServer(app, host="127.0.0.1") as server:
        config = LoadTestConfig(
            gateway_url=str(server.make_url("")), streams=streams, ramp_per_s=ramp_per_s,
            max_tokens=parse_int_mix(max_tokens), quiet=True, drain_s=5,
        )  # fmt: skip
        return (await run_loadtest(config, progress=None)).totals


async def test_deltas_published_before_the_get_count_as_history_lag_and_the_rest_as_token_lag() -> None:
    totals = await run_against(events, streams=1, max_tokens="5")
    assert (totals.delivered, totals.lost, totals.duplicated) == (5, 0, 0)
    assert totals.history_lag.n == 1 and totals.history_lag.min_ms >= HOUR_S * 1000 * 0.99
    assert totals.token_lag.n == 3 and totals.token_lag.max_ms == 0  # stamped ahead: counted as no lag at all
    # One stream: the ramp ended as it started, so its live deltas were published after the ramp; history never is.
    assert totals.after_ramp_lag.n == 3


async def one_live_delta_stamped_now(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(frame("start", {"stream_id": "s1", "model": "m", "created": 0}))
    await response.write(frame("delta", {"text": "a", "index": 1, "ts": time.time()}, "e:1"))
    await response.write(frame("stop", {"finish_reason": "length", "tokens": 1, "ttft_ms": 1.0}))
    return response


async def test_only_deltas_published_once_the_last_stream_started_count_as_after_the_ramp() -> None:
    # Two streams half a second apart: the first one's delta goes out before the second starts.
    totals = await run_against(one_live_delta_stamped_now, streams=2, ramp_per_s=2, max_tokens="1")
    assert totals.token_lag.n == 2
    assert totals.after_ramp_lag.n == 1
