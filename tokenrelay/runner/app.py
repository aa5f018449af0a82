"""The runner process: NATS connection, engine, :class:`~tokenrelay.runner.node.Runner`, and ops HTTP."""

from __future__ import annotations

import logging

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


def ops_app(nc: NATS, metrics: RunnerMetrics) -> web.Application:
    """``/healthz``, ``/readyz`` (connected to NATS) and ``/metrics`` of a runner."""
    app = web.Application(middlewares=[errors_middleware])
    add_ops_routes(
        app, metrics.registry, lambda: None if nc.is_connected else "not connected to NATS", errors=metrics.errors
    )
    return app


async def run(config: RunnerConfig) -> None:
    """Run one runner until SIGINT/SIGTERM."""
    runner_id = subjects.new_node_id("runner")
    nc = await natsio.connect(config.nats_url, name=runner_id)
    js = nc.jetstream()
    await natsio.ensure_events_stream(js, config.history)
    kv = await natsio.ensure_streams_bucket(js, config.history)
    store = await natsio.ensure_payload_store(js, config.history)
    metrics = RunnerMetrics()
    engine = make_engine(config)
    node = Runner(config, nc=nc, kv=kv, engine=engine, runner_id=runner_id, metrics=metrics, payloads=store)
    await node.start()
    try:
        await serve(ops_app(nc, metrics), config.host, config.port, name=runner_id)
    finally:
        await node.stop()
        await nc.drain()
