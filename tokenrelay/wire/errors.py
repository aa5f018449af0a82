"""The one error vocabulary of tokenrelay.

Every error that reaches a client has a stable machine-readable ``code`` (an
:class:`ErrorCode`), a human ``message`` and, over HTTP, a fitting status.  The JSON
shape is ``{"error": {"code": ..., "message": ...}}`` (see docs/api.md).

Hierarchy::

    TokenRelayError
    ├── BadRequest          400 bad_request
    │   └── UnsupportedParameter  400 unsupported_parameter
    ├── Unauthorized        401 unauthorized
    ├── Forbidden           403 forbidden
    ├── NotFound            404 not_found
    │   └── ModelNotFound   404 model_not_found
    ├── PayloadTooLarge     413 payload_too_large
    ├── RetryLater          (carries retry_after_s: answered with Retry-After)
    │   ├── RateLimited     429 rate_limited
    │   └── Overloaded      503 overloaded
    ├── Unavailable         503 unavailable
    └── ResumeUnavailable   410 resume_unavailable

Codes that only ever reach a client inside an SSE ``error`` event (``slow_consumer``,
``runner_lost``, ``engine_error``, ``upstream_*``, ``shutting_down``) have no exception class.
"""

from __future__ import annotations

import enum
from typing import Any


class ErrorCode(enum.StrEnum):
    """Stable error codes. Clients may switch on these; never rename one."""

    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    NOT_FOUND = "not_found"
    OVERLOADED = "overloaded"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"
    SLOW_CONSUMER = "slow_consumer"
    RESUME_UNAVAILABLE = "resume_unavailable"
    RUNNER_LOST = "runner_lost"
    ENGINE_ERROR = "engine_error"
    UPSTREAM_ERROR = "upstream_error"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    SHUTTING_DOWN = "shutting_down"
    UNSUPPORTED_PARAMETER = "unsupported_parameter"
    """No runner of the model can honour a parameter of the request: refused at admission (400), or the stream
    ends with this error when the runner that took it cannot."""
    MODEL_NOT_FOUND = "model_not_found"


STATUS_CODES: dict[int, ErrorCode] = {
    400: ErrorCode.BAD_REQUEST,
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    410: ErrorCode.RESUME_UNAVAILABLE,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    429: ErrorCode.RATE_LIMITED,
    503: ErrorCode.UNAVAILABLE,
}
"""The code an HTTP error status stands for when no body says more (a proxy's error, aiohttp's own)."""


class TokenRelayError(Exception):
    """Base class of every error tokenrelay reports to a client."""

    code: ErrorCode = ErrorCode.INTERNAL
    http_status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, Any]:
        """The error as the body of an HTTP error response."""
        return {"error": {"code": str(self.code), "message": self.message}}


class BadRequest(TokenRelayError):
    """The request is malformed or breaks a documented rule."""

    code = ErrorCode.BAD_REQUEST
    http_status = 400


class UnsupportedParameter(BadRequest):
    """The request sets a parameter that no runner of its model can honour (named in the message)."""

    code = ErrorCode.UNSUPPORTED_PARAMETER


class Unauthorized(TokenRelayError):
    """No API key, or one that is not configured (the same answer for both)."""

    code = ErrorCode.UNAUTHORIZED
    http_status = 401


class Forbidden(TokenRelayError):
    """The request comes from somewhere it may not (a WebSocket from a page whose origin is not allowed)."""

    code = ErrorCode.FORBIDDEN
    http_status = 403


class NotFound(TokenRelayError):
    """No such stream (or it is not visible to the caller)."""

    code = ErrorCode.NOT_FOUND
    http_status = 404


class ModelNotFound(NotFound):
    """No runner serves the requested model, nor has one announced it since this gateway started."""

    code = ErrorCode.MODEL_NOT_FOUND


class PayloadTooLarge(TokenRelayError):
    """The request body is over the size limit."""

    code = ErrorCode.PAYLOAD_TOO_LARGE
    http_status = 413


class RetryLater(TokenRelayError):
    """Refused for now: the client should retry after ``retry_after_s`` whole seconds (``Retry-After``)."""

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, retry_after_s)


class RateLimited(RetryLater):
    """The caller's key is over one of its limits (request rate, concurrent streams, control sockets)."""

    code = ErrorCode.RATE_LIMITED
    http_status = 429


class Overloaded(RetryLater):
    """Capacity is exhausted; the client should retry after ``retry_after_s`` seconds."""

    code = ErrorCode.OVERLOADED
    http_status = 503


class ShuttingDown(RetryLater):
    """This process is stopping (a gateway draining): the same request succeeds on another one."""

    code = ErrorCode.SHUTTING_DOWN
    http_status = 503


class Unavailable(TokenRelayError):
    """A dependency (NATS, the runners) cannot be reached right now."""

    code = ErrorCode.UNAVAILABLE
    http_status = 503


class ResumeUnavailable(TokenRelayError):
    """The history a cursor points into is gone: resuming would leave a gap."""

    code = ErrorCode.RESUME_UNAVAILABLE
    http_status = 410


_CLASSES: dict[str, type[TokenRelayError]] = {
    cls.code: cls
    for cls in (
        BadRequest, UnsupportedParameter, Unauthorized, Forbidden, NotFound, ModelNotFound, PayloadTooLarge,
        RateLimited, Overloaded, ShuttingDown, Unavailable, ResumeUnavailable,
    )
}  # fmt: skip


_KNOWN_CODES = frozenset(code.value for code in ErrorCode)


def from_code(code: str, message: str, *, retry_after_s: float | None = None) -> TokenRelayError:
    """Rebuild the error another process reported by code.

    A code with a class gets that class; a known code without one (``runner_lost``,
    ``slow_consumer``...) a plain :class:`TokenRelayError` that keeps the code; an unknown
    code ``internal``, with the code in front of the message.
    """
    cls = _CLASSES.get(code)
    if cls is not None and issubclass(cls, RetryLater):
        return cls(message, retry_after_s=max(1, round(retry_after_s or 1)))
    if cls is not None:
        return cls(message)
    if code in _KNOWN_CODES:
        error = TokenRelayError(message)
        error.code = ErrorCode(code)
        return error
    return TokenRelayError(f"{code}: {message}")
