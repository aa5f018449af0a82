"""Spec of :mod:`tokenrelay.runtime.natsdirect` against a real nats-server: a direct subscription's handler gets every
message, in order, straight from the read loop; everything else on the connection stays nats-py's.

Each subscription is followed by :func:`tokenrelay.runtime.natsio.barrier`, not ``flush()``: nats-py's PING can
overtake a SUB still waiting for its flusher, and a message published right after would find no subscriber."""

from __future__ import annotations

from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from tests.helpers import eventually_true
from tokenrelay.runtime import natsdirect
from tokenrelay.runtime.natsdirect import DirectClient, subscribe_raw
from tokenrelay.runtime.natsio import barrier
from tokenrelay.testing.procs import NatsServer

WAIT_S = 10.0
MESSAGES = 200


@pytest.fixture
async def clients(nats: NatsServer) -> AsyncIterator[tuple[DirectClient, NATS]]:
    """A direct client and an ordinary one to publish from."""
    direct = DirectClient()
    await direct.connect(nats.url, name="direct")
    publisher = await nats_connect(nats.url)
    yield direct, publisher
    await publisher.close()
    await direct.close()


async def nats_connect(url: str) -> NATS:
    return await nats.connect(url, name="publisher")


def test_this_nats_py_parses_messages_through_the_method_the_direct_client_overrides() -> None:
    assert natsdirect.SUPPORTED  # if a nats-py release changes it, subscribe_raw falls back (and this says so)


async def test_a_direct_handler_gets_every_message_in_order_with_its_subject(
    clients: tuple[DirectClient, NATS],
) -> None:
    direct, publisher = clients
    got: list[tuple[str, bytes]] = []
    await direct.subscribe_direct("direct.*.events", lambda subject, data: got.append((subject, data)))
    await barrier(direct)
    for i in range(MESSAGES):
        await publisher.publish(f"direct.{i % 3}.events", b"%d" % i)
    await eventually_true(lambda: len(got) == MESSAGES, what="every message arrived", timeout_s=WAIT_S)
    assert got == [(f"direct.{i % 3}.events", b"%d" % i) for i in range(MESSAGES)]
    assert direct.stats["in_msgs"] >= MESSAGES


async def test_a_handler_that_raises_loses_that_message_only_and_the_connection_goes_on(
    clients: tuple[DirectClient, NATS],
) -> None:
    direct, publisher = clients
    got: list[bytes] = []

    def handler(_: str, data: bytes) -> None:
        if data == b"bad":
            raise ValueError("cannot take this one")
        got.append(data)

    await direct.subscribe_direct("direct.raises", handler)
    await barrier(direct)
    for data in (b"1", b"bad", b"2"):
        await publisher.publish("direct.raises", data)
    await eventually_true(lambda: got == [b"1", b"2"], what="the messages around the bad one arrived", timeout_s=WAIT_S)
    assert direct.is_connected


async def test_after_unsubscribe_the_handler_is_not_called_again(clients: tuple[DirectClient, NATS]) -> None:
    direct, publisher = clients
    got: list[bytes] = []
    sub = await direct.subscribe_direct("direct.unsub", lambda _, data: got.append(data))
    await barrier(direct)
    await publisher.publish("direct.unsub", b"before")
    await eventually_true(lambda: got == [b"before"], what="the first message arrived", timeout_s=WAIT_S)
    await sub.unsubscribe()
    await barrier(direct)
    await publisher.publish("direct.unsub", b"after")
    await barrier(publisher)
    await barrier(direct)  # a round trip after the publish: the message would have come before the PONG
    assert got == [b"before"]


async def test_ordinary_subscriptions_and_requests_on_a_direct_client_are_nats_pys(
    clients: tuple[DirectClient, NATS],
) -> None:
    direct, publisher = clients

    async def respond(msg: Msg) -> None:
        await msg.respond(msg.data.upper())

    await publisher.subscribe("direct.echo", cb=respond)
    await barrier(publisher)
    reply = await direct.request("direct.echo", b"hello", timeout=WAIT_S)
    assert reply.data == b"HELLO"
    seen: list[Msg] = []

    async def collect(msg: Msg) -> None:
        seen.append(msg)

    await direct.subscribe("direct.plain", cb=collect)
    await barrier(direct)
    await publisher.publish("direct.plain", b"x", headers={"K": "v"})
    await eventually_true(lambda: len(seen) == 1, what="the ordinary subscription's callback ran", timeout_s=WAIT_S)
    assert (seen[0].data, seen[0].headers) == (b"x", {"K": "v"})


@pytest.mark.parametrize("client", ["direct", "nats-py"])
async def test_subscribe_raw_delivers_subject_and_data_on_either_client(nats: NatsServer, client: str) -> None:
    nc: NATS = DirectClient() if client == "direct" else NATS()
    await nc.connect(nats.url, name=f"raw-{client}")
    publisher = await nats_connect(nats.url)
    try:
        got: list[tuple[str, bytes]] = []
        await subscribe_raw(nc, "raw.>", lambda subject, data: got.append((subject, data)))
        await barrier(nc)
        await publisher.publish("raw.a.b", b"payload")
        await eventually_true(
            lambda: got == [("raw.a.b", b"payload")], what="the message arrived as (subject, data)", timeout_s=WAIT_S
        )
    finally:
        await publisher.close()
        await nc.close()
