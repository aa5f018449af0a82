"""What the synthetic engine answers, for tests and benchmarks that check a stream's text token for token."""

from __future__ import annotations

from tokenrelay.runner.engines.synthetic import prompt_text, synthetic_tokens
from tokenrelay.wire.content import ChatMessage


def expected_text(prompt: str, max_tokens: int, length_tokens: int = 0) -> str:
    """The synthetic engine's text for a one-message prompt: ``max_tokens`` tokens of a text ``length_tokens`` long
    (0: its own length)."""
    messages = (ChatMessage(role="user", content=prompt),)
    return "".join(synthetic_tokens(prompt_text(messages), max_tokens=max_tokens, length_tokens=length_tokens))
