"""Spec of the control channel when its gateway is shutting down: a command refused ``shutting_down`` (nothing was
done) is sent again on a fresh socket, which a load balancer gives to another gateway; past the retries the error
reaches the caller.  A tiny WebSocket server on 127.0.0.1 plays the gateways."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve

from tokenrelay.client import control
from tokenrelay.client.control import ControlChannel
from tokenrelay.wire.errors import TokenRelayError


class Gateways:
    """Answers ``shutting_down`` on the first ``refusing`` sockets, ``started`` on the others."""

    def __init__(self, refusing: int) -> None:
        self.refusing = refusing
        self.sockets = 0

    async def handle(self, ws: ServerConnection) -> None:
        self.sockets += 1
        going_away = self.sockets <= self.refusing
        async for frame in ws:
            ref = orjson.loads(frame)["ref"]
            if going_away:
                await ws.send(orjson.dumps({"type": "error", "code": "shutting_down", "message": "bye", "ref": ref}))
                await ws.close(1012)
                return
            await ws.send(orjson.dumps({"type": "started", "stream_id": "s", "events_url": "e", "ref": ref}))


@pytest.fixture
async def url_of() -> AsyncIterator[dict[int, tuple[str, Gateways]]]:
    made: dict[int, tuple[str, Gateways]] = {}
    servers = []
    for refusing in (1, control.SHUTTING_DOWN_RETRIES + 1):
        gateways = Gateways(refusing)
        server = await serve(gateways.handle, "127.0.0.1", 0)
        servers.append(server)
        port = next(iter(server.sockets)).getsockname()[1]
        made[refusing] = (f"ws://127.0.0.1:{port}/v1/control", gateways)
    yield made
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_a_start_refused_by_a_gateway_shutting_down_is_sent_again_on_a_fresh_socket(
    url_of: dict[int, tuple[str, Gateways]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control, "SHUTTING_DOWN_RETRY_DELAY_S", 0.0)
    url, gateways = url_of[1]
    channel = ControlChannel(url)
    try:
        reply = await channel.request({"type": "start", "prompt": "hi"})
    finally:
        await channel.close()
    assert reply["type"] == "started" and gateways.sockets == 2


async def test_past_its_retries_the_shutting_down_error_reaches_the_caller(
    url_of: dict[int, tuple[str, Gateways]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control, "SHUTTING_DOWN_RETRY_DELAY_S", 0.0)
    url, gateways = url_of[control.SHUTTING_DOWN_RETRIES + 1]
    channel = ControlChannel(url)
    try:
        with pytest.raises(TokenRelayError) as refused:
            await channel.request({"type": "start", "prompt": "hi"})
    finally:
        await channel.close()
    assert refused.value.code == "shutting_down" and gateways.sockets == control.SHUTTING_DOWN_RETRIES + 1
