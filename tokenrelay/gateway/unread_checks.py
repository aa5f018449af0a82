"""The unread check over NATS: cancel a stream admitted here that no reader came for (``gateway/unread.py``).

:class:`~tokenrelay.gateway.unread.UnreadWatch` says which streams are due and when; :class:`UnreadChecks` sleeps
until then, asks the streamers whether anyone reads each due stream, and stops those nobody does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError

from tokenrelay.gateway import ROLE
from tokenrelay.gateway.actions import StopResult
from tokenrelay.gateway.metrics import GatewayMetrics
from tokenrelay.gateway.unread import UnreadWatch
from tokenrelay.runtime import natsio
from tokenrelay.runtime.lifecycle import LifecycleEvent, log_event
from tokenrelay.runtime.tasks import TaskSet
from tokenrelay.wire.errors import TokenRelayError
from tokenrelay.wire.messages import CancelReason, FinishReason

log = logging.getLogger(__name__)

UNREAD_PROBE_TIMEOUT_S = 2.0
"""How long a stream past ``unread_grace_s`` waits for a streamer to say it has a reader: longer than the streamers'
own probe (a reader being served is the common case, and cancelling it by mistake would cut a user's text short;
a busy streamer answered NATS requests 0.4-0.8 s late at 1,000 streams)."""

UNREAD_RECHECK_TIMEOUT_S = 5.0
"""A stream no streamer claimed within :data:`UNREAD_PROBE_TIMEOUT_S` is asked about once more, waiting this long,
before it is cancelled: silence is also what a streamer too busy to answer in time gives (with 19,900 readers on one
streamer, 7,943 streams that had readers were cancelled after one 2 s question).  A stream nobody reads generates
that much longer, once."""

Stop = Callable[[str, CancelReason], Awaitable[StopResult]]
"""Stops a stream for a reason; answers its final state."""


class UnreadChecks:
    """Checks each stream admitted here once its grace period is over, unless it ended before.

    ``may_run`` says whether a stream may still be generating (queued here, or taken by a runner); ``stop`` halts
    one (reason ``disconnect``).
    """

    def __init__(
        self, watch: UnreadWatch, *, nc: NATS, metrics: GatewayMetrics, may_run: Callable[[str], bool], stop: Stop
    ) -> None:
        self._watch = watch
        self._nc = nc
        self._metrics = metrics
        self._may_run = may_run
        self._stop = stop
        self._wake = asyncio.Event()
        self._tasks = TaskSet()

    def admitted(self, stream_id: str) -> None:
        """Watch a stream admitted now."""
        self._watch.admitted(stream_id, time.monotonic())
        self._wake.set()

    def ended(self, stream_id: str) -> None:
        """The stream ended: nothing to check."""
        self._watch.ended(stream_id)

    async def run(self) -> None:
        """Check each stream when its grace period is over, until cancelled."""
        try:
            while True:
                wait_s = self._watch.next_due_in(time.monotonic())
                if wait_s is None:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
                for stream_id in self._watch.due(time.monotonic()):
                    if self._may_run(stream_id):
                        self._tasks.spawn(self._cancel_if_unread(stream_id), name=f"unread-{stream_id}")
        finally:
            self._tasks.cancel()

    async def _cancel_if_unread(self, stream_id: str) -> None:
        """Cancel a stream (reason ``disconnect``) unless a streamer has a reader of it, or had one lately."""
        try:
            for timeout_s in (UNREAD_PROBE_TIMEOUT_S, UNREAD_RECHECK_TIMEOUT_S):
                if await natsio.someone_reads(self._nc, stream_id, timeout_s=timeout_s):
                    return
                if not self._may_run(stream_id):
                    return  # it ended while the streamers were asked
        except NatsError as exc:  # we could not ask: leave it be rather than guess
            log.warning("stream %s: could not ask the streamers for readers: %s", stream_id, exc)
            return
        if not self._may_run(stream_id):
            return
        try:
            result = await self._stop(stream_id, CancelReason.DISCONNECT)
        except TokenRelayError as exc:
            log.warning("stream %s: could not cancel it after no reader came: %s", stream_id, exc)
            return
        if result.finish_reason is FinishReason.CANCELLED:  # not a stream that ended while the streamers were asked
            self._metrics.unread_cancels.inc()
            log_event(LifecycleEvent.ABANDONED, ROLE, stream_id, never_read=True, tokens=result.tokens)
