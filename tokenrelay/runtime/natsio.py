"""Connecting to NATS and declaring the JetStream streams and KV bucket every role relies on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import replace
from typing import TypeVar

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, KeyValueConfig, ObjectStoreConfig, StorageType, StreamConfig
from nats.js.errors import APIError as JetStreamAPIError
from nats.js.errors import (
    KeyNotFoundError,
    NoStreamResponseError,
    NotFoundError,
    ServiceUnavailableError,
)
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from tokenrelay.runtime.config import HistoryConfig, StorageKind
from tokenrelay.runtime.natsauth import NatsConnectError, NatsSecurity, NatsSecurityError, refusal
from tokenrelay.runtime.payloads import PayloadStore
from tokenrelay.runtime.replicas import ReplicasUnknown, replicas_for
from tokenrelay.runtime.values import nats_servers
from tokenrelay.wire import codec, subjects
from tokenrelay.wire.errors import NotFound
from tokenrelay.wire.messages import StreamRecord

log = logging.getLogger(__name__)

T = TypeVar("T")

CONNECT_TIMEOUT_S = 5
RECONNECT_WAIT_S = 0.5
FEEDBACK_MAX_AGE_S = 0.0  # keep feedback until an operator deletes it
DIRECT_GET_TIMEOUT_S = 2.0
DIRECT_GET_ATTEMPTS = 3
"""A batch not answered in time is asked again on a fresh inbox with the timeout doubled (2 + 4 + 8 s in
all): a broker saturated for seconds slows a late reader down instead of failing it as ``unavailable``."""
DECLARE_TIMEOUT_S = 60.0
"""How long a role keeps trying to declare its JetStream objects while JetStream cannot answer (a leader election)."""
RETRY_FIRST_WAIT_S = 0.1
RETRY_MAX_WAIT_S = 0.5
"""A JetStream request refused while a leader is elected is asked again after 0.1 s, then twice as long each time up
to this: an election takes 3 to 5 s, and a request waiting on it should go through within half a second of its end."""
RECORD_TTL_FACTOR = 2
"""Stream records outlive their history, so a cursor into expired history answers resume_unavailable, not 404."""
DEFAULT_DIRECT_GET_BATCH = 256
PAYLOAD_TTL_S = 600.0
"""A request's content in the payload store outlives any wait for a runner (``--queue-timeout-s``); its reader
deletes it sooner (:mod:`tokenrelay.runtime.payloads`)."""
PAYLOAD_MAX_BYTES = 1 << 30
"""The payload store's size bound: past it, storing another request fails (``unavailable``) until objects expire."""
_STATUS_END_OF_BATCH = "204"
_STATUS_NOT_FOUND = "404"


REFUSED_CLOSE_TIMEOUT_S = 1.0
"""How long closing a connection the broker refused may take (a failed TLS handshake can leave it hanging)."""


async def unsubscribe_quietly(sub: Subscription) -> None:
    """Drop a subscription, ignoring a connection that is closing or gone (the server drops it with the connection)."""
    with contextlib.suppress(Exception):
        await sub.unsubscribe()


async def barrier(nc: NATS) -> None:
    """Return once the server has processed everything this connection sent before the call (a SUB just made).

    ``flush()`` alone is not that: nats-py (2.16) writes its PING straight to the transport, ahead of
    commands still waiting for the client's flusher task, so its PONG can come back before the server
    has read a SUB queued just before it (``tests/e2e/test_hub.py`` saw a subscription missing from the
    server once ``attach`` had returned).  The flusher is woken before the first PING goes out, so it
    hands every pending command to the transport before the first PONG can be read; the second PING is
    then written after them, and its PONG means the server has processed them.
    """
    await nc.flush()
    await nc.flush()


class DirectGetError(Exception):
    """Stored messages could not be read (the broker did not answer, or answered an error)."""


async def connect(url: str, *, name: str, security: NatsSecurity | None = None, client: type[NATS] = NATS) -> NATS:
    """Connect with reconnects that never give up: a restarting broker must not kill a role.

    Credentials and TLS come from ``security``, else from the ``TOKENRELAY_NATS_*`` environment
    (:mod:`tokenrelay.runtime.natsauth`).  An unreachable broker is retried until it answers, but a first connection
    that cannot succeed by waiting (bad settings, credentials refused, TLS failing) raises
    :class:`~tokenrelay.runtime.natsauth.NatsConnectError` at once, so a role never serves without NATS and never
    hangs silently on a typo; once connected, every failure is retried again.  ``client``: the client class
    (:class:`~tokenrelay.runtime.natsdirect.DirectClient` for a streamer's live events).
    """
    try:
        settings = security if security is not None else NatsSecurity.from_env(os.environ)
        options = settings.connect_options()
    except NatsSecurityError as exc:
        raise NatsConnectError(f"NATS settings: {exc}") from None
    nc = client()
    connected = False

    async def on_error(exc: Exception) -> None:
        reason = None if connected else refusal(exc)
        if reason is not None:  # raised inside nats-py's connect loop, this ends the attempt
            raise NatsConnectError(f"cannot connect to NATS at {url} as {settings.describe()}: {reason}")
        log.warning("nats error: %s", exc)

    async def on_disconnected() -> None:
        log.info("nats disconnected")

    async def on_reconnected() -> None:
        log.info("nats reconnected")

    try:
        await nc.connect(
            nats_servers(url),  # one server, or the servers of one cluster: any of them, and the others on failure
            name=name,
            connect_timeout=CONNECT_TIMEOUT_S,
            reconnect_time_wait=RECONNECT_WAIT_S,  # type: ignore[arg-type]  # annotated int, sleeps on any number
            max_reconnect_attempts=-1,
            allow_reconnect=True,
            error_cb=on_error,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
            **options,
        )
    except NatsConnectError:
        # After a failed TLS handshake asyncio may never report the transport closed: close it, wait briefly.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(REFUSED_CLOSE_TIMEOUT_S):
                await nc.close()
        raise
    connected = True
    return nc


def storage_type(kind: StorageKind) -> StorageType:
    """JetStream's storage type for a ``--history-storage`` kind."""
    return StorageType.FILE if kind is StorageKind.FILE else StorageType.MEMORY


async def ensure_events_stream(js: JetStreamContext, history: HistoryConfig) -> None:
    """Declare the stream that captures every stream's events for replay (idempotent)."""
    config = StreamConfig(
        name=subjects.EVENTS_STREAM,
        subjects=[subjects.EVENTS_WILDCARD],
        storage=storage_type(history.storage),
        max_age=history.ttl_s,
        max_bytes=history.max_bytes,
        discard=DiscardPolicy.OLD,
        allow_direct=True,
        num_replicas=history.replicas or 1,
    )
    await declaring(subjects.EVENTS_STREAM, lambda: _ensure_stream(js, config, history.replicas))


async def ensure_feedback_stream(js: JetStreamContext, *, replicas: int = 0) -> None:
    """Declare the file-backed stream that keeps feedback durably (idempotent; ``replicas`` 0: one copy when
    declared here, an existing stream left as it is)."""
    config = StreamConfig(
        name=subjects.FEEDBACK_STREAM,
        subjects=[subjects.FEEDBACK_WILDCARD],
        storage=StorageType.FILE,
        max_age=FEEDBACK_MAX_AGE_S,
        allow_direct=True,
        num_replicas=replicas or 1,
    )
    await declaring(subjects.FEEDBACK_STREAM, lambda: _ensure_stream(js, config, replicas))


async def retrying(what: str, attempt: Callable[[], Awaitable[T]], *, timeout_s: float) -> T:
    """``attempt()``, tried again while JetStream cannot answer yet (a cluster electing a leader, a replicated
    stream's group forming, a node lost under a leader); past ``timeout_s`` the last error is raised. ``what`` names
    the attempt in the log."""
    loop = asyncio.get_running_loop()
    deadline, wait_s = loop.time() + timeout_s, RETRY_FIRST_WAIT_S
    while True:
        try:
            return await attempt()
        except (NatsTimeout, NoRespondersError, NoStreamResponseError, ServiceUnavailableError) as exc:
            left_s = deadline - loop.time()
            if left_s <= 0:
                raise
            pause_s = min(wait_s, left_s)  # the last try comes at the deadline, not before it
            log.warning("%s: not yet (%r); trying again in %.2f s", what, exc, pause_s)
            await asyncio.sleep(pause_s)
            wait_s = min(wait_s * 2, RETRY_MAX_WAIT_S)


async def declaring(what: str, attempt: Callable[[], Awaitable[T]]) -> T:
    """``attempt()`` declaring or opening the JetStream object ``what``, tried for :data:`DECLARE_TIMEOUT_S`."""
    return await retrying(f"declaring JetStream {what}", attempt, timeout_s=DECLARE_TIMEOUT_S)


def replicated(nc: NATS, history: HistoryConfig) -> HistoryConfig:
    """``history`` with the replicas to declare with decided (``--replicas 0``: from the connected server's
    ``INFO``, :func:`~tokenrelay.runtime.replicas.replicas_for`); :class:`NatsConnectError` when they cannot be."""
    info = getattr(nc, "_server_info", None)  # nats-py keeps the server's INFO here; it has no public accessor
    try:
        return replace(history, replicas=replicas_for(history.replicas, info if isinstance(info, dict) else {}))
    except ReplicasUnknown as exc:
        raise NatsConnectError(str(exc)) from None


async def ensure_streams_bucket(js: JetStreamContext, history: HistoryConfig) -> KeyValue:
    """Open (declaring if needed) the KV bucket of stream records; they outlive history ``RECORD_TTL_FACTOR`` times."""
    return await declaring(subjects.STREAMS_BUCKET, lambda: _streams_bucket(js, history))


async def _streams_bucket(js: JetStreamContext, history: HistoryConfig) -> KeyValue:
    config = KeyValueConfig(
        bucket=subjects.STREAMS_BUCKET,
        history=1,
        ttl=history.ttl_s * RECORD_TTL_FACTOR,
        storage=storage_type(history.storage),
    )
    return await key_value_bucket(js, config, history.replicas)


async def key_value_bucket(js: JetStreamContext, config: KeyValueConfig, replicas: int) -> KeyValue:
    """The KV bucket ``config`` names: an existing one given ``replicas`` copies (0: left as it is), else declared
    with ``config`` in ``replicas`` copies (0: one)."""
    assert config.bucket is not None
    try:
        bucket = await js.key_value(config.bucket)
    except NotFoundError:
        return await js.create_key_value(replace(config, replicas=replicas or 1))
    await ensure_replicas(js, f"KV_{config.bucket}", replicas)
    return bucket


async def object_store(js: JetStreamContext, name: str, config: ObjectStoreConfig, replicas: int) -> ObjectStore:
    """The object store ``name``: an existing one given ``replicas`` copies (0: left as it is), else declared with
    ``config`` in ``replicas`` copies (0: one)."""
    try:
        store = await js.object_store(name)
    except NotFoundError:
        return await js.create_object_store(name, replace(config, replicas=replicas or 1))
    await ensure_replicas(js, f"OBJ_{name}", replicas)
    return store


async def ensure_jobs_bucket(js: JetStreamContext, history: HistoryConfig) -> KeyValue:
    """Open (declaring if needed) the KV bucket of running streams' jobs; kept as long as their history."""
    config = KeyValueConfig(
        bucket=subjects.JOBS_BUCKET, history=1, ttl=history.ttl_s, storage=storage_type(history.storage)
    )
    return await declaring(subjects.JOBS_BUCKET, lambda: key_value_bucket(js, config, history.replicas))


async def ensure_payload_store(js: JetStreamContext, history: HistoryConfig) -> PayloadStore:
    """Open (declaring if needed) the object store of requests larger than one NATS message, in the history's
    storage, each object kept :data:`PAYLOAD_TTL_S` at most, :data:`PAYLOAD_MAX_BYTES` in all."""
    return await declaring(subjects.PAYLOADS_BUCKET, lambda: _payload_store(js, history))


async def _payload_store(js: JetStreamContext, history: HistoryConfig) -> PayloadStore:
    config = ObjectStoreConfig(ttl=PAYLOAD_TTL_S, max_bytes=PAYLOAD_MAX_BYTES, storage=storage_type(history.storage))
    return PayloadStore(await object_store(js, subjects.PAYLOADS_BUCKET, config, history.replicas))


async def someone_reads(nc: NATS, stream_id: str, *, timeout_s: float) -> bool:
    """Whether a streamer says within ``timeout_s`` that it has a reader of the stream, or one whose grace period
    runs there (``tokenrelay.readers.<id>``, answered in ``streamer/abandon.py``).  Silence and "no responders" are
    no; any other NATS error is raised: the question could not be asked."""
    try:
        await nc.request(subjects.readers(stream_id), b"", timeout=timeout_s)
    except (NoRespondersError, NatsTimeout):
        return False
    return True


async def load_record(kv: KeyValue, stream_id: str) -> StreamRecord:
    """A stream's record from the KV bucket, or ``not_found`` (also for ids of the wrong shape)."""
    if not subjects.is_stream_id(stream_id):
        raise NotFound("no such stream")
    try:
        entry = await kv.get(stream_id)
    except KeyNotFoundError:
        raise NotFound("no such stream") from None
    if entry.value is None:
        raise NotFound("no such stream")
    return codec.decode_as(entry.value, StreamRecord)


async def _ensure_stream(js: JetStreamContext, config: StreamConfig, replicas: int) -> None:
    assert config.name is not None
    try:
        await js.stream_info(config.name)
    except NotFoundError:
        await js.add_stream(config)
    else:
        await ensure_replicas(js, config.name, replicas)


class ReplicasMismatch(NatsConnectError):
    """An existing JetStream stream keeps another number of copies than asked, and NATS refused to change it."""


async def ensure_replicas(js: JetStreamContext, stream: str, replicas: int) -> None:
    """Give an existing stream (a bucket's or store's too: ``KV_<name>``, ``OBJ_<name>``) ``replicas`` copies when it
    has another number: NATS moves it in place; where it cannot (fewer servers than copies), say so and stop.
    ``replicas`` 0 leaves it as it is."""
    if replicas <= 0:
        return
    info = await js.stream_info(stream)
    current = info.config.num_replicas or 1
    if current == replicas:
        return
    log.warning("JetStream stream %s has %d replicas; changing it to %d", stream, current, replicas)
    try:
        await js.update_stream(replace(info.config, num_replicas=replicas))
    except JetStreamAPIError as exc:
        raise ReplicasMismatch(
            f"JetStream stream {stream} has {current} replicas and cannot be given {replicas}: {exc.description}"
        ) from None
    await _until_current(js, stream, replicas)


async def _until_current(js: JetStreamContext, stream: str, replicas: int) -> None:
    """Wait until every copy of a stream just moved to ``replicas`` has caught up (its writes go through them all)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DECLARE_TIMEOUT_S
    while loop.time() < deadline:
        cluster = (await js.stream_info(stream)).cluster
        peers = (cluster.replicas or []) if cluster is not None else []
        if cluster is not None and cluster.leader and len(peers) == replicas - 1 and all(p.current for p in peers):
            return
        await asyncio.sleep(RETRY_FIRST_WAIT_S)
    log.warning("JetStream stream %s: its %d copies have not all caught up yet", stream, replicas)


async def direct_get(
    nc: NATS, stream: str, subject: str, *, from_seq: int = 1, batch: int = DEFAULT_DIRECT_GET_BATCH
) -> list[tuple[int, bytes]]:
    """Every stored message of ``subject`` in ``stream`` from sequence ``from_seq`` on, as (seq, data)."""
    found: list[tuple[int, bytes]] = []
    pages = direct_get_pages(nc, stream, subject, from_seq=from_seq, batch=batch)
    async with contextlib.aclosing(pages):
        async for page in pages:
            found.extend(page)
    return found


async def direct_get_pages(
    nc: NATS, stream: str, subject: str, *, from_seq: int = 1, batch: int = DEFAULT_DIRECT_GET_BATCH
) -> AsyncGenerator[list[tuple[int, bytes]]]:
    """The stored messages of ``subject`` in ``stream`` from ``from_seq`` on, one page of at most ``batch``.

    Uses batched direct gets (nats-server >= 2.11, ``allow_direct`` on the stream): no consumer
    is created; each request returns up to ``batch`` messages and an end-of-batch status, and
    the next page is asked for only when the caller wants it (so a consumer that waits between
    pages holds one page in memory, not the whole history).  Messages are collected by a
    callback, with one timeout per batch rather than one per message.
    """
    api = f"$JS.API.DIRECT.GET.{stream}"
    seq = from_seq
    while True:
        request = orjson.dumps({"seq": seq, "next_by_subj": subject, "batch": batch})
        found, last_seq, pending = await _direct_get_batch(nc, api, request)
        if found:
            yield found
        if last_seq is None or pending == 0:
            return
        seq = last_seq + 1


async def _direct_get_batch(nc: NATS, api: str, request: bytes) -> tuple[list[tuple[int, bytes]], int | None, int]:
    """One batch: (messages, last sequence, messages still pending after it); retried as :data:`DIRECT_GET_ATTEMPTS`
    says.  Each attempt listens on its own inbox, so a late answer to an earlier attempt cannot mix in."""
    timeout_s = DIRECT_GET_TIMEOUT_S
    for attempt in range(1, DIRECT_GET_ATTEMPTS + 1):
        batch = _Batch()
        sub = await nc.subscribe(nc.new_inbox(), cb=batch.on_msg)
        try:
            await nc.publish(api, request, reply=sub.subject)
            last_seq, pending = await asyncio.wait_for(batch.done, timeout_s)
            return batch.found, last_seq, pending
        except TimeoutError:
            log.warning("direct get not answered in %.0f s (attempt %d of %d)", timeout_s, attempt, DIRECT_GET_ATTEMPTS)
            timeout_s *= 2
        finally:
            await sub.unsubscribe()
    raise DirectGetError(f"direct get not answered after {DIRECT_GET_ATTEMPTS} attempts")


class _Batch:
    """One direct-get batch, collected by a subscription callback: its messages, then its end."""

    def __init__(self) -> None:
        self.found: list[tuple[int, bytes]] = []
        self.done: asyncio.Future[tuple[int | None, int]] = asyncio.get_running_loop().create_future()
        """Resolves to (the batch's last sequence, messages still pending after it)."""
        self._last_seq: int | None = None

    async def on_msg(self, msg: Msg) -> None:
        if self.done.done():
            return
        headers = msg.headers or {}
        status = headers.get("Status")
        if status == _STATUS_NOT_FOUND:
            self.done.set_result((self._last_seq, 0))
        elif status == _STATUS_END_OF_BATCH:
            self.done.set_result((self._last_seq, int(headers.get("Nats-Num-Pending", "0"))))
        elif status is not None:
            self.done.set_exception(DirectGetError(f"direct get failed: {status} {headers.get('Description', '')}"))
        else:
            self._last_seq = int(headers["Nats-Sequence"])
            self.found.append((self._last_seq, msg.data))
