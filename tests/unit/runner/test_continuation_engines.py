"""Spec of the engines continuing a stream that moved from a lost runner: what each can continue, the synthetic
engine's exact continuation of an uninterrupted run, and what the openai engine asks its upstream (no sleeps: the
synthetic engine runs unpaced, the fake upstream sends its chunks back to back)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tokenrelay.runner.engines import EngineError, GenerationRequest, Piece, TextTail
from tokenrelay.runner.engines.base import can_continue, continues_of
from tokenrelay.runner.engines.openai import OpenAIEngine
from tokenrelay.runner.engines.synthetic import SyntheticEngine, after_tokens
from tokenrelay.runtime.config import SyntheticConfig
from tokenrelay.testing.fake_openai import FakeUpstream
from tokenrelay.wire.content import ChatMessage
from tokenrelay.wire.errors import ErrorCode
from tokenrelay.wire.messages import Continuation, Continues, FinishReason

ASK = (ChatMessage(role="user", content="weather in Paris?"),)
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
REQUESTS: dict[str, dict[str, Any]] = {
    "text": {},
    "reasoning and text": {"reasoning_effort": "low", "stop": "zzz"},
    "tool call": {"tools": [TOOL], "reasoning_effort": "minimal"},
}


def continuation(tokens: int, *, text: str = "", typed: bool = False) -> Continuation:
    return Continuation(gen=1, seq=tokens + 1, tokens=tokens, text=text, typed=typed)


async def synthetic_run(
    params: dict[str, Any], moved: Continuation | None = None, *, max_tokens: int = 1000
) -> tuple[list[Piece], list[FinishReason], list[int], list[int]]:
    """The pieces of one run, with the finish reasons, prompt counts and completion counts it reported."""
    engine = SyntheticEngine(SyntheticConfig(ttft_ms=0, tokens_per_s=0, step_ms=0))
    finishes: list[FinishReason] = []
    prompts: list[int] = []
    completions: list[int] = []
    request = GenerationRequest(
        stream_id="s", model="synthetic", messages=ASK, max_tokens=max_tokens, params=params, continuation=moved,
        on_finish_reason=finishes.append, on_prompt_tokens=prompts.append, on_completion_tokens=completions.append,
    )  # fmt: skip
    pieces = [piece async for piece in engine.stream(request)]
    await engine.aclose()
    return pieces, finishes, prompts, completions


@pytest.mark.parametrize("kind", REQUESTS)
async def test_a_synthetic_continuation_from_every_token_is_the_uninterrupted_run_from_there(kind: str) -> None:
    params = REQUESTS[kind]
    whole, finishes, prompts, completions = await synthetic_run(params)
    assert len(whole) > 3
    for k in range(len(whole) + 1):
        pieces, moved_finishes, moved_prompts, moved_completions = await synthetic_run(params, continuation(k))
        assert pieces == whole[k:], k
        assert (moved_finishes, moved_prompts, moved_completions) == (finishes, prompts, completions), k


async def test_the_synthetic_continuation_of_a_reasoning_request_goes_from_its_reasoning_into_its_text() -> None:
    whole, *_ = await synthetic_run(REQUESTS["reasoning and text"])
    pieces, *_ = await synthetic_run(REQUESTS["reasoning and text"], continuation(2, typed=True))
    assert [type(piece).__name__ for piece in pieces[:3]] == ["Reasoning", "Reasoning", "str"]
    assert pieces == whole[2:]


async def test_a_synthetic_continuation_stops_where_the_uninterrupted_run_stops_at_max_tokens() -> None:
    whole, *_ = await synthetic_run({}, max_tokens=10)
    pieces, *_ = await synthetic_run({}, continuation(4), max_tokens=10)
    assert pieces == whole[4:10]


def test_skipping_tokens_never_skips_a_text_tail() -> None:
    pieces: list[Piece] = ["a", "b", TextTail("!")]
    assert list(after_tokens(pieces, 2)) == [TextTail("!")]
    assert list(after_tokens(pieces, 5)) == [TextTail("!")]


def test_each_engine_declares_what_it_can_continue() -> None:
    assert continues_of(SyntheticEngine(SyntheticConfig())) is Continues.ANY
    assert continues_of(OpenAIEngine(base_url="http://up/v1", model="m")) is Continues.NOTHING
    assert continues_of(OpenAIEngine(base_url="http://up/v1", model="m", continue_final_message=True)) is Continues.TEXT
    assert continues_of(object()) is Continues.NOTHING  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("continues", "typed", "taken"),
    [
        (Continues.NOTHING, False, False),
        (Continues.TEXT, False, True),
        (Continues.TEXT, True, False),
        (Continues.ANY, True, True),
    ],
)
def test_an_engine_takes_a_moved_stream_only_when_it_can_continue_its_content(
    continues: Continues, typed: bool, taken: bool
) -> None:
    assert can_continue(continues, continuation(3, typed=typed)) is taken


def openai_body(request: GenerationRequest) -> dict[str, Any]:
    engine = OpenAIEngine(base_url="http://up/v1", model="up", continue_final_message=True)
    return dict(orjson.loads(engine._body(request)))


def chat(moved: Continuation | None, *, max_tokens: int = 50, max_tokens_set: bool = True) -> GenerationRequest:
    return GenerationRequest(
        stream_id="s", model="m", messages=ASK, max_tokens=max_tokens, max_tokens_set=max_tokens_set,
        params={"temperature": 0.1}, continuation=moved,
    )  # fmt: skip


def test_the_openai_engine_continues_a_chat_as_a_final_assistant_message_with_what_is_left_of_max_tokens() -> None:
    body = openai_body(chat(continuation(12, text="It is sunny")))
    assert body["messages"] == [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": "It is sunny"},
    ]
    assert (body["continue_final_message"], body["add_generation_prompt"]) == (True, False)
    assert body["max_tokens"] == 38
    assert body["temperature"] == 0.1


def test_the_openai_engine_sends_a_new_chat_without_the_continuation_fields() -> None:
    body = openai_body(chat(None))
    assert "continue_final_message" not in body and "add_generation_prompt" not in body
    assert body["max_tokens"] == 50


def test_the_openai_engine_sends_no_limit_for_a_continuation_when_nobody_set_one() -> None:
    assert "max_tokens" not in openai_body(chat(continuation(12, text="It"), max_tokens_set=False))


def test_the_openai_engine_continues_a_text_completion_after_its_prompt_without_extra_fields() -> None:
    request = GenerationRequest(
        stream_id="s", model="m", messages=(), prompt="def add(a, b):", max_tokens=20,
        continuation=continuation(3, text="\n    return"),
    )  # fmt: skip
    body = openai_body(request)
    assert body["prompt"] == "def add(a, b):\n    return"
    assert "continue_final_message" not in body and "messages" not in body
    assert body["max_tokens"] == 17


def test_the_openai_engine_refuses_to_continue_reasoning_or_tool_calls() -> None:
    with pytest.raises(EngineError) as caught:
        openai_body(chat(continuation(5, text="", typed=True)))
    assert caught.value.code == ErrorCode.UNSUPPORTED_PARAMETER


async def test_the_openai_engine_reports_usage_counting_the_tokens_before_the_move() -> None:
    upstream = FakeUpstream(words=[" and", " warm"], interval_s=0, usage_prompt_tokens=30)
    await upstream.start()
    engine = OpenAIEngine(base_url=upstream.url, model="up", continue_final_message=True)
    prompts: list[int] = []
    completions: list[int] = []
    request = GenerationRequest(
        stream_id="s", model="m", messages=ASK, max_tokens=50, continuation=continuation(12, text="It is sunny"),
        on_prompt_tokens=prompts.append, on_completion_tokens=completions.append,
    )  # fmt: skip
    try:
        pieces = [piece async for piece in engine.stream(request)]
    finally:
        await engine.aclose()
        await upstream.stop()
    assert pieces == [" and", " warm"]
    received = upstream.calls[0].body
    assert received["messages"] == [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": "It is sunny"},
    ]
    assert (received["continue_final_message"], received["add_generation_prompt"], received["max_tokens"]) == (
        True,
        False,
        38,
    )
    assert (prompts, completions) == ([18], [14])  # 30 - 12 prompt tokens; 12 + 2 completion tokens
