"""A request that sets no ``max_tokens`` ends at its engine's own limit, not at a silent 256: through the native API
and the OpenAI SDK, with the synthetic engine (its natural length) and the ``openai`` engine (no ``max_tokens`` sent
upstream); the gateway's ``--default-max-tokens`` and hard cap ``--max-tokens-limit`` still cut a stream with
``length``."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tokenrelay.testing.fake_openai import FakeUpstream, served_in_thread
from tokenrelay.testing.http import post
from tokenrelay.testing.procs import NatsServer, System, nats_server, system
from tokenrelay.testing.sse import Stream, read_stream
from tokenrelay.testing.synthetic import expected_text, synthetic_args

LONG_TOKENS = 300
"""The synthetic texts' natural length: longer than the 256 tokens a request that set no limit used to get."""
OPERATOR_DEFAULT_TOKENS = 40
UPSTREAM_HARD_CAP_TOKENS = 50
UPSTREAM_WORDS = [f" w{i}" for i in range(80)]


@pytest.fixture(scope="module")
def sut(nats: NatsServer) -> Iterator[System]:
    """Synthetic runners whose texts are ``LONG_TOKENS`` long; the gateway has no ``--default-max-tokens``."""
    with system(nats.url, runner_args=synthetic_args(tokens_per_s=0, length_tokens=LONG_TOKENS)) as running:
        yield running


@pytest.fixture(scope="module")
def with_default() -> Iterator[System]:
    """The same runners behind a gateway whose operator chose ``--default-max-tokens`` (a NATS of its own)."""
    runner = synthetic_args(tokens_per_s=0, length_tokens=LONG_TOKENS)
    gateway = ["--default-max-tokens", str(OPERATOR_DEFAULT_TOKENS)]
    with nats_server() as own, system(own.url, runner_args=runner, gateway_args=gateway) as running:
        yield running


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    """The fake upstream runs on its own event loop in a thread, for the whole module."""
    with served_in_thread(FakeUpstream(UPSTREAM_WORDS, interval_s=0.0)) as fake:
        yield fake


@pytest.fixture(scope="module")
def relayed(upstream: FakeUpstream) -> Iterator[System]:
    """``openai`` runners on the fake upstream, behind a gateway whose hard cap is below the upstream's answer."""
    runner = ["--engine", "openai", "--upstream-url", upstream.url, "--upstream-model", "fake-model"]
    gateway = ["--max-tokens-limit", str(UPSTREAM_HARD_CAP_TOKENS)]
    with nats_server() as own, system(own.url, runner_args=runner, gateway_args=gateway) as running:
        yield running


async def native(sut: System, body: dict[str, object]) -> Stream:
    status, created = await post(f"{sut.gateway_url}/v1/streams", body)
    assert status == 201, created
    return await read_stream(created["events_url"])


def sdk(sut: System) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{sut.streamer_url}/v1", api_key="not-checked", max_retries=0)


async def test_a_native_stream_that_sets_no_limit_runs_to_the_engines_natural_end(sut: System) -> None:
    stream = await native(sut, {"prompt": "tell me everything"})
    assert stream.terminal.json()["finish_reason"] == "stop"
    assert stream.terminal.json()["tokens"] == LONG_TOKENS
    assert stream.text == expected_text("tell me everything", LONG_TOKENS, LONG_TOKENS)


async def test_a_native_stream_still_ends_at_the_limit_its_client_set(sut: System) -> None:
    stream = await native(sut, {"prompt": "tell me a little", "max_tokens": 20})
    assert (stream.terminal.json()["finish_reason"], stream.terminal.json()["tokens"]) == ("length", 20)


async def test_an_openai_sdk_completion_that_sets_no_limit_runs_to_the_engines_natural_end(sut: System) -> None:
    stream = await sdk(sut).chat.completions.create(
        model="synthetic",
        messages=[{"role": "user", "content": "tell me everything"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected_text("tell me everything", LONG_TOKENS, LONG_TOKENS)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == LONG_TOKENS


async def test_the_operators_default_max_tokens_cuts_a_stream_that_sets_no_limit(with_default: System) -> None:
    stream = await native(with_default, {"prompt": "tell me everything"})
    assert stream.terminal.json()["finish_reason"] == "length"
    assert stream.terminal.json()["tokens"] == OPERATOR_DEFAULT_TOKENS
    completion = await sdk(with_default).chat.completions.create(
        model="synthetic", messages=[{"role": "user", "content": "tell me everything"}]
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == OPERATOR_DEFAULT_TOKENS


async def test_the_upstream_is_sent_no_max_tokens_when_the_client_set_none(
    relayed: System, upstream: FakeUpstream
) -> None:
    upstream.words = UPSTREAM_WORDS[:5]
    completion = await sdk(relayed).chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": "no limit"}]
    )
    assert completion.choices[0].message.content == "".join(UPSTREAM_WORDS[:5])
    assert completion.choices[0].finish_reason == "stop"
    body = upstream.calls[-1].body
    assert body["messages"] == [{"role": "user", "content": "no limit"}]
    assert "max_tokens" not in body and "max_completion_tokens" not in body


async def test_the_upstream_is_sent_the_limit_the_client_set(relayed: System, upstream: FakeUpstream) -> None:
    upstream.words = UPSTREAM_WORDS[:5]
    stream = await native(relayed, {"prompt": "a limit", "max_completion_tokens": 12})
    assert stream.terminal.json()["finish_reason"] == "stop"
    assert upstream.calls[-1].body["max_tokens"] == 12
    assert "max_completion_tokens" not in upstream.calls[-1].body


async def test_the_runner_stops_an_unlimited_upstream_answer_at_the_gateways_hard_cap(
    relayed: System, upstream: FakeUpstream
) -> None:
    upstream.words = UPSTREAM_WORDS
    stream = await native(relayed, {"prompt": "go on forever"})
    assert "max_tokens" not in upstream.calls[-1].body
    assert stream.terminal.json()["finish_reason"] == "length"
    assert stream.terminal.json()["tokens"] == UPSTREAM_HARD_CAP_TOKENS
    assert stream.text == "".join(UPSTREAM_WORDS[:UPSTREAM_HARD_CAP_TOKENS])
