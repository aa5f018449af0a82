"""Property tests: arbitrary text round-trips through the codec and the SSE framing, no text can make or change an SSE
event, and the cursor parser accepts exactly the cursors tokenrelay issues."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenrelay.client.sse import SSEDecoder
from tokenrelay.streamer.frames import error_frame, frame
from tokenrelay.streamer.sse import FramingError, encode_event
from tokenrelay.wire import codec
from tokenrelay.wire.cursor import MAX_CURSOR_CHARS, Cursor, CursorError
from tokenrelay.wire.messages import StreamDelta

EPOCHS = st.text(alphabet="0123456789abcdef", min_size=1, max_size=32)
PIECES = st.sampled_from(["\n", "\r", "\r\n", "data:", "event:", "id:", "retry:", ":", " ", "\0", "a", "é", "\u2028"])
HOSTILE = st.lists(PIECES, max_size=16).map("".join)
"""Text built from what could end an SSE line or start a field, if framing let it through."""
TEXT = st.one_of(st.text(), HOSTILE)
SETTINGS = settings(max_examples=300, deadline=None)


def _deltas(text: str, index: int) -> StreamDelta:
    return StreamDelta(seq=index, text=text, index=index, count=1, ts=1.5)


def _decode(data: bytes) -> list[tuple[str, str, str | None]]:
    return [(e.event, e.data, e.id) for e in SSEDecoder(max_event_chars=1 << 24).feed(data)]


@SETTINGS
@given(text=TEXT, index=st.integers(min_value=0, max_value=2**53), ts=st.floats(allow_nan=False, allow_infinity=False))
def test_any_delta_round_trips_through_the_wire_codec(text: str, index: int, ts: float) -> None:
    delta = StreamDelta(seq=index, text=text, index=index, count=1, ts=ts)
    assert codec.decode_event(codec.encode(delta)) == delta


@SETTINGS
@given(texts=st.lists(TEXT, min_size=1, max_size=6), epoch=EPOCHS)
def test_delta_frames_decode_to_exactly_one_event_each_carrying_the_exact_text(texts: list[str], epoch: str) -> None:
    wire = b"".join(frame(_deltas(text, i + 1), epoch) for i, text in enumerate(texts))
    events = _decode(wire)
    assert [(name, event_id) for name, _, event_id in events] == [
        ("delta", f"{epoch}:{i + 1}") for i in range(len(texts))
    ]
    assert [orjson.loads(data)["text"] for _, data, _ in events] == texts


@SETTINGS
@given(data=TEXT, name=st.sampled_from(["delta", "stop", "error"]), event_id=st.none() | EPOCHS)
def test_encode_event_makes_one_event_whose_data_is_the_text_with_line_breaks_normalised(
    data: str, name: str, event_id: str | None
) -> None:
    events = _decode(encode_event(data, event=name, id=event_id))
    normalised = data.replace("\r\n", "\n").replace("\r", "\n")
    assert events == [(name, normalised, event_id)]


@SETTINGS
@given(value=TEXT)
def test_an_event_name_or_id_that_could_end_its_line_is_refused_not_framed(value: str) -> None:
    for field in ("event", "id"):
        try:
            wire = encode_event("x", **{field: value})
        except FramingError:
            assert any(ch in value for ch in "\r\n\0")
            continue
        assert len(_decode(wire)) == 1


@SETTINGS
@given(code=TEXT, message=TEXT)
def test_an_error_frame_is_one_event_whatever_its_code_and_message(code: str, message: str) -> None:
    events = _decode(error_frame(code, message))
    assert len(events) == 1 and events[0][0] == "error"
    assert orjson.loads(events[0][1]) == {"code": code, "message": message}


@SETTINGS
@given(text=st.text(max_size=MAX_CURSOR_CHARS + 8))
def test_the_cursor_parser_accepts_only_text_it_would_write_itself(text: str) -> None:
    try:
        cursor = Cursor.parse(text)
    except CursorError:
        return
    assert str(cursor) == text


@SETTINGS
@given(epoch=EPOCHS, offset=st.integers(min_value=0, max_value=9_999_999_999))
def test_every_cursor_tokenrelay_writes_parses_back_to_itself(epoch: str, offset: int) -> None:
    assert Cursor.parse(str(Cursor(epoch, offset))) == Cursor(epoch, offset)
