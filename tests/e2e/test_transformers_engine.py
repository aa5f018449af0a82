"""The ``transformers`` engine with a tiny randomly initialised model and tokenizer built here (no download)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from websockets.asyncio.client import connect  # noqa: E402

from tests.tiny_model import build_tiny_gpt2  # noqa: E402
from tokenrelay.runner.engines import GenerationRequest, TextTail  # noqa: E402
from tokenrelay.testing.http import create_stream, metric, wait_for_metric  # noqa: E402
from tokenrelay.testing.procs import NatsServer, System, system  # noqa: E402
from tokenrelay.testing.sse import read_stream  # noqa: E402
from tokenrelay.wire.content import ChatMessage  # noqa: E402

CORPUS = ["hello world 日本語 🚀 café naïve", "the stream token relay is fast", "stop now 👩‍💻 über"] * 50


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer GPT-2 with random weights and a byte-level BPE tokenizer trained on a few lines."""
    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny-model"), CORPUS, n_positions=4096, n_layer=2)


def _request(prompt: str, max_tokens: int) -> GenerationRequest:
    return GenerationRequest(
        stream_id="0" * 32, model="tiny", messages=(ChatMessage(role="user", content=prompt),), max_tokens=max_tokens
    )


def _reference(model_dir: Path, prompt: str, max_tokens: int) -> str:
    """Greedy decoding done directly with transformers, for comparison."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = tokenizer(f"user: {prompt}\nassistant:", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return str(tokenizer.decode(out[0][ids.shape[1] :], skip_special_tokens=True))


async def test_engine_streams_exactly_the_greedy_text_as_whole_characters(model_dir: Path) -> None:
    from tokenrelay.runner.engines.transformers import TransformersEngine

    engine = TransformersEngine(str(model_dir))
    pieces = [p async for p in engine.stream(_request("hello 日本", 40))]
    await engine.aclose()
    tokens = [p for p in pieces if not isinstance(p, TextTail)]
    assert len(tokens) <= 40
    # A random model emits bytes that never complete a character: they are held back, never sent broken;
    # only the end of generation (the last piece) gives up what is left as U+FFFD, as transformers' decode does.
    assert all("\ufffd" not in p for p in tokens[:-1])
    assert "".join(pieces) == _reference(model_dir, "hello 日本", 40)


async def test_closing_the_stream_halts_generate_at_the_next_decode_step(model_dir: Path) -> None:
    from tokenrelay.runner.engines.transformers import TransformersEngine

    engine = TransformersEngine(str(model_dir))
    forwards = 0

    def count(*_: Any) -> None:
        nonlocal forwards
        forwards += 1

    engine._model.register_forward_hook(count)
    stream = engine.stream(_request("stop early", 400))
    consumed = 0
    async for _ in stream:
        consumed += 1
        if consumed == 5:
            break
    await stream.aclose()  # type: ignore[attr-defined]
    # The single worker thread runs this only after generate() returned.
    await asyncio.get_running_loop().run_in_executor(engine._pool, lambda: None)
    await engine.aclose()
    # One forward pass per generated token; the ids already in flight when we closed are few.
    assert forwards < 5 + 50 < 400


async def test_the_event_loop_keeps_running_while_the_model_generates(model_dir: Path) -> None:
    from tokenrelay.runner.engines.transformers import TransformersEngine

    engine = TransformersEngine(str(model_dir))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)  # one turn of the loop per tick: the count is what the test measures

    task = asyncio.create_task(ticker())
    pieces = [p async for p in engine.stream(_request("busy model", 60))]
    task.cancel()
    await engine.aclose()
    assert pieces and ticks > len(pieces)


@pytest.fixture(scope="module")
def sut(nats: NatsServer, model_dir: Path) -> Iterator[System]:
    with system(nats.url, runner_args=["--engine", "transformers", "--model-path", str(model_dir)]) as running:
        yield running


async def test_runner_with_transformers_engine_streams_the_model_text(sut: System, model_dir: Path) -> None:
    created = await create_stream(sut.gateway_url, "through the pipeline", max_tokens=30)
    stream = await read_stream(created["events_url"])
    assert stream.text == _reference(model_dir, "through the pipeline", 30)
    assert stream.terminal.json()["tokens"] <= 30


async def test_ws_stop_cancels_a_transformers_generation(sut: System) -> None:
    tokens_before = await metric(sut.runners[0].url, "tokenrelay_runner_tokens_total")
    async with connect(f"{sut.gateway_url.replace('http', 'ws')}/v1/control") as ws:
        await ws.send(orjson.dumps({"type": "start", "prompt": "long one", "max_tokens": 3_000}).decode())
        started = orjson.loads(await ws.recv())
        reader = asyncio.create_task(read_stream(started["events_url"]))
        await wait_for_metric(sut.runners[0].url, "tokenrelay_runner_tokens_total", tokens_before + 1)  # generating
        await ws.send(orjson.dumps({"type": "stop", "stream_id": started["stream_id"]}).decode())
        stopped = orjson.loads(await ws.recv())
    assert stopped["finish_reason"] == "cancelled"
    stream = await reader
    assert stream.terminal.json()["finish_reason"] == "cancelled"
    assert stream.terminal.json()["tokens"] == stopped["tokens"] < 3_000


async def test_engine_reports_the_prompt_length_its_tokenizer_gives(model_dir: Path) -> None:
    from transformers import AutoTokenizer

    from tokenrelay.runner.engines.transformers import TransformersEngine

    engine = TransformersEngine(str(model_dir))
    reported: list[int] = []
    request = GenerationRequest(
        stream_id="0" * 32,
        model="tiny",
        messages=(ChatMessage(role="user", content="hello 日本 café"),),
        max_tokens=5,
        on_prompt_tokens=reported.append,
    )
    pieces = [p async for p in engine.stream(request)]
    await engine.aclose()
    expected = len(AutoTokenizer.from_pretrained(model_dir)("user: hello 日本 café\nassistant:").input_ids)
    assert reported == [expected]
    assert len([p for p in pieces if not isinstance(p, TextTail)]) == 5  # the count is no token
