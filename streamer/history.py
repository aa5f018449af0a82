"""Reading one stream's past events from JetStream with batched direct gets.

No consumer is created: each request to ``$JS.API.DIRECT.GET.<stream>`` returns up to
``batch`` messages of the stream's subject followed by an end-of-batch status, and we page
on until nothing is pending.  This needs nats-server >= 2.11 and ``allow_direct`` on the
stream (see :func:`tokenrelay.natsio.ensure_events_stream`).
"""

from __future__ import annotations

import logging

import orjson
from nats.aio.client import Client as NATS

from tokenrelay import codec, subjects
from tokenrelay.codec import CodecError
from tokenrelay.messages import StreamEvent

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 2.0
STATUS_END_OF_BATCH = "204"
STATUS_NOT_FOUND = "404"


class HistoryError(Exception):
    """History could not be read (the broker did not answer, or answered an error)."""


async def fetch(nc: NATS, stream_id: str, *, from_seq: int = 1, batch: int = 256) -> list[StreamEvent]:
    """Every stored event of ``stream_id`` from JetStream sequence ``from_seq`` on, in order."""
    subject = subjects.events(stream_id)
    api = f"$JS.API.DIRECT.GET.{subjects.EVENTS_STREAM}"
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, max_msgs=0)
    events: list[StreamEvent] = []
    try:
        seq = from_seq
        while True:
            request = orjson.dumps({"seq": seq, "next_by_subj": subject, "batch": batch})
            await nc.publish(api, request, reply=inbox)
            last_seq, pending = await _read_batch(sub, events)
            if last_seq is None or pending == 0:
                return events
            seq = last_seq + 1
    finally:
        await sub.unsubscribe()


async def _read_batch(sub: object, events: list[StreamEvent]) -> tuple[int | None, int]:
    """Append one batch's events; return (last JetStream seq, messages still pending)."""
    last_seq: int | None = None
    while True:
        try:
            msg = await sub.next_msg(timeout=REQUEST_TIMEOUT_S)  # type: ignore[attr-defined]
        except TimeoutError as exc:
            raise HistoryError("history request timed out") from exc
        headers = msg.headers or {}
        status = headers.get("Status")
        if status == STATUS_NOT_FOUND:
            return last_seq, 0
        if status == STATUS_END_OF_BATCH:
            return last_seq, int(headers.get("Nats-Num-Pending", "0"))
        if status is not None:
            raise HistoryError(f"history request failed: {status} {headers.get('Description', '')}")
        last_seq = int(headers["Nats-Sequence"])
        try:
            events.append(codec.decode_event(msg.data))
        except CodecError as exc:
            log.warning("skipping malformed stored event at seq %s: %s", last_seq, exc)
