"""Sans-I/O incremental detokenizer: token ids in, text of whole characters out.

Decoding token by token breaks characters that span tokens (byte-level BPE splits emoji and
CJK across several ids), and decoding the whole sequence each step costs O(n²).  Like vLLM and
TGI, we decode a short window: the text of ``ids[prefix:]`` minus the text of
``ids[prefix:read]`` is what the new ids added; while it ends in U+FFFD (an incomplete UTF-8
sequence) it is held back until the next id completes it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT_CHARACTER = "\ufffd"
Decode = Callable[[Sequence[int]], str]


class IncrementalDetokenizer:
    """Feed generated ids one at a time; each call returns the text they completed (maybe "")."""

    def __init__(self, decode: Decode) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def push(self, token_id: int) -> str:
        """Add one id; return the new whole characters."""
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) <= len(before) or after.endswith(REPLACEMENT_CHARACTER):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before) :]

    def flush(self) -> str:
        """At the end: whatever is still held (an incomplete character stays U+FFFD)."""
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return after[len(before) :]
