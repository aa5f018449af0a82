"""Spec of a streamer meeting a stream event of a type it does not know (a newer runner's, mid-upgrade).

Its ``seq`` counts as seen (no reader waits for it behind a gap), nothing is sent for it, every known event around
it reaches the reader in order, and it is counted by type with one log line per type.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, cast

import orjson
import pytest
from nats.aio.client import Client as NATS

from tokenrelay.streamer.frames import frame
from tokenrelay.streamer.history import HistoryRead, Source
from tokenrelay.streamer.metrics import StreamerMetrics
from tokenrelay.streamer.reader import Reader
from tokenrelay.streamer.reader_state import ReaderState
from tokenrelay.streamer.replay import MergeState, Replay
from tokenrelay.wire import codec
from tokenrelay.wire.messages import (
    FinishReason,
    ReceivedEvent,
    ReplayPage,
    StreamDelta,
    StreamEnd,
    StreamFence,
    StreamStart,
    UnknownEvent,
)
from tokenrelay.wire.replay import encode_page

EPOCH = "e1"
SID = "0123456789abcdef0123456789abcdef"
T0 = 1000.0
START = StreamStart(stream_id=SID, epoch=EPOCH, model="m", created=0, runner_id="r", ts=0.0)
FIRST = StreamDelta(seq=1, text="Hello", index=1, count=1, ts=0.0)
UNKNOWN = UnknownEvent(seq=2, tag="citation")
SECOND = StreamDelta(seq=3, text=" world", index=2, count=1, ts=0.0)
END = StreamEnd(seq=4, finish_reason=FinishReason.STOP, tokens=2, ttft_ms=1.0)
STREAM: list[ReceivedEvent] = [START, FIRST, UNKNOWN, SECOND, END]
KNOWN = [START, FIRST, SECOND, END]
UNKNOWN_WIRE = b'{"type":"citation","seq":2,"index":1,"url":"https://example.com"}'


def _sent(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    """The SSE events in ``data``, as (name, data object); deltas the buffer merged into one count as one."""
    events = []
    for block in data.decode().split("\n\n"):
        if block:
            fields = dict(line.split(": ", 1) for line in block.split("\n"))
            events.append((fields["event"], orjson.loads(fields["data"])))
    return events


def _as_read(data: bytes) -> tuple[list[str], str]:
    """The event names sent (each once in a row) and the answer's text."""
    sent = _sent(data)
    names = [name for name, _ in itertools.groupby(name for name, _ in sent)]
    return names, "".join(obj["text"] for name, obj in sent if name == "delta")


def _merged(events: list[ReceivedEvent], replay: Replay) -> list[Any]:
    out: list[Any] = []
    for event in events:
        released = replay.push(event)
        assert isinstance(released, list)
        out.extend(released)
    return out


def test_the_merge_releases_every_known_event_in_order_around_an_unknown_one() -> None:
    replay = Replay(epoch=EPOCH)
    assert _merged(STREAM, replay) == KNOWN
    assert replay.state is MergeState.FINISHED
    assert not replay.waiting_on_gap


@pytest.mark.parametrize("order", list(itertools.permutations(STREAM)), ids=lambda order: "-".join(
    str(e.seq) for e in order
))  # fmt: skip
def test_the_merge_never_waits_for_an_unknown_events_seq_whatever_the_arrival_order(
    order: tuple[ReceivedEvent, ...],
) -> None:
    replay = Replay(epoch=EPOCH)
    assert _merged(list(order), replay) == KNOWN
    assert replay.held_events == 0


def test_a_live_unknown_event_held_behind_a_gap_is_released_as_seen_when_history_fills_the_gap() -> None:
    replay = Replay(epoch=EPOCH)
    assert _merged([UNKNOWN, SECOND], replay) == []
    assert replay.waiting_on_gap
    assert _merged([START, FIRST], replay) == [START, FIRST, SECOND]
    assert replay.next_seq == 4
    assert not replay.waiting_on_gap


def test_a_history_repeat_of_an_unknown_event_already_seen_is_dropped() -> None:
    replay = Replay(epoch=EPOCH)
    _merged([START, FIRST, UNKNOWN], replay)
    assert _merged([UNKNOWN, SECOND], replay) == [SECOND]


def test_a_reader_is_sent_every_known_event_and_nothing_for_an_unknown_one() -> None:
    reader = Reader(SID, epoch=EPOCH, resume=None, max_buffered_bytes=1 << 20, now=T0)
    reader.caught_up()
    for event in STREAM:
        reader.deliver(event, T0, b"" if isinstance(event, UnknownEvent | StreamFence) else frame(event, EPOCH))
    assert _as_read(reader.buffer.take()) == (["start", "delta", "stop"], "Hello world")
    assert reader.state is ReaderState.FINISHING
    assert not reader.gap.is_set()


def test_a_reader_catching_up_from_history_is_sent_the_known_events_around_an_unknown_one() -> None:
    reader = Reader(SID, epoch=EPOCH, resume=None, max_buffered_bytes=1 << 20, now=T0)
    for event in STREAM:
        reader.deliver(event, T0, notify=False)
    assert _as_read(reader.buffer.take()) == (["start", "delta", "stop"], "Hello world")


def test_unknown_events_are_counted_by_type_and_logged_once_per_type(caplog: pytest.LogCaptureFixture) -> None:
    metrics = StreamerMetrics()
    with caplog.at_level(logging.WARNING, logger="tokenrelay.streamer.metrics"):
        for tag in ("citation", "citation", "audio", "citation"):
            metrics.unknown_event(tag)
    sample = metrics.registry.get_sample_value
    assert sample("tokenrelay_streamer_unknown_events_total", {"type": "citation"}) == 3
    assert sample("tokenrelay_streamer_unknown_events_total", {"type": "audio"}) == 1
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 2
    assert "'citation'" in logged[0] and "'audio'" in logged[1]


class _Reply:
    def __init__(self, data: bytes) -> None:
        self.data = data


class _RunnerHoldingOnePage:
    """Answers every replay request with the same page, as a runner that holds the whole stream does."""

    def __init__(self, page: bytes) -> None:
        self._page = page

    async def request(self, subject: str, payload: bytes, **options: float) -> _Reply:
        return _Reply(self._page)


async def test_history_keeps_an_unknown_events_place_and_reports_its_type() -> None:
    events = [codec.encode(START), codec.encode(FIRST), UNKNOWN_WIRE, codec.encode(SECOND), codec.encode(END)]
    events.insert(3, b'{"type":"citation","index":1}')  # no seq: no place in the stream to keep
    page = encode_page(ReplayPage(stream_id=SID, events=len(events), more=False), events)
    reported: list[str] = []
    read = HistoryRead(cast(NATS, _RunnerHoldingOnePage(page)), SID, batch=100, unknown=reported.append)
    pages = [page async for page in read.pages()]
    assert pages == [STREAM]
    assert read.source is Source.RUNNER
    assert reported == ["citation", "citation"]


def test_a_moved_stream_s_event_of_an_unknown_type_keeps_its_generation_and_its_place() -> None:
    data = b'{"type":"future","seq":6,"gen":1,"fence":5}'
    assert codec.decode_received_event(data) == UnknownEvent(seq=6, tag="future", gen=1, fence=5)


def test_a_new_generation_s_event_of_an_unknown_type_holds_its_place_after_the_fence() -> None:
    replay = Replay(epoch=EPOCH)
    moved = StreamDelta(seq=3, text=" world", index=2, count=1, ts=0.0, gen=1, fence=2)
    unknown = UnknownEvent(seq=2, tag="citation", gen=1, fence=2)
    stale = StreamDelta(seq=2, text=" stale", index=2, count=1, ts=0.0)  # the old owner, woken up
    assert _merged([START, FIRST, StreamFence(gen=1, fence=2), stale, unknown, moved], replay) == [START, FIRST, moved]
    assert not replay.waiting_on_gap
