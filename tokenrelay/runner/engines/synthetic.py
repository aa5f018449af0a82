"""The synthetic engine: deterministic content for a given request, paced like a real model.

The text is a pure function of the prompt (and the configured length), so tests can compute
what a stream must contain with :func:`synthetic_tokens`.  Its vocabulary mixes ASCII with
accented Latin, CJK, emoji and line breaks so that every layer's UTF-8 and framing handling
is exercised.

It is a test engine, and honours the request parameters that shape what a stream carries
(:mod:`~tokenrelay.runner.engines.synthetic_content`):

* ``tools`` (the OpenAI shape): unless ``tool_choice`` is ``"none"`` or a tool result follows the last user
  turn, the answer is one call of the first tool (id ``call_<hash>``, arguments that satisfy the ``required``
  properties of its ``parameters`` schema, streamed in fragments) and the finish reason ``tool_calls``;
* ``reasoning_effort`` (``minimal``, ``low``, ``medium``, ``high``; ``none``: off) or a ``reasoning`` object (its
  ``effort`` key, ``medium`` when absent): a reasoning prelude of 2 to 16 tokens comes before the answer;
* ``stop`` (a string or a list): the text ends before the first stop sequence, finish reason ``stop``;
* ``max_tokens`` (enforced by the runner) counts every token, reasoning and tool calls included; a request that
  set none ends at the text's natural length (``--synthetic-length-tokens``, else 16-63 tokens derived from the
  prompt), finish reason ``stop``, unless the gateway's hard cap ``--max-tokens-limit`` comes first.

A text completion (``POST /v1/completions``: a raw prompt, no messages) is keyed on :func:`completion_text`: the
prompt alone, or with a ``suffix`` (fill-in-the-middle) the prompt, a line ``suffix: `` and the suffix, so the same
prompt with another suffix gets another text.  It honours ``stop`` and ``max_tokens`` as a chat does; reasoning and
tool calls are chat features, so a completion is text only.

A stream that moved here from a lost runner (:attr:`~GenerationRequest.continuation`) gets exactly the pieces an
uninterrupted run of the same request would have yielded after its first ``continuation.tokens`` tokens, with the
same prompt count, finish reason and natural length, so the moved stream's text, reasoning and tool calls are the
uninterrupted ones (:data:`Continues.ANY <tokenrelay.wire.messages.Continues>`).

It ignores sampling parameters (``temperature``, ``top_p``, ``seed``, penalties, ``logprobs``...) and every other
field: its output depends on the prompt alone.  A request with none of the above gets exactly the text it always
got.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import TypeVar

from tokenrelay.runner.engines import synthetic_content as content
from tokenrelay.runner.engines.base import GenerationRequest, Piece, TextTail
from tokenrelay.runner.engines.steps import StepClock
from tokenrelay.runtime.config import SyntheticConfig
from tokenrelay.wire.content import ChatMessage
from tokenrelay.wire.messages import Continues, FinishReason

P = TypeVar("P", bound=Piece)

VOCABULARY = (
    "the", "stream", "token", "relay", "fast", "stop", "now", "and", "of", "to",
    "café", "naïve", "über", "señor", "façade", "Ωmega", "δέλτα", "привет",
    "日本語", "流式", "トークン", "한국어", "😀", "🚀", "🧪", "👩‍💻", "∑", "→",
)  # fmt: skip
MIN_NATURAL_LENGTH_TOKENS = 16
NATURAL_LENGTH_SPREAD_TOKENS = 48
NEWLINE_EVERY_TOKENS = 11


def prompt_text(messages: tuple[ChatMessage, ...]) -> str:
    """The text the synthetic engine keys its output on."""
    return "\n".join(f"{m.role}: {m.text()}" for m in messages)


def completion_text(prompt: str, suffix: str | None = None) -> str:
    """The text the synthetic engine keys a text completion on: ``prompt``, and with a non-empty ``suffix``
    ``prompt + "\nsuffix: " + suffix`` (so its answer changes with the suffix)."""
    return f"{prompt}\nsuffix: {suffix}" if suffix else prompt


def keyed_text(request: GenerationRequest) -> str:
    """The text the synthetic engine keys ``request``'s output on: a chat's :func:`prompt_text`, a completion's
    :func:`completion_text`."""
    if request.prompt is None:
        return prompt_text(request.messages)
    suffix = request.params.get("suffix")
    return completion_text(request.prompt, suffix if isinstance(suffix, str) else None)


def prompt_tokens(prompt: str) -> int:
    """The synthetic engine's count of a prompt's tokens: the words (whitespace-separated) of its :func:`keyed_text`."""
    return len(prompt.split())


def synthetic_tokens(prompt: str, *, max_tokens: int, length_tokens: int = 0) -> list[str]:
    """Every token the synthetic engine produces for ``prompt``, at most ``max_tokens``."""
    return list(iter_synthetic_tokens(prompt, max_tokens=max_tokens, length_tokens=length_tokens))


def iter_synthetic_tokens(prompt: str, *, max_tokens: int, length_tokens: int = 0) -> Iterator[str]:
    """The same tokens, made one at a time (a long text costs nothing up front)."""
    seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big")
    rng = random.Random(seed)
    natural = length_tokens or MIN_NATURAL_LENGTH_TOKENS + seed % NATURAL_LENGTH_SPREAD_TOKENS
    for i in range(min(natural, max_tokens)):
        word = rng.choice(VOCABULARY)
        if i == 0:
            yield word.capitalize()
        elif i % NEWLINE_EVERY_TOKENS == 0:
            yield "\n" + word
        else:
            yield " " + word


def after_tokens(pieces: Iterable[P], tokens: int) -> Iterator[P]:
    """``pieces`` less their first ``tokens`` tokens (a :class:`TextTail` is no token: it is never what is skipped)."""
    skipped = 0
    for piece in pieces:
        if skipped < tokens and not isinstance(piece, TextTail):
            skipped += 1
            continue
        yield piece


async def paced(tokens: Iterable[P], *, ttft_ms: float, tokens_per_s: float, steps: StepClock) -> AsyncIterator[P]:
    """``tokens`` on the synthetic engine's schedule, anchored where iteration starts (no drift from a slow consumer).

    The first comes ``ttft_ms`` later at its own time (the prefill's), the rest ``1 / tokens_per_s`` apart
    (0: as fast as possible), each released at the decode step of ``steps`` that follows its due time.
    """
    loop = asyncio.get_running_loop()
    start = loop.time() + ttft_ms / 1000
    interval_s = 1 / tokens_per_s if tokens_per_s > 0 else 0.0
    for i, token in enumerate(tokens):
        # Waiting even when the token is due already gives a pending cancel the chance to land before each token;
        # the exception is a prefill of no time: nothing can have asked to cancel a stream before its first token
        # was due, and not yielding lets that token leave in the same write as the stream's start.
        if i == 0:
            if ttft_ms > 0:
                await asyncio.sleep(max(0.0, start - loop.time()))
        else:
            await steps.until(start + i * interval_s)
        yield token


class SyntheticEngine:
    """Yields :func:`synthetic_tokens` with ``ttft_ms`` before the first and ``1/tokens_per_s`` between.

    Tokens after the first are released in decode steps of ``step_ms`` shared by every stream of
    the engine (:mod:`tokenrelay.runner.engines.steps`), as a batching engine produces them; the first token
    (the prefill's) comes at its own time, so a stream's first token never waits for a step.
    """

    name = "synthetic"
    accepts_params: frozenset[str] | None = None
    """A test engine standing in for any model: it ignores every field it does not honour (documented), so it
    refuses none."""
    continues = Continues.ANY
    """Deterministic: any stream moved here continues exactly as it would have on the runner it came from."""

    def __init__(self, config: SyntheticConfig, *, model: str = "synthetic") -> None:
        self._config = config
        self._steps = StepClock(config.step_ms / 1000)
        self.model = model

    def stream(self, request: GenerationRequest) -> AsyncIterator[Piece]:
        """Tokens on a fixed schedule from the start (no drift from slow consumers of the iterator)."""
        prompt = keyed_text(request)
        request.report_prompt_tokens(prompt_tokens(prompt))
        tokens: Iterable[Piece]
        if not request.params:
            tokens = iter_synthetic_tokens(
                prompt,
                max_tokens=request.max_tokens,
                length_tokens=self._config.length_tokens,
            )
        else:
            tokens = self._typed(prompt, request)
        if request.continuation is not None:
            tokens = after_tokens(tokens, request.continuation.tokens)
        return paced(tokens, ttft_ms=self._config.ttft_ms, tokens_per_s=self._config.tokens_per_s, steps=self._steps)

    def _typed(self, prompt: str, request: GenerationRequest) -> Iterator[Piece]:
        """Reasoning, then a tool call or the text (cut at a stop sequence); the finish reason is reported."""
        params, chat = request.params, request.prompt is None  # a completion is text only
        thinking = content.reasoning_tokens(params) if chat else 0
        yield from content.reasoning_prelude(thinking)
        function = content.tool_to_call(params, request.messages) if chat else None
        if function is not None:
            fragments = content.tool_call_fragments(prompt, function)
            request.report_finish_reason(FinishReason.TOOL_CALLS)
            request.report_completion_tokens(thinking + len(fragments))
            yield from fragments
            return
        budget = max(0, request.max_tokens - thinking)
        length = self._config.length_tokens
        stops = content.stop_sequences(params)
        if not stops:
            yield from iter_synthetic_tokens(prompt, max_tokens=budget, length_tokens=length)
            return
        # A stop sequence may span tokens: the text is made whole (at most max_tokens of it) and cut.
        text, stopped = content.cut_at_stop(synthetic_tokens(prompt, max_tokens=budget, length_tokens=length), stops)
        if stopped:
            request.report_finish_reason(FinishReason.STOP)
            request.report_completion_tokens(thinking + len(text))
        yield from text

    async def aclose(self) -> None:
        """Nothing to release."""
