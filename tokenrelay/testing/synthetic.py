"""What the synthetic engine answers, for tests and benchmarks that check a stream's text token for token."""

from __future__ import annotations

from tokenrelay.runner.engines.synthetic import prompt_text, synthetic_tokens
from tokenrelay.wire.content import ChatMessage


def expected_text(prompt: str, max_tokens: int, length_tokens: int = 0) -> str:
    """The synthetic engine's text for a one-message prompt: ``max_tokens`` tokens of a text ``length_tokens`` long
    (0: its own length)."""
    messages = (ChatMessage(role="user", content=prompt),)
    return "".join(synthetic_tokens(prompt_text(messages), max_tokens=max_tokens, length_tokens=length_tokens))


def synthetic_args(*, tokens_per_s: float, length_tokens: int, ttft_ms: float = 0) -> list[str]:
    """Runner arguments: a synthetic engine at this pace whose texts end by themselves after ``length_tokens``."""
    return [
        *("--synthetic-tokens-per-s", f"{tokens_per_s:g}", "--synthetic-ttft-ms", f"{ttft_ms:g}"),
        *("--synthetic-length-tokens", str(length_tokens)),
    ]
