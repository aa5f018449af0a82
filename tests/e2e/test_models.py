"""Model routing end to end: runners of two models, jobs only to a runner of their model, unknown models refused.

Two real runners (synthetic engines named by ``--model``) behind one gateway and one streamer, on a real
nats-server; the native API, the unmodified OpenAI SDK and the unmodified Anthropic SDK.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from urllib.parse import quote

import anthropic
import openai
import pytest

from tests.helpers import eventually
from tokenrelay.cli.supervisor import http_ok
from tokenrelay.testing.http import get_json, metric, post, wait_finished
from tokenrelay.testing.procs import NatsServer, System, start_role, stop_process, system, wait_until

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
QWEN = "qwen2.5:7b"
STREAMS_PER_MODEL = 4
FAST = ["--synthetic-ttft-ms", "0", "--synthetic-tokens-per-s", "0", "--synthetic-length-tokens", "5"]


@pytest.fixture(scope="module")
def sut(nats: NatsServer) -> Iterator[tuple[System, str]]:
    """A system whose first runner serves :data:`LLAMA`, and a second runner serving :data:`QWEN` (its URL)."""
    with system(nats.url, runner_args=[*FAST, "--model", LLAMA]) as running:
        qwen = start_role("runner", nats.url, running.log_dir, "runner-qwen", [*FAST, "--model", QWEN])
        try:
            wait_until(lambda: http_ok(f"{qwen.url}/healthz"), what="the qwen runner's health")
            yield running, qwen.url
        finally:
            stop_process(qwen.process)


async def served(sut: System) -> list[str]:
    """``GET /v1/models`` once both runners are heard: the ids it lists."""

    async def ids() -> list[str]:
        status, body = await get_json(f"{sut.streamer_url}/v1/models")
        return sorted(item["id"] for item in body["data"]) if status == 200 else []

    return await eventually(ids, lambda listed: listed == sorted([LLAMA, QWEN]), what="both models listed")


async def test_streams_of_each_model_run_only_on_runners_of_that_model(sut: tuple[System, str]) -> None:
    system_, qwen_url = sut
    await served(system_)
    llama_url = system_.runners[0].url
    urls = {LLAMA: llama_url, QWEN: qwen_url}
    before = {
        (runner, model): await metric(urls[runner], "tokenrelay_runner_model_streams_started_total", model=model)
        for runner in urls
        for model in urls
    }

    async def create(model: str, i: int) -> str:
        body = {"model": model, "prompt": f"route {model} {i}", "max_tokens": 5}
        status, created = await post(f"{system_.gateway_url}/v1/streams", body)
        assert status == 201, created
        return str(created["id"])

    ids = await asyncio.gather(*(create(m, i) for m in (LLAMA, QWEN) for i in range(STREAMS_PER_MODEL)))
    finished = [await wait_finished(system_.gateway_url, stream_id) for stream_id in ids]
    assert [f["model"] for f in finished] == [LLAMA] * STREAMS_PER_MODEL + [QWEN] * STREAMS_PER_MODEL
    assert {f["finish_reason"] for f in finished} == {"length"}
    for runner, url in urls.items():
        for model in urls:
            started = await metric(url, "tokenrelay_runner_model_streams_started_total", model=model)
            expected = STREAMS_PER_MODEL if runner == model else 0
            assert started - before[(runner, model)] == expected, (runner, model)
    for model in urls:
        assert await metric(system_.gateway_url, "tokenrelay_gateway_streams_created_total", model=model) >= 4


async def test_the_models_endpoint_lists_both_models_and_each_by_its_id(sut: tuple[System, str]) -> None:
    system_, _ = sut
    assert await served(system_) == sorted([LLAMA, QWEN])
    status, body = await get_json(f"{system_.streamer_url}/v1/models/{LLAMA}")  # the id holds a "/"
    assert (status, body["id"], body["object"]) == (200, LLAMA, "model")
    status, body = await get_json(f"{system_.streamer_url}/v1/models/{quote(QWEN)}")
    assert (status, body["id"]) == (200, QWEN)
    status, body = await get_json(f"{system_.streamer_url}/v1/models/gpt-nothing")
    assert status == 404
    assert body["error"]["code"] == "model_not_found"
    assert body["error"]["type"] == "invalid_request_error"


async def test_an_unknown_model_is_404_model_not_found_on_the_native_api(sut: tuple[System, str]) -> None:
    system_, _ = sut
    await served(system_)
    status, body = await post(f"{system_.gateway_url}/v1/streams", {"model": "gpt-nothing", "prompt": "hi"})
    assert status == 404
    assert body["error"]["code"] == "model_not_found"


async def test_an_unknown_model_is_404_model_not_found_on_the_openai_api(sut: tuple[System, str]) -> None:
    system_, _ = sut
    await served(system_)
    client = openai.AsyncOpenAI(base_url=f"{system_.streamer_url}/v1", api_key="not-checked", max_retries=0)
    with pytest.raises(openai.NotFoundError) as raised:
        await client.chat.completions.create(
            model="gpt-nothing", messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True
        )
    assert raised.value.status_code == 404
    assert raised.value.code == "model_not_found"
    assert raised.value.type == "invalid_request_error"


async def test_an_unknown_model_is_404_not_found_error_on_the_anthropic_api(sut: tuple[System, str]) -> None:
    system_, _ = sut
    await served(system_)
    client = anthropic.AsyncAnthropic(base_url=system_.streamer_url, api_key="not-checked", max_retries=0)
    with pytest.raises(anthropic.NotFoundError) as raised:
        await client.messages.create(model="gpt-nothing", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    assert raised.value.status_code == 404
    body = raised.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["type"] == "not_found_error"


async def test_a_request_naming_no_model_while_two_are_served_is_400_naming_them(sut: tuple[System, str]) -> None:
    system_, _ = sut
    await served(system_)
    status, body = await post(f"{system_.gateway_url}/v1/streams", {"prompt": "which model?"})
    assert status == 400
    assert body["error"]["code"] == "bad_request"
    assert LLAMA in body["error"]["message"] and QWEN in body["error"]["message"]
