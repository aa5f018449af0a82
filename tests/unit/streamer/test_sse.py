"""Spec of SSE framing, checked byte for byte and against an independent WHATWG parser."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from tokenrelay.streamer.sse import PING, FramingError, encode_comment, encode_event, encode_retry

# WHATWG HTML §9.2.6: lines end in CRLF, a lone CR or a lone LF -- nothing else.
_SSE_LINE_BREAK = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class ParsedEvent:
    """One dispatched event as an EventSource would see it."""

    type: str
    data: str
    last_event_id: str


@dataclass(frozen=True)
class ParsedStream:
    """Everything a client takes from a byte stream."""

    events: list[ParsedEvent]
    retry_ms: int | None


def parse_sse(stream: bytes) -> ParsedStream:
    """Interpret an event stream per WHATWG HTML §9.2.6 (independent of the code under test)."""
    text = stream.decode("utf-8")
    text = text.removeprefix("\ufeff")
    # The last piece is an unterminated line; at end of stream it is discarded with its event.
    lines = _SSE_LINE_BREAK.split(text)[:-1]
    events: list[ParsedEvent] = []
    data, event_type, last_id, retry = "", "", "", None
    for line in lines:
        if line == "":
            if data == "":
                event_type = ""
                continue
            events.append(ParsedEvent(event_type or "message", data.removesuffix("\n"), last_id))
            data, event_type = "", ""
            continue
        if line.startswith(":"):
            continue
        name, colon, value = line.partition(":")
        if colon:
            value = value.removeprefix(" ")
        if name == "event":
            event_type = value
        elif name == "data":
            data += value + "\n"
        elif name == "id":
            if "\0" not in value:
                last_id = value
        elif name == "retry" and value and all(c in "0123456789" for c in value):
            retry = int(value)
    return ParsedStream(events, retry)


def normalise_line_breaks(text: str) -> str:
    """What a client reads back for ``text``: every CRLF and lone CR becomes LF."""
    return _SSE_LINE_BREAK.sub("\n", text)


NASTY_DATA = [
    "data: x\n\nevent: evil",
    "id: 9\r\n",
    "\r\r\n\n",
    "",
    "\n",
    "\r",
    "\r\n",
    "\n\n\n\n",
    "trailing\r",
    "event: stop\ndata: {}\n\n",
    "retry: 1\n\n",
    ":comment\n: ping\n\n",
    "data:data:",
    " leading space",
    "  two leading spaces",
    "\ufeffbom-looking start",
    "nul\0inside",
    "café naïve façade über",
    "日本語 流式 トークン 한국어",
    "😀🚀🧪 👩\u200d💻 ∑ →",
    "not SSE breaks: \u2028 \u2029 \x85 \x0b \x0c",
    '{"text": "a\\nb", "index": 3}',
]


# --- the test's parser agrees with the spec's own examples ---------------------------------


def test_reference_parser_joins_data_lines_as_in_the_whatwg_example() -> None:
    parsed = parse_sse(b"data: YHOO\ndata: +2\ndata: 10\n\n")
    assert parsed.events == [ParsedEvent("message", "YHOO\n+2\n10", "")]


def test_reference_parser_strips_only_one_leading_space() -> None:
    parsed = parse_sse(b"data:test\n\ndata: test\n\ndata:  test\n\n")
    assert [e.data for e in parsed.events] == ["test", "test", " test"]


def test_reference_parser_discards_unterminated_event_at_end_of_stream() -> None:
    assert parse_sse(b"data: first\n\ndata: cut off\n").events == [ParsedEvent("message", "first", "")]


# --- exact bytes -----------------------------------------------------------------------------


def test_encode_event_frames_data_only() -> None:
    assert encode_event("hello") == b"data: hello\n\n"


def test_encode_event_frames_event_then_id_then_data() -> None:
    assert encode_event("hi", event="delta", id="e1:3") == b"event: delta\nid: e1:3\ndata: hi\n\n"


def test_encode_event_frames_empty_data_as_one_empty_data_line() -> None:
    assert encode_event("") == b"data: \n\n"


@pytest.mark.parametrize(
    ("data", "framed"),
    [
        ("a\nb", b"data: a\ndata: b\n\n"),
        ("a\rb", b"data: a\ndata: b\n\n"),
        ("a\r\nb", b"data: a\ndata: b\n\n"),
        ("a\n\rb", b"data: a\ndata: \ndata: b\n\n"),
        ("a\n", b"data: a\ndata: \n\n"),
        ("\r\r\n\n", b"data: \ndata: \ndata: \ndata: \n\n"),
    ],
)
def test_encode_event_splits_data_on_every_sse_line_break(data: str, framed: bytes) -> None:
    assert encode_event(data) == framed


def test_encode_event_encodes_multibyte_text_as_utf8() -> None:
    assert encode_event("café 日本 😀") == "data: café 日本 😀\n\n".encode()


@pytest.mark.parametrize("field", ["event", "id"])
@pytest.mark.parametrize("value", ["a\rb", "a\nb", "a\r\nb", "\n", "a\0b", "trailing\r"])
def test_encode_event_refuses_event_or_id_containing_cr_lf_or_nul(field: str, value: str) -> None:
    with pytest.raises(FramingError):
        encode_event("x", **{field: value})


def test_framing_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        encode_event("x", id="1\n")


def test_encode_comment_frames_one_comment_line_and_a_blank_line() -> None:
    assert encode_comment("ping") == b": ping\n\n"
    assert encode_comment("ping") == PING


def test_encode_comment_splits_text_on_line_breaks() -> None:
    assert encode_comment("a\nb\r\nc") == b": a\n: b\n: c\n\n"


def test_encode_retry_frames_retry_field() -> None:
    assert encode_retry(3000) == b"retry: 3000\n\n"
    assert encode_retry(0) == b"retry: 0\n\n"


def test_encode_retry_refuses_negative_delay() -> None:
    with pytest.raises(FramingError):
        encode_retry(-1)


# --- what a client sees ----------------------------------------------------------------------


@pytest.mark.parametrize("data", NASTY_DATA)
def test_any_data_is_delivered_as_exactly_one_event_with_line_breaks_normalised(data: str) -> None:
    parsed = parse_sse(encode_event(data, event="delta", id="e1:7"))
    assert parsed.events == [ParsedEvent("delta", normalise_line_breaks(data), "e1:7")]
    assert parsed.retry_ms is None


@pytest.mark.parametrize("data", NASTY_DATA)
def test_data_without_event_or_id_is_delivered_as_one_message_event(data: str) -> None:
    parsed = parse_sse(encode_event(data))
    assert parsed.events == [ParsedEvent("message", normalise_line_breaks(data), "")]


@pytest.mark.parametrize("text", NASTY_DATA)
def test_a_comment_never_produces_an_event(text: str) -> None:
    assert parse_sse(encode_comment(text) + PING).events == []


def test_frames_concatenate_into_a_stream_a_client_reads_in_order() -> None:
    stream = (
        encode_retry(1500)
        + encode_comment("hello\nthere")
        + encode_event("first", event="start", id="e1:0")
        + PING
        + encode_event("second\nline", event="delta", id="e1:2")
        + encode_event("data: x\n\nevent: evil")
    )
    parsed = parse_sse(stream)
    assert parsed.retry_ms == 1500
    assert parsed.events == [
        ParsedEvent("start", "first", "e1:0"),
        ParsedEvent("delta", "second\nline", "e1:2"),
        ParsedEvent("message", "data: x\n\nevent: evil", "e1:2"),
    ]
