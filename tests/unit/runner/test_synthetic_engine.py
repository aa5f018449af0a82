"""Spec of the synthetic engine: deterministic, bounded, multi-script text; a tool call, reasoning and stop
sequences when the request asks for them."""

from __future__ import annotations

import orjson
import pytest

from tokenrelay.runner.engines import GenerationRequest, Piece, Reasoning, ToolCallFragment
from tokenrelay.runner.engines.synthetic import SyntheticEngine, prompt_text, prompt_tokens, synthetic_tokens
from tokenrelay.runner.engines.synthetic_content import cut_at_stop
from tokenrelay.runtime.config import SyntheticConfig
from tokenrelay.wire.content import ChatMessage, ToolCall
from tokenrelay.wire.messages import FinishReason

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


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "detailed": {"type": "boolean"},
                "threshold": {"type": "number"},
                "hours": {"type": "array", "items": {"type": "integer"}},
                "where": {"type": "object", "properties": {"lat": {"type": "number"}}, "required": ["lat"]},
                "note": {"type": "string"},
            },
            "required": ["city", "days", "unit", "detailed", "threshold", "hours", "where"],
        },
    },
}
ASK = (ChatMessage(role="user", content="weather in Paris?"),)


async def _pieces(
    params: dict[str, object], messages: tuple[ChatMessage, ...] = ASK, *, max_tokens: int = 1000
) -> tuple[list[Piece], list[FinishReason], list[int]]:
    engine = SyntheticEngine(SyntheticConfig(ttft_ms=0, tokens_per_s=0))
    finishes: list[FinishReason] = []
    completions: list[int] = []
    request = GenerationRequest(
        stream_id="s", model="synthetic", messages=messages, max_tokens=max_tokens, params=params,
        on_finish_reason=finishes.append, on_completion_tokens=completions.append,
    )  # fmt: skip
    pieces = [piece async for piece in engine.stream(request)]
    await engine.aclose()
    return pieces, finishes, completions


async def test_with_tools_the_synthetic_engine_calls_the_first_tool_with_arguments_satisfying_its_schema() -> None:
    other = {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}}
    pieces, finishes, completions = await _pieces({"tools": [WEATHER_TOOL, other]})
    assert all(isinstance(piece, ToolCallFragment) and piece.call == 0 for piece in pieces)
    fragments = [piece for piece in pieces if isinstance(piece, ToolCallFragment)]
    assert len(fragments) > 3  # streamed in several fragments
    first = fragments[0]
    assert first.name == "get_weather" and first.id is not None and first.id.startswith("call_")
    assert all(f.id is None and f.name is None for f in fragments[1:])
    arguments = orjson.loads("".join(f.arguments for f in fragments))
    assert arguments == {
        "city": "synthetic", "days": 42, "unit": "celsius", "detailed": True, "threshold": 1.5, "hours": [],
        "where": {"lat": 1.5},
    }  # fmt: skip
    assert finishes == [FinishReason.TOOL_CALLS]
    assert completions == [len(fragments)]


async def test_the_synthetic_tool_call_is_deterministic_for_a_prompt() -> None:
    first, _, _ = await _pieces({"tools": [WEATHER_TOOL]})
    again, _, _ = await _pieces({"tools": [WEATHER_TOOL]})
    other, _, _ = await _pieces({"tools": [WEATHER_TOOL]}, (ChatMessage(role="user", content="and in Rome?"),))
    assert first == again
    assert isinstance(first[0], ToolCallFragment) and isinstance(other[0], ToolCallFragment)
    assert first[0].id != other[0].id


async def test_after_a_tool_result_the_synthetic_engine_answers_in_text() -> None:
    messages = (
        *ASK,
        ChatMessage(role="assistant", tool_calls=(ToolCall(id="call_1", name="get_weather", arguments="{}"),)),
        ChatMessage(role="tool", content="sunny", tool_call_id="call_1"),
    )
    pieces, finishes, _ = await _pieces({"tools": [WEATHER_TOOL]}, messages)
    assert pieces == synthetic_tokens(prompt_text(messages), max_tokens=1000)
    assert finishes == []


async def test_tool_choice_none_makes_the_synthetic_engine_answer_in_text() -> None:
    pieces, _, _ = await _pieces({"tools": [WEATHER_TOOL], "tool_choice": "none"})
    assert pieces == synthetic_tokens(prompt_text(ASK), max_tokens=1000)


@pytest.mark.parametrize(
    ("params", "tokens"),
    [({"reasoning_effort": "low"}, 4), ({"reasoning_effort": "high"}, 16), ({"reasoning": {}}, 8),
     ({"reasoning": {"effort": "minimal"}}, 2)],
)  # fmt: skip
async def test_asked_to_reason_the_synthetic_engine_reasons_before_its_text(
    params: dict[str, object], tokens: int
) -> None:
    pieces, _, _ = await _pieces(params)
    assert all(isinstance(piece, Reasoning) for piece in pieces[:tokens])
    assert pieces[tokens:] == synthetic_tokens(prompt_text(ASK), max_tokens=1000 - tokens)
    assert not any(isinstance(piece, Reasoning) for piece in pieces[tokens:])


async def test_reasoning_effort_none_asks_for_no_reasoning() -> None:
    pieces, _, _ = await _pieces({"reasoning_effort": "none"})
    assert pieces == synthetic_tokens(prompt_text(ASK), max_tokens=1000)


async def test_the_synthetic_engine_reasons_then_calls_a_tool() -> None:
    pieces, finishes, _ = await _pieces({"tools": [WEATHER_TOOL], "reasoning_effort": "low"})
    assert [type(piece) for piece in pieces[:5]] == [Reasoning] * 4 + [ToolCallFragment]
    assert finishes == [FinishReason.TOOL_CALLS]


async def test_the_synthetic_text_ends_before_the_first_stop_sequence() -> None:
    full = "".join(synthetic_tokens(prompt_text(ASK), max_tokens=1000))
    cut = len(full) // 2
    stop = full[cut : cut + 3]
    pieces, finishes, _ = await _pieces({"stop": ["never there", stop]})
    text = "".join(str(piece) for piece in pieces)
    assert text == full[: full.index(stop)]
    assert finishes == [FinishReason.STOP]


async def test_a_stop_string_that_never_comes_changes_nothing() -> None:
    pieces, finishes, _ = await _pieces({"stop": "never there"})
    assert pieces == synthetic_tokens(prompt_text(ASK), max_tokens=1000)
    assert finishes == []


async def test_sampling_parameters_leave_the_synthetic_text_as_it_is() -> None:
    pieces, _, _ = await _pieces({"temperature": 1.7, "top_p": 0.1, "seed": 7, "presence_penalty": 2})
    assert pieces == synthetic_tokens(prompt_text(ASK), max_tokens=1000)


def test_the_cut_at_a_stop_sequence_spanning_tokens_keeps_what_precedes_it() -> None:
    assert cut_at_stop(["ab", "cd", "ef"], ["de"]) == (["ab", "c"], True)
    assert cut_at_stop(["ab", "cd", "ef"], ["cd"]) == (["ab"], True)
    assert cut_at_stop(["ab", "cd"], ["x"]) == (["ab", "cd"], False)
