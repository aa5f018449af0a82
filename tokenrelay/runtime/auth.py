"""API keys: who may call the gateway and the streamer (sans-I/O).

Keys come from a file (``--api-keys-file``) or the environment (``TOKENRELAY_API_KEYS``), one
per entry, each with the tenant it belongs to::

    # tenant   key (as given to the client), or its SHA-256 as sha256:<64 hex digits>
    acme       tr-3f9c0b6e2d...
    globex     sha256:9b74c9897bac770ffc029102a200c5de...

Only SHA-256 digests are kept in memory, and a file may hold digests alone, so a leaked file
or core dump does not hand out working keys.  A request presents its key as
``Authorization: Bearer <key>`` (the OpenAI SDK's header) or ``x-api-key: <key>`` (the
Anthropic SDK's).  Keys are random secrets of at least :data:`MIN_KEY_CHARS` characters, so
an unsalted digest is enough: there is no dictionary to try against it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tokenrelay.wire.errors import NotFound

API_KEYS_ENV = "TOKENRELAY_API_KEYS"
"""Entries separated by newlines or commas, each ``tenant:key`` (or ``tenant:sha256:<hex>``)."""
MIN_KEY_CHARS = 16
MAX_KEY_CHARS = 256
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_KEY = re.compile(r"[\x21-\x7e]+")  # printable ASCII without spaces, so it fits in a header


class KeyFileError(ValueError):
    """An API key entry that cannot be used; the message names the line."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request: the tenant its key belongs to."""

    tenant: str


def digest(key: str) -> str:
    """The hex SHA-256 of a key, as stored."""
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    """The configured keys (their digests), and who each belongs to."""

    def __init__(self, tenants_by_digest: Mapping[str, str]) -> None:
        self._tenants = dict(tenants_by_digest)

    def __len__(self) -> int:
        return len(self._tenants)

    @classmethod
    def parse(cls, entries: Iterable[tuple[int, str, str]]) -> KeyRing:
        """From ``(line number, tenant, key or sha256:<hex>)``; a bad entry raises :class:`KeyFileError`."""
        tenants: dict[str, str] = {}
        for line, tenant, secret in entries:
            if not _TENANT.fullmatch(tenant):
                raise KeyFileError(f"line {line}: tenant {tenant!r} must be letters, digits, '.', '_' or '-'")
            found = _DIGEST.fullmatch(secret)
            if found is not None:
                key_digest = found.group(1)
            elif MIN_KEY_CHARS <= len(secret) <= MAX_KEY_CHARS and _KEY.fullmatch(secret):
                key_digest = digest(secret)
            else:
                raise KeyFileError(
                    f"line {line}: a key must be {MIN_KEY_CHARS}-{MAX_KEY_CHARS} printable characters "
                    "without spaces, or sha256:<64 lowercase hex digits>"
                )
            if tenants.setdefault(key_digest, tenant) != tenant:
                raise KeyFileError(f"line {line}: the same key is given to two tenants")
        return cls(tenants)

    @classmethod
    def from_file(cls, path: str | Path) -> KeyRing:
        """One ``tenant key`` per line; blank lines and ``#`` comments are skipped."""
        entries = []
        for number, raw in enumerate(Path(path).read_text().splitlines(), start=1):
            text = raw.split("#", 1)[0].strip()
            if not text:
                continue
            parts = text.split()
            if len(parts) != 2:
                raise KeyFileError(f"line {number}: expected 'tenant key'")
            entries.append((number, parts[0], parts[1]))
        return cls.parse(entries)

    @classmethod
    def from_env(cls, value: str) -> KeyRing:
        """``tenant:key`` entries separated by newlines or commas."""
        entries = []
        for number, raw in enumerate(re.split(r"[,\n]", value), start=1):
            text = raw.strip()
            if not text:
                continue
            tenant, colon, secret = text.partition(":")
            if not colon:
                raise KeyFileError(f"entry {number}: expected 'tenant:key'")
            entries.append((number, tenant.strip(), secret.strip()))
        return cls.parse(entries)

    def authenticate(self, presented: str | None) -> Principal | None:
        """The principal a presented key belongs to, or ``None``."""
        if presented is None or not presented or len(presented) > MAX_KEY_CHARS:
            return None
        tenant = self._tenants.get(digest(presented))  # by digest: the lookup's timing says nothing about a key
        return None if tenant is None else Principal(tenant)

    def union(self, other: KeyRing) -> KeyRing:
        """Both rings' keys; a key given to two different tenants is an error."""
        merged = dict(self._tenants)
        for key_digest, tenant in other._tenants.items():
            if merged.setdefault(key_digest, tenant) != tenant:
                raise KeyFileError("the same key is given to two tenants")
        return KeyRing(merged)


def check_owner(owner: str | None, tenant: str | None) -> None:
    """``not_found`` (the answer for a stream that does not exist) unless ``tenant`` may use a stream of ``owner``.

    ``tenant`` is ``None`` only when no API keys are configured: anyone may then.  With keys, a stream
    without an owner (made before keys were configured) belongs to no one.
    """
    if tenant is not None and owner != tenant:
        raise NotFound("no such stream")


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key a request presents: ``Authorization: Bearer <key>``, else ``x-api-key``."""
    if authorization:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
        return None
    return x_api_key.strip() if x_api_key else None


def load_keyring(path: str | None, env_value: str | None) -> KeyRing | None:
    """The keys from ``--api-keys-file`` and/or ``TOKENRELAY_API_KEYS`` (both may be given); ``None`` if neither."""
    rings = [KeyRing.from_file(path)] if path else []
    if env_value and env_value.strip():
        rings.append(KeyRing.from_env(env_value))
    if not rings:
        return None
    ring = rings[0]
    for other in rings[1:]:
        ring = ring.union(other)
    return ring
