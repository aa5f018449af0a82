"""Spec of the engines given a text completion (a raw prompt, ``suffix`` for fill-in-the-middle): the synthetic
engine keys its text on the prompt and the suffix, the openai engine sends the upstream's completions body and reads
its ``text_completion`` chunks, the transformers engine refuses ``suffix``."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tokenrelay.runner.engines import EngineError, GenerationRequest, Piece
from tokenrelay.runner.engines.openai import OpenAIEngine
from tokenrelay.runner.engines.openai_chunks import chunk_pieces
from tokenrelay.runner.engines.synthetic import (
    SyntheticEngine,
    completion_text,
    keyed_text,
    prompt_tokens,
    synthetic_tokens,
)
from tokenrelay.runner.engines.transformers_params import ACCEPTED_PARAMETERS, generate_kwargs
from tokenrelay.runtime.config import SyntheticConfig
from tokenrelay.wire.errors import ErrorCode
from tokenrelay.wire.messages import FinishReason

PREFIX = "def add(a, b):\n    "
SUFFIX = "\n\nprint(add(1, 2))\n"
LENGTH_TOKENS = 40


def completion(prompt: str = PREFIX, *, max_tokens: int = 100, **params: Any) -> GenerationRequest:
    return GenerationRequest(stream_id="s", model="m", messages=(), prompt=prompt, max_tokens=max_tokens, params=params)


async def synthetic(request: GenerationRequest) -> list[Piece]:
    engine = SyntheticEngine(SyntheticConfig(ttft_ms=0, tokens_per_s=0, step_ms=0, length_tokens=LENGTH_TOKENS))
    return [piece async for piece in engine.stream(request)]


def expected(prompt: str, suffix: str | None = None, *, max_tokens: int = 100) -> list[str]:
    return synthetic_tokens(completion_text(prompt, suffix), max_tokens=max_tokens, length_tokens=LENGTH_TOKENS)


def test_a_completion_without_a_suffix_is_keyed_on_its_prompt_alone() -> None:
    assert completion_text(PREFIX) == PREFIX
    assert completion_text(PREFIX, "") == PREFIX
    assert keyed_text(completion()) == PREFIX


def test_a_completion_with_a_suffix_is_keyed_on_the_prompt_a_suffix_line_and_the_suffix() -> None:
    assert completion_text(PREFIX, SUFFIX) == PREFIX + "\nsuffix: " + SUFFIX
    assert keyed_text(completion(suffix=SUFFIX)) == PREFIX + "\nsuffix: " + SUFFIX


async def test_the_synthetic_engine_continues_the_raw_prompt_never_a_chat_message() -> None:
    assert await synthetic(completion()) == expected(PREFIX)
    assert not keyed_text(completion()).startswith("user:")


async def test_the_synthetic_answer_changes_with_the_suffix_and_is_the_same_for_the_same_suffix() -> None:
    plain = await synthetic(completion())
    with_suffix = await synthetic(completion(suffix=SUFFIX))
    other_suffix = await synthetic(completion(suffix="\nreturn None\n"))
    assert with_suffix == expected(PREFIX, SUFFIX)
    assert len({"".join(map(str, text)) for text in (plain, with_suffix, other_suffix)}) == 3
    assert await synthetic(completion(suffix=SUFFIX)) == with_suffix


async def test_the_synthetic_engine_cuts_a_completion_at_its_stop_sequence_and_reports_stop() -> None:
    finish: list[FinishReason] = []
    whole = "".join(expected(PREFIX, SUFFIX))
    stop = whole[10:14]
    request = GenerationRequest(
        stream_id="s", model="m", messages=(), prompt=PREFIX, max_tokens=100, params={"suffix": SUFFIX, "stop": [stop]},
        on_finish_reason=finish.append,
    )  # fmt: skip
    text = "".join(map(str, await synthetic(request)))
    assert text == whole[: whole.find(stop)]
    assert finish == [FinishReason.STOP]


async def test_the_synthetic_engine_stops_a_completion_at_max_tokens() -> None:
    assert await synthetic(completion(max_tokens=5, suffix=SUFFIX)) == expected(PREFIX, SUFFIX, max_tokens=5)


async def test_a_completion_is_text_only_even_with_reasoning_or_tools_asked_for() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    pieces = await synthetic(completion(suffix=SUFFIX, reasoning_effort="high", tools=tools))
    assert pieces == expected(PREFIX, SUFFIX)
    assert all(type(piece) is str for piece in pieces)


async def test_the_synthetic_engine_reports_the_words_of_prompt_and_suffix_as_prompt_tokens() -> None:
    told: list[int] = []
    request = GenerationRequest(
        stream_id="s", model="m", messages=(), prompt="a b c", max_tokens=3, params={"suffix": "d e"},
        on_prompt_tokens=told.append,
    )  # fmt: skip
    await synthetic(request)
    assert told == [prompt_tokens("a b c\nsuffix: d e")] == [6]


def test_the_openai_engine_sends_the_prompt_the_suffix_and_every_param_as_sent_for_the_upstreams_completions() -> None:
    engine = OpenAIEngine(base_url="http://up/v1", model="up-model")
    params: dict[str, Any] = {
        "suffix": SUFFIX,
        "stop": ["\n\n"],
        "temperature": 0.2,
        "echo": False,
        "logprobs": 2,
        "top_k": 5,
    }
    body = orjson.loads(engine._body(completion(max_tokens=16, **params)))
    assert body == {
        **params, "model": "up-model", "prompt": PREFIX, "max_tokens": 16, "stream": True,
        "stream_options": {"include_usage": True},
    }  # fmt: skip
    assert "messages" not in body


def text_chunk(text: str | None, *, finish: str | None = None) -> str:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    return orjson.dumps({"id": "t1", "object": "text_completion", "choices": [choice]}).decode()


def test_a_text_completion_chunks_text_is_one_text_piece_and_its_finish_reason_is_reported() -> None:
    finish: list[FinishReason] = []
    request = GenerationRequest(
        stream_id="s", model="m", messages=(), prompt="p", max_tokens=5, on_finish_reason=finish.append
    )
    assert chunk_pieces(text_chunk("return a + b"), request) == ["return a + b"]
    assert chunk_pieces(text_chunk("", finish="length"), request) == []
    assert finish == [FinishReason.LENGTH]


def test_a_text_completion_chunk_whose_text_is_not_a_string_is_an_upstream_error() -> None:
    with pytest.raises(EngineError) as caught:
        chunk_pieces(text_chunk(None).replace("null", "7", 1), completion())
    assert caught.value.code == ErrorCode.UPSTREAM_ERROR


def test_the_transformers_engine_cannot_honour_a_suffix() -> None:
    assert "suffix" not in ACCEPTED_PARAMETERS
    with pytest.raises(EngineError) as caught:
        generate_kwargs({"suffix": SUFFIX})
    assert caught.value.code == ErrorCode.UNSUPPORTED_PARAMETER
    assert "suffix" in caught.value.message
