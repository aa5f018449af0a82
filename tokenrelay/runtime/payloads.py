"""Requests larger than one NATS message: their messages (or raw prompt) travel in a JetStream object store.

NATS carries at most the server's ``max_payload`` bytes in one message (1 MiB unless configured), and a request
with images is larger.  A job (gateway -> runner) or a start request (streamer -> gateway) whose encoding does not
fit is sent with its messages left out and ``payload`` naming an object of the ``tokenrelay_payloads`` bucket that
holds the whole encoded message; the receiver takes the messages from it (:func:`unpack`).  Everything else (the
owner, the model, the limits) is read from the message itself, never from the object.

The object is deleted by its reader once it is no longer needed: a start request's by the gateway that read it, a
job's by the runner once the stream finished.  What nobody deletes (a stream that never reached a runner, a process
that died) expires after :data:`~tokenrelay.runtime.natsio.PAYLOAD_TTL_S`.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import replace
from typing import TypeVar

from nats.js.errors import Error as JetStreamError
from nats.js.errors import NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from tokenrelay.wire import codec
from tokenrelay.wire.codec import CodecError
from tokenrelay.wire.errors import Unavailable
from tokenrelay.wire.messages import JobRequest, StartRequest

log = logging.getLogger(__name__)

Carried = TypeVar("Carried", JobRequest, StartRequest)
"""A message whose messages may travel in the payload store."""


class PayloadUnavailable(Unavailable):
    """A request's content could not be stored or read (expired, deleted, the store full, or the broker failed);
    ``unavailable`` to a client."""


def fits(message_bytes: int, *, max_payload_bytes: int, headroom_bytes: int = 0) -> bool:
    """Whether a message of ``message_bytes`` encoded bytes fits in one NATS message of at most
    ``max_payload_bytes``, ``headroom_bytes`` of them kept for what a sender adds later."""
    return message_bytes + headroom_bytes <= max_payload_bytes


def start_payload_name() -> str:
    """A fresh object name for a start request's messages (it has no stream id yet)."""
    return f"start-{secrets.token_hex(16)}"


def job_payload_name(stream_id: str) -> str:
    """The object name of a job's messages."""
    return f"job-{stream_id}"


class PayloadStore:
    """The ``tokenrelay_payloads`` object store, as the roles use it."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    async def put(self, name: str, data: bytes) -> None:
        """Store ``data`` as the object ``name``, or :class:`PayloadUnavailable`."""
        try:
            await self._store.put(name, data)
        except (JetStreamError, TimeoutError) as exc:
            raise PayloadUnavailable(f"the request's content could not be stored: {exc!r}") from None

    async def get(self, name: str) -> bytes:
        """The object ``name``, or :class:`PayloadUnavailable`."""
        try:
            result = await self._store.get(name)
        except (ObjectNotFoundError, NotFoundError):
            raise PayloadUnavailable(f"the request's content ({name}) is no longer stored") from None
        except (JetStreamError, TimeoutError) as exc:
            raise PayloadUnavailable(f"the request's content ({name}) could not be read: {exc!r}") from None
        return bytes(result.data or b"")

    async def delete(self, name: str) -> None:
        """Delete the object ``name``; one already gone, or a failure, is left to the bucket's TTL (logged)."""
        try:
            await self._store.delete(name)
        except (ObjectNotFoundError, NotFoundError):
            pass
        except (JetStreamError, TimeoutError) as exc:
            log.warning("could not delete payload %s (it expires with the bucket's TTL): %r", name, exc)


async def carry(
    message: Carried, store: PayloadStore | None, *, name: str, max_payload_bytes: int, headroom_bytes: int = 0
) -> Carried:
    """``message`` as it can travel: itself when it fits in ``max_payload_bytes`` (see :func:`fits`), else with its
    messages in the object ``name`` of ``store`` (not done without a store: the caller's size check refuses it)."""
    data = codec.encode(message)
    if store is None or fits(len(data), max_payload_bytes=max_payload_bytes, headroom_bytes=headroom_bytes):
        return message
    await store.put(name, data)
    return replace(message, messages=(), prompt=None, payload=name)


async def carry_job(job: JobRequest, store: PayloadStore | None, *, max_payload_bytes: int) -> JobRequest:
    """:func:`carry` for a job offered to the runners, its object named after its stream; ``max_payload_bytes``:
    what an offer may hold (the broker's limit less what the offer adds)."""
    return await carry(job, store, name=job_payload_name(job.stream_id), max_payload_bytes=max_payload_bytes)


async def unpack(message: Carried, store: PayloadStore | None) -> Carried:
    """``message`` with its messages, taken from the object its ``payload`` names (itself when it names none);
    :class:`PayloadUnavailable` when the object cannot be read or does not hold such a message."""
    if message.payload is None:
        return message
    if store is None:
        raise PayloadUnavailable("the request's content is in the payload store, which this process has not opened")
    data = await store.get(message.payload)
    try:
        stored = codec.decode_as(data, type(message))
    except CodecError as exc:
        raise PayloadUnavailable(f"the request's content ({message.payload}) is malformed: {exc}") from None
    return replace(message, messages=stored.messages, prompt=stored.prompt, payload=None)
