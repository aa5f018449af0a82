"""Feedback is acknowledged only once stored durably, and survives gateway and broker restarts."""

from __future__ import annotations

import tempfile

import orjson
from websockets.asyncio.client import connect

from tests.helpers import export_feedback
from tokenrelay.testing.procs import nats_server, system


async def _rate(gateway_url: str, rating: str, comment: str | None) -> str:
    async with connect(f"{gateway_url.replace('http', 'ws')}/v1/control") as ws:
        await ws.send(orjson.dumps({"type": "start", "prompt": "rate me", "max_tokens": 2}).decode())
        started = orjson.loads(await ws.recv())
        await ws.send(
            orjson.dumps(
                {"type": "feedback", "stream_id": started["stream_id"], "rating": rating, "comment": comment}
            ).decode()
        )
        assert orjson.loads(await ws.recv())["type"] == "ack"
        return str(started["stream_id"])


async def test_feedback_survives_gateway_and_nats_restart_and_appears_in_theexport_feedback() -> None:
    with tempfile.TemporaryDirectory(prefix="tokenrelay-feedback-") as store:
        with nats_server(store) as first, system(first.url, runner_args=["--synthetic-tokens-per-s", "0"]) as sut:
            up_id = await _rate(sut.gateway_url, "up", "great ✓ 日本")
            down_id = await _rate(sut.gateway_url, "down", None)
        # Gateway, runners, streamer and the broker are all gone now; start a new broker on the same store.
        with nats_server(store) as second:
            exported = export_feedback(second.url)
    by_stream = {item["stream_id"]: item for item in exported}
    assert by_stream[up_id]["rating"] == "up" and by_stream[up_id]["comment"] == "great ✓ 日本"
    assert by_stream[down_id]["rating"] == "down" and by_stream[down_id]["comment"] is None
    assert all(item["type"] == "feedback" and isinstance(item["ts"], float) for item in exported)


def test_export_of_an_empty_store_writes_nothing() -> None:
    with nats_server() as server:
        assert export_feedback(server.url) == []
