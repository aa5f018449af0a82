"""Sans-I/O publish batching: bound the messages per second of one stream, one block at a time.

A token that arrives when the stream has been quiet for the publish interval goes out at
once (the first token is never delayed).  Tokens that arrive faster are held and published
together at ``last_publish + interval``.  The interval is the runner's :class:`~tokenrelay.runner.pace.PublishPace`,
read at each decision: it grows while streamers report that tokens reach them late.  Tokens whose text is
empty (an engine holding back half a character) are counted but never published on their own.  The caller
asks :meth:`add` whether to publish now and, if not, :meth:`deadline` for when.

Held tokens are always of one block: the answer's text (:data:`TEXT`), reasoning (:data:`REASONING`), or the
fragments of one tool call (its ordinal, an ``int``).  A token of another block may not join them
(:meth:`DeltaBatcher.boundary` says so, and :meth:`~DeltaBatcher.add` refuses it): the caller publishes what is
held first, so a block boundary always starts a new message and every message is of one kind.
"""

from __future__ import annotations

from typing import Literal

from tokenrelay.runner.pace import PublishPace

Block = Literal["text", "reasoning"] | int
"""Which block a token belongs to: text, reasoning, or the tool call with this ordinal."""
TEXT: Block = "text"
REASONING: Block = "reasoning"


class BlockBoundaryError(ValueError):
    """A token of another block was added while tokens were held (publish them first)."""

    def __init__(self, held: Block, added: Block) -> None:
        super().__init__(f"tokens of block {held!r} are held: publish them before adding one of block {added!r}")
        self.held = held
        self.added = added


class DeltaBatcher:
    """Accumulates the token text of one block between publishes of one stream."""

    def __init__(self, pace: PublishPace) -> None:
        self._pace = pace
        self._parts: list[str] = []
        self._has_text = False
        self._last_publish: float | None = None
        self._held_since: float | None = None
        self.block: Block = TEXT
        """The block of the last token added (of the tokens held, when any are)."""
        self.call_id: str | None = None
        """The held tool call's id, when one of its held fragments carried it."""
        self.call_name: str | None = None
        """The held tool call's function name, when one of its held fragments carried it."""

    @property
    def pending_tokens(self) -> int:
        """Tokens held, not yet taken."""
        return len(self._parts)

    @property
    def held_since(self) -> float | None:
        """When the oldest token held now was added (``None`` when none is): a batch is as late as its oldest."""
        return self._held_since

    def boundary(self, block: Block) -> bool:
        """Whether tokens of another block than ``block`` are held (take them before adding one of ``block``)."""
        return block != self.block and bool(self._parts)

    def add(self, text: str, now: float, block: Block = TEXT) -> bool:
        """Hold one token of ``block``; return whether the batch is due now.

        Raises :class:`BlockBoundaryError` when tokens of another block are held.
        """
        if not self._parts:
            self._held_since = now
        elif block != self.block:
            raise BlockBoundaryError(self.block, block)
        self.block = block
        self._parts.append(text)
        self._has_text = self._has_text or bool(text)
        return self._due(now)

    def add_fragment(
        self, call: int, arguments: str, now: float, *, id: str | None = None, name: str | None = None
    ) -> bool:
        """Hold one token of tool call ``call`` (its id and name when this fragment carries them); as :meth:`add`."""
        if self._parts and call != self.block:
            raise BlockBoundaryError(self.block, call)
        if id is not None or name is not None:
            self.call_id = self.call_id if id is None else self.call_id or id
            self.call_name = self.call_name if name is None else self.call_name or name
            self._has_text = True  # a call's id and name are worth a message of their own
        return self.add(arguments, now, call)

    def deadline(self) -> float | None:
        """When held tokens are due, or ``None`` if no text is held (tokens of "" wait for text)."""
        if not self._has_text:
            return None
        if self._last_publish is None:
            return float("-inf")
        return self._last_publish + self._pace.interval_s

    def take(self, now: float) -> tuple[str, int]:
        """Return (text, token count) of everything held, and start a new interval at ``now``.

        Read :attr:`block`, :attr:`call_id` and :attr:`call_name` first: taking forgets the call's id and name.
        """
        parts, self._parts = self._parts, []
        self._has_text = False
        self._held_since = None
        self._last_publish = now
        self.call_id = self.call_name = None
        return "".join(parts), len(parts)

    def _due(self, now: float) -> bool:
        deadline = self.deadline()
        return deadline is not None and now >= deadline
