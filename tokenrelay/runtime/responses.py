"""Stored responses (``POST /v1/responses`` with ``store``): their records and their events, kept for a while.

A stored response is two things, both kept ``--response-ttl-s`` in the history's storage:

* its **record** in the ``tokenrelay_responses`` KV bucket, written by the streamer that created it (what the
  request asked, whose it is, the conversation it continues); the key names its owner, so one tenant's listing
  and counting never touches another's;
* its **events** in the ``tokenrelay_response_events`` object store: every event of its stream, encoded one per
  line, written by the runner as the stream ends, before the terminal event is published (so whoever saw the end
  finds them). They outlive the stream's history, which is kept ``--history-ttl-s`` only.

This module moves bytes; what a record holds is the streamer's business (``streamer/compat/responses_http.py``).
"""

from __future__ import annotations

import asyncio
import logging

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, ObjectStoreConfig
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError, ObjectNotFoundError
from nats.js.errors import Error as JetStreamError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from tokenrelay.runtime import natsio
from tokenrelay.runtime.config import StorageKind
from tokenrelay.wire import codec, subjects
from tokenrelay.wire.codec import CodecError
from tokenrelay.wire.errors import Unavailable
from tokenrelay.wire.messages import StreamEvent

log = logging.getLogger(__name__)

MAX_STORED_EVENTS_BYTES = 64 * 1024 * 1024
"""A stream whose encoded events pass this many bytes is not kept (its response can be read while its history
lasts, not after)."""
LINE = b"\n"
COUNT_TIMEOUT_S = 5.0
"""How long a count waits for the next of the records it was told are there."""


class ResponseStore:
    """The two buckets of stored responses, as the roles use them; a broker failure is ``unavailable``."""

    def __init__(self, records: KeyValue, events: ObjectStore) -> None:
        self._records = records
        self._events = events

    async def put_record(self, key: str, data: bytes) -> None:
        try:
            await self._records.put(key, data)
        except (JetStreamError, TimeoutError) as exc:
            raise Unavailable(f"the response could not be stored: {exc!r}") from None

    async def get_record(self, key: str) -> bytes | None:
        """The record under ``key`` (``None``: none, deleted or expired)."""
        try:
            entry = await self._records.get(key)
        except (KeyNotFoundError, NotFoundError):
            return None
        except (JetStreamError, TimeoutError) as exc:
            raise Unavailable(f"the response could not be read: {exc!r}") from None
        return entry.value or None

    async def delete_record(self, key: str) -> None:
        try:
            await self._records.purge(key)
        except (JetStreamError, TimeoutError) as exc:
            raise Unavailable(f"the response could not be deleted: {exc!r}") from None

    async def count(self, prefix: str) -> int:
        """How many records have keys under ``prefix`` (``<token>.``...): read from the server for that prefix
        only, deleted ones left out.

        Counted to the number of messages the watch's consumer holds when asked, not to the watch's "that is all"
        marker: nats-py sends that marker at once when the server had sent every message but none was processed
        yet, and a count taken then missed records that were stored (a key's cap let one more in).
        """
        try:
            watcher = await self._records.watch(prefix + ">", meta_only=True)  # deletes too: one entry a message
            try:
                sub = watcher._sub
                if sub is None:  # nats-py sets it before watch() returns
                    raise Unavailable("the responses could not be counted: no watch subscription")
                info = await sub.consumer_info()
                expected = info.delivered.consumer_seq + info.num_pending
                found = seen = 0
                while seen < expected:
                    entry = await watcher.updates(timeout=COUNT_TIMEOUT_S)  # type: ignore[no-untyped-call]
                    if entry is None:  # the marker
                        continue
                    seen += 1
                    if entry.operation is None:  # a put (a delete or purge is marked)
                        found += 1
            finally:
                await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py leaves it unannotated
        except (JetStreamError, TimeoutError, NatsTimeoutError) as exc:
            raise Unavailable(f"the responses could not be counted: {exc!r}") from None
        return found

    async def get_events(self, stream_id: str) -> list[StreamEvent] | None:
        """A stream's events as the runner kept them (``None``: not kept, or expired)."""
        try:
            result = await self._events.get(_events_name(stream_id))
        except (ObjectNotFoundError, NotFoundError):
            return None
        except (JetStreamError, TimeoutError) as exc:
            raise Unavailable(f"the response's events could not be read: {exc!r}") from None
        try:
            decoded = [codec.decode(line) for line in bytes(result.data or b"").split(LINE) if line]
        except CodecError as exc:
            log.warning("stream %s: stored events unreadable: %s", stream_id, exc)
            return None
        return [event for event in decoded if isinstance(event, StreamEvent)]

    async def delete_events(self, stream_id: str) -> None:
        try:
            await self._events.delete(_events_name(stream_id))
        except (ObjectNotFoundError, NotFoundError):
            pass
        except (JetStreamError, TimeoutError) as exc:
            raise Unavailable(f"the response's events could not be deleted: {exc!r}") from None


def _events_name(stream_id: str) -> str:
    return f"events-{stream_id}"


async def ensure_response_store(
    js: JetStreamContext, *, ttl_s: float, storage: StorageKind, replicas: int = 0
) -> ResponseStore:
    """Open (declaring if needed) both buckets, each keeping what it holds ``ttl_s`` in ``replicas`` copies (0: one
    when declared here, existing ones left as they are)."""
    return await natsio.declaring(
        subjects.RESPONSES_BUCKET, lambda: _response_store(js, ttl_s=ttl_s, storage=storage, replicas=replicas)
    )


async def _response_store(js: JetStreamContext, *, ttl_s: float, storage: StorageKind, replicas: int) -> ResponseStore:
    kind = natsio.storage_type(storage)
    records_config = KeyValueConfig(bucket=subjects.RESPONSES_BUCKET, history=1, ttl=ttl_s, storage=kind)
    records = await natsio.key_value_bucket(js, records_config, replicas)
    events_config = ObjectStoreConfig(ttl=ttl_s, storage=kind)
    return ResponseStore(
        records, await natsio.object_store(js, subjects.RESPONSE_EVENTS_BUCKET, events_config, replicas)
    )


async def open_response_events(js: JetStreamContext) -> ObjectStore | None:
    """The events bucket, when a streamer has declared it (``None``: no stored response was ever asked for)."""
    try:
        return await js.object_store(subjects.RESPONSE_EVENTS_BUCKET)
    except (BucketNotFoundError, NotFoundError):
        return None


KEEP_TIMEOUT_S = 5.0
"""How long a runner waits to keep a stored response's events before it publishes the end anyway."""


class EventsKeeper:
    """The runner's side: keeps a stored response's events, opening the bucket on first use."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self._store: ObjectStore | None = None

    async def keep(self, stream_id: str, events: list[bytes]) -> bool:
        """Write ``events``; whether they were kept (a failure is logged: the stream still ends)."""
        try:
            async with asyncio.timeout(KEEP_TIMEOUT_S):
                if self._store is None:
                    self._store = await open_response_events(self._js)
                if self._store is None:
                    log.warning("stream %s: no response store to keep the response in", stream_id)
                    return False
                await self._store.put(_events_name(stream_id), LINE.join(events))
        except (JetStreamError, TimeoutError) as exc:
            log.warning("stream %s: the response's events could not be kept: %r", stream_id, exc)
            return False
        return True
