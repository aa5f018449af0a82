"""Sans-I/O: the recent history a runner serves for the streams it generates, and its page framing.

Every event a runner publishes is also captured by JetStream, but reading one stream's past
from there makes the broker walk every message of every other stream interleaved with it
(a direct get by subject scans from that subject's first message).  At 1,000 streams that
walk cost the broker more than the delivery itself.  The runner already had each event in
hand: it keeps the encoded bytes of each stream it generates (and, for a while, of each it
finished) in a :class:`ReplayLog`, and answers ``tokenrelay.stream.<id>.replay`` requests
from it.  JetStream stays the source for everything the runner no longer holds.

A page on the wire is one :class:`~tokenrelay.wire.messages.ReplayPage` line, then exactly
``events`` encoded events, one per line (the codec never writes a newline: JSON escapes it).

Why a reply from the runner has no gap: the streamer subscribes to the live subject (and
flushes) before it asks, and the runner answers with everything it published before it read
the request; whatever it publishes later reaches the subscription live.  A JetStream read
cannot promise that (it stores a message a moment after it is published).
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenrelay.wire import codec
from tokenrelay.wire.codec import CodecError
from tokenrelay.wire.messages import ReplayPage

MAX_PAGE_BYTES = 512 * 1024
"""A page's events stop at this many bytes (under nats-server's default 1 MiB max_payload)."""
LINE = b"\n"


class ReplayLog:
    """The encoded events one runner published for one stream, by ``seq`` (0, 1, 2, ...), bounded in bytes.

    Past ``max_bytes`` (the runner's ``replay_max_bytes_per_stream``) it holds nothing; JetStream serves the stream.
    """

    def __init__(self, *, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be > 0")
        self._max_bytes = max_bytes
        self._events: list[bytes] = []
        self._bytes = 0
        self.held = True
        """Whether every event published so far is here (``False`` once past the byte limit)."""

    @property
    def size_bytes(self) -> int:
        """Bytes of encoded events held."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._events)

    def append(self, seq: int, data: bytes) -> None:
        """Keep the event published with ``seq`` (the next one); past the limit, drop everything."""
        if not self.held:
            return
        if seq != len(self._events) or self._bytes + len(data) > self._max_bytes:
            self.drop()
            return
        # A copy of exactly its size: orjson's output sits in a 4 KiB allocation (measured with tracemalloc:
        # 4,097 B per small event kept as is, 83 B per copy), which made a runner of 1,000 streams hold 850 MB.
        self._events.append(bytes(memoryview(data)))
        self._bytes += len(data)

    def drop(self) -> None:
        """Give the events up: from now on this log answers that it does not hold them."""
        self.held = False
        self._events = []
        self._bytes = 0

    def page(self, stream_id: str, from_seq: int, *, max_events: int, max_bytes: int = MAX_PAGE_BYTES) -> bytes:
        """The wire page of events ``from_seq`` on: at most ``max_events`` and (but for one) ``max_bytes``."""
        if not self.held:
            return not_held_page(stream_id)
        start = max(0, from_seq)
        taken: list[bytes] = []
        size = 0
        for data in self._events[start : start + max(1, max_events)]:
            if taken and size + len(data) > max_bytes:
                break
            taken.append(data)
            size += len(data)
        more = start + len(taken) < len(self._events)
        return encode_page(ReplayPage(stream_id=stream_id, events=len(taken), more=more, held=True), taken)


def not_held_page(stream_id: str) -> bytes:
    """The page that says "I do not hold this stream's events" (the streamer then reads JetStream)."""
    return encode_page(ReplayPage(stream_id=stream_id, events=0, more=False, held=False), [])


def encode_page(header: ReplayPage, events: list[bytes]) -> bytes:
    """One page on the wire: the header line, then each encoded event on its own line."""
    return LINE.join([codec.encode(header), *events])


@dataclass(frozen=True, slots=True)
class DecodedPage:
    """A page as the streamer reads it: the header and the raw events (decode each with the codec)."""

    header: ReplayPage
    events: list[bytes]


def decode_page(data: bytes) -> DecodedPage:
    """Split a page; :class:`~tokenrelay.wire.codec.CodecError` when it is not one (or its count is wrong)."""
    first, sep, rest = data.partition(LINE)
    header = codec.decode_as(first, ReplayPage)
    events = rest.split(LINE) if sep else []
    if len(events) != header.events or any(not line for line in events):
        raise CodecError(f"replay page says {header.events} events and carries {len(events)}")
    return DecodedPage(header, events)
