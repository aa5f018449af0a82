"""The SSE cursor: ``<epoch>:<offset>``, a position that cannot lie.

``epoch`` names one history of a stream (it changes if that history is lost and rebuilt);
``offset`` is the number of tokens delivered before the position.  A cursor is parsed
strictly: anything else is a ``bad_request``, never a guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_CURSOR_CHARS = 64
_CURSOR = re.compile(r"([0-9a-f]{1,32}):(0|[1-9][0-9]{0,9})")


class CursorError(ValueError):
    """Text that is not a cursor tokenrelay issued."""


@dataclass(frozen=True, slots=True)
class Cursor:
    """A position in one stream's history."""

    epoch: str
    offset: int

    def __str__(self) -> str:
        return f"{self.epoch}:{self.offset}"

    @classmethod
    def parse(cls, text: str) -> Cursor:
        """Parse ``epoch:offset`` strictly (lowercase hex epoch, decimal offset without sign)."""
        if len(text) > MAX_CURSOR_CHARS:
            raise CursorError("cursor too long")
        match = _CURSOR.fullmatch(text)
        if match is None:
            raise CursorError(f"malformed cursor {text[:MAX_CURSOR_CHARS]!r}")
        return cls(match.group(1), int(match.group(2)))
