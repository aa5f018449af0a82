"""A late or resuming reader's catch-up: its stream's past read from history and merged with its live events.

A reader subscribes first, then reads what was published before (:mod:`~tokenrelay.streamer.history`: from the
stream's runner, else JetStream), page by page at the pace its client reads; the reader's merge
(:mod:`~tokenrelay.streamer.replay`) puts the two in order.  History its runner served is complete.  History
from JetStream may lack an event published a moment before the subscription, so the reader reads it again
once that moment has passed (:meth:`CatchUp.settle`), or at once when a live event shows a gap.  A reader
whose first events came whole from the streamer's memory starts live and reads history only for a gap.
A gap that history still cannot fill means the history is gone: the reader fails with ``resume_unavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine

from nats.aio.client import Client as NATS

from tokenrelay.runtime.config import DEFAULT_HISTORY_BATCH_MESSAGES
from tokenrelay.streamer import history
from tokenrelay.streamer.hub import Clock
from tokenrelay.streamer.metrics import StreamerMetrics
from tokenrelay.streamer.reader import Reader
from tokenrelay.streamer.reader_state import ReaderState
from tokenrelay.wire.errors import ErrorCode
from tokenrelay.wire.messages import ReceivedEvent, StreamState

GAP_RETRY_DELAYS_S = (0.002, 0.01, 0.05, 0.25)
"""Live events held behind a gap wait for history to store what was published just before the reader
subscribed: history is read again after each of these delays (0.31 s in all), then the gap is history
that is gone.  JetStream stores a message a moment after it is published (well under a millisecond when
idle), so the first retry usually fills it; few retries, because each read makes the broker walk the
stream's interleaved messages from the reader's stream's first one (it was nine reads at 1, 2, 4, … ms,
and at 1,000 streams the broker spent 167 µs of CPU per token)."""
START_WAIT_S = 1.0
"""How long a reader of a new stream waits for the stream's first event to come live before it reads history
(:meth:`CatchUp._started_live`).  Only readers of new streams wait; a first event that is not ``seq`` 0 ends the
wait at once."""
START_WAIT_FRESH_S = 10.0
"""A running stream admitted at most this long ago (its record's ``created``, whole seconds on the admitting
gateway's clock) counts as new: its reader waits for its first event as a queued stream's does."""
SharedPage = Callable[[Reader, list[ReceivedEvent], int], None]
"""Told of each page of history a reader read, with its encoded bytes."""
HISTORY_SETTLE_S = 0.05
"""After this long, every event published before a reader subscribed is in JetStream."""


class Catching:
    """One reader's catch-up: a task now, a task once a gap shows, or none; :meth:`cancel` stops it either way."""

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self._cancelled = False

    def run(self, work: Coroutine[None, None, None]) -> None:
        """Start ``work`` (once; not after :meth:`cancel`)."""
        if self._cancelled or self._task is not None:
            work.close()
            return
        self._task = asyncio.create_task(work)

    def cancel(self) -> None:
        self._cancelled = True
        if self._task is not None:
            self._task.cancel()


class CatchUp:
    """Catches this streamer's readers up from history while their writers send.

    ``live_outages``: the live connection's outages so far, or ``None`` when it cannot promise every event (the
    hub's :meth:`~tokenrelay.streamer.hub.Hub.live_outages`; the default says ``None``: every reader reads history).
    ``unseen``: whether no ``start`` of a stream admitted at ``created`` went by here although it would have (the
    hub's :meth:`~tokenrelay.streamer.hub.Hub.unseen`; default: it cannot tell, no reader waits).
    ``start_wait_s``: how long a reader of a new stream waits for its first live event (0: it does not);
    ``wall_clock``: what a record's ``created`` is compared with.
    ``shared``: told of every page read (the hub's :meth:`~tokenrelay.streamer.hub.Hub.history_read`: the
    stream's shared history keeps it for later readers).  ``batch_messages``: events a history page holds.
    ``settle_s``: how long after subscribing everything published before is stored in JetStream
    (:meth:`settle`).  ``gap_retry_delays_s``: the pauses between reads of a gap before it counts as history
    that is gone.
    """

    def __init__(
        self,
        nc: NATS,
        *,
        clock: Clock,
        metrics: StreamerMetrics,
        shared: SharedPage | None = None,
        live_outages: Callable[[], int | None] = lambda: None,
        unseen: Callable[[str, int | None], bool] = lambda stream_id, created: False,
        start_wait_s: float = START_WAIT_S,
        wall_clock: Callable[[], float] = time.time,
        batch_messages: int = DEFAULT_HISTORY_BATCH_MESSAGES,
        settle_s: float = HISTORY_SETTLE_S,
        gap_retry_delays_s: tuple[float, ...] = GAP_RETRY_DELAYS_S,
    ) -> None:
        self._nc = nc
        self._clock = clock
        self._metrics = metrics
        self._shared: SharedPage = shared or (lambda reader, page, size: None)
        self._live_outages = live_outages
        self._unseen = unseen
        self._start_wait_s = start_wait_s
        self._wall = wall_clock
        self._batch_messages = batch_messages
        self._settle_s = settle_s
        self._gap_retry_delays_s = gap_retry_delays_s

    def start(self, reader: Reader, state: StreamState, *, created: int | None = None) -> Catching:
        """Catch ``reader`` up beside its writer; ``state``: its stream's, when the reader came; ``created``: when the
        stream was admitted (its record's, wall clock), when the record was read.

        Called as soon as the reader joined the hub: its state then says whether its first events came whole
        from memory (it is live already) or it needs its history.  A live reader gets no task until a live event
        shows a gap (most never do: a waiting task is ~1.1 KiB per reader).
        """
        catching = Catching()
        if reader.state is not ReaderState.LIVE:
            # Asked now, as it joined: once its stream's events reach it live, the hub has seen its start too.
            new = reader.live_events > 0 or self._unseen(reader.stream_id, created)
            catching.run(self._catch_up_and_settle(reader, state, created, new=new))
        elif reader.gap.is_set():
            catching.run(self._fill_gap(reader))
        else:
            reader.on_gap = lambda: catching.run(self._fill_gap(reader))
        return catching

    async def _fill_gap(self, reader: Reader) -> None:
        """A reader whose first events were whole from memory: history is read for the gap a live event showed."""
        await self.catch_up(reader)
        reader.caught_up()

    async def _catch_up_and_settle(
        self, reader: Reader, state: StreamState, created: int | None, *, new: bool = False
    ) -> None:
        """History its runner served is complete (everything after it reaches the subscription live): no settling.

        ``new``: its stream's ``start`` had not gone by here when it joined, or its events already reach it live.
        """
        if new and await self._started_live(reader, state, created):
            self._metrics.history_reads_skipped.inc()
            reader.caught_up()
            return
        if await self.catch_up(reader) is history.Source.JETSTREAM:
            await self.settle(reader, state)
        reader.caught_up()

    async def _started_live(self, reader: Reader, state: StreamState, created: int | None) -> bool:
        """Whether a new stream's events came live from its first on (``seq`` 0): then it has no history to read.

        A reader of a stream whose record says queued, or running and admitted within ``START_WAIT_FRESH_S``, usually
        came before the stream's ``start`` was published or before it reached this streamer (under a burst of
        starts, the runner's record write overtakes the event): it waits up to ``start_wait_s`` for its first live
        event (only when its stream's ``start`` had not gone by here as it joined: a stream that started and ended
        before would send nothing more).  If that is ``seq`` 0, with no outage of the live connection meanwhile,
        every event reaches it live and its history read (a request its runner answers, or JetStream's, then the
        settling re-read) is skipped.
        Any other first event shows a gap, which ends the wait at once; so does a reader that brings a cursor or
        got events from memory already (it reads history as before).
        """
        if (
            self._start_wait_s <= 0
            or not self._fresh(state, created)
            or reader.replay.resume_offset is not None
            or reader.prefilled
        ):
            return False
        outages = self._live_outages()
        if outages is None:
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader.came_live.wait(), self._start_wait_s)
        in_order = reader.live_events > 0 and not reader.replay.waiting_on_gap
        return in_order and self._live_outages() == outages

    def _fresh(self, state: StreamState, created: int | None) -> bool:
        """Queued, or running and admitted moments ago (an older running stream's reader reads history at once)."""
        if state is StreamState.QUEUED:
            return True
        return state is StreamState.RUNNING and created is not None and self._wall() - created <= START_WAIT_FRESH_S

    async def read(self, reader: Reader) -> history.Source | None:
        """Feed the reader its stream's past events (a page per write); where they came from, or ``None`` (it ended).

        Paced by the client: before each event, wait while half the reader's buffer limit is
        unsent, so a late reader of a long stream holds one page of history, not all of it, and
        is never closed as a slow consumer just because history is faster than live tokens.
        """
        read = history.HistoryRead(
            self._nc,
            reader.stream_id,
            from_seq=reader.replay.next_seq,
            batch=self._batch_messages,
            unknown=self._metrics.unknown_event,
        )
        try:
            async with contextlib.aclosing(read.pages()) as pages:
                async for page in pages:
                    self._shared(reader, page, read.page_bytes)
                    for event in page:
                        await reader.room()
                        if reader.ended:
                            reader.ready()  # its terminal frame goes out
                            return None
                        reader.deliver(event, self._clock(), notify=False)
                    reader.ready()  # the page goes out as one write
        except history.HistoryError as exc:
            reader.fail(str(ErrorCode.UNAVAILABLE), str(exc), self._clock())
            return None
        except asyncio.CancelledError:
            # A reader whose page carried its terminal event is done: its handler cancels this read while it asks
            # for one more page.  What it read was served all the same.
            if read.source is not None:
                self._count_fetch(read.source)
            raise
        assert read.source is not None
        self._count_fetch(read.source)
        return read.source

    def _count_fetch(self, source: history.Source) -> None:
        self._metrics.history_fetches.labels(source=str(source)).inc()

    def _history_gone(self, reader: Reader) -> None:
        reader.fail(str(ErrorCode.RESUME_UNAVAILABLE), "the stream's history is no longer available", self._clock())

    async def catch_up(self, reader: Reader) -> history.Source | None:
        """Feed the reader what was published before it subscribed, and prove there is no gap.

        Returns where the last read came from, or ``None`` when the reader ended.
        """
        retries = iter(self._gap_retry_delays_s)
        while (source := await self.read(reader)) is not None:
            if reader.ended or not reader.replay.waiting_on_gap:
                return source
            delay_s = next(retries, None)
            if delay_s is None:
                self._history_gone(reader)
                return None
            await asyncio.sleep(delay_s)
        return None

    async def settle(self, reader: Reader, state: StreamState) -> None:
        """Read history once more shortly after subscribing, unless live events already reached the reader in order.

        JetStream stores a message a moment after it is published.  An event published just before
        this reader's subscription can be missing from the first history read *and* never arrive live;
        if it was the stream's last event the reader would wait forever.  By ``settle_s`` after
        subscribing, everything published before the subscription is stored.  A live event held behind
        a gap ends the wait at once: the gap is read again (with :meth:`catch_up`'s retries) right away.
        """
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader.gap.wait(), self._settle_s)
        if reader.ended or reader.replay.finished:
            return
        if reader.replay.waiting_on_gap:
            # Live events arrived after the first read, behind events that were not stored yet when it ran:
            # nothing else would ever fill that gap, and the reader would wait forever.  Read it now.
            await self.catch_up(reader)
            return
        if reader.live_events:
            return
        if await self.read(reader) is None:
            return
        nothing_stored = reader.replay.next_seq == 0 and state is StreamState.FINISHED
        if not reader.ended and (reader.replay.waiting_on_gap or nothing_stored):
            self._history_gone(reader)
