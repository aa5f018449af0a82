"""Reading one stream's past events from JetStream (late readers and resumes).

No consumer is created per reader: :func:`tokenrelay.natsio.direct_get` pages through the
stream's subject with batched direct gets.
"""

from __future__ import annotations

import logging

from nats.aio.client import Client as NATS

from tokenrelay import codec, natsio, subjects
from tokenrelay.codec import CodecError
from tokenrelay.messages import StreamEvent

log = logging.getLogger(__name__)

HistoryError = natsio.DirectGetError


async def fetch(nc: NATS, stream_id: str, *, batch: int = natsio.DEFAULT_DIRECT_GET_BATCH) -> list[StreamEvent]:
    """Every stored event of ``stream_id``, in publish order; malformed ones are skipped."""
    stored = await natsio.direct_get(nc, subjects.EVENTS_STREAM, subjects.events(stream_id), batch=batch)
    events: list[StreamEvent] = []
    for seq, data in stored:
        try:
            events.append(codec.decode_event(data))
        except CodecError as exc:
            log.warning("skipping malformed stored event at seq %s: %s", seq, exc)
    return events
