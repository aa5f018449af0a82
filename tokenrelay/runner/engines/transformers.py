"""The ``transformers`` engine: an in-process Hugging Face causal LM.

``generate`` runs in a worker thread (never on the event loop).  Each new token id crosses
to the loop with ``call_soon_threadsafe``; the handoff holds at most ``max_tokens`` ids (or, for a
request that set none, the model's own limit), the bound ``generate`` itself obeys.  Closing the
stream (a cancel, ``max_tokens``, an error) sets a flag that a stopping criterion checks after
every decode step, so generation halts at the next step and the worker thread is free again.

It generates text only; the request parameters it honours are listed in
:mod:`~tokenrelay.runner.engines.transformers_params` (and announced, so admission refuses any other); one that
reaches it anyway ends the stream with ``unsupported_parameter``.  A text completion's raw prompt is tokenized as is,
without the chat template; fill-in-the-middle (``suffix``) is not among what it honours.

A stream that moved here from a lost runner continues from its text so far: the prompt's ids (a chat's templated
with the generation prompt) followed by the ids of that text, with what is left of the limit to generate.

Install with ``pip install 'tokenrelay[transformers]'``.  Models load with
``local_files_only``: give a local path (or a name already in the Hugging Face cache).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList

from tokenrelay.runner.engines.base import EngineError, GenerationRequest, TextTail, require_text_continuation
from tokenrelay.runner.engines.detokenize import IncrementalDetokenizer
from tokenrelay.runner.engines.transformers_params import (
    ACCEPTED_PARAMETERS,
    DEFAULT_MAX_NEW_TOKENS,
    generate_kwargs,
    own_max_new_tokens,
)
from tokenrelay.wire.errors import ErrorCode
from tokenrelay.wire.messages import Continues, FinishReason

DEFAULT_WORKER_THREADS = 1
_END = object()


class _PromptLength(int):
    """The prompt's length in tokens, as the worker hands it over before the first generated id."""

    __slots__ = ()


class TransformersEngine:
    """Greedy decoding with a local model; ``worker_threads`` generations run at once.

    A request that set no ``max_tokens`` ends at the ``max_new_tokens`` of the model's generation config, else at
    ``default_max_new_tokens`` (finish reason ``length`` when that cuts the answer).
    """

    name = "transformers"
    accepts_params: frozenset[str] | None = ACCEPTED_PARAMETERS
    continues = Continues.TEXT
    """It generates text only, and goes on from any text."""

    def __init__(
        self,
        model_path: str,
        *,
        worker_threads: int = DEFAULT_WORKER_THREADS,
        default_max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    ) -> None:
        self.model = model_path
        self._tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
        self._model = AutoModelForCausalLM.from_pretrained(model_path, local_files_only=True)
        self._model.eval()
        self._own_max_new_tokens = own_max_new_tokens(
            self._model.generation_config, default_max_new_tokens=default_max_new_tokens
        )
        self._pool = concurrent.futures.ThreadPoolExecutor(worker_threads, thread_name_prefix="generate")

    def _input_ids(self, request: GenerationRequest) -> tuple[Any, int]:
        """The ids generation goes on from, and how many of them are the prompt's (the rest: a moved stream's text
        so far)."""
        prompt_ids = self._prompt_ids(request)
        if request.continuation is None or not request.continuation.text:
            return prompt_ids, prompt_ids.shape[-1]
        so_far = self._tokenizer(request.continuation.text, return_tensors="pt", add_special_tokens=False).input_ids
        return torch.cat([prompt_ids, so_far], dim=-1), prompt_ids.shape[-1]

    def _prompt_ids(self, request: GenerationRequest) -> Any:
        if request.prompt is not None:
            return self._completion_ids(request.prompt)
        messages = [{"role": m.role, "content": m.text()} for m in request.messages]
        if getattr(self._tokenizer, "chat_template", None):
            text = self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        return self._tokenizer(text, return_tensors="pt").input_ids

    def _completion_ids(self, prompt: str) -> Any:
        """A text completion's prompt as is (no chat template); an empty one is the start of a document, as
        OpenAI's completions API reads it: the beginning-of-sequence token (the end-of-text one for a model with
        none, GPT-2's ``<|endoftext|>``)."""
        ids = self._tokenizer(prompt, return_tensors="pt").input_ids
        if ids.shape[-1] == 0:
            start = self._tokenizer.bos_token_id
            start = self._tokenizer.eos_token_id if start is None else start
            ids = torch.tensor([[start]], dtype=torch.long)
        return ids

    async def stream(self, request: GenerationRequest) -> AsyncIterator[str]:
        """Yield one text piece per generated token ("" while a character is still incomplete)."""
        require_text_continuation(request)
        options = generate_kwargs(request.params)  # before any work: a parameter it cannot honour fails the stream
        limit = options["max_new_tokens"] = self._limit(request)
        loop = asyncio.get_running_loop()
        # At most: the prompt's length, limit ids, an exception, the end.
        ids: asyncio.Queue[object] = asyncio.Queue(maxsize=limit + 3)
        stop = threading.Event()
        job = loop.run_in_executor(self._pool, self._generate, request, options, ids, loop, stop)
        detokenizer = IncrementalDetokenizer(self._decode)
        produced = 0
        try:
            while (item := await ids.get()) is not _END:
                if isinstance(item, BaseException):
                    raise EngineError(str(ErrorCode.ENGINE_ERROR), f"generation failed: {item}")
                if isinstance(item, _PromptLength):
                    request.report_prompt_tokens(int(item))
                    continue
                assert isinstance(item, int)
                produced += 1
                if produced == limit:
                    if limit + request.tokens_before < request.max_tokens and item != self._tokenizer.eos_token_id:
                        request.report_finish_reason(FinishReason.LENGTH)  # the model's own limit cut the answer
                    # The last token generate() makes (the runner stops reading at max_tokens too): whatever is
                    # held back goes with it.
                    yield detokenizer.push(item) + detokenizer.flush()
                    return
                yield detokenizer.push(item)
            tail = detokenizer.flush()
            if tail:
                yield TextTail(tail)
        finally:
            stop.set()  # halts generate() at its next decode step
            job.add_done_callback(_ignore_result)

    def _limit(self, request: GenerationRequest) -> int:
        """The most tokens to generate: what is left of the request's limit, or of the model's own under the hard
        cap (at least 1: the runner takes no continuation with nothing left)."""
        limit = request.max_tokens if request.max_tokens_set else min(request.max_tokens, self._own_max_new_tokens)
        return max(1, limit - request.tokens_before)

    def _decode(self, token_ids: Any) -> str:
        return str(self._tokenizer.decode(list(token_ids), skip_special_tokens=True))

    def _generate(
        self,
        request: GenerationRequest,
        options: dict[str, Any],
        ids: asyncio.Queue[object],
        loop: asyncio.AbstractEventLoop,
        stop: threading.Event,
    ) -> None:
        """Runs in a worker thread."""

        def put(item: object) -> None:
            loop.call_soon_threadsafe(ids.put_nowait, item)

        try:
            if stop.is_set():
                return
            streamer = _IdStreamer(put)
            input_ids, prompt_length = self._input_ids(request)
            put(_PromptLength(prompt_length))
            with torch.inference_mode():
                self._model.generate(
                    input_ids,
                    **options,
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([_StopWhenSet(stop)]),
                    pad_token_id=self._tokenizer.pad_token_id or self._tokenizer.eos_token_id,
                )
        except Exception as exc:
            put(exc)
        finally:
            put(_END)

    async def aclose(self) -> None:
        """Let running generations stop and release the worker threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)


class _IdStreamer:
    """A transformers streamer that forwards each new token id (the first ``put`` is the prompt)."""

    def __init__(self, put: Any) -> None:
        self._put = put
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        for token_id in value.reshape(-1).tolist():
            self._put(int(token_id))

    def end(self) -> None:
        """Nothing to do: the worker signals the end itself."""


class _StopWhenSet(StoppingCriteria):  # type: ignore[misc]
    """A stopping criterion that ends generation once ``flag`` is set (checked after every step)."""

    def __init__(self, flag: threading.Event) -> None:
        self._flag = flag

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        return torch.full((input_ids.shape[0],), self._flag.is_set(), dtype=torch.bool, device=input_ids.device)


def _ignore_result(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
