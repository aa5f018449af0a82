"""Spec of the engines' own limits: a job whose ``max_tokens`` nobody set ends where its engine ends (the synthetic
text's natural length, the upstream's choice, the model's generation config), and the runner still stops it at the
gateway's hard cap (no sleeps: the synthetic engine runs unpaced)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from tokenrelay.runner.engines import GenerationRequest
from tokenrelay.runner.engines.openai import OpenAIEngine
from tokenrelay.runner.engines.synthetic import SyntheticEngine, prompt_text, synthetic_tokens
from tokenrelay.runner.engines.transformers_params import DEFAULT_MAX_NEW_TOKENS, own_max_new_tokens
from tokenrelay.runner.generation import Generation
from tokenrelay.runner.metrics import RunnerMetrics
from tokenrelay.runner.pace import PublishPace
from tokenrelay.runtime.config import SyntheticConfig
from tokenrelay.wire import codec
from tokenrelay.wire.content import ChatMessage
from tokenrelay.wire.messages import (
    FinishReason,
    JobRequest,
    StreamDelta,
    StreamEnd,
    StreamEvent,
    StreamFence,
    StreamRecord,
)

HARD_CAP_TOKENS = 32_768
LONG_TOKENS = 300
"""Longer than the 256 tokens a request that set no limit used to get."""
MESSAGES = (ChatMessage(role="user", content="tell me a long story"),)


def request(*, max_tokens: int = HARD_CAP_TOKENS, max_tokens_set: bool, **params: Any) -> GenerationRequest:
    return GenerationRequest(
        stream_id="s", model="m", messages=MESSAGES, max_tokens=max_tokens, max_tokens_set=max_tokens_set, params=params
    )


def upstream_body(req: GenerationRequest) -> dict[str, Any]:
    engine = OpenAIEngine(base_url="http://upstream.invalid/v1", model="up")
    return dict(orjson.loads(engine._body(req)))


def test_the_openai_engine_sends_no_max_tokens_when_nobody_set_one() -> None:
    body = upstream_body(request(max_tokens_set=False, temperature=0.2))
    assert "max_tokens" not in body
    assert "max_completion_tokens" not in body
    assert body["temperature"] == 0.2


def test_the_openai_engine_sends_the_limit_the_client_or_operator_set() -> None:
    body = upstream_body(request(max_tokens=300, max_tokens_set=True))
    assert body["max_tokens"] == 300


def test_the_openai_engine_sends_tokenrelays_limit_in_place_of_a_max_completion_tokens_in_params() -> None:
    body = upstream_body(request(max_tokens_set=False, max_completion_tokens=7, max_tokens=9))
    assert "max_tokens" not in body
    assert "max_completion_tokens" not in body


async def test_the_synthetic_engine_ends_at_its_natural_length_when_nobody_set_a_limit() -> None:
    engine = SyntheticEngine(SyntheticConfig(ttft_ms=0, tokens_per_s=0, step_ms=0, length_tokens=LONG_TOKENS))
    streamed = [token async for token in engine.stream(request(max_tokens_set=False))]
    assert streamed == synthetic_tokens(prompt_text(MESSAGES), max_tokens=HARD_CAP_TOKENS, length_tokens=LONG_TOKENS)
    assert len(streamed) == LONG_TOKENS


def test_the_transformers_engine_takes_its_limit_from_the_models_generation_config() -> None:
    assert own_max_new_tokens(SimpleNamespace(max_new_tokens=512)) == 512


@pytest.mark.parametrize("value", [None, 0, "512"])
def test_the_transformers_engine_has_a_documented_limit_where_the_model_names_none(value: object) -> None:
    assert own_max_new_tokens(SimpleNamespace(max_new_tokens=value)) == DEFAULT_MAX_NEW_TOKENS
    assert own_max_new_tokens(SimpleNamespace(max_new_tokens=value), default_max_new_tokens=99) == 99


class FakeBroker:
    """Records what is published."""

    def __init__(self) -> None:
        self.published: list[bytes] = []

    async def publish(self, subject: str, data: bytes) -> None:
        self.published.append(data)


async def generate(*, max_tokens: int, max_tokens_set: bool, length_tokens: int) -> list[StreamEvent]:
    broker = FakeBroker()

    async def write_record(record: StreamRecord) -> None:
        """Records are not this spec's concern."""

    job = JobRequest(
        stream_id="0" * 32, epoch="e1", gateway_id="g1", model="m", messages=MESSAGES, max_tokens=max_tokens,
        max_tokens_set=max_tokens_set, created=1,
    )  # fmt: skip
    engine = SyntheticEngine(SyntheticConfig(ttft_ms=0, tokens_per_s=0, step_ms=0, length_tokens=length_tokens))
    generation = Generation(
        job, engine=engine, nc=broker, runner_id="r1", pace=PublishPace(0.0), metrics=RunnerMetrics(),  # type: ignore[arg-type]
        write_record=write_record,
    )  # fmt: skip
    await generation.start()
    await generation.records_saved()
    return [event for data in broker.published if not isinstance(event := codec.decode_event(data), StreamFence)]


def ending(events: list[StreamEvent]) -> tuple[FinishReason, int, int]:
    end = events[-1]
    assert isinstance(end, StreamEnd)
    text_tokens = sum(event.count for event in events if isinstance(event, StreamDelta))
    return end.finish_reason, end.tokens, text_tokens


async def test_a_stream_nobody_limited_ends_with_stop_at_the_engines_own_length() -> None:
    events = await generate(max_tokens=HARD_CAP_TOKENS, max_tokens_set=False, length_tokens=LONG_TOKENS)
    assert ending(events) == (FinishReason.STOP, LONG_TOKENS, LONG_TOKENS)


async def test_the_runner_still_stops_a_stream_nobody_limited_at_the_hard_cap_with_length() -> None:
    events = await generate(max_tokens=40, max_tokens_set=False, length_tokens=LONG_TOKENS)
    assert ending(events) == (FinishReason.LENGTH, 40, 40)


async def test_a_limit_the_client_set_cuts_the_stream_with_length() -> None:
    events = await generate(max_tokens=25, max_tokens_set=True, length_tokens=LONG_TOKENS)
    assert ending(events) == (FinishReason.LENGTH, 25, 25)
