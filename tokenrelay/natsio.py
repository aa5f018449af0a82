"""Connecting to NATS and declaring the JetStream streams and KV bucket every role relies on."""

from __future__ import annotations

import logging

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, KeyValueConfig, StorageType, StreamConfig
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from tokenrelay import subjects
from tokenrelay.config import HistoryConfig, StorageKind

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5
RECONNECT_WAIT_S = 0.5
FEEDBACK_MAX_AGE_S = 0.0  # keep feedback until an operator deletes it


async def connect(url: str, *, name: str) -> NATS:
    """Connect with reconnects that never give up: a restarting broker must not kill a role."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats error: %s", exc)

    async def on_disconnected() -> None:
        log.warning("nats disconnected")

    async def on_reconnected() -> None:
        log.info("nats reconnected")

    return await nats.connect(
        url,
        name=name,
        connect_timeout=CONNECT_TIMEOUT_S,
        reconnect_time_wait=RECONNECT_WAIT_S,
        max_reconnect_attempts=-1,
        allow_reconnect=True,
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
    )


def _storage(kind: StorageKind) -> StorageType:
    return StorageType.FILE if kind is StorageKind.FILE else StorageType.MEMORY


async def ensure_events_stream(js: JetStreamContext, history: HistoryConfig) -> None:
    """Declare the stream that captures every stream's events for replay (idempotent)."""
    config = StreamConfig(
        name=subjects.EVENTS_STREAM,
        subjects=[subjects.EVENTS_WILDCARD],
        storage=_storage(history.storage),
        max_age=history.ttl_s,
        max_bytes=history.max_bytes,
        discard=DiscardPolicy.OLD,
        allow_direct=True,
    )
    await _ensure_stream(js, config)


async def ensure_feedback_stream(js: JetStreamContext) -> None:
    """Declare the file-backed stream that keeps feedback durably (idempotent)."""
    config = StreamConfig(
        name=subjects.FEEDBACK_STREAM,
        subjects=[subjects.FEEDBACK_WILDCARD],
        storage=StorageType.FILE,
        max_age=FEEDBACK_MAX_AGE_S,
        allow_direct=True,
    )
    await _ensure_stream(js, config)


async def ensure_streams_bucket(js: JetStreamContext, history: HistoryConfig) -> KeyValue:
    """Open (declaring if needed) the KV bucket of stream records; records live as long as history."""
    try:
        return await js.key_value(subjects.STREAMS_BUCKET)
    except NotFoundError:
        pass
    return await js.create_key_value(
        KeyValueConfig(
            bucket=subjects.STREAMS_BUCKET,
            history=1,
            ttl=history.ttl_s,
            storage=_storage(history.storage),
        )
    )


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    assert config.name is not None
    try:
        await js.stream_info(config.name)
    except NotFoundError:
        await js.add_stream(config)
