"""Sans-I/O HTTP/1.1 chunked transfer coding (RFC 9112, section 7.1): one chunk per write."""

from __future__ import annotations


def http_chunk(data: bytes) -> bytes:
    """``data`` as one chunk: its size in hex, CRLF, the bytes, CRLF (empty ``data`` would end the body)."""
    if not data:
        raise ValueError("an empty chunk is the last-chunk marker; it ends the body")
    return b"%x\r\n%b\r\n" % (len(data), data)
