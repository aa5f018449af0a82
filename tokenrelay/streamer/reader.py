"""One SSE reader: its replay position, its bounded buffer, its lifecycle state and its wake-up signals.

The reader merges what reaches it (live events from the hub, history pages from its catch-up) in ``seq``
order (:mod:`~tokenrelay.streamer.replay`), queues what that releases in its buffer
(:mod:`~tokenrelay.streamer.buffer`) and wakes its writer.  Whether it is cut off as a slow consumer is
asked of :func:`~tokenrelay.streamer.disconnect.decide`, and acted on in :meth:`Reader.disconnect` only.
Its state moves by :mod:`~tokenrelay.streamer.reader_state`'s table.
"""

from __future__ import annotations

from collections.abc import Callable

from tokenrelay.runtime.flag import Flag
from tokenrelay.streamer.buffer import ReaderBuffer
from tokenrelay.streamer.disconnect import DEFAULT_MAX_HELD_EVENTS, Disconnect, DisconnectLimits, decide
from tokenrelay.streamer.frames import Framing, NativeFraming, is_terminal
from tokenrelay.streamer.reader_state import ReaderState, advance
from tokenrelay.streamer.replay import CONTENT_EVENTS, Replay, ReplayError
from tokenrelay.streamer.sse import PING
from tokenrelay.wire.cursor import Cursor
from tokenrelay.wire.messages import ReceivedEvent

_CATCHING_UP, _LIVE = ReaderState.CATCHING_UP, ReaderState.LIVE


class Reader:
    """One SSE connection: its replay position, its bounded buffer, its state and its wake-up signal.

    ``max_buffered_bytes``: bytes queued, in flight and held while catching up; ``max_held_events``: events held
    ahead of a gap.  Past either the reader ends with ``slow_consumer`` (the client may resume from its cursor).
    """

    def __init__(
        self,
        stream_id: str,
        *,
        epoch: str,
        resume: Cursor | None,
        max_buffered_bytes: int,
        now: float,
        framing: Framing | None = None,
        resumable: bool = True,
        max_held_events: int = DEFAULT_MAX_HELD_EVENTS,
        merge_content: bool = True,
        detached: bool = False,
    ) -> None:
        self.stream_id = stream_id
        self.resumable = resumable
        """Whether the client can come back with a cursor (native SSE) or not (a compatible API)."""
        self.detached = detached
        """Whether its stream runs without readers (a background response): its leaving never cancels it."""
        self.epoch = epoch
        self.framing: Framing = framing or NativeFraming(epoch)
        self.replay = Replay(epoch=epoch, resume=resume)
        self.buffer = ReaderBuffer(
            max_buffered_bytes=max_buffered_bytes, now=now, framing=self.framing, merge_content=merge_content
        )
        self._limits = DisconnectLimits(max_buffered_bytes=max_buffered_bytes, max_held_events=max_held_events)
        self._state = ReaderState.CATCHING_UP
        self.wake = Flag()
        self.written = Flag()
        """Set by the writer after each completed write and when the reader closes."""
        self.gap = Flag()
        """Set when a live event is held behind a gap (history must be read again to release it)."""
        self.live_events = 0
        """Events that reached this reader from its live subscription."""
        self.prefilled = False
        """Events from the streamer's memory were handed to it as it joined (the hub's prefill or shared history)."""
        self.came_live = Flag()
        """Set when the first event reaches it from its live subscription."""
        self.writing_since: float | None = None
        """When the write in progress started (``None`` when not writing)."""
        self.abort: Callable[[], None] | None = None
        """Drops the client connection at once (set by the HTTP shell)."""
        self.write_now: Callable[[], bool] | None = None
        """Set by the writer while it is parked with nothing in flight: writes what is queued from the
        caller's stack and returns ``True``, or returns ``False`` when the writer must do it (see :meth:`ready`)."""
        self.on_gap: Callable[[], None] | None = None
        """Told once, when a live event is first held behind a gap (set by the catch-up of a reader that started
        live: its history read starts then)."""
        self.on_disconnect: Callable[[Disconnect], None] | None = None
        """Told of the :class:`Disconnect` that ended this reader, once (set by the hub, which counts them)."""

    @property
    def state(self) -> ReaderState:
        """Where the reader stands (see :mod:`~tokenrelay.streamer.reader_state`)."""
        return self._state

    @property
    def ended(self) -> bool:
        """Its terminal event is queued, or it is gone: it takes no more events."""
        return self._state is not _LIVE and self._state is not _CATCHING_UP

    def _move(self, target: ReaderState) -> None:
        self._state = advance(self.stream_id, self._state, target)

    def caught_up(self) -> None:
        """Its history is merged and its events arrive live, in order (a reader that ended stays as it is)."""
        if not self.ended:
            self._move(ReaderState.LIVE)

    def close(self) -> None:
        """It left the hub: nothing more is queued for it (what is queued stays for :meth:`ReaderBuffer.take`)."""
        self._move(ReaderState.CLOSED)
        self.buffer.close()

    def deliver(self, event: ReceivedEvent, now: float, framed: bytes | None = None, *, notify: bool = True) -> None:
        """Take one event (history, or live with its shared ``framed`` bytes); queue whatever it releases.

        ``notify=False`` leaves the write to the caller's :meth:`ready` (a page of history goes out as one write).
        """
        buffer, replay = self.buffer, self.replay
        if buffer.closed:  # closed in every ended state; the cheapest check on the way of every token
            return
        if framed is not None:
            self.live_events += 1
            if self.live_events == 1:
                self.came_live.set()
        released = replay.push(event)
        if isinstance(released, ReplayError):
            self.fail(str(released.code), released.message, now)
            return
        # Events held while history catches up count against the same limit as queued bytes.  With nothing
        # held, a delta released first is asked about by the buffer with its own bytes added, which answers
        # this question too: on the way of every token, one ask instead of two.
        if replay.held_events or not released or not isinstance(released[0], CONTENT_EVENTS):
            refused = decide(replay.held_bytes + buffer.unsent_bytes, replay.held_events, None, now, self._limits)
            if refused is not None:
                self.disconnect(refused, now)
                return
        if not released and framed is not None and replay.waiting_on_gap:
            self._gap_seen()
        for ready in released:
            shared = framed if ready is event and self.framing.shares_native else None
            if isinstance(ready, CONTENT_EVENTS):
                refused = buffer.append_delta(ready, now, shared, live=framed is not None and ready is event)
            elif is_terminal(ready):
                buffer.frame_pending()  # a framing may keep state (Anthropic's blocks): it sees events in order
                buffer.finish(shared if shared is not None else self.framing.event(ready), now)
                self._move(ReaderState.FINISHING)
                break  # nothing is released after a terminal event
            else:
                refused = buffer.append(shared if shared is not None else self.framing.event(ready), now)
            if refused is not None:
                self.disconnect(refused, now)
                return
        if notify and (released or buffer.closed):
            self.ready()

    def _gap_seen(self) -> None:
        """A live event is held behind a gap: only history can release it."""
        if self._state is _LIVE:
            self._move(_CATCHING_UP)
        self.gap.set()
        on_gap, self.on_gap = self.on_gap, None
        if on_gap is not None:
            on_gap()

    def ready(self) -> None:
        """Something is queued: write it now if the writer is parked and may, else wake the writer.

        The writer installs :attr:`write_now` only with ``--direct-writes on``; writing from the caller's
        stack (the NATS callback, the heartbeat loop) then saves a task wake-up per event and per reader.
        """
        write_now = self.write_now
        if write_now is None or not write_now():
            self.wake.set()

    def fail(self, code: str, message: str, now: float) -> None:
        """End this reader with an ``error`` event (a reader that ended already keeps its end)."""
        if self.ended:
            return
        self.buffer.fail(code, message, now)
        self.replay.abandon()
        self._move(ReaderState.FAILING)
        self.wake.set()
        self.written.set()

    def disconnect(self, disconnect: Disconnect, now: float) -> None:
        """Act on what :func:`~tokenrelay.streamer.disconnect.decide` returned: the one place a reader is cut off.

        A reader still open ends with the disconnect's ``error`` event (and :attr:`on_disconnect` hears of it);
        one that ended already keeps its end.  Either way an ``abort`` disconnect drops the connection.
        """
        if not self.ended:
            self.fail(str(disconnect.code), disconnect.message, now)
            if self.on_disconnect is not None:
                self.on_disconnect(disconnect)
        if disconnect.abort and self.abort is not None:
            self.abort()  # the stuck write raises; the client may resume from its cursor

    def ping_if_idle(self, now: float, heartbeat_s: float) -> None:
        """Queue a ``: ping`` (and write it) if nothing was queued for ``heartbeat_s``."""
        if not self.buffer.idle(now, heartbeat_s):
            return
        refused = self.buffer.append(PING, now)
        if refused is not None:
            self.disconnect(refused, now)
        else:
            self.ready()

    async def room(self) -> None:
        """Wait while at least half the buffer limit is unsent (history is read no faster than the client takes it)."""
        while not self.ended and self.buffer.unsent_bytes * 2 > self.buffer.max_buffered_bytes:
            self.written.clear()
            self.ready()  # what was delivered without notify goes out (or the writer is woken for it)
            if self.buffer.unsent_bytes * 2 <= self.buffer.max_buffered_bytes:
                return
            await self.written.wait()
