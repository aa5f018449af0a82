"""Reading one stream's past events from JetStream (late readers and resumes).

No consumer is created per reader: :func:`tokenrelay.natsio.direct_get` pages through the
stream's subject with batched direct gets.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator

from nats.aio.client import Client as NATS

from tokenrelay import codec, natsio, subjects
from tokenrelay.codec import CodecError
from tokenrelay.messages import StreamEvent

log = logging.getLogger(__name__)

HistoryError = natsio.DirectGetError


async def pages(
    nc: NATS, stream_id: str, *, batch: int = natsio.DEFAULT_DIRECT_GET_BATCH
) -> AsyncGenerator[list[StreamEvent]]:
    """The stored events of ``stream_id`` in publish order, ``batch`` messages a page; malformed ones skipped.

    Use under :func:`contextlib.aclosing` when you may stop early.
    """
    stored = natsio.direct_get_pages(nc, subjects.EVENTS_STREAM, subjects.events(stream_id), batch=batch)
    async with contextlib.aclosing(stored):
        async for page in stored:
            events: list[StreamEvent] = []
            for seq, data in page:
                try:
                    events.append(codec.decode_event(data))
                except CodecError as exc:
                    log.warning("skipping malformed stored event at seq %s: %s", seq, exc)
            yield events
