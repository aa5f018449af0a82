"""Sans-I/O per-reader output buffer: one byte budget, counted at measured cost.

Frames are appended as they are produced and taken by the reader's writer in one piece, so
a reader that falls behind gets one larger write; content events of one block that pile up back
to back are merged into one larger event of their kind (its ``id`` is the last one's, so resuming
stays exact).  A block is a run of one kind (``delta``, ``reasoning``, or the fragments of one
tool call): events of different blocks are never merged, so every frame is of one kind and a
merged tool call fragment still carries its call's ``id`` and ``name`` when its first did.  If
the unsent bytes — those queued here plus the write in flight, which the I/O shell reports in
``in_flight_bytes`` until the transport has handed it to the kernel — would pass
``max_buffered_bytes`` (asked of :func:`~tokenrelay.streamer.disconnect.decide`), the frame is
refused and the :class:`~tokenrelay.streamer.disconnect.Disconnect` returned; its reader then
replaces what is pending with one terminal ``slow_consumer`` error frame (:meth:`ReaderBuffer.fail`):
memory per reader stays bounded whatever the client does.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace

from tokenrelay.streamer.disconnect import Disconnect, DisconnectLimits, decide
from tokenrelay.streamer.frames import Framing, NativeFraming
from tokenrelay.wire.messages import ContentDelta, StreamDelta, ToolCallDelta

BYTES_OVERHEAD_BYTES = 48
"""What a queued ``bytes`` object costs beyond its length (CPython's object header) plus its list slot."""
RUN_OVERHEAD_BYTES = 512
"""What a run of pending deltas costs before its texts: the run, its last ``StreamDelta``, the first
delta's shared frame and the list (measured ~450 B with tracemalloc; rounded up)."""
TEXT_OVERHEAD_BYTES = 8
"""A delta merged into a run keeps only its text: the ``str`` (``sys.getsizeof``) plus its list slot."""


@dataclass(slots=True)
class _Run:
    """Back-to-back pending content events of one block, merged as they arrive: only their texts are kept."""

    key: object
    """The block: the event's class (text, reasoning), or a tool call's ordinal."""
    last: ContentDelta
    framed: bytes | None
    """The shared frame of a run of one delta (reused as is); dropped once a second delta joins."""
    texts: list[str]
    count: int
    first_ts: float
    """Publish time of the run's first delta: a merged delta carries it, so lag is measured from the oldest token."""
    call_id: str | None = None
    """A tool call's id, when a fragment of the run carried it (its first fragment does)."""
    call_name: str | None = None
    """A tool call's function name, when a fragment of the run carried it."""


_Pending = bytes | _Run


class ReaderBuffer:
    """Unsent bytes of one SSE reader, bounded by ``max_buffered_bytes``."""

    def __init__(
        self,
        *,
        max_buffered_bytes: int,
        now: float,
        epoch: str = "",
        framing: Framing | None = None,
        merge_content: bool = True,
    ) -> None:
        self._merge_content = merge_content
        """Whether back-to-back content events of one block are merged (off: each is framed as it came)."""
        self._limits = DisconnectLimits(max_buffered_bytes=max_buffered_bytes)
        self._framing: Framing = framing or NativeFraming(epoch)
        self._chunks: list[_Pending] = []
        self._size = 0
        self.closed = False
        self.close_code: str | None = None
        self.last_activity = now
        self.in_flight_bytes = 0
        """Bytes taken by the writer that the transport still holds (set by the I/O shell)."""
        self.live_tokens = 0
        """Tokens of live deltas pending (history replays are not counted); reset by :meth:`take`."""
        self.oldest_live_ts: float | None = None
        """When the oldest token of the live deltas pending was made (``StreamDelta.ts``, wall clock); reset by
        :meth:`take`."""
        self.tokens_pending = False
        """Whether a delta (live or history) is pending; reset by :meth:`take`."""

    @property
    def buffered_bytes(self) -> int:
        """Bytes appended and not yet taken."""
        return self._size

    @property
    def unsent_bytes(self) -> int:
        """Bytes queued here plus the write in flight: what counts against the limit."""
        return self._size + self.in_flight_bytes

    @property
    def max_buffered_bytes(self) -> int:
        """The limit on :attr:`unsent_bytes`."""
        return self._limits.max_buffered_bytes

    def append(self, data: bytes, now: float) -> Disconnect | None:
        """Queue bytes for the client (nothing once closed); past the limit, the disconnect they would cause instead."""
        if self.closed:
            return None
        refused = self._room(len(data) + BYTES_OVERHEAD_BYTES, now)
        if refused is None:
            self._chunks.append(data)
        return refused

    def append_delta(
        self, delta: ContentDelta, now: float, framed: bytes | None = None, *, live: bool = False
    ) -> Disconnect | None:
        """Queue a content event (``framed``: its shared frame, if the caller has one); merged with pending ones of
        its block.

        ``live`` deltas (not history) are counted in :attr:`live_tokens` and :attr:`oldest_live_ts`.

        Sizes are what the pending data costs in memory, not its length on the wire: a reader
        that never reads is closed when its buffer *holds* ``max_buffered_bytes``.  Past the limit the
        delta is refused and the disconnect returned, as :meth:`append` does.
        """
        if self.closed:
            return None
        last = self._chunks[-1] if self._chunks and self._merge_content else None
        if type(delta) is StreamDelta and isinstance(last, _Run) and last.key is StreamDelta:
            # The common case, text joining a run of text, at the cost it had before typed content plus one check.
            text_size = sys.getsizeof(delta.text) + TEXT_OVERHEAD_BYTES
            refused = self._room(text_size, now)
            if refused is not None:
                return refused
            last.texts.append(delta.text)
            last.last = delta
            last.count += delta.count
            last.framed = None
        else:
            refused = self._append_to_block(delta, now, framed, last)
            if refused is not None:
                return refused
        self.tokens_pending = True
        if live:
            self.live_tokens += delta.count
            if self.oldest_live_ts is None:
                self.oldest_live_ts = delta.ts
        return None

    def _append_to_block(
        self, delta: ContentDelta, now: float, framed: bytes | None, last: _Pending | None
    ) -> Disconnect | None:
        """Merge ``delta`` into the pending run when it is of the same block (kind, and call), else start a run."""
        # The block's key: the event's class, or a tool call's ordinal.
        if isinstance(delta, ToolCallDelta):
            key: object = delta.call
            text, tool_call = delta.arguments, True
        else:
            key, text, tool_call = type(delta), delta.text, False
        text_size = sys.getsizeof(text) + TEXT_OVERHEAD_BYTES
        if isinstance(last, _Run) and (last.key is key or (tool_call and last.key == key)):
            refused = self._room(text_size, now)
            if refused is not None:
                return refused
            last.texts.append(text)
            if tool_call and isinstance(delta, ToolCallDelta) and last.call_id is None and last.call_name is None:
                last.call_id, last.call_name = delta.id, delta.name  # a call whose first fragment went out already
            last.last = delta
            last.count += delta.count
            last.framed = None
        else:
            run = _Run(key=key, last=delta, framed=framed, texts=[text], count=delta.count, first_ts=delta.ts)
            if tool_call and isinstance(delta, ToolCallDelta):
                run.call_id, run.call_name = delta.id, delta.name
                text_size += sys.getsizeof(delta.id) + sys.getsizeof(delta.name)
            refused = self._room(RUN_OVERHEAD_BYTES + text_size, now)
            if refused is not None:
                return refused
            self._chunks.append(run)
        return None

    def _room(self, size: int, now: float) -> Disconnect | None:
        """Count ``size`` more bytes, or return the disconnect they would cause (nothing counted)."""
        refused = decide(self._size + self.in_flight_bytes + size, 0, None, now, self._limits)
        if refused is None:
            self._size += size
            self.last_activity = now
        return refused

    def frame_pending(self) -> None:
        """Frame the pending runs of deltas now (they are framed when taken otherwise), so the framing sees every
        event in stream order when the terminal one is framed next."""
        self._chunks = [item if isinstance(item, bytes) else self._framed(item) for item in self._chunks]

    def finish(self, data: bytes, now: float) -> None:
        """Queue the terminal frame and close (a terminal frame is never refused for size)."""
        if self.closed:
            return
        self._chunks.append(data)
        self._size += len(data)
        self.last_activity = now
        self.closed = True

    def fail(self, code: str, message: str, now: float, *, id: str | None = None) -> None:
        """Drop what is pending, queue a terminal ``error`` and close."""
        if self.closed:
            return
        failure = self._framing.error(code, message, id=id)
        self._chunks = [failure]
        self.live_tokens, self.oldest_live_ts, self.tokens_pending = 0, None, False
        self._size = len(failure)
        self.close_code = code
        self.closed = True
        self.last_activity = now

    def close(self) -> None:
        """Take nothing more (its reader is gone); what is pending stays for :meth:`take`."""
        self.closed = True

    def idle(self, now: float, heartbeat_s: float) -> bool:
        """Open, and nothing was queued for ``heartbeat_s``: time for a ``: ping``."""
        return not self.closed and now - self.last_activity >= heartbeat_s

    def take(self) -> bytes:
        """Everything pending, as one write; back-to-back deltas go out as one event."""
        if not self._chunks:
            return b""
        chunks, self._chunks, self._size = self._chunks, [], 0
        self.live_tokens, self.oldest_live_ts, self.tokens_pending = 0, None, False
        if len(chunks) == 1 and isinstance(chunks[0], bytes):
            return chunks[0]
        return b"".join(item if isinstance(item, bytes) else self._framed(item) for item in chunks)

    def _framed(self, run: _Run) -> bytes:
        if run.framed is not None:
            return run.framed
        last = run.last
        if len(run.texts) == 1:
            return self._framing.event(last)
        if isinstance(last, ToolCallDelta):
            merged: ContentDelta = replace(
                last, id=run.call_id, name=run.call_name, arguments="".join(run.texts), count=run.count,
                ts=run.first_ts,
            )  # fmt: skip
        else:
            merged = replace(last, text="".join(run.texts), count=run.count, ts=run.first_ts)
        return self._framing.event(merged)
