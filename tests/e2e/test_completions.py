"""``POST /v1/completions`` through the unmodified ``openai`` SDK: a raw prompt and a ``suffix`` (fill-in-the-middle)
streamed and not, from the synthetic engine and through an ``openai``-engine runner to an upstream's own
``/v1/completions``, and bad input refused with exact codes."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tokenrelay.runner.engines.synthetic import completion_text, synthetic_tokens
from tokenrelay.testing.fake_openai import FakeUpstream, served_in_thread
from tokenrelay.testing.http import post
from tokenrelay.testing.procs import NatsServer, System, nats_server, system
from tokenrelay.testing.synthetic import synthetic_args

LENGTH_TOKENS = 1000  # no text ends by itself before its max_tokens
MAX_TOKENS_LIMIT = 64
PREFIX = "def add(a, b):\n    "
SUFFIX = "\n\nprint(add(1, 2))\n"
UPSTREAM_WORDS = ["return", " a", " +", " b", " 🚀"]


@pytest.fixture(scope="module")
def sut(nats: NatsServer) -> Iterator[System]:
    runner = synthetic_args(tokens_per_s=500, length_tokens=LENGTH_TOKENS)
    with system(nats.url, runner_args=runner, gateway_args=["--max-tokens-limit", str(MAX_TOKENS_LIMIT)]) as running:
        yield running


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with served_in_thread(FakeUpstream(UPSTREAM_WORDS, interval_s=0.005)) as fake:
        yield fake


@pytest.fixture(scope="module")
def relayed(upstream: FakeUpstream) -> Iterator[System]:
    """An ``openai``-engine runner in front of the fake upstream (a NATS of its own: no synthetic runner)."""
    args = ["--engine", "openai", "--upstream-url", upstream.url, "--upstream-model", "fake-model"]
    with nats_server() as own, system(own.url, runner_args=args) as running:
        yield running


def sdk(sut: System) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{sut.streamer_url}/v1", api_key="not-checked", max_retries=0)


def expected(prompt: str, suffix: str | None, max_tokens: int) -> str:
    """What the synthetic engine answers a completion (keyed on its prompt and suffix)."""
    return "".join(
        synthetic_tokens(completion_text(prompt, suffix), max_tokens=max_tokens, length_tokens=LENGTH_TOKENS)
    )


async def streamed_text(sut: System, suffix: str) -> str:
    stream = await sdk(sut).completions.create(
        model="synthetic", prompt=PREFIX, suffix=suffix, max_tokens=12, stream=True
    )
    return "".join([chunk.choices[0].text async for chunk in stream if chunk.choices])


async def test_a_streamed_completion_with_a_suffix_sends_text_completion_chunks_then_the_finish_reason(
    sut: System,
) -> None:
    stream = await sdk(sut).completions.create(
        model="synthetic", prompt=PREFIX, suffix=SUFFIX, max_tokens=12, stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert {chunk.object for chunk in chunks} == {"text_completion"}
    assert {chunk.id for chunk in chunks} == {chunks[0].id} and len(chunks[0].id) == 32  # the stream id
    assert {chunk.model for chunk in chunks} == {"synthetic"}
    assert "".join(chunk.choices[0].text for chunk in chunks) == expected(PREFIX, SUFFIX, 12)
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices[0].finish_reason] == ["length"]
    assert chunks[-1].choices[0].finish_reason == "length"
    assert {chunk.choices[0].logprobs for chunk in chunks} == {None}


async def test_the_synthetic_answer_changes_with_the_suffix(sut: System) -> None:
    first, again, other = [await streamed_text(sut, suffix) for suffix in (SUFFIX, SUFFIX, "\nreturn 0\n")]
    assert first == again == expected(PREFIX, SUFFIX, 12)
    assert other == expected(PREFIX, "\nreturn 0\n", 12) != first


async def test_include_usage_adds_a_usage_chunk_with_no_choices(sut: System) -> None:
    stream = await sdk(sut).completions.create(
        model="synthetic", prompt="count me", max_tokens=5, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (2, 5)
    assert chunks[-1].usage.total_tokens == 7


async def test_a_non_streamed_completion_is_one_text_completion_with_the_stream_id(sut: System) -> None:
    raw = await sdk(sut).completions.with_raw_response.create(
        model="synthetic", prompt=PREFIX, suffix=SUFFIX, max_tokens=9
    )
    completion = raw.parse()
    assert completion.object == "text_completion"
    assert completion.id == raw.headers["x-tokenrelay-stream-id"]
    assert len(completion.choices) == 1
    assert completion.choices[0].text == expected(PREFIX, SUFFIX, 9)
    assert (completion.choices[0].index, completion.choices[0].finish_reason) == (0, "length")
    assert completion.choices[0].logprobs is None
    assert completion.usage is not None and completion.usage.completion_tokens == 9


async def test_max_tokens_defaults_to_16_as_openais_does(sut: System) -> None:
    completion = await sdk(sut).completions.create(model="synthetic", prompt=PREFIX)
    assert completion.choices[0].text == expected(PREFIX, None, 16)
    assert completion.usage is not None and completion.usage.completion_tokens == 16


async def test_a_stop_sequence_ends_the_completion_before_it(sut: System) -> None:
    whole = expected(PREFIX, SUFFIX, 30)
    stop = whole[12:16]
    completion = await sdk(sut).completions.create(
        model="synthetic", prompt=PREFIX, suffix=SUFFIX, max_tokens=30, stop=[stop]
    )
    assert completion.choices[0].text == whole[: whole.find(stop)]
    assert completion.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param({"prompt": ["one", "two"]}, "prompt holds 2 prompts", id="several-prompts"),
        pytest.param({"prompt": "x", "n": 2}, "n must be 1", id="n-2"),
        pytest.param({"prompt": [1, 2, 3]}, "prompt must be a string", id="token-ids"),
        pytest.param({"prompt": {"text": "x"}}, "prompt must be a string", id="object"),
        pytest.param({"prompt": "x", "max_tokens": 0}, "max_tokens must be at least 1", id="max-tokens-0"),
        pytest.param({"prompt": "x", "max_tokens": -1}, "max_tokens must be at least 1", id="max-tokens-negative"),
        pytest.param({"prompt": "x", "max_tokens": 2.5}, "max_tokens must be an integer", id="max-tokens-float"),
        pytest.param({"prompt": "x", "max_tokens": "8"}, "max_tokens must be an integer", id="max-tokens-string"),
        pytest.param({"prompt": "x", "max_tokens": 65}, "max_tokens must be at most 64", id="max-tokens-over"),
        pytest.param({"prompt": "x", "suffix": 5}, "suffix must be a string", id="suffix-number"),
    ],
)
async def test_bad_input_is_a_400_bad_request_naming_the_field(
    sut: System, fields: dict[str, object], message: str
) -> None:
    status, body = await post(f"{sut.streamer_url}/v1/completions", {"model": "synthetic", **fields})
    assert status == 400, body
    assert body["error"]["code"] == "bad_request"
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith(message)


async def test_the_sdk_raises_its_bad_request_error_for_several_prompts(sut: System) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        await sdk(sut).completions.create(model="synthetic", prompt=["one", "two"], max_tokens=4)
    assert raised.value.status_code == 400
    assert raised.value.code == "bad_request"


async def test_an_unknown_model_is_a_404_model_not_found(sut: System) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        await sdk(sut).completions.create(model="no-such-model", prompt="x", max_tokens=4)
    assert raised.value.code == "model_not_found"


async def test_the_upstream_gets_prompt_suffix_and_every_param_on_its_own_completions_route(
    relayed: System, upstream: FakeUpstream
) -> None:
    params = {"temperature": 0.3, "top_p": 0.9, "stop": ["\n\n"], "echo": False, "logprobs": 2, "seed": 5}
    stream = await sdk(relayed).completions.create(
        model="fake-model", prompt=PREFIX, suffix=SUFFIX, max_tokens=20, stream=True, temperature=0.3, top_p=0.9,
        stop=["\n\n"], echo=False, logprobs=2, seed=5, extra_body={"top_k": 3},
    )  # fmt: skip
    text = "".join([chunk.choices[0].text async for chunk in stream if chunk.choices])
    assert text == "".join(UPSTREAM_WORDS)
    call = upstream.calls[-1]
    assert call.path == "/v1/completions"
    assert call.body == {
        **params, "top_k": 3, "model": "fake-model", "prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 20,
        "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip


async def test_the_upstreams_finish_reason_and_usage_are_relayed(relayed: System, upstream: FakeUpstream) -> None:
    upstream.finish_reason, upstream.usage_prompt_tokens = "stop", 11
    try:
        completion = await sdk(relayed).completions.create(model="fake-model", prompt=PREFIX, max_tokens=20)
    finally:
        upstream.finish_reason, upstream.usage_prompt_tokens = None, None
    assert completion.choices[0].text == "".join(UPSTREAM_WORDS)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (11, len(UPSTREAM_WORDS))
    assert upstream.calls[-1].body["max_tokens"] == 20 and "suffix" not in upstream.calls[-1].body
