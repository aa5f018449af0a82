"""Cancel generations nobody reads any more, so the engine stops spending compute on them.

When the last reader of an unfinished stream leaves this streamer, a grace timer starts (one
per stream, not per reader).  A reader that comes back, here, cancels the timer.  When it
fires, the other streamers are asked whether any of them still has a reader of the stream
(``tokenrelay.readers.<id>``; only those with readers answer).  If none answers within
``readers_probe_timeout_s``, a cancel with reason ``disconnect`` goes to the gateways.

The gateways ask the same question of a stream ``--unread-grace-s`` after admitting it, to cancel
one no reader ever came for (``gateway/unread.py``).  A streamer whose grace timer runs for the
stream answers too: its reader may still come back, and this timer, not the gateway's, decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from tokenrelay.runtime import natsio
from tokenrelay.runtime.lifecycle import LifecycleEvent, log_event
from tokenrelay.runtime.tasks import TaskSet
from tokenrelay.streamer.metrics import StreamerMetrics
from tokenrelay.wire import codec, subjects
from tokenrelay.wire.messages import CancelReason, CancelReply, CancelRequest, FinishReason

log = logging.getLogger(__name__)

READERS_PROBE_TIMEOUT_S = 0.25
"""How long to wait for another streamer to say it still has a reader."""


class AbandonWatcher:
    """Grace timers for streams whose readers all left."""

    def __init__(
        self,
        nc: NATS,
        *,
        grace_s: float,
        cancel_timeout_s: float,
        metrics: StreamerMetrics,
        has_readers: Callable[[str], bool],
        readers_probe_timeout_s: float = READERS_PROBE_TIMEOUT_S,
    ) -> None:
        self._nc = nc
        self._grace_s = grace_s
        self._cancel_timeout_s = cancel_timeout_s
        self._probe_timeout_s = readers_probe_timeout_s
        self._metrics = metrics
        self._has_readers = has_readers
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks = TaskSet()
        self._sub: Subscription | None = None

    async def start(self) -> None:
        """Answer other streamers' "anyone reading?" probes."""
        self._sub = await self._nc.subscribe(subjects.READERS_WILDCARD, cb=self._on_probe)

    async def close(self) -> None:
        """Drop every timer and the probe subscription."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    def last_reader_left(self, stream_id: str, *, resumable: bool = True) -> None:
        """Start the grace period of an unfinished stream that has no reader here now.

        A reader that cannot come back (a compatible-API request: its client has no cursor)
        gets no grace: its stream is cancelled at once.  A grace of 0 turns all of this off.
        """
        if self._grace_s <= 0 or stream_id in self._timers:
            return
        loop = asyncio.get_running_loop()
        grace_s = self._grace_s if resumable else 0.0
        self._timers[stream_id] = loop.call_later(grace_s, self._expired, stream_id)

    def reader_joined(self, stream_id: str) -> None:
        """A reader is back: the stream is not abandoned."""
        timer = self._timers.pop(stream_id, None)
        if timer is not None:
            timer.cancel()

    def _expired(self, stream_id: str) -> None:
        self._timers.pop(stream_id, None)
        self._tasks.spawn(self._cancel_if_unread(stream_id))

    async def _cancel_if_unread(self, stream_id: str) -> None:
        if self._has_readers(stream_id):
            return
        if await natsio.someone_reads(self._nc, stream_id, timeout_s=self._probe_timeout_s):
            return  # another streamer still has a reader (or its grace period)
        request = CancelRequest(stream_id=stream_id, reason=CancelReason.DISCONNECT)
        try:
            msg = await self._nc.request(subjects.CANCELS, codec.encode(request), timeout=self._cancel_timeout_s)
            reply = codec.decode_as(msg.data, CancelReply)
        except Exception as exc:
            log.warning("stream %s: disconnect cancel failed: %s", stream_id, exc)
            return
        if reply.finish_reason is FinishReason.CANCELLED:
            self._metrics.disconnect_cancels.inc()
        log_event(
            LifecycleEvent.ABANDONED, "streamer", stream_id,
            finish_reason=str(reply.finish_reason) if reply.finish_reason is not None else None, tokens=reply.tokens,
        )  # fmt: skip

    async def _on_probe(self, msg: Msg) -> None:
        stream_id = msg.subject.rsplit(".", 1)[-1]
        if msg.reply and (self._has_readers(stream_id) or stream_id in self._timers):
            await msg.respond(b"1")
