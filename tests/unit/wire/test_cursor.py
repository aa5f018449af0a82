"""Spec of the SSE cursor ``<epoch>:<offset>``: strict parsing, exact round trip."""

from __future__ import annotations

import pytest

from tokenrelay.wire.cursor import MAX_CURSOR_CHARS, Cursor, CursorError


@pytest.mark.parametrize(
    ("text", "epoch", "offset"),
    [
        ("a:0", "a", 0),
        ("0:0", "0", 0),
        ("deadbeef:42", "deadbeef", 42),
        ("0123456789abcdef0123456789abcdef:9999999999", "0123456789abcdef0123456789abcdef", 9_999_999_999),
    ],
)
def test_cursor_parses_epoch_and_offset(text: str, epoch: str, offset: int) -> None:
    assert Cursor.parse(text) == Cursor(epoch, offset)


@pytest.mark.parametrize("cursor", [Cursor("a", 0), Cursor("deadbeef", 17), Cursor("f" * 32, 9_999_999_999)])
def test_cursor_formats_and_parses_back_to_itself(cursor: Cursor) -> None:
    assert Cursor.parse(str(cursor)) == cursor


def test_cursor_formats_as_epoch_colon_offset() -> None:
    assert str(Cursor("beef", 12)) == "beef:12"


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("abc", id="no-colon"),
        pytest.param("abc12", id="no-colon-digits"),
        pytest.param(":1", id="empty-epoch"),
        pytest.param("a:", id="empty-offset"),
        pytest.param("A:1", id="uppercase-epoch"),
        pytest.param("aB:1", id="mixed-case-epoch"),
        pytest.param("xyz:1", id="non-hex-epoch"),
        pytest.param("a:-1", id="negative"),
        pytest.param("a:+1", id="plus-sign"),
        pytest.param("a:01", id="leading-zero"),
        pytest.param("a:00", id="double-zero"),
        pytest.param("a: 1", id="space-before-offset"),
        pytest.param(" a:1", id="leading-space"),
        pytest.param("a:1 ", id="trailing-space"),
        pytest.param("a :1", id="space-after-epoch"),
        pytest.param("a:1\n", id="trailing-newline"),
        pytest.param("a:1.0", id="decimal-point"),
        pytest.param("a:1e3", id="exponent"),
        pytest.param("a:0x10", id="hex-offset"),
        pytest.param("a:1:2", id="two-colons"),
        pytest.param("a:\u0661", id="non-ascii-digit"),
        pytest.param("a:12345678901", id="offset-over-10-digits"),
        pytest.param("a" * 33 + ":1", id="epoch-over-32-chars"),
        pytest.param("a" * MAX_CURSOR_CHARS + ":1", id="too-long"),
        pytest.param("a:" + "1" * MAX_CURSOR_CHARS, id="too-long-offset"),
    ],
)
def test_cursor_parse_rejects_malformed_text(text: str) -> None:
    with pytest.raises(CursorError):
        Cursor.parse(text)


def test_cursor_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        Cursor.parse("nope")
