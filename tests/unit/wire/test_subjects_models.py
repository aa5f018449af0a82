"""Spec of the per-model job subjects: a model name becomes one safe subject token, and back."""

from __future__ import annotations

import pytest

from tokenrelay.wire import subjects

NAMES = (
    "synthetic",
    "meta-llama/Llama-3.1-8B-Instruct",
    "qwen2.5:7b",
    "gpt-4o mini",
    "a*b>c",
    "modèle-日本語-🚀",
    "~",
    "%41",
    "under_score-dash",
)


@pytest.mark.parametrize("name", NAMES)
def test_a_model_name_becomes_one_subject_token_made_only_of_safe_characters(name: str) -> None:
    token = subjects.model_token(name)
    assert token
    assert all(ch.isascii() and (ch.isalnum() or ch in "-_~") for ch in token)


@pytest.mark.parametrize("name", NAMES)
def test_a_model_token_decodes_back_to_its_name(name: str) -> None:
    assert subjects.model_from_token(subjects.model_token(name)) == name


def test_letters_digits_dashes_and_underscores_are_kept_so_tokens_read_like_their_names() -> None:
    assert subjects.model_token("synthetic") == "synthetic"
    assert subjects.model_token("Llama-3_1") == "Llama-3_1"


def test_dots_colons_slashes_and_the_escape_itself_are_escaped_as_hex_bytes() -> None:
    assert subjects.model_token("qwen2.5:7b") == "qwen2~2E5~3A7b"
    assert subjects.model_token("meta-llama/Llama-3.1-8B-Instruct") == "meta-llama~2FLlama-3~2E1-8B-Instruct"
    assert subjects.model_token("~") == "~7E"


def test_non_ascii_is_escaped_byte_by_byte_in_utf8() -> None:
    assert subjects.model_token("é") == "~C3~A9"


def test_different_names_never_share_a_token() -> None:
    tokens = [subjects.model_token(name) for name in NAMES]
    assert len(set(tokens)) == len(tokens)


def test_the_jobs_subject_of_a_model_is_the_prefix_and_one_more_token() -> None:
    subject = subjects.jobs("qwen2.5:7b")
    assert subject == f"{subjects.JOBS_PREFIX}.qwen2~2E5~3A7b"
    assert subject.count(".") == subjects.JOBS_PREFIX.count(".") + 1
    assert not any(ch in subject for ch in "*> \t")


def test_an_empty_model_name_has_no_token() -> None:
    with pytest.raises(ValueError, match="empty"):
        subjects.model_token("")
    with pytest.raises(ValueError):
        subjects.jobs("")


@pytest.mark.parametrize("token", ["", "a.b", "a*", ">", "a b", "~4", "~zz", "~41", "~c3~a9", "~FF", "é"])
def test_a_token_the_encoding_cannot_have_made_is_refused(token: str) -> None:
    with pytest.raises(ValueError):
        subjects.model_from_token(token)
