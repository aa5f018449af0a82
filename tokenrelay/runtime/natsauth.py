"""How a role proves who it is to NATS and protects the connection: credentials and TLS, from the environment.

Every role (and ``tokenrelay feedback export``) reads the same variables, so a secured NATS needs no flag on any
command line, where a secret would show in ``ps``:

==================================  ====================================================================
variable                            meaning
==================================  ====================================================================
``TOKENRELAY_NATS_USER``            user name (needs ``TOKENRELAY_NATS_PASSWORD``)
``TOKENRELAY_NATS_PASSWORD``        that user's password
``TOKENRELAY_NATS_TOKEN``           an authorization token
``TOKENRELAY_NATS_NKEY_SEED_FILE``  file holding an nkey user seed (``SU...``); the server sends a nonce,
                                    the client signs it, the seed never leaves the machine
``TOKENRELAY_NATS_CREDS_FILE``      a ``.creds`` file (user JWT and nkey seed; decentralized auth)
``TOKENRELAY_NATS_TLS_CA_FILE``     CA bundle (PEM) the server's certificate must chain to (default: the
                                    system's trust store)
``TOKENRELAY_NATS_TLS_CERT_FILE``   client certificate (PEM) for servers that verify clients (needs the key)
``TOKENRELAY_NATS_TLS_KEY_FILE``    the client certificate's private key (PEM)
``TOKENRELAY_NATS_TLS_HOSTNAME``    name the server's certificate must carry, when it is not the URL's host
==================================  ====================================================================

At most one way to authenticate is set (user and password, token, nkey seed, or creds file); TLS combines with
any of them.  Unset and empty variables mean the same thing.  Nothing here opens a connection: :class:`NatsSecurity`
checks the settings (the files must exist) and turns them into keyword arguments for ``nats.connect``;
:func:`refusal` tells a refusal that retrying cannot cure from a broker that is merely unreachable.

Errors::

    ValueError
    └── NatsSecurityError     the settings are incomplete, contradictory, or name a missing file
    OSError
    └── ConnectionError
        └── NatsConnectError  NATS could not be joined for a reason a retry cannot cure
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from nats import errors as nats_errors

ENV_USER = "TOKENRELAY_NATS_USER"
ENV_PASSWORD = "TOKENRELAY_NATS_PASSWORD"
ENV_TOKEN = "TOKENRELAY_NATS_TOKEN"
ENV_NKEY_SEED_FILE = "TOKENRELAY_NATS_NKEY_SEED_FILE"
ENV_CREDS_FILE = "TOKENRELAY_NATS_CREDS_FILE"
ENV_TLS_CA_FILE = "TOKENRELAY_NATS_TLS_CA_FILE"
ENV_TLS_CERT_FILE = "TOKENRELAY_NATS_TLS_CERT_FILE"
ENV_TLS_KEY_FILE = "TOKENRELAY_NATS_TLS_KEY_FILE"
ENV_TLS_HOSTNAME = "TOKENRELAY_NATS_TLS_HOSTNAME"

_AUTHORIZATION_VIOLATION = "authorization violation"
_AUTHENTICATION_EXPIRED = "authentication expired"


class NatsSecurityError(ValueError):
    """The NATS security settings are incomplete, contradictory, or name a file that cannot be used.

    The message names the environment variables involved.
    """


class NatsConnectError(ConnectionError):
    """NATS could not be joined for a reason that retrying cannot cure (bad settings, refused credentials, TLS).

    A ``ConnectionError`` (so an ``OSError``): the command line reports it in one line and exits 1.
    """


def _env_field(variable: str, *, secret: bool = False) -> Any:
    return field(default=None, repr=not secret, metadata={"env": variable})


@dataclass(frozen=True)
class NatsSecurity:
    """Credentials and TLS settings for one NATS connection; all optional (none: an open, plain-text NATS).

    Each field is named after the variable :meth:`from_env` reads it from; file fields hold paths, and the
    files must exist.  Secrets are left out of ``repr``.
    """

    user: str | None = _env_field(ENV_USER)
    password: str | None = _env_field(ENV_PASSWORD, secret=True)
    token: str | None = _env_field(ENV_TOKEN, secret=True)
    nkeys_seed: str | None = _env_field(ENV_NKEY_SEED_FILE)
    creds: str | None = _env_field(ENV_CREDS_FILE)
    tls_ca: str | None = _env_field(ENV_TLS_CA_FILE)
    tls_cert: str | None = _env_field(ENV_TLS_CERT_FILE)
    tls_key: str | None = _env_field(ENV_TLS_KEY_FILE)
    tls_hostname: str | None = _env_field(ENV_TLS_HOSTNAME)

    def __post_init__(self) -> None:
        """Refuse settings that could not work, naming the variables (``NatsSecurityError``)."""
        if self.password is not None and self.user is None:
            raise NatsSecurityError(f"{ENV_PASSWORD} is set without {ENV_USER}")
        if self.user is not None and self.password is None:
            raise NatsSecurityError(f"{ENV_USER} is set without {ENV_PASSWORD}")
        methods = [
            variable
            for variable, value in (
                (ENV_USER, self.user),
                (ENV_TOKEN, self.token),
                (ENV_NKEY_SEED_FILE, self.nkeys_seed),
                (ENV_CREDS_FILE, self.creds),
            )
            if value is not None
        ]
        if len(methods) > 1:
            raise NatsSecurityError(f"set only one way to authenticate to NATS, not {' and '.join(methods)}")
        if self.tls_cert is not None and self.tls_key is None:
            raise NatsSecurityError(f"{ENV_TLS_CERT_FILE} is set without {ENV_TLS_KEY_FILE}")
        if self.tls_key is not None and self.tls_cert is None:
            raise NatsSecurityError(f"{ENV_TLS_KEY_FILE} is set without {ENV_TLS_CERT_FILE}")
        for variable, path in (
            (ENV_NKEY_SEED_FILE, self.nkeys_seed),
            (ENV_CREDS_FILE, self.creds),
            (ENV_TLS_CA_FILE, self.tls_ca),
            (ENV_TLS_CERT_FILE, self.tls_cert),
            (ENV_TLS_KEY_FILE, self.tls_key),
        ):
            if path is not None and not os.path.isfile(path):
                raise NatsSecurityError(f"{variable}: no such file: {path}")
        if self.nkeys_seed is not None:
            _check_seed_file(self.nkeys_seed)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> NatsSecurity:
        """The settings in ``environ`` (the ``TOKENRELAY_NATS_*`` variables; empty counts as unset)."""
        values = {f.name: environ.get(f.metadata["env"]) or None for f in fields(cls)}
        return cls(**values)

    @property
    def uses_tls(self) -> bool:
        """Whether any TLS setting is given (the connection then carries a TLS context of its own)."""
        return any(value is not None for value in (self.tls_ca, self.tls_cert, self.tls_hostname))

    def describe(self) -> str:
        """One line saying how this connection authenticates and whether it uses TLS, with no secret in it."""
        if self.user is not None:
            auth = f"user {self.user!r} with a password"
        elif self.token is not None:
            auth = "a token"
        elif self.nkeys_seed is not None:
            auth = f"the nkey seed in {self.nkeys_seed}"
        elif self.creds is not None:
            auth = f"the credentials in {self.creds}"
        else:
            auth = "no credentials"
        return f"{auth}, TLS" if self.uses_tls else auth

    def tls_context(self) -> ssl.SSLContext | None:
        """A client TLS context that verifies the server (against ``tls_ca`` if given) and presents ``tls_cert``;
        ``None`` when no TLS file is set (a server that requires TLS is then verified against the system's CAs).
        """
        if self.tls_ca is None and self.tls_cert is None:
            return None
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.tls_ca)
        except (ssl.SSLError, OSError) as exc:
            raise NatsSecurityError(f"{ENV_TLS_CA_FILE}: not a usable CA bundle: {exc}") from None
        if self.tls_cert is not None:
            try:
                context.load_cert_chain(self.tls_cert, self.tls_key)
            except (ssl.SSLError, OSError) as exc:
                raise NatsSecurityError(
                    f"{ENV_TLS_CERT_FILE}/{ENV_TLS_KEY_FILE}: not a usable certificate and key: {exc}"
                ) from None
        return context

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect`` (``NatsSecurityError`` if a TLS file cannot be loaded).

        nats-py reads ``nkeys_seed`` (a seed file) and ``user_credentials`` (a creds file) itself, at each
        (re)connect, with the ``nkeys`` package; ``tls_hostname`` replaces the URL's host for certificate checks.
        """
        options: dict[str, Any] = {}
        if self.user is not None:
            options["user"] = self.user
            options["password"] = self.password
        if self.token is not None:
            options["token"] = self.token
        if self.nkeys_seed is not None:
            options["nkeys_seed"] = self.nkeys_seed
        if self.creds is not None:
            options["user_credentials"] = self.creds
        context = self.tls_context()
        if context is not None:
            options["tls"] = context
        if self.tls_hostname is not None:
            options["tls_hostname"] = self.tls_hostname
        return options


def _check_seed_file(path: str) -> None:
    import nkeys

    try:
        with open(path, "rb") as file:
            seed = bytearray(file.read().strip())
    except OSError as exc:
        raise NatsSecurityError(f"{ENV_NKEY_SEED_FILE}: cannot read {path}: {exc}") from None
    try:
        nkeys.from_seed(seed).wipe()
    except nkeys.NkeysError:
        raise NatsSecurityError(f"{ENV_NKEY_SEED_FILE}: {path} does not hold an nkey seed (SU...)") from None
    finally:
        seed[:] = bytes(len(seed))  # best effort: do not leave the seed in memory


def refusal(exc: BaseException) -> str | None:
    """Why connecting failed for good, or ``None`` when a retry may succeed (the broker is down or restarting).

    The server refusing the credentials, a TLS failure (a certificate that does not verify, a missing client
    certificate) and an unreadable creds file do not heal by waiting.
    """
    text = str(exc)
    if isinstance(exc, nats_errors.AuthorizationError) or _AUTHORIZATION_VIOLATION in text.lower():
        return "the server refused the credentials (Authorization Violation)"
    if _AUTHENTICATION_EXPIRED in text.lower():
        return "the server says the credentials have expired"
    if isinstance(exc, nats_errors.InvalidUserCredentialsError):
        return f"the credentials file cannot be used: {text or type(exc).__name__}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the server's TLS certificate does not verify: {getattr(exc, 'verify_message', None) or exc}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or text}"
    return None
