"""What the client raises: the project's error vocabulary, plus two client-only cases.

Every error is a :class:`~tokenrelay.wire.errors.TokenRelayError` with a stable ``code``.  Codes
with a class in :mod:`tokenrelay.wire.errors` raise that class (``bad_request`` -> ``BadRequest``);
codes that only occur in an SSE ``error`` event (``runner_lost``, ``slow_consumer``, ...) raise
a plain ``TokenRelayError`` whose ``code`` is that code.  Client-only::

    TokenRelayError
    ├── Unavailable
    │   └── ConnectionLost   the connection dropped and could not be re-established
    └── ProtocolError        the server sent something that is not the tokenrelay protocol
"""

from __future__ import annotations

from tokenrelay.wire.errors import STATUS_CODES, ErrorCode, TokenRelayError, Unavailable


class ConnectionLost(Unavailable):
    """A connection dropped and ``attempts`` reconnects in a row failed (or the socket could not be opened)."""

    def __init__(self, message: str, *, attempts: int = 0) -> None:
        super().__init__(message)
        self.attempts = attempts


class ProtocolError(TokenRelayError):
    """The server sent bytes or a message that the tokenrelay protocol does not allow."""

    code = ErrorCode.INTERNAL


def code_for_status(status: int) -> str:
    """The error code an HTTP status stands for when a body does not say."""
    return str(STATUS_CODES.get(status, ErrorCode.INTERNAL))
