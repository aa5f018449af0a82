"""The runner's replay log (tokenrelay/replay.py): what it holds, how it pages, and the page framing."""

from __future__ import annotations

import pytest

from tokenrelay.wire import codec
from tokenrelay.wire.codec import CodecError
from tokenrelay.wire.messages import ReplayPage, StreamDelta, StreamEvent, StreamStart
from tokenrelay.wire.replay import ReplayLog, decode_page, encode_page

STREAM = "0" * 32


def _events(n: int) -> list[StreamEvent]:
    start = StreamStart(stream_id=STREAM, epoch="e", model="m", created=0, runner_id="r", ts=0.0)
    deltas = [StreamDelta(seq=i, text=f"tok{i}\nline", index=i, count=1, ts=0.0) for i in range(1, n)]
    return [start, *deltas]


def _log(n: int, max_bytes: int = 1 << 20) -> tuple[ReplayLog, list[bytes]]:
    log = ReplayLog(max_bytes=max_bytes)
    encoded = [codec.encode(e) for e in _events(n)]
    for seq, data in enumerate(encoded):
        log.append(seq, data)
    return log, encoded


def test_a_page_carries_the_events_from_the_asked_seq_in_order_byte_for_byte() -> None:
    log, encoded = _log(10)
    page = decode_page(log.page(STREAM, 3, max_events=100))
    assert page.header == ReplayPage(stream_id=STREAM, events=7, more=False, held=True)
    assert page.events == encoded[3:]
    assert [codec.decode_event(e).seq for e in page.events] == list(range(3, 10))


def test_a_page_stops_at_max_events_and_says_there_is_more() -> None:
    log, encoded = _log(10)
    first = decode_page(log.page(STREAM, 0, max_events=4))
    assert first.header.more and first.events == encoded[:4]
    last = decode_page(log.page(STREAM, 8, max_events=4))
    assert not last.header.more and last.events == encoded[8:]


def test_a_page_stops_at_max_bytes_but_always_carries_one_event() -> None:
    log, encoded = _log(10)
    page = decode_page(log.page(STREAM, 1, max_events=100, max_bytes=len(encoded[1]) + 1))
    assert page.events == [encoded[1]] and page.header.more
    tiny = decode_page(log.page(STREAM, 1, max_events=100, max_bytes=1))
    assert tiny.events == [encoded[1]]


def test_asking_past_the_end_is_an_empty_held_page() -> None:
    log, _ = _log(3)
    page = decode_page(log.page(STREAM, 3, max_events=10))
    assert page.header == ReplayPage(stream_id=STREAM, events=0, more=False, held=True)
    assert page.events == []


def test_past_its_byte_limit_the_log_holds_nothing_and_says_so() -> None:
    log, encoded = _log(3)
    limit = sum(map(len, encoded))
    small, _ = _log(4, max_bytes=limit)
    assert not small.held and len(small) == 0 and small.size_bytes == 0
    page = decode_page(small.page(STREAM, 0, max_events=10))
    assert page.header.held is False and page.events == []
    assert log.held and log.size_bytes == limit


def test_an_event_out_of_order_drops_the_log_rather_than_serve_a_gap() -> None:
    log, encoded = _log(3)
    log.append(5, encoded[1])
    assert not log.held
    log.append(3, encoded[1])  # nothing comes back once dropped
    assert not log.held and len(log) == 0


def test_a_log_needs_a_positive_byte_limit() -> None:
    with pytest.raises(ValueError):
        ReplayLog(max_bytes=0)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        codec.encode(ReplayPage(stream_id=STREAM, events=2, more=False)) + b"\n" + b"{}",
        codec.encode(ReplayPage(stream_id=STREAM, events=1, more=False)) + b"\n" + b"{}\n{}",
        codec.encode(ReplayPage(stream_id=STREAM, events=1, more=False)) + b"\n",
        codec.encode(StreamStart(stream_id=STREAM, epoch="e", model="m", created=0, runner_id="r", ts=0.0)),
    ],
)
def test_a_page_whose_count_or_header_is_wrong_is_a_codec_error(data: bytes) -> None:
    with pytest.raises(CodecError):
        decode_page(data)


def test_encoded_events_never_contain_the_line_separator() -> None:
    # The framing relies on it: text with line breaks is escaped by JSON.
    for event in _events(5):
        assert b"\n" not in codec.encode(event)
    header = ReplayPage(stream_id=STREAM, events=0, more=False)
    assert decode_page(encode_page(header, [])).header == header
