"""Signed, expiring capability tokens (sans-I/O).

A browser cannot put an ``Authorization`` header on an ``EventSource`` or a ``WebSocket``, so
what it needs is carried in the URL instead, as a token that grants one thing until a time:

- ``events``: read one stream's events (put in ``events_url`` as ``?token=``; bound to the stream id);
- ``control``: open the control WebSocket as one tenant (``POST /v1/control/token``; short-lived);
- ``stop``: stop one stream (put in ``stop_url`` as ``?token=``; bound to the stream id), so a page that
  holds no API key (one reloaded mid-answer, say) can still stop the answer it shows.

A token is ``v1.<scope>.<subject>.<expires>.<mac>``: the subject (stream id or tenant) in
unpadded base64url, ``expires`` in whole Unix seconds, and ``mac`` the HMAC-SHA256 of the first
four parts under a secret the gateway (which issues tokens and checks ``control`` and ``stop``
ones) and the streamer (which checks ``events`` tokens) share.  Nothing in it is secret, and nothing
can be changed without the secret.  Parsing is strict: one spelling per token, so no two strings
grant the same thing.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import re
from dataclasses import dataclass

TOKEN_SECRET_ENV = "TOKENRELAY_TOKEN_SECRET"
"""The shared signing secret (at least :data:`MIN_SECRET_CHARS` characters)."""
MIN_SECRET_CHARS = 32
MAX_TOKEN_CHARS = 512
VERSION = "v1"
_EXPIRES = re.compile(r"[1-9][0-9]{0,11}")
_B64URL = re.compile(r"[A-Za-z0-9_-]+")


class Scope(enum.StrEnum):
    """What a token grants."""

    EVENTS = "events"
    """Read the events of the stream named by the subject."""
    CONTROL = "control"
    """Open a control WebSocket as the tenant named by the subject."""
    STOP = "stop"
    """Stop the stream named by the subject."""


class TokenError(ValueError):
    """A token that grants nothing: malformed, forged, expired or for something else."""


class SecretError(ValueError):
    """A signing secret that is too short to use."""


@dataclass(frozen=True, slots=True)
class Grant:
    """What a valid token grants, until when."""

    scope: Scope
    subject: str
    expires_at: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not _B64URL.fullmatch(text):
        raise TokenError("malformed token")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise TokenError("malformed token") from None
    if _b64(data) != text:  # non-canonical spelling (stray bits in the last character)
        raise TokenError("malformed token")
    return data


class TokenSigner:
    """Issues and checks tokens under one secret."""

    def __init__(self, secret: str) -> None:
        if len(secret) < MIN_SECRET_CHARS:
            raise SecretError(f"the token secret must have at least {MIN_SECRET_CHARS} characters")
        self._key = secret.encode()

    def _mac(self, signed: str) -> str:
        return _b64(hmac.new(self._key, signed.encode("ascii"), hashlib.sha256).digest())

    def issue(self, scope: Scope, subject: str, *, expires_at: int) -> str:
        """A token granting ``scope`` on ``subject`` until ``expires_at`` (Unix seconds)."""
        if not subject:
            raise ValueError("a token needs a subject")
        signed = f"{VERSION}.{scope}.{_b64(subject.encode())}.{expires_at}"
        return f"{signed}.{self._mac(signed)}"

    def verify(self, token: str, scope: Scope, *, now: float, subject: str | None = None) -> Grant:
        """The grant of a valid, unexpired token of ``scope`` (for ``subject`` when given), else :class:`TokenError`.

        Every refusal says the same thing: a caller learns nothing about why from it.
        """
        refused = TokenError("the token is not valid")
        if len(token) > MAX_TOKEN_CHARS:
            raise refused
        parts = token.split(".")
        if len(parts) != 5:
            raise refused
        version, scope_text, subject_b64, expires_text, mac = parts
        signed = f"{version}.{scope_text}.{subject_b64}.{expires_text}"
        if not hmac.compare_digest(self._mac(signed), mac):  # first: nothing unsigned is looked at further
            raise refused
        if version != VERSION or scope_text != scope or not _EXPIRES.fullmatch(expires_text):
            raise refused
        try:
            granted = _unb64(subject_b64).decode()
        except (TokenError, UnicodeDecodeError):
            raise refused from None
        if subject is not None and not hmac.compare_digest(granted.encode(), subject.encode()):
            raise refused
        expires_at = int(expires_text)
        if now >= expires_at:
            raise refused
        return Grant(Scope(scope_text), granted, expires_at)


def load_signer(value: str | None) -> TokenSigner | None:
    """The signer for ``$TOKENRELAY_TOKEN_SECRET``, or ``None`` when it is unset; too short a secret raises."""
    if value is None or not value.strip():
        return None
    return TokenSigner(value.strip())
