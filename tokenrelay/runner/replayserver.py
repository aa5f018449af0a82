"""Serving the history of this runner's streams from memory (see :mod:`tokenrelay.wire.replay`).

One subscription per stream held, on ``tokenrelay.stream.<id>.replay``: a streamer asks there
first, and gets "no responders" at once when no runner holds the stream any more (then it reads
JetStream).  A stream is held while it generates and ``linger_s`` after it ends, for at most
``linger_streams`` finished streams (the oldest go first), and never once it is older than
``max_age_s`` (the history TTL: what JetStream no longer has, the runner does not serve either).

A stream that moved here from a lost runner is answered "not held" from the start: its earlier events are in
JetStream, with the fence that voids what the lost runner published past it.  So is, from the moment it is found
out, a stream this runner was superseded on (:meth:`ReplayServer.drop`): what it holds may be void.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from tokenrelay.runtime import natsio
from tokenrelay.runtime.tasks import TaskSet
from tokenrelay.wire import codec, subjects
from tokenrelay.wire.codec import CodecError, UnknownMessageType
from tokenrelay.wire.messages import ReplayRequest
from tokenrelay.wire.replay import ReplayLog, not_held_page

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Held:
    log: ReplayLog
    sub: Subscription
    opened: float
    """When the runner took the stream (monotonic seconds)."""


class ReplayServer:
    """The replay logs this runner holds, and the subscriptions that answer for them."""

    def __init__(
        self,
        nc: NATS,
        *,
        max_bytes_per_stream: int,
        linger_s: float,
        linger_streams: int,
        max_age_s: float = math.inf,
        clock: Callable[[], float] = time.monotonic,
        unknown: Callable[[str], None],
    ) -> None:
        self._nc = nc
        self._unknown = unknown
        """Told the type of each request of a type this runner does not know (a newer streamer's): it is dropped."""
        self._max_bytes = max_bytes_per_stream
        self._linger_s = linger_s
        self._linger_streams = linger_streams
        self._max_age_s = max_age_s
        self._clock = clock
        self._logs: dict[str, _Held] = {}
        self._finished: OrderedDict[str, float] = OrderedDict()
        """Finished streams still held, oldest first, with when each is let go."""
        self._tasks = TaskSet()

    @property
    def enabled(self) -> bool:
        """Whether streams are held at all (``max_bytes_per_stream`` > 0)."""
        return self._max_bytes > 0

    async def open(self, stream_id: str, *, held: bool = True) -> ReplayLog | None:
        """Hold a new stream's events (subscribed before its first event is published); ``None`` when disabled,
        and when not ``held``: then requests for it are answered "not held" (a moved stream: read JetStream)."""
        if not self.enabled:
            return None
        replay_log = ReplayLog(max_bytes=self._max_bytes)
        sub = await self._nc.subscribe(subjects.replay(stream_id), cb=self._on_request)
        self._logs[stream_id] = _Held(replay_log, sub, opened=self._clock())
        if not held:
            replay_log.drop()
            return None
        return replay_log

    def drop(self, stream_id: str) -> None:
        """Give up the stream's events (it moved on from this runner): requests for it are answered "not held"."""
        held = self._logs.get(stream_id)
        if held is not None:
            held.log.drop()

    def finished(self, stream_id: str) -> None:
        """The stream ended: keep answering for ``linger_s``, then let it go."""
        held = self._logs.get(stream_id)
        if held is None:
            return
        self._finished[stream_id] = min(self._clock() + self._linger_s, held.opened + self._max_age_s)
        self.sweep()

    def sweep(self) -> None:
        """Let go of finished streams past their linger time or beyond ``linger_streams``."""
        now = self._clock()
        while self._finished:
            stream_id, until = next(iter(self._finished.items()))
            if until > now and len(self._finished) <= self._linger_streams:
                return  # the rest ended later (one older than max_age_s is refused by _expired until it goes)
            del self._finished[stream_id]
            self._release(stream_id)

    def _expired(self, stream_id: str) -> bool:
        until = self._finished.get(stream_id)
        return until is not None and until <= self._clock()

    async def close(self) -> None:
        """Stop answering for every stream."""
        for stream_id in list(self._logs):
            self._release(stream_id)
        self._finished.clear()
        await self._tasks.wait()

    def _release(self, stream_id: str) -> None:
        held = self._logs.pop(stream_id, None)
        if held is None:
            return
        self._tasks.spawn(natsio.unsubscribe_quietly(held.sub))

    async def _on_request(self, msg: Msg) -> None:
        if not msg.reply:
            return
        try:
            request = codec.decode_as(msg.data, ReplayRequest)
        except UnknownMessageType as exc:
            self._unknown(exc.tag)
            return
        except CodecError as exc:
            log.warning("dropping malformed replay request: %s", exc)
            return
        held = self._logs.get(request.stream_id)
        if held is None or msg.subject != subjects.replay(request.stream_id) or self._expired(request.stream_id):
            # Released between the request and now (or asked on another stream's subject): not ours to answer.
            page = not_held_page(request.stream_id)
        else:
            page = held.log.page(request.stream_id, request.from_seq, max_events=request.max_events)
        await msg.respond(page)
