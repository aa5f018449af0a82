"""``tokenrelay feedback export``: every stored feedback item as JSON Lines."""

from __future__ import annotations

import logging
from typing import BinaryIO

import orjson

from tokenrelay.runtime import natsio
from tokenrelay.wire import codec, subjects
from tokenrelay.wire.codec import CodecError
from tokenrelay.wire.messages import Feedback

log = logging.getLogger(__name__)


async def export(nats_url: str, out: BinaryIO) -> int:
    """Write each stored :class:`Feedback` as one JSON line to ``out``; return how many."""
    nc = await natsio.connect(nats_url, name="tokenrelay-feedback-export")
    try:
        await natsio.ensure_feedback_stream(nc.jetstream())
        stored = await natsio.direct_get(nc, subjects.FEEDBACK_STREAM, subjects.FEEDBACK_WILDCARD)
    finally:
        await nc.close()
    count = 0
    for seq, data in stored:
        try:
            item = codec.decode_as(data, Feedback)
        except CodecError as exc:
            log.warning("skipping malformed feedback at seq %d: %s", seq, exc)
            continue
        out.write(orjson.dumps(item, option=orjson.OPT_APPEND_NEWLINE))
        count += 1
    out.flush()
    return count
