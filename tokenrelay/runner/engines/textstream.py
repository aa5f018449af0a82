"""Sans-I/O byte-to-text helpers for engines: never let a broken UTF-8 character leave the runner."""

from __future__ import annotations

import codecs


class Utf8Text:
    """Incremental UTF-8 decoding: bytes in, only whole characters out (a split one waits for its rest)."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> str:
        """Decode what is complete so far."""
        return self._decoder.decode(data)

    def flush(self) -> str:
        """Whatever is left at the end (an incomplete character becomes U+FFFD)."""
        return self._decoder.decode(b"", final=True)


class LineSplitter:
    """Bytes in, complete text lines out.

    Lines end in LF or CRLF (what HTTP servers emit; a lone CR, legal in SSE but unseen in
    practice from upstream servers, is not treated as a line end).
    """

    def __init__(self) -> None:
        self._text = Utf8Text()
        self._pending = ""

    def feed(self, data: bytes) -> list[str]:
        """Return the lines completed by ``data``, without their line ends."""
        self._pending += self._text.feed(data)
        *lines, self._pending = self._pending.split("\n")
        return [line.removesuffix("\r") for line in lines]
