"""A parameter no runner of the model can honour is refused at admission, on every API; one it honours streams.

The runner is a ``transformers`` one with a tiny randomly initialised model built here (no download): it announces
the sampling parameters its ``generate`` mapping takes, so ``tools``, ``logprobs`` or ``stop`` are refused with
``400 unsupported_parameter`` before any runner takes the stream, and ``temperature`` streams.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import anthropic  # noqa: E402
import openai  # noqa: E402

from tests.tiny_model import build_tiny_gpt2  # noqa: E402
from tokenrelay.testing.http import post  # noqa: E402
from tokenrelay.testing.procs import NatsServer, System, system  # noqa: E402
from tokenrelay.testing.sse import read_stream  # noqa: E402

CORPUS = ["hello world café naïve", "the stream token relay is fast", "stop now über"] * 20
TOOL: Any = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}
QUESTION: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
REFUSED: list[dict[str, Any]] = [{"tools": [TOOL]}, {"logprobs": True}, {"stop": ["\n"]}]
"""Fields the ``transformers`` engine has no equivalent of in ``generate``."""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer GPT-2 with random weights and a byte-level BPE tokenizer trained on a few lines."""
    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny-model"), CORPUS, n_positions=512, n_layer=1)


@pytest.fixture(scope="module")
def sut(nats: NatsServer, model_dir: Path) -> Iterator[System]:
    with system(nats.url, runner_args=["--engine", "transformers", "--model-path", str(model_dir)]) as running:
        yield running


def openai_sdk(sut: System) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{sut.streamer_url}/v1", api_key="not-checked", max_retries=0)


@pytest.mark.parametrize("field", REFUSED, ids=lambda f: next(iter(f)))
async def test_the_native_api_refuses_a_parameter_no_runner_of_the_model_can_honour(
    sut: System, model_dir: Path, field: dict[str, Any]
) -> None:
    status, body = await post(f"{sut.gateway_url}/v1/streams", {"messages": QUESTION, "max_tokens": 5, **field})
    assert status == 400, body
    assert body["error"]["code"] == "unsupported_parameter"
    name = next(iter(field))
    assert repr(name) in body["error"]["message"] and repr(str(model_dir)) in body["error"]["message"]


async def test_the_native_api_streams_a_request_with_a_parameter_the_runners_honour(sut: System) -> None:
    # top_k 1: sampling from the one likeliest token, so the random model's answer is fixed (never an early end)
    body = {"messages": QUESTION, "max_tokens": 5, "temperature": 0.7, "top_k": 1}
    status, created = await post(f"{sut.gateway_url}/v1/streams", body)
    assert status == 201, created
    stream = await read_stream(created["events_url"])
    assert (stream.terminal.json()["finish_reason"], stream.terminal.json()["tokens"]) == ("length", 5)


@pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "whole"])
async def test_the_openai_sdk_raises_bad_request_for_a_parameter_no_runner_can_honour(
    sut: System, model_dir: Path, streamed: bool
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await openai_sdk(sut).chat.completions.create(
            model=str(model_dir), messages=QUESTION, max_tokens=5, tools=[TOOL], stream=streamed
        )
    assert refused.value.status_code == 400
    assert refused.value.code == "unsupported_parameter" and "'tools'" in refused.value.message


async def test_the_openai_sdk_streams_a_request_with_a_temperature(sut: System, model_dir: Path) -> None:
    completion = await openai_sdk(sut).chat.completions.create(
        model=str(model_dir),
        messages=QUESTION,
        max_tokens=5,
        temperature=0.7,
        extra_body={"top_k": 1},  # sampling from the one likeliest token: the random model's answer is fixed
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 5


async def test_the_anthropic_sdk_raises_bad_request_for_stop_sequences_no_runner_can_honour(
    sut: System, model_dir: Path
) -> None:
    client = anthropic.AsyncAnthropic(base_url=sut.streamer_url, api_key="not-checked", max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as refused:
        await client.messages.create(
            model=str(model_dir),
            max_tokens=5,
            messages=QUESTION,
            stop_sequences=["\n"],
        )
    assert refused.value.status_code == 400
    assert "unsupported_parameter" in refused.value.message and "'stop'" in refused.value.message


async def test_a_whole_completion_whose_stream_ends_with_unsupported_parameter_is_a_bad_request_not_a_server_error(
    sut: System, model_dir: Path
) -> None:
    # top_k is announced, so admission lets it through; the engine itself cannot take 2.5 (it wants an int).
    with pytest.raises(openai.BadRequestError) as refused:
        await openai_sdk(sut).chat.completions.create(
            model=str(model_dir), messages=QUESTION, max_tokens=5, extra_body={"top_k": 2.5}
        )
    assert refused.value.status_code == 400
    assert refused.value.code == "unsupported_parameter" and "top_k" in refused.value.message
