"""The client's sans-I/O SSE decoder, per WHATWG HTML §9.2.6 "Interpreting an event stream"."""

from __future__ import annotations

import pytest

from tokenrelay.client.errors import ProtocolError
from tokenrelay.client.sse import ServerSentEvent, SSEDecoder
from tokenrelay.streamer.sse import PING, encode_event

STREAM = (
    "\ufeffevent: start\nid: ab:0\ndata: {}\n\n"
    ": ping\n\n"
    "event: delta\r\nid: ab:1\r\ndata: Привет 👩‍💻\r\ndata: 日本語\r\n\r\n"
    "event: stop\rid: ab:1\rdata: end\r\r"
).encode()


def feed_all(decoder: SSEDecoder, chunks: list[bytes]) -> list[ServerSentEvent]:
    return [event for chunk in chunks for event in decoder.feed(chunk)]


def test_an_event_is_dispatched_at_the_blank_line_that_ends_it() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"event: delta\nid: e:1\ndata: hi\n") == []
    assert decoder.feed(b"\n") == [ServerSentEvent("delta", "hi", "e:1", "e:1")]


def test_lines_may_end_in_crlf_cr_or_lf() -> None:
    events = SSEDecoder().feed(STREAM)
    assert [(e.event, e.id) for e in events] == [("start", "ab:0"), ("delta", "ab:1"), ("stop", "ab:1")]
    assert events[1].data == "Привет 👩‍💻\n日本語"


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 64])
def test_any_chunking_gives_the_same_events_as_one_chunk(size: int) -> None:
    chunks = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
    assert feed_all(SSEDecoder(), chunks) == SSEDecoder().feed(STREAM)


def test_a_crlf_split_between_chunks_is_one_line_break() -> None:
    chunks = [b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]
    assert feed_all(SSEDecoder(), chunks) == [ServerSentEvent("message", "a\nb", None, "")]


def test_a_cr_at_the_end_of_a_chunk_ends_its_line_without_waiting_for_the_next_chunk() -> None:
    assert SSEDecoder().feed(b"data: now\r\r") == [ServerSentEvent("message", "now", None, "")]


def test_a_utf8_character_split_between_chunks_is_decoded_whole() -> None:
    data = "data: é日👩‍💻\n\n".encode()
    assert feed_all(SSEDecoder(), [bytes([b]) for b in data]) == [ServerSentEvent("message", "é日👩‍💻", None, "")]


def test_bytes_that_are_not_utf8_become_replacement_characters() -> None:
    assert SSEDecoder().feed(b"data: a\xffb\n\n")[0].data == "a\ufffdb"


def test_multi_line_data_is_joined_with_line_feeds() -> None:
    assert SSEDecoder().feed(b"data: one\ndata:two\ndata\ndata:  four\n\n")[0].data == "one\ntwo\n\n four"


def test_comments_such_as_the_heartbeat_ping_dispatch_nothing() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(PING * 3 + b": anything: at all\n\n") == []
    assert decoder.feed(b"data: x\n: a comment inside an event\n\n") == [ServerSentEvent("message", "x", None, "")]


def test_the_event_type_defaults_to_message_and_does_not_carry_over() -> None:
    events = SSEDecoder().feed(b"event: delta\ndata: 1\n\ndata: 2\n\n")
    assert [e.event for e in events] == ["delta", "message"]


def test_the_last_event_id_persists_but_id_is_only_the_events_own() -> None:
    events = SSEDecoder().feed(b"id: c:1\ndata: a\n\ndata: b\n\n")
    assert [(e.id, e.last_event_id) for e in events] == [("c:1", "c:1"), (None, "c:1")]


def test_an_id_containing_nul_is_ignored() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"id: good\n\nid: b\x00d\ndata: x\n\n")
    assert decoder.last_event_id == "good"


def test_an_event_without_data_is_not_dispatched_but_its_id_counts() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"event: delta\nid: z:9\n\n") == []
    assert decoder.last_event_id == "z:9"


def test_retry_sets_the_reconnection_time_only_when_it_is_all_digits() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"retry: 1500\n\nretry: 1.5\n\nretry: -1\n\n")
    assert decoder.retry_ms == 1500


def test_one_leading_byte_order_mark_is_skipped() -> None:
    decoder = SSEDecoder()
    assert feed_all(decoder, [b"\xef\xbb", b"\xbfdata: x\n\n"]) == [ServerSentEvent("message", "x", None, "")]
    assert decoder.feed("\ufeffdata: y\n\n".encode()) == []  # not at the start: part of an unknown field's name


def test_unknown_fields_are_ignored() -> None:
    assert SSEDecoder().feed(b"foo: bar\ndata: x\nDATA: y\n\n") == [ServerSentEvent("message", "x", None, "")]


def test_reset_drops_the_unfinished_event_and_keeps_the_last_event_id() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"id: k:3\ndata: done\n\nevent: delta\nid: k:4\ndata: half")
    decoder.reset()
    assert decoder.last_event_id == "k:4"
    assert decoder.feed(b"data: fresh\n\n") == [ServerSentEvent("message", "fresh", None, "k:4")]


def test_a_line_over_max_event_chars_raises_protocol_error() -> None:
    decoder = SSEDecoder(max_event_chars=100)
    decoder.feed(b"data: " + b"x" * 90)
    with pytest.raises(ProtocolError, match="limit of 100"):
        decoder.feed(b"x" * 20)


def test_data_lines_adding_up_over_max_event_chars_raise_protocol_error() -> None:
    decoder = SSEDecoder(max_event_chars=100)
    with pytest.raises(ProtocolError):
        decoder.feed(b"data: " + b"x" * 40 + b"\n" + b"data: " + b"x" * 40 + b"\ndata: " + b"x" * 40 + b"\n")


def test_max_event_chars_applies_per_event_not_per_stream() -> None:
    decoder = SSEDecoder(max_event_chars=100)
    for _ in range(50):
        assert len(decoder.feed(b"data: " + b"x" * 80 + b"\n\n")) == 1


@pytest.mark.parametrize("data", ['{"text":"a\\nb"}', "line one\nline two\r\nline three\rend", "", "日本語 👩‍💻"])
def test_what_the_streamer_frames_decodes_to_the_same_fields(data: str) -> None:
    frame = encode_event(data, event="delta", id="ep:7")
    expected = data.replace("\r\n", "\n").replace("\r", "\n")
    assert SSEDecoder().feed(frame) == [ServerSentEvent("delta", expected, "ep:7", "ep:7")]
