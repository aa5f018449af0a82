"""Spec of the synthetic engine: deterministic, bounded, multi-script text."""

from __future__ import annotations

import pytest

from tokenrelay.runner.engines import GenerationRequest
from tokenrelay.runner.engines.synthetic import SyntheticEngine, prompt_text, prompt_tokens, synthetic_tokens
from tokenrelay.runtime.config import SyntheticConfig
from tokenrelay.wire.messages import ChatMessage

PROMPT = "user: tell me about streams"
ACCENTED = set("éïüñçÉÏÜÑÇέΩδ")


def _is_cjk(char: str) -> bool:
    return "\u3040" <= char <= "\u30ff" or "\u4e00" <= char <= "\u9fff" or "\uac00" <= char <= "\ud7af"


def _is_emoji(char: str) -> bool:
    return ord(char) >= 0x1F300


def test_synthetic_tokens_are_deterministic_for_a_prompt() -> None:
    assert synthetic_tokens(PROMPT, max_tokens=500) == synthetic_tokens(PROMPT, max_tokens=500)


def test_synthetic_tokens_differ_across_prompts() -> None:
    texts = {"".join(synthetic_tokens(f"user: prompt {i}", max_tokens=100, length_tokens=50)) for i in range(5)}
    assert len(texts) == 5


@pytest.mark.parametrize("max_tokens", [0, 1, 5, 17])
def test_synthetic_tokens_stop_at_max_tokens(max_tokens: int) -> None:
    assert len(synthetic_tokens(PROMPT, max_tokens=max_tokens, length_tokens=200)) == max_tokens


def test_synthetic_tokens_follow_length_tokens_when_under_max_tokens() -> None:
    assert len(synthetic_tokens(PROMPT, max_tokens=1000, length_tokens=200)) == 200


def test_synthetic_tokens_have_a_natural_length_between_16_and_63_without_length_tokens() -> None:
    for i in range(20):
        assert 16 <= len(synthetic_tokens(f"user: {i}", max_tokens=1000)) <= 63


def test_a_shorter_max_tokens_yields_a_prefix_of_the_same_text() -> None:
    full = synthetic_tokens(PROMPT, max_tokens=200, length_tokens=200)
    assert synthetic_tokens(PROMPT, max_tokens=30, length_tokens=200) == full[:30]


def test_synthetic_text_mixes_accents_cjk_emoji_and_line_breaks() -> None:
    text = "".join(synthetic_tokens(PROMPT, max_tokens=200, length_tokens=200))
    assert not text.isascii()
    assert any(c in ACCENTED for c in text)
    assert any(_is_cjk(c) for c in text)
    assert any(_is_emoji(c) for c in text)
    assert "\n" in text


def test_every_synthetic_token_is_nonempty_text_that_encodes_to_utf8() -> None:
    for token in synthetic_tokens(PROMPT, max_tokens=200, length_tokens=200):
        assert isinstance(token, str)
        assert token
        assert token.encode("utf-8").decode("utf-8") == token


def test_prompt_text_joins_role_and_content_of_every_message() -> None:
    messages = (ChatMessage(role="system", content="be brief"), ChatMessage(role="user", content="hi"))
    assert prompt_text(messages) == "system: be brief\nuser: hi"


async def test_synthetic_engine_streams_exactly_the_synthetic_tokens_of_its_prompt() -> None:
    messages = (ChatMessage(role="system", content="be brief"), ChatMessage(role="user", content="café 😀"))
    engine = SyntheticEngine(SyntheticConfig(ttft_ms=0, tokens_per_s=0, length_tokens=40))
    request = GenerationRequest(stream_id="s", model="synthetic", messages=messages, max_tokens=25)
    streamed = [token async for token in engine.stream(request)]
    assert streamed == synthetic_tokens(prompt_text(messages), max_tokens=25, length_tokens=40)
    assert len(streamed) == 25
    await engine.aclose()


async def test_synthetic_engine_with_natural_length_streams_the_synthetic_tokens() -> None:
    messages = (ChatMessage(role="user", content="hello"),)
    engine = SyntheticEngine(SyntheticConfig(ttft_ms=0, tokens_per_s=0))
    request = GenerationRequest(stream_id="s", model="synthetic", messages=messages, max_tokens=1000)
    streamed = [token async for token in engine.stream(request)]
    assert streamed == synthetic_tokens(prompt_text(messages), max_tokens=1000)


def test_the_synthetic_count_of_a_prompt_is_the_words_of_its_prompt_text() -> None:
    messages = (
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content="Hi  there\nfriend 😀"),
    )
    # "system: Be brief.\nuser: Hi  there\nfriend 😀"
    assert prompt_tokens(prompt_text(messages)) == 8


async def test_the_synthetic_engine_reports_its_prompt_count_before_its_first_token() -> None:
    messages = (ChatMessage(role="user", content="count these four words"),)
    engine = SyntheticEngine(SyntheticConfig(ttft_ms=0, tokens_per_s=0, length_tokens=3))
    reported: list[int] = []
    request = GenerationRequest(
        stream_id="s", model="synthetic", messages=messages, max_tokens=3, on_prompt_tokens=reported.append
    )
    tokens = engine.stream(request)
    assert reported == [5]  # "user:" and the four words
    assert len([token async for token in tokens]) == 3
    assert reported == [5]
    await engine.aclose()
