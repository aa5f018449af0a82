"""Spec of OpenAI text completions on the streamer (``POST /v1/completions``, sans-I/O): the request put in a start
request with its raw prompt (never a chat message) and every other field as sent, ``text_completion`` chunks, the
usage chunk and ``[DONE]``, and the non-streamed ``text_completion``."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tokenrelay.streamer.compat import completions
from tokenrelay.streamer.compat.common import Collector
from tokenrelay.wire.errors import BadRequest, ErrorCode
from tokenrelay.wire.messages import FinishReason, StreamDelta, StreamEnd, StreamError, StreamEvent, StreamStart

SID = "0" * 32
START = StreamStart(stream_id=SID, epoch="e", model="m", created=1, runner_id="r", ts=0.0)
FIRST = StreamDelta(seq=1, text="return", index=1, count=1, ts=0.0)
SECOND = StreamDelta(seq=2, text=" a + b", index=3, count=2, ts=0.0)
END = StreamEnd(seq=3, finish_reason=FinishReason.LENGTH, tokens=3, ttft_ms=1.0, prompt_tokens=5)
BASE = {"id": SID, "object": "text_completion", "created": 1, "model": "m"}


def parse(obj: dict[str, Any]) -> Any:
    return completions.parse_completion_request(obj)


def chunks(*events: StreamEvent, include_usage: bool = False) -> tuple[list[Any], bytes]:
    framing = completions.CompletionFraming(stream_id=SID, model="m", created=1, include_usage=include_usage)
    raw = b"".join(framing.event(event) for event in events)
    return [orjson.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: {")], raw


def choice(text: str, finish: str | None = None) -> dict[str, Any]:
    return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}


def test_the_prompt_travels_as_a_prompt_with_no_messages() -> None:
    request, options = parse({"model": "m", "prompt": "def f():\n", "max_tokens": 9})
    assert request.prompt == "def f():\n"
    assert request.messages == ()
    assert (request.model, request.max_tokens) == ("m", 9)
    assert (options.stream, options.include_usage) == (False, False)


def test_a_prompt_array_of_one_string_is_that_prompt() -> None:
    assert parse({"prompt": ["only one"]})[0].prompt == "only one"


def test_every_field_tokenrelay_does_not_own_goes_in_params_as_sent() -> None:
    params = {
        "suffix": "\nprint(f())",
        "stop": ["\n\n"],
        "temperature": 0.2,
        "echo": True,
        "logprobs": 3,
        "x_vendor": 1,
    }
    request, _ = parse({"prompt": "p", "stream": True, "stream_options": {"include_usage": True}, **params})
    assert request.params == params
    assert "prompt" not in request.params and "stream" not in request.params


def test_max_tokens_is_left_to_the_gateways_default_when_not_given() -> None:
    assert parse({"prompt": "p"})[0].max_tokens is None


def test_stream_and_include_usage_are_the_responses_options() -> None:
    _, options = parse({"prompt": "p", "stream": True, "stream_options": {"include_usage": True}})
    assert (options.stream, options.include_usage) == (True, True)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param({"prompt": ["a", "b"]}, "prompt holds 2 prompts", id="several-prompts"),
        pytest.param({"prompt": []}, "prompt holds 0 prompts", id="no-prompts"),
        pytest.param({"prompt": [1, 2, 3]}, "prompt must be a string", id="token-ids"),
        pytest.param({"prompt": 7}, "prompt must be a string", id="number"),
        pytest.param({}, "prompt must be a string", id="missing"),
        pytest.param({"prompt": "p", "messages": []}, "messages is not a field of a completion", id="messages"),
        pytest.param({"prompt": "p", "max_tokens": "16"}, "max_tokens must be an integer", id="max-tokens-string"),
        pytest.param({"prompt": "p", "stream": "yes"}, "stream must be a boolean", id="stream"),
        pytest.param({"prompt": "p", "model": ""}, "model must be a non-empty string", id="model"),
    ],
)
def test_what_has_no_place_in_a_completion_is_a_bad_request_naming_the_field(
    body: dict[str, Any], message: str
) -> None:
    with pytest.raises(BadRequest) as caught:
        parse(body)
    assert caught.value.code == ErrorCode.BAD_REQUEST
    assert caught.value.message.startswith(message)


def test_a_streamed_completion_is_text_chunks_then_the_finish_reason_then_done() -> None:
    data, raw = chunks(START, FIRST, SECOND, END)
    assert data == [
        {**BASE, "choices": [choice("return")]},
        {**BASE, "choices": [choice(" a + b")]},
        {**BASE, "choices": [choice("", "length")]},
    ]
    assert raw.endswith(b"data: [DONE]\n\n")


def test_include_usage_adds_a_usage_chunk_with_no_choices_before_done() -> None:
    data, raw = chunks(START, FIRST, END, include_usage=True)
    assert data[-1] == {**BASE, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}
    assert raw.endswith(b"data: [DONE]\n\n")


def test_a_stream_error_is_an_openai_error_object_and_no_done() -> None:
    error = StreamError(seq=2, code="upstream_error", message="the upstream answered 500", tokens=1)
    data, raw = chunks(START, FIRST, error)
    assert data[-1] == {
        "error": {
            "message": "the upstream answered 500",
            "type": "server_error",
            "param": None,
            "code": "upstream_error",
        }
    }
    assert b"[DONE]" not in raw


def test_a_non_streamed_completion_is_one_text_completion_with_usage() -> None:
    collector = Collector()
    for event in (START, FIRST, SECOND, END):
        collector.event(event)
    assert collector.end is not None
    body = completions.completion_body(stream_id=SID, model="m", created=1, content=collector, end=collector.end)
    assert body == {
        **BASE,
        "choices": [choice("return a + b", "length")],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }
