"""The interface every inference engine implements, and the values that cross it.

An engine turns a :class:`GenerationRequest` into an async iterator of typed pieces, one per
token, each made of whole UTF-8 characters: a plain ``str`` is the answer's text (as it always
was), a :class:`Reasoning` is the model's reasoning, a :class:`ToolCallFragment` a piece of a tool
call.  A :class:`TextTail` after the last token completes earlier text and is no token itself.
The runner, not the engine, enforces ``max_tokens`` and cancellation: it stops iterating and
closes the iterator (``aclose``), which is where an engine frees its resources (an upstream HTTP
request, a decode loop).

An engine reports what it knows through the request: the prompt's length in tokens
(:meth:`GenerationRequest.report_prompt_tokens`; the stream's terminal event carries it, and the
compatible APIs report it as ``usage.prompt_tokens`` / ``usage.input_tokens``), its own count of the
tokens it generated (:meth:`~GenerationRequest.report_completion_tokens`) and the finish reason it
decided (:meth:`~GenerationRequest.report_finish_reason`: ``tool_calls``, ``content_filter``,
``length``, ``stop``).  A text-only engine reports none of these and works unchanged.

An engine declares which request ``params`` fields it can honour in an ``accepts_params`` attribute (a
``frozenset``; ``None``, or no attribute: every field, as an engine that passes them on does).  The runner announces
it in its heartbeats (:func:`announced_params`) so admission refuses a field no runner of the model can honour; the
engine still fails a stream with ``unsupported_parameter`` for a value it cannot honour (the backstop).

A stream whose runner was lost moves to another runner, which continues it from where its history stops
(:attr:`GenerationRequest.continuation`).  An engine declares what it can continue in a ``continues`` attribute (a
:class:`~tokenrelay.wire.messages.Continues`; no attribute: nothing), which the runner announces in its heartbeats
(:func:`continues_of`) and checks before it takes a moved stream (:func:`can_continue`).

Engines import this module and nothing above it, so the registry that builds them can import
the engines without a cycle.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

from tokenrelay.wire.content import ChatMessage, JsonObject
from tokenrelay.wire.errors import ErrorCode
from tokenrelay.wire.messages import Continuation, Continues, FinishReason


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerationRequest:
    """What an engine is asked to continue."""

    stream_id: str
    model: str
    messages: tuple[ChatMessage, ...]
    max_tokens: int
    """The most tokens the runner lets through: it stops reading there (finish reason ``length``)."""
    params: JsonObject = field(default_factory=dict)
    """Every other field of the client's request in the OpenAI chat shape (the job's ``params``), as sent."""
    prompt: str | None = None
    """A text completion's raw prompt, continued as is (no chat template; :attr:`messages` empty); its
    ``suffix`` (fill-in-the-middle) and other fields are in :attr:`params`.  ``None``: a chat."""
    max_tokens_set: bool = True
    """Whether the client or the operator set :attr:`max_tokens`.  ``False``: nobody did; the engine ends at its own
    limit (its natural length, the model's, the upstream's) and :attr:`max_tokens` is only the gateway's hard cap."""
    continuation: Continuation | None = None
    """Set when the stream moved here from a lost runner: the engine yields what follows its first
    ``continuation.tokens`` tokens (whose text is ``continuation.text``), and :attr:`max_tokens` still counts them.
    ``None``: a new stream."""
    on_prompt_tokens: Callable[[int], None] | None = None
    """Told the prompt's length in tokens when the engine knows it; the last report counts (``None``: nobody asks)."""
    on_completion_tokens: Callable[[int], None] | None = None
    """Told the engine's own count of the tokens it generated (its usage); the last report counts."""
    on_finish_reason: Callable[[FinishReason], None] | None = None
    """Told why the engine ended the generation, when it decided that itself; the last report counts."""

    @property
    def tokens_before(self) -> int:
        """Tokens of the stream generated before this request (by a runner it moved from); 0 for a new stream."""
        return self.continuation.tokens if self.continuation is not None else 0

    def report_prompt_tokens(self, tokens: int) -> None:
        """Tell :attr:`on_prompt_tokens` the prompt's length (engines call this)."""
        if self.on_prompt_tokens is not None:
            self.on_prompt_tokens(tokens)

    def report_completion_tokens(self, tokens: int) -> None:
        """Tell :attr:`on_completion_tokens` how many tokens the engine generated (engines call this)."""
        if self.on_completion_tokens is not None:
            self.on_completion_tokens(tokens)

    def report_finish_reason(self, reason: FinishReason) -> None:
        """Tell :attr:`on_finish_reason` why the generation ended (engines call this before their last piece)."""
        if self.on_finish_reason is not None:
            self.on_finish_reason(reason)


class TextTail(str):
    """Text an engine yields after its last token that completes earlier tokens (not a token itself).

    For example the bytes of a character that generation ended in the middle of.
    """

    __slots__ = ()


class Reasoning(str):
    """One token of the model's reasoning (shown apart from its answer)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCallFragment:
    """One token of a tool call: the call's ordinal in the generation and the next piece of its arguments' JSON.

    The call's first fragment carries its ``id`` and ``name``; the fragments of one call joined in order are its
    whole arguments.
    """

    call: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None


Piece = str | ToolCallFragment
"""What an engine yields per token: text (``str``, :class:`Reasoning`, :class:`TextTail`) or a tool-call fragment."""


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

    def stream(self, request: GenerationRequest) -> AsyncIterator[Piece]:
        """Yield the generation's tokens, one piece per token (then maybe one :class:`TextTail`)."""
        ...

    async def aclose(self) -> None:
        """Release the engine's resources when the runner stops."""
        ...


def announced_params(engine: Engine) -> tuple[str, ...] | None:
    """The request ``params`` fields ``engine`` declares it can honour (its ``accepts_params``), sorted, as a
    heartbeat announces them; ``None`` for an engine that honours every field or declares nothing."""
    declared = getattr(engine, "accepts_params", None)
    return tuple(sorted(declared)) if isinstance(declared, frozenset) else None


def continues_of(engine: Engine) -> Continues:
    """What ``engine`` can continue of a stream that moved to it (its ``continues``; ``NOTHING`` when it declares
    nothing), as a heartbeat announces it."""
    declared = getattr(engine, "continues", Continues.NOTHING)
    return declared if isinstance(declared, Continues) else Continues.NOTHING


def can_continue(continues: Continues, continuation: Continuation) -> bool:
    """Whether an engine that continues ``continues`` can take a stream moved with ``continuation``: text-only
    engines take a stream whose content so far is text alone."""
    if continues is Continues.ANY:
        return True
    return continues is Continues.TEXT and not continuation.typed


def require_text_continuation(request: GenerationRequest) -> None:
    """Fail (``unsupported_parameter``) a request continuing reasoning or tool calls, for a text-only engine."""
    if request.continuation is not None and request.continuation.typed:
        raise EngineError(
            str(ErrorCode.UNSUPPORTED_PARAMETER), "this engine cannot continue a stream with reasoning or tool calls"
        )
