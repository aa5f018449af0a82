"""The error codes a load test records for failures on its own side, and for error answers of the server."""

from __future__ import annotations

import contextlib

import orjson

from tokenrelay.client.errors import ProtocolError


def error_code(exc: BaseException) -> str:
    """The error code the load test records for a client-side failure."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, (ProtocolError, ValueError, KeyError, TypeError)):
        return "protocol_error"  # includes orjson.JSONDecodeError
    return "connection_error"


def http_error_code(status: int, body: bytes) -> str:
    """The ``code`` of an error body, or ``http_<status>`` when the body does not say."""
    with contextlib.suppress(orjson.JSONDecodeError):
        payload = orjson.loads(body)
        if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
            code = payload["error"].get("code")
            if isinstance(code, str) and code:
                return code
    return f"http_{status}"
