"""Fan-out of live NATS events to the SSE readers of this streamer.

Live events reach the hub through core-NATS subscriptions in one of two modes
(:class:`~tokenrelay.runtime.config.LiveSubscription`):

* ``shared`` (default): one wildcard subscription to every stream's events, taken at start; an
  event of a stream with no reader here is dropped after a dictionary lookup.  nats-py runs one
  task and one pending queue per subscription, so this costs ~13.5 µs of CPU per message
  against ~22.7 µs with a subscription per stream (1,000 subjects at ~14,000 messages/s), and
  ~6 KiB less memory per stream.  Every streamer receives every event, so it suits a handful
  of streamers; a large fleet should use
* ``per-stream``: one subscription per stream with at least one reader here, so the server
  sends each streamer only what its readers need.

Either way each event is decoded and framed once and the same bytes are queued to every reader
of its stream that is in step.  One loop sends heartbeats to idle readers (no timer per reader).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

from tokenrelay.runtime import natsio
from tokenrelay.runtime.config import LiveSubscription
from tokenrelay.runtime.natsdirect import delivers_inline, subscribe_raw
from tokenrelay.runtime.tasks import TaskSet
from tokenrelay.streamer.abandon import AbandonWatcher
from tokenrelay.streamer.disconnect import Disconnect, DisconnectLimits, decide
from tokenrelay.streamer.flush import FlushClock
from tokenrelay.streamer.frames import frame, is_terminal
from tokenrelay.streamer.metrics import StreamerMetrics
from tokenrelay.streamer.reader import Reader
from tokenrelay.streamer.reader_state import ReaderState
from tokenrelay.streamer.replay import CONTENT_EVENTS
from tokenrelay.streamer.shared_history import SharedHistory, SharedHistoryBudget, Sharing
from tokenrelay.streamer.starts import START_PREFIX, TERMINAL_PREFIXES, RecentStarts
from tokenrelay.wire import codec, subjects
from tokenrelay.wire.codec import CodecError, UnknownMessageType
from tokenrelay.wire.errors import RateLimited
from tokenrelay.wire.messages import ReceivedEvent, StreamDelta, StreamFence, StreamStart, UnknownEvent

log = logging.getLogger(__name__)

Clock = Callable[[], float]
MAX_HEARTBEAT_TICK_S = 1.0
CLOCK_MARGIN_S = 2.0
"""How far apart a gateway's clock and this streamer's may be, plus a record's ``created`` rounding down to a second."""
SHARED_PENDING_BYTES_LIMIT = 256 * 1024 * 1024
"""Bytes of live events the shared subscription may hold undelivered before nats-py drops them
(its per-subscription default is 128 MiB, sized for one stream, not all of them).  A dropped event
leaves a sequence gap: a reader still catching up reads history again; a live one holds the events behind the gap
until they pass its bound and it ends as ``slow_consumer`` (its client resumes from its cursor).  Only on an
ordinary client: the streamer's live connection is a :class:`~tokenrelay.runtime.natsdirect.DirectClient`, which
queues nothing."""


class _Channel:
    """One stream read here: its readers and what they share (slotted: one per stream, 10,000s of them)."""

    __slots__ = ("epoch", "readers", "ready", "shared", "sub")

    def __init__(self, epoch: str) -> None:
        self.epoch = epoch
        self.readers: set[Reader] = set()
        self.sub: Subscription | None = None
        """The stream's own subscription (``per-stream`` mode only)."""
        self.ready: asyncio.Future[None] | None = None
        """While its subscription is being made (``per-stream`` mode): later readers wait for it; ``None``: ready."""
        self.shared: SharedHistory | None = None
        """Its events from ``seq`` 0 on, kept for its later readers (opened when its second reader joins)."""


class Hub:
    """Live subscriptions of this streamer, keyed by stream id."""

    def __init__(
        self,
        nc: NATS,
        *,
        heartbeat_s: float,
        metrics: StreamerMetrics,
        write_timeout_s: float = 10.0,
        disconnect_grace_s: float = 0.0,
        cancel_timeout_s: float = 5.0,
        max_readers_per_stream: int = 0,
        live_subscription: LiveSubscription = LiveSubscription.SHARED,
        flush: FlushClock | None = None,
        shared_history: SharedHistoryBudget | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self._nc = nc
        self._flush = flush
        """Told how late each live delta arrives: its interval adapts to that, and the runners hear it (publish
        pacing); ``None``: nobody to tell."""
        self._shared = live_subscription is LiveSubscription.SHARED
        self._shared_sub: Subscription | None = None
        self.starts: RecentStarts | None = RecentStarts() if self._shared else None
        """Streams seen starting and still running, with their epochs (``shared`` mode: every event goes by here)."""
        self._inline = delivers_inline(nc)
        """Live events come from the read loop with nothing queued: only an outage can lose one."""
        self._reconnects = 0
        """The live connection's reconnect count when last checked."""
        self._max_readers_per_stream = max_readers_per_stream
        self.shared_history = shared_history or SharedHistoryBudget()
        """Bytes held by every stream's :class:`~tokenrelay.streamer.shared_history.SharedHistory` together."""
        self.abandon = AbandonWatcher(
            nc,
            grace_s=disconnect_grace_s,
            cancel_timeout_s=cancel_timeout_s,
            metrics=metrics,
            has_readers=self.has_readers,
        )
        self._heartbeat_s = heartbeat_s
        self._write_timeout_s = write_timeout_s
        self._write_limits = DisconnectLimits(write_timeout_s=write_timeout_s)
        """What :meth:`_check` holds writes to (it asks about writes only: bytes are asked as they are queued)."""
        self._metrics = metrics
        self.clock = clock
        self._channels: dict[str, _Channel] = {}
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._watching_since: float | None = None
        """When the shared subscription began, on the wall clock (every ``start`` since went by here)."""
        self._cleanup_tasks = TaskSet()

    async def start(self) -> None:
        """Subscribe (``shared`` mode), then start the heartbeat loop and the abandoned-stream watcher."""
        if self._shared:
            self._shared_sub = await subscribe_raw(
                self._nc, subjects.EVENTS_WILDCARD, self._on_event, pending_bytes_limit=SHARED_PENDING_BYTES_LIMIT
            )
            # Once the server has it, every event published from then on reaches us.
            await natsio.barrier(self._nc)
            self._watching_since = time.time()
        self._heartbeat_task = asyncio.create_task(self._heartbeat_loop())
        await self.abandon.start()

    def has_readers(self, stream_id: str) -> bool:
        """Whether any reader of ``stream_id`` is connected here."""
        channel = self._channels.get(stream_id)
        return channel is not None and bool(channel.readers)

    async def attach(self, reader: Reader) -> None:
        """Make sure live events of the reader's stream reach it (subscribed, ahead of any later request).

        A stream that has ``max_readers_per_stream`` readers here already refuses one more (``rate_limited``).
        """
        channel = self._channels.get(reader.stream_id)
        limit = self._max_readers_per_stream
        if channel is not None and 0 < limit <= len(channel.readers):
            raise RateLimited(f"this stream has {limit} readers on this streamer already (the limit)")
        reader.on_disconnect = self._disconnected
        self.abandon.reader_joined(reader.stream_id)
        if channel is None:
            channel = _Channel(reader.epoch)
            self._channels[reader.stream_id] = channel
            channel.readers.add(reader)
            if self.starts is not None:
                self._prefill(reader)
            if not self._shared:
                await self._subscribe(reader, channel)
            self._metrics.channels_open.set(len(self._channels))
        else:
            self._share(reader, channel)
            channel.readers.add(reader)
            if channel.ready is not None:
                await asyncio.shield(channel.ready)
        self._metrics.readers_open.inc()

    async def _subscribe(self, reader: Reader, channel: _Channel) -> None:
        """The stream's own subscription (``per-stream`` mode), its later readers waiting meanwhile."""
        ready = channel.ready = asyncio.get_running_loop().create_future()
        try:
            channel.sub = await subscribe_raw(self._nc, subjects.events(reader.stream_id), self._on_event)
            # The reader's history request goes out on another connection, so the server must
            # have the SUB first: once the barrier returns, whatever is published after the
            # history source answered reaches us live.
            await natsio.barrier(self._nc)
        except BaseException as exc:
            ready.set_exception(exc)
            ready.exception()  # mark retrieved
            self.detach(reader)
            raise
        ready.set_result(None)
        channel.ready = None

    def detach(self, reader: Reader) -> None:
        """Forget a reader (it is closed); drop the stream's subscription when it was the last one."""
        channel = self._channels.get(reader.stream_id)
        if channel is None or reader not in channel.readers:
            return
        channel.readers.discard(reader)
        reader.close()
        ready = channel.ready
        if ready is None or (ready.done() and ready.exception() is None):
            self._metrics.readers_open.dec()
        if not channel.readers:
            if channel.shared is not None:
                channel.shared.end()
            if not reader.replay.finished and not reader.detached:
                self.abandon.last_reader_left(reader.stream_id, resumable=reader.resumable)
            del self._channels[reader.stream_id]
            self._metrics.channels_open.set(len(self._channels))
            if channel.sub is not None:
                self._cleanup_tasks.spawn(natsio.unsubscribe_quietly(channel.sub))

    async def shutdown(self, code: str, message: str) -> None:
        """End every reader with an ``error`` event (they may resume on another streamer)."""
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
        if self._shared_sub is not None:
            await natsio.unsubscribe_quietly(self._shared_sub)
            self._shared_sub = None
        await self.abandon.close()
        now = self.clock()
        for channel in self._channels.values():
            for reader in channel.readers:
                reader.fail(code, message, now)

    def _on_event(self, subject: str, data: bytes) -> None:
        """One live event (from the read loop of the live connection: no awaiting here)."""
        stream_id = subject.split(".")[2]
        channel = self._channels.get(stream_id)
        if channel is None:
            if self.starts is not None:
                self._note_unread(stream_id, data)
            return
        try:
            event = codec.decode_received_event(data)
        except UnknownMessageType as exc:  # a newer runner's, with no seq: it holds no place in the stream
            self._metrics.unknown_event(exc.tag)
            return
        except CodecError as exc:
            log.warning("stream %s: dropping malformed event: %s", stream_id, exc)
            return
        if channel.shared is not None:
            channel.shared.live(event, len(data))
        if isinstance(event, UnknownEvent):
            self._skip_unknown(event, channel)
            return
        if isinstance(event, StreamFence):  # the stream moved: each reader's merge learns the cut-off
            now = self.clock()
            for reader in tuple(channel.readers):
                reader.deliver(event, now, b"")
            return
        if self.starts is not None and not isinstance(event, StreamDelta):
            if isinstance(event, StreamStart):
                self.starts.started(stream_id, event.epoch, None, self.clock())  # its readers get events live
            elif is_terminal(event):
                self.starts.ended(stream_id)
        if self._flush is not None and isinstance(event, CONTENT_EVENTS):
            # Late since the runner published it (on the wall clock), not since its oldest token was made: what the
            # runner held back on purpose (runner/pace.py) is no lateness of the streamer's.
            self._flush.observe_lag(time.time() - event.ts - event.held_s)
        framed = frame(event, channel.epoch)
        now = self.clock()
        for reader in tuple(channel.readers):
            reader.deliver(event, now, framed)

    def _skip_unknown(self, event: UnknownEvent, channel: _Channel) -> None:
        """A newer runner's kind of event: it frames to nothing, but each reader counts its ``seq`` as seen (a
        reader that waited for it would hold the rest of the stream behind a gap no history fills)."""
        self._metrics.unknown_event(event.tag)
        now = self.clock()
        for reader in tuple(channel.readers):
            reader.deliver(event, now, b"")

    def _note_unread(self, stream_id: str, data: bytes) -> None:
        """Remember a start and what follows it, forget an end, of a stream nobody reads here (starts are decoded)."""
        assert self.starts is not None
        if data.startswith(START_PREFIX):
            try:
                event = codec.decode_event(data)
            except CodecError:
                return
            if isinstance(event, StreamStart):
                self._live_unbroken()  # an outage before this start must not count against this stream
                self.starts.started(stream_id, event.epoch, data, self.clock())
        elif data.startswith(TERMINAL_PREFIXES):
            self.starts.ended(stream_id)
        else:
            self.starts.published(stream_id, data)

    def _prefill(self, reader: Reader) -> None:
        """Hand a stream's first reader the events seen go by before it came (no history round trip to wait for).

        Called as the reader joins, with no await in between: every later event reaches it live.  When they
        are whole (kept since the start with no outage, ``seq`` 0, 1, 2, ...), they stand for the history read,
        as a runner's answer does; otherwise its history read still runs and fills whatever is missing.
        """
        assert self.starts is not None
        unbroken = self._live_unbroken()
        kept = self.starts.take_events(reader.stream_id, reader.epoch)
        if kept is None:
            return
        whole = kept.whole and unbroken
        events: list[ReceivedEvent] = []
        for seq, data in enumerate(kept.events):
            try:
                event = codec.decode_received_event(data)
            except CodecError:
                whole = False  # a gap: the history read fills it
                continue
            if isinstance(event, UnknownEvent):
                self._metrics.unknown_event(event.tag)
            whole = whole and event.seq == seq
            events.append(event)
        self._hand(reader, events, whole=whole)
        self._metrics.reader_prefills.inc()

    def _hand(self, reader: Reader, events: list[ReceivedEvent], *, whole: bool) -> None:
        """Give a joining reader events from this streamer's memory, as one write; ``whole`` (every event from
        ``seq`` 0 on, with every later one coming live): it is live at once and reads no history."""
        reader.prefilled = True
        now = self.clock()
        for event in events:
            reader.deliver(event, now, notify=False)
        if whole:
            reader.caught_up()
            self._metrics.history_reads_skipped.inc()
        reader.ready()

    def _live_unbroken(self) -> bool:
        """Whether the live connection delivers inline, is up, and was not down since the last check (when it
        was, events kept so far may miss what was published meanwhile: none is whole any more)."""
        reconnects = int(self._nc.stats["reconnects"])
        if reconnects != self._reconnects:
            self._reconnects = reconnects
            if self.starts is not None:
                self.starts.lost_connection()
            for channel in self._channels.values():
                if channel.shared is not None:
                    channel.shared.end()
        return self.live_outages() is not None

    def unseen(self, stream_id: str, created: int | None) -> bool:
        """Whether no ``start`` of ``stream_id`` went by here although it would have: it has not started yet, or its
        ``start`` is on its way.  ``created``: when it was admitted (its record's, whole seconds on the admitting
        gateway's clock; ``None``: just now, by a request to this streamer); one admitted before this streamer
        watched every ``start`` (or within :data:`CLOCK_MARGIN_S` of it) is not told apart.  ``False`` whenever
        that cannot be told (``per-stream`` mode)."""
        if self.starts is None or self._watching_since is None:
            return False
        if created is not None and created < self._watching_since + CLOCK_MARGIN_S:
            return False
        return not self.starts.seen(stream_id, self.clock())

    def live_outages(self) -> int | None:
        """The live connection's outages so far, or ``None`` when it cannot promise every event now (it does not
        deliver inline, or it is down)."""
        if not (self._inline and self._nc.is_connected):
            return None
        return int(self._nc.stats["reconnects"])

    def shared_epoch(self, stream_id: str) -> str | None:
        """The epoch of a stream read here whose shared history is whole (its next reader needs no record read)."""
        channel = self._channels.get(stream_id)
        if channel is None or channel.shared is None or channel.shared.state is not Sharing.WHOLE:
            return None
        return channel.epoch

    def history_read(self, reader: Reader, events: list[ReceivedEvent], size: int) -> None:
        """A page of history ``reader`` read (``size``: its encoded bytes): its stream's shared history keeps it."""
        channel = self._channels.get(reader.stream_id)
        if channel is not None and channel.shared is not None and reader.epoch == channel.epoch:
            channel.shared.read(events, size)

    def _share(self, reader: Reader, channel: _Channel) -> None:
        """A later reader of a stream read here: hand it the stream's shared history when whole, as it joins.

        The second reader opens it (a stream read once keeps nothing).  Handed, the reader is live at once and reads
        no history, as one whose first events its runner served; otherwise it reads history, and its pages fill it.
        """
        unbroken = self._live_unbroken()
        shared = channel.shared
        if shared is None:
            if unbroken:
                channel.shared = SharedHistory(self.shared_history)
            return
        if (
            shared.state is not Sharing.WHOLE
            or not unbroken
            or reader.epoch != channel.epoch
            or shared.size * 2 > reader.buffer.max_buffered_bytes
        ):
            return
        self._hand(reader, shared.events, whole=True)
        self._metrics.shared_history_readers.inc()

    async def _heartbeat_loop(self) -> None:
        """One loop for every reader: pings for the idle, ``slow_consumer`` for writes stuck too long."""
        tick_s = min(self._heartbeat_s / 2, self._write_timeout_s / 2, MAX_HEARTBEAT_TICK_S)
        while True:
            await asyncio.sleep(tick_s)
            now = self.clock()
            for channel in self._channels.values():
                for reader in channel.readers:
                    self._check(reader, now)

    def _check(self, reader: Reader, now: float) -> None:
        """Disconnect a reader whose write stalled, or ping it if idle."""
        # A failed reader's buffer last changed when its error event was queued.
        failed_at = reader.buffer.last_activity if reader.state is ReaderState.FAILING else None
        stalled = decide(0, 0, reader.writing_since, now, self._write_limits, failed_at=failed_at)
        if stalled is not None:
            reader.disconnect(stalled, now)
        else:
            reader.ping_if_idle(now, self._heartbeat_s)

    def _disconnected(self, disconnect: Disconnect) -> None:
        """A reader was cut off as a slow consumer: counted once, where it happened."""
        self._metrics.slow_consumer_disconnects.inc()
