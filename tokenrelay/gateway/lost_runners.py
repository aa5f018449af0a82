"""Runners whose heartbeats stopped: ping each; move the streams of one that is gone, or end them ``runner_lost``.

What is decided here is decided by the dispatcher (``gateway/dispatch.py``, its registry in ``gateway/liveness.py``):
which runners are silent, whether one that did not answer its ping is lost, and which streams it still owned.
:class:`RunnerWatch` is its shell over NATS: heartbeats in, pings out, each lost stream handed to the mover
(``gateway/migration.py``), and the ones that cannot move recorded and published as ``runner_lost``.  A runner heard
from again after it was declared lost (a false loss) is counted, and the streams it still lists that moved to another
owner are cancelled on it.
"""

from __future__ import annotations

import asyncio
import logging
import time

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import Error as JetStreamError
from nats.js.kv import KeyValue

from tokenrelay.gateway import ROLE, records
from tokenrelay.gateway.dispatch import Dispatcher
from tokenrelay.gateway.metrics import GatewayMetrics
from tokenrelay.gateway.migration import MoveOutcome, StreamMover
from tokenrelay.gateway.quotas import TenantQuotas
from tokenrelay.runtime.lifecycle import LifecycleEvent, log_event
from tokenrelay.runtime.tasks import TaskSet
from tokenrelay.wire import codec, subjects
from tokenrelay.wire.codec import CodecError, UnknownMessageType
from tokenrelay.wire.errors import ErrorCode, TokenRelayError
from tokenrelay.wire.messages import CancelReason, CancelRequest, JobRequest, RunnerHeartbeat

log = logging.getLogger(__name__)

RUNNER_CHECKS_PER_STALE_PERIOD = 4
"""Silent runners are looked for this many times per ``stale_after_s``."""
MAX_CONCURRENT_MOVES = 32
"""A lost runner's streams moved at once (each a few NATS round trips)."""
SUPERSEDED_CANCEL_TIMEOUT_S = 1.0
"""How long the cancel of a moved stream on the superseded runner that woke up waits for its answer (it is sent again
with that runner's next heartbeat if the runner still lists the stream)."""


class RunnerWatch:
    """Feeds the dispatcher the runners' heartbeats, pings the silent ones, and fails the streams of lost ones.

    ``stale_after_s``: a runner silent this long is pinged, and declared lost if it does not answer within as long.
    """

    def __init__(
        self,
        *,
        nc: NATS,
        kv: KeyValue,
        dispatch: Dispatcher,
        metrics: GatewayMetrics,
        quotas: TenantQuotas,
        stale_after_s: float,
        mover: StreamMover | None = None,
    ) -> None:
        self._nc = nc
        self._mover = mover
        """Moves a lost runner's streams to other runners (``None``: they end ``runner_lost``)."""
        self._kv = kv
        self._dispatch = dispatch
        self._metrics = metrics
        self._quotas = quotas
        self._stale_after_s = stale_after_s
        self._tasks = TaskSet()

    def keep(self, job: JobRequest) -> None:
        """Keep a dispatched stream's job for whoever moves the stream should its runner be lost."""
        if self._mover is not None:
            self._mover.keep(job)

    def live(self) -> list[RunnerHeartbeat]:
        """Runners heard from within ``stale_after_s``."""
        return self._dispatch.live_runners(time.monotonic())

    async def on_heartbeat(self, msg: Msg) -> None:
        """A runner's heartbeat (``tokenrelay.runner.heartbeat``)."""
        try:
            beat = codec.decode_as(msg.data, RunnerHeartbeat)
        except UnknownMessageType as exc:
            self._metrics.unknown_message(exc.tag)
            return
        except CodecError:
            return
        heard = self._dispatch.heartbeat(beat, time.monotonic())
        if heard.returned:
            self._metrics.runners_returned.inc()
            log.warning("runner %s, declared lost, is heard from again", beat.runner_id)
        for stream_id in heard.superseded:
            self._tasks.spawn(self._cancel_superseded(beat.runner_id, stream_id), name=f"supersede-{stream_id}")
        self._metrics.runners_available.set(len(self.live()))

    async def run(self) -> None:
        """Check every runner that stopped heartbeating; turn the streams of one that is gone into ``runner_lost``."""
        try:
            while True:
                await asyncio.sleep(self._stale_after_s / RUNNER_CHECKS_PER_STALE_PERIOD)
                for runner_id in self._dispatch.runners_to_check(time.monotonic()):
                    self._tasks.spawn(self._check(runner_id), name=f"check-{runner_id}")
                self._metrics.runners_available.set(len(self.live()))
        finally:
            self._tasks.cancel()
            if self._mover is not None:
                self._mover.close()

    async def _check(self, runner_id: str) -> None:
        """Ask a silent runner whether it is alive; declare it lost only if it is not.

        Heartbeats can be late without the runner being gone: a runner whose event loop is busy
        (10,000 streams and a garbage collection on two shared cores) sent them 2-3.3 s apart in a
        measured run, against 3 s of ``runner_stale_after_s``, and once every one of its 3,054
        healthy streams was ended ``runner_lost`` while it went on generating them.  So a silent
        runner is asked directly, and given another ``runner_stale_after_s`` to answer.  A runner
        that is really gone costs no more: with no process subscribed, NATS answers "no responders"
        at once.
        """
        try:
            try:
                beat = await self._ping(runner_id)
            except NatsError as exc:  # we could not ask (our own connection): ask again at the next check
                log.warning("could not ping runner %s: %s", runner_id, exc)
                return
            lost = self._dispatch.runner_silent(runner_id, time.monotonic()) if beat is None else None
            if lost is None:  # it answered, or a heartbeat came while we asked
                self._metrics.runner_checks.labels(outcome="answered").inc()
                return
            self._metrics.runner_checks.labels(outcome="lost").inc()
            log.warning("runner %s lost with %d stream(s)", runner_id, len(lost.stream_ids))
            room = asyncio.Semaphore(MAX_CONCURRENT_MOVES)
            await asyncio.gather(*(self._lost_stream(stream_id, runner_id, room) for stream_id in lost.stream_ids))
            self._metrics.runners_available.set(len(self.live()))
        finally:
            self._dispatch.runner_checked(runner_id)

    async def _ping(self, runner_id: str) -> RunnerHeartbeat | None:
        """The runner's answer to its ping within ``stale_after_s`` (fed as a heartbeat), or ``None``."""
        try:
            msg = await self._nc.request(subjects.runner_ping(runner_id), b"", timeout=self._stale_after_s)
            beat = codec.decode_as(msg.data, RunnerHeartbeat)
        except (NoRespondersError, NatsTimeout, CodecError):
            return None
        self._dispatch.heartbeat(beat, time.monotonic())
        log.warning("runner %s was silent for %.1f s but answered its ping", runner_id, self._stale_after_s)
        return beat

    async def _lost_stream(self, stream_id: str, runner_id: str, room: asyncio.Semaphore) -> None:
        """Move one stream of the lost runner, or end it ``runner_lost`` when it cannot move."""
        async with room:
            outcome = MoveOutcome.LOST
            if self._mover is not None:
                try:
                    outcome = await self._mover.move(stream_id, runner_id)
                except (NatsError, JetStreamError, TokenRelayError, CodecError) as exc:
                    log.warning("stream %s: could not move it: %r", stream_id, exc)
            self._metrics.moves.labels(outcome=str(outcome)).inc()
            if outcome is not MoveOutcome.LOST:
                return
            try:
                await self._fail_lost_stream(stream_id)
            except (NatsError, JetStreamError, TokenRelayError) as exc:
                log.warning("stream %s: could not mark it lost: %s", stream_id, exc)

    async def _cancel_superseded(self, runner_id: str, stream_id: str) -> None:
        """Halt a stream on the runner it moved away from (whatever it publishes is void anyway: this saves its
        engine's work)."""
        request = codec.encode(CancelRequest(stream_id=stream_id, reason=CancelReason.RUNNER_LOST))
        try:
            await self._nc.request(subjects.runner_cancel(runner_id), request, timeout=SUPERSEDED_CANCEL_TIMEOUT_S)
        except NatsError as exc:
            log.info("stream %s: the superseded runner %s did not confirm its cancel: %r", stream_id, runner_id, exc)

    async def _fail_lost_stream(self, stream_id: str) -> None:
        """End an unfinished stream with an out-of-band ``runner_lost`` error (one gateway wins the CAS)."""
        record = await records.fail_lost(self._nc, self._kv, stream_id)
        if record is None:
            return
        self._quotas.stream_ended(stream_id)
        self._metrics.errors.labels(code=str(ErrorCode.RUNNER_LOST)).inc()
        self._metrics.cancellations.labels(reason=str(CancelReason.RUNNER_LOST)).inc()
        log_event(LifecycleEvent.RUNNER_LOST, ROLE, stream_id, runner_id=record.runner_id, tokens=record.tokens)
