"""Batched direct gets from history: a batch the broker does not answer in time is asked again."""

from __future__ import annotations

import nats as nats_client
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from tokenrelay.runtime import natsio
from tokenrelay.testing.procs import NatsServer


async def _responder(nats_url: str, stream: str, *, ignore_first: int) -> tuple[NATS, list[bytes]]:
    """A stand-in for the broker's direct-get API that leaves the first ``ignore_first`` requests unanswered."""
    nc = await nats_client.connect(nats_url)
    requests: list[bytes] = []

    async def answer(msg: Msg) -> None:
        requests.append(msg.data)
        if len(requests) <= ignore_first:
            return
        await nc.publish(msg.reply, b"one", headers={"Nats-Sequence": "7"})
        await nc.publish(msg.reply, b"", headers={"Status": "204", "Nats-Num-Pending": "0"})

    await nc.subscribe(f"$JS.API.DIRECT.GET.{stream}", cb=answer)
    await nc.flush()
    return nc, requests


async def test_a_batch_left_unanswered_is_asked_again_and_its_answer_is_read(
    nats: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(natsio, "DIRECT_GET_TIMEOUT_S", 0.2)
    responder, requests = await _responder(nats.url, "RETRY_ONCE", ignore_first=1)
    nc = await nats_client.connect(nats.url)
    try:
        assert await natsio.direct_get(nc, "RETRY_ONCE", "some.subject") == [(7, b"one")]
        assert len(requests) == 2 and requests[0] == requests[1]
    finally:
        await nc.close()
        await responder.close()


async def test_a_broker_silent_for_every_attempt_is_a_direct_get_error(
    nats: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(natsio, "DIRECT_GET_TIMEOUT_S", 0.05)
    responder, requests = await _responder(nats.url, "NEVER", ignore_first=natsio.DIRECT_GET_ATTEMPTS)
    nc = await nats_client.connect(nats.url)
    try:
        with pytest.raises(natsio.DirectGetError, match=f"after {natsio.DIRECT_GET_ATTEMPTS} attempts"):
            await natsio.direct_get(nc, "NEVER", "some.subject")
        assert len(requests) == natsio.DIRECT_GET_ATTEMPTS
    finally:
        await nc.close()
        await responder.close()
