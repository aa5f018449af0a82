"""Sans-I/O publish batching: bound the messages per second of one stream.

A token that arrives when the stream has been quiet for the publish interval goes out at
once (the first token is never delayed).  Tokens that arrive faster are held and published
together at ``last_publish + interval``.  The interval is the runner's :class:`~tokenrelay.runner.pace.PublishPace`,
read at each decision: it grows while streamers report that tokens reach them late.  Tokens whose text is
empty (an engine holding back half a character) are counted but never published on their own.  The caller
asks :meth:`add` whether to publish now and, if not, :meth:`deadline` for when.
"""

from __future__ import annotations

from tokenrelay.runner.pace import PublishPace


class DeltaBatcher:
    """Accumulates token text between publishes of one stream."""

    def __init__(self, pace: PublishPace) -> None:
        self._pace = pace
        self._parts: list[str] = []
        self._has_text = False
        self._last_publish: float | None = None
        self._held_since: float | None = None

    @property
    def pending_tokens(self) -> int:
        """Tokens held, not yet taken."""
        return len(self._parts)

    @property
    def held_since(self) -> float | None:
        """When the oldest token held now was added (``None`` when none is): a batch is as late as its oldest."""
        return self._held_since

    def add(self, text: str, now: float) -> bool:
        """Hold one token; return whether the batch is due now."""
        if not self._parts:
            self._held_since = now
        self._parts.append(text)
        self._has_text = self._has_text or bool(text)
        return self._due(now)

    def deadline(self) -> float | None:
        """When held tokens are due, or ``None`` if no text is held (tokens of "" wait for text)."""
        if not self._has_text:
            return None
        if self._last_publish is None:
            return float("-inf")
        return self._last_publish + self._pace.interval_s

    def take(self, now: float) -> tuple[str, int]:
        """Return (text, token count) of everything held, and start a new interval at ``now``."""
        parts, self._parts = self._parts, []
        self._has_text = False
        self._held_since = None
        self._last_publish = now
        return "".join(parts), len(parts)

    def _due(self, now: float) -> bool:
        deadline = self.deadline()
        return deadline is not None and now >= deadline
