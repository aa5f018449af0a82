"""Spec of reading an OpenAI-compatible streaming answer: one chunk in, typed pieces out, usage and finish told."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tokenrelay.runner.engines import EngineError, GenerationRequest, Reasoning, ToolCallFragment
from tokenrelay.runner.engines.openai_chunks import chunk_pieces
from tokenrelay.wire.messages import FinishReason


class Told:
    """What the chunks reported through the request."""

    def __init__(self) -> None:
        self.prompt: list[int] = []
        self.completion: list[int] = []
        self.finish: list[FinishReason] = []
        self.request = GenerationRequest(
            stream_id="s", model="m", messages=(), max_tokens=10, on_prompt_tokens=self.prompt.append,
            on_completion_tokens=self.completion.append, on_finish_reason=self.finish.append,
        )  # fmt: skip


def chunk(delta: dict[str, Any] | None = None, *, finish: str | None = None, usage: Any = None) -> str:
    body: dict[str, Any] = {"id": "c1", "object": "chat.completion.chunk", "choices": []}
    if delta is not None or finish is not None:
        body["choices"] = [{"index": 0, "delta": delta or {}, "finish_reason": finish}]
    if usage is not None:
        body["usage"] = usage
    return orjson.dumps(body).decode()


def test_a_content_delta_is_one_text_piece() -> None:
    told = Told()
    pieces = chunk_pieces(chunk({"content": "Hé"}), told.request)
    assert pieces == ["Hé"] and type(pieces[0]) is str


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_a_reasoning_delta_is_one_reasoning_piece(field: str) -> None:
    pieces = chunk_pieces(chunk({field: "hmm", "content": None}), Told().request)
    assert pieces == [Reasoning("hmm")] and isinstance(pieces[0], Reasoning)


def test_a_chunk_with_both_reasoning_fields_yields_its_reasoning_once() -> None:
    assert chunk_pieces(chunk({"reasoning_content": "a", "reasoning": "a"}), Told().request) == [Reasoning("a")]


def test_tool_call_deltas_become_fragments_with_the_calls_index_id_and_name() -> None:
    first = {"index": 1, "id": "call_x", "type": "function", "function": {"name": "f", "arguments": ""}}
    later = {"index": 1, "function": {"arguments": '{"a":'}}
    told = Told()
    assert chunk_pieces(chunk({"tool_calls": [first]}), told.request) == [
        ToolCallFragment(call=1, id="call_x", name="f", arguments="")
    ]
    assert chunk_pieces(chunk({"tool_calls": [later]}), told.request) == [ToolCallFragment(call=1, arguments='{"a":')]


@pytest.mark.parametrize(
    ("upstream", "relayed"),
    [("stop", FinishReason.STOP), ("length", FinishReason.LENGTH), ("tool_calls", FinishReason.TOOL_CALLS),
     ("function_call", FinishReason.TOOL_CALLS), ("content_filter", FinishReason.CONTENT_FILTER),
     ("something_new", FinishReason.STOP)],
)  # fmt: skip
def test_the_upstreams_finish_reason_is_reported(upstream: str, relayed: FinishReason) -> None:
    told = Told()
    assert chunk_pieces(chunk({}, finish=upstream), told.request) == []
    assert told.finish == [relayed]


def test_a_usage_chunk_reports_prompt_and_completion_tokens() -> None:
    told = Told()
    assert chunk_pieces(chunk(usage={"prompt_tokens": 12, "completion_tokens": 30}), told.request) == []
    assert (told.prompt, told.completion) == ([12], [30])


def test_a_chunk_without_usage_or_finish_reports_nothing() -> None:
    told = Told()
    chunk_pieces(chunk({"content": "x"}, usage=None), told.request)
    assert (told.prompt, told.completion, told.finish) == ([], [], [])


@pytest.mark.parametrize(
    "payload",
    ["not json", chunk({"content": 3}), chunk({"reasoning_content": ["x"]}),
     chunk({"tool_calls": [{"index": "0", "function": {"arguments": "{}"}}]}),
     chunk({"tool_calls": [{"index": 0, "function": {"arguments": 5}}]}), '{"choices": [3]}'],
)  # fmt: skip
def test_a_malformed_chunk_is_an_upstream_error(payload: str) -> None:
    with pytest.raises(EngineError) as caught:
        chunk_pieces(payload, Told().request)
    assert caught.value.code == "upstream_error"
