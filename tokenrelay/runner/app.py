"""The runner process: NATS connection, engine, :class:`~tokenrelay.runner.node.Runner`, and ops HTTP."""

from __future__ import annotations

import logging
import signal
from dataclasses import replace

from aiohttp import web
from nats.aio.client import Client as NATS

from tokenrelay.runner.engines.registry import make_engine
from tokenrelay.runner.metrics import RunnerMetrics
from tokenrelay.runner.node import Runner
from tokenrelay.runtime import natsio
from tokenrelay.runtime.config import RunnerConfig
from tokenrelay.runtime.service import add_ops_routes, errors_middleware, serve
from tokenrelay.wire import subjects

log = logging.getLogger(__name__)


def ops_app(nc: NATS, metrics: RunnerMetrics, node: Runner | None = None) -> web.Application:
    """``/healthz``, ``/readyz`` (connected to NATS, not draining) and ``/metrics`` of a runner."""
    app = web.Application(middlewares=[errors_middleware])

    def ready() -> str | None:
        if node is not None and node.draining:
            return "draining: taking no new stream"
        return None if nc.is_connected else "not connected to NATS"

    add_ops_routes(app, metrics.registry, ready, errors=metrics.errors)
    return app


async def run(config: RunnerConfig) -> None:
    """Run one runner until SIGINT/SIGTERM."""
    runner_id = subjects.new_node_id("runner")
    nc = await natsio.connect(config.nats_url, name=runner_id)
    config = replace(config, history=natsio.replicated(nc, config.history))
    js = nc.jetstream()
    await natsio.ensure_events_stream(js, config.history)
    kv = await natsio.ensure_streams_bucket(js, config.history)
    store = await natsio.ensure_payload_store(js, config.history)
    metrics = RunnerMetrics()
    engine = make_engine(config)
    node = Runner(config, nc=nc, kv=kv, engine=engine, runner_id=runner_id, metrics=metrics, payloads=store)
    await node.start()
    try:

        async def on_signal(received: signal.Signals) -> None:
            # A deploy or a scale-down (SIGTERM): let the streams finish, and move what is left to other runners.
            if received is signal.SIGTERM and not await node.drain(config.drain_timeout_s):
                await node.hand_off()

        await serve(ops_app(nc, metrics, node), config.host, config.port, name=runner_id, on_signal=on_signal)
    finally:
        await node.stop()
        await nc.drain()
