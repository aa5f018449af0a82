"""``POST /v1/completions`` with a ``transformers`` runner (a tiny randomly initialised GPT-2 built here): the raw
prompt is continued as is, with no chat template, and ``suffix`` is refused at admission with
``400 unsupported_parameter``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import openai  # noqa: E402

from tests.tiny_model import build_tiny_gpt2  # noqa: E402
from tokenrelay.testing.procs import System, nats_server, system  # noqa: E402

CORPUS = ["def add(a, b): return a + b", "print(add(1, 2))", "hello world"] * 50
PROMPT = "def add(a, b):"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny-model"), CORPUS, n_positions=256, n_layer=1)


@pytest.fixture(scope="module")
def sut(model_dir: Path) -> Iterator[System]:
    with (
        nats_server() as own,
        system(own.url, runner_args=["--engine", "transformers", "--model-path", str(model_dir)]) as running,
    ):
        yield running


def sdk(sut: System) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{sut.streamer_url}/v1", api_key="not-checked", max_retries=0)


async def test_the_raw_prompt_is_continued_as_is_without_the_chat_template(sut: System, model_dir: Path) -> None:
    completion = await sdk(sut).completions.create(model=str(model_dir), prompt=PROMPT, max_tokens=4)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    assert completion.object == "text_completion"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == len(tokenizer(PROMPT).input_ids)  # not "user: ...\nassistant:"
    assert 1 <= completion.usage.completion_tokens <= 4


async def test_a_suffix_is_refused_as_an_unsupported_parameter(sut: System, model_dir: Path) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        await sdk(sut).completions.create(model=str(model_dir), prompt=PROMPT, suffix="\nprint(1)", max_tokens=4)
    assert raised.value.code == "unsupported_parameter"
    assert "'suffix'" in raised.value.message
