"""The interface every inference engine implements, and the values that cross it.

An engine turns a :class:`GenerationRequest` into an async iterator of text pieces, one per
token, each made of whole UTF-8 characters.  The runner, not the engine, enforces
``max_tokens`` and cancellation: it stops iterating and closes the iterator (``aclose``),
which is where an engine frees its resources (an upstream HTTP request, a decode loop).

An engine that knows how many tokens the prompt is tells the request's ``on_prompt_tokens``; the
stream's terminal event carries it, and the compatible APIs report it as ``usage.prompt_tokens`` /
``usage.input_tokens``.

Engines import this module and nothing above it, so the registry that builds them can import
the engines without a cycle.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

from tokenrelay.wire.messages import ChatMessage


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerationRequest:
    """What an engine is asked to continue."""

    stream_id: str
    model: str
    messages: tuple[ChatMessage, ...]
    max_tokens: int
    on_prompt_tokens: Callable[[int], None] | None = None
    """Told the prompt's length in tokens when the engine knows it; the last report counts (``None``: nobody asks)."""

    def report_prompt_tokens(self, tokens: int) -> None:
        """Tell :attr:`on_prompt_tokens` the prompt's length (engines call this)."""
        if self.on_prompt_tokens is not None:
            self.on_prompt_tokens(tokens)


class TextTail(str):
    """Text an engine yields after its last token that completes earlier tokens (not a token itself).

    For example the bytes of a character that generation ended in the middle of.
    """

    __slots__ = ()


class EngineError(Exception):
    """An engine failure that ends one stream with an ``error`` event carrying ``code``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Engine(Protocol):
    """What the runner needs from an inference engine."""

    name: str
    model: str

    def stream(self, request: GenerationRequest) -> AsyncIterator[str]:
        """Yield the generation's tokens as text, one piece per token (then maybe one :class:`TextTail`)."""
        ...

    async def aclose(self) -> None:
        """Release the engine's resources when the runner stops."""
        ...
