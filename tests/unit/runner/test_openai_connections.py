"""Spec of the ``openai`` engine's upstream connections: as many at once as the runner takes streams, so no stream
waits for another's connection (aiohttp's default pool of 100 made the 101st wait for a whole stream)."""

from __future__ import annotations

from tokenrelay.runner.engines.openai import OpenAIEngine
from tokenrelay.runner.engines.registry import make_engine
from tokenrelay.runtime.config import RunnerConfig, UpstreamConfig


async def test_the_engine_opens_as_many_upstream_connections_as_the_runner_takes_streams() -> None:
    config = RunnerConfig(
        engine="openai", max_concurrency=256, upstream=UpstreamConfig(url="http://127.0.0.1:9/v1", model="m")
    )
    engine = make_engine(config)
    assert isinstance(engine, OpenAIEngine)
    session = engine._client()
    try:
        assert session.connector is not None and session.connector.limit == 256
    finally:
        await engine.aclose()


async def test_with_no_limit_given_the_engine_opens_any_number() -> None:
    engine = OpenAIEngine(base_url="http://127.0.0.1:9/v1", model="m")
    session = engine._client()
    try:
        assert session.connector is not None and session.connector.limit == 0
    finally:
        await engine.aclose()
