"""The incremental detokenizer emits whole characters only, whatever the token boundaries."""

from __future__ import annotations

from collections.abc import Sequence

from tokenrelay.runner.engines.detokenize import IncrementalDetokenizer

TEXT = "héllo 日本語 🚀👩‍💻 done"
BYTES = TEXT.encode()


def byte_decode(ids: Sequence[int]) -> str:
    """A byte-level 'tokenizer': each id is one byte, decoded like a BPE tokenizer does (errors -> U+FFFD)."""
    return bytes(ids).decode("utf-8", errors="replace")


def test_detokenizer_never_emits_a_broken_character_when_each_token_is_one_byte() -> None:
    detok = IncrementalDetokenizer(byte_decode)
    pieces = [detok.push(b) for b in BYTES]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + detok.flush() == TEXT


def test_detokenizer_emits_ascii_tokens_immediately() -> None:
    detok = IncrementalDetokenizer(byte_decode)
    assert [detok.push(b) for b in b"abc"] == ["a", "b", "c"]


def test_detokenizer_holds_a_split_character_until_its_last_byte_arrives() -> None:
    detok = IncrementalDetokenizer(byte_decode)
    rocket = "🚀".encode()
    assert [detok.push(b) for b in rocket[:-1]] == ["", "", ""]
    assert detok.push(rocket[-1]) == "🚀"


def test_detokenizer_flush_gives_up_an_incomplete_character_as_replacement() -> None:
    detok = IncrementalDetokenizer(byte_decode)
    detok.push("é".encode()[0])
    assert detok.flush() == "\ufffd"
