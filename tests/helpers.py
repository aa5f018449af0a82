"""Small client-side helpers shared by the integration tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from tokenrelay.runner.engines.synthetic import prompt_text, synthetic_tokens
from tokenrelay.wire.messages import ChatMessage

STOPPED_TOKENS = 30_000
"""The ``max_tokens`` of a stream a test stops, cuts or walks away from: minutes of tokens at any test's pace, so no
such stream ends by itself first however slow the machine (slow CI runs let streams of short texts end before the
stop, the cut or the SIGTERM that the test was about)."""


def synthetic_args(*, tokens_per_s: float, length_tokens: int, ttft_ms: float = 0) -> list[str]:
    """Runner arguments: a synthetic engine at this pace whose texts end by themselves after ``length_tokens``."""
    return [
        *("--synthetic-tokens-per-s", str(tokens_per_s), "--synthetic-ttft-ms", str(ttft_ms)),
        *("--synthetic-length-tokens", str(length_tokens)),
    ]


LoopFactory = Callable[[], asyncio.AbstractEventLoop] | None
"""What ``asyncio.Runner`` makes its loop with (``None``: asyncio's own); the ``loop_factory`` fixture gives both."""


def run_on_loop(loop_factory: LoopFactory, main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` to completion on a fresh loop of the given kind."""
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main)


def expected_text(prompt: str, max_tokens: int, length_tokens: int = 0) -> str:
    """What the synthetic engine generates for a one-message prompt."""
    messages = (ChatMessage(role="user", content=prompt),)
    return "".join(synthetic_tokens(prompt_text(messages), max_tokens=max_tokens, length_tokens=length_tokens))
