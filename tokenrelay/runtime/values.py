"""What each command-line value may be: argparse types that refuse a bad value with a message naming the rule.

Each type raises ``argparse.ArgumentTypeError`` with a message such as ``must be >= 0, got -5``; the parser
(:mod:`tokenrelay.cli.parser`) puts the flag's name, or the environment variable's, in front of it.  A value
that passes here is one the role can start with: numbers are finite and in range, URLs parse and have the
scheme the role speaks, files exist.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import re
from collections.abc import Callable
from urllib.parse import SplitResult, urlsplit

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
NATS_SCHEMES = ("nats", "tls", "ws", "wss")
"""What nats-py connects to: plain and TLS NATS, and NATS over WebSocket."""
HTTP_SCHEMES = ("http", "https")
MAX_PORT = 65535
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def integer(*, minimum: int | None = None, maximum: int | None = None) -> Callable[[str], int]:
    """An integer type, within ``minimum`` and ``maximum`` where given."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        _check_range(value, text, minimum, maximum)
        return value

    parse.__name__ = "integer"
    return parse


def number(
    *, minimum: float | None = None, above: float | None = None, maximum: float | None = None
) -> Callable[[str], float]:
    """A finite number type, at least ``minimum`` (or greater than ``above``) and at most ``maximum`` where given."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if above is not None and not value > above:
            raise argparse.ArgumentTypeError(f"must be > {above:g}, got {text}")
        _check_range(value, text, minimum, maximum)
        return value

    parse.__name__ = "number"
    return parse


def _check_range(value: float, text: str, minimum: float | None, maximum: float | None) -> None:
    if minimum is not None and maximum is not None and not minimum <= value <= maximum:
        raise argparse.ArgumentTypeError(f"must be between {minimum:g} and {maximum:g}, got {text}")
    if minimum is not None and value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum:g}, got {text}")
    if maximum is not None and value > maximum:
        raise argparse.ArgumentTypeError(f"must be <= {maximum:g}, got {text}")


COUNT = integer(minimum=0)
"""A count or a size where 0 has a meaning of its own (none, no limit, off: each flag's help says which)."""
POSITIVE_COUNT = integer(minimum=1)
DURATION = number(minimum=0.0)
"""Seconds or milliseconds where 0 has a meaning of its own (never, no wait: each flag's help says which)."""
POSITIVE_DURATION = number(above=0.0)
RATE = number(minimum=0.0)
PORT = integer(minimum=0, maximum=MAX_PORT)
"""A port to listen on; 0 lets the kernel pick one."""
FIXED_PORT = integer(minimum=1, maximum=MAX_PORT)
"""A port that must be known before listening (``up`` prints it and hands it to clients)."""


def log_level(text: str) -> str:
    """A logging level name, in either case (``info`` is ``INFO``); the parser checks it against :data:`LOG_LEVELS`."""
    return text.strip().upper()


def host(text: str) -> str:
    """An address to listen on: an IPv4 or IPv6 address, or a host name."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        if not _HOSTNAME.fullmatch(text) or len(text) > 253:
            raise argparse.ArgumentTypeError(f"must be an IP address or a host name, got {text!r}") from None
    return text


def _url(text: str, schemes: tuple[str, ...]) -> SplitResult:
    listed = [f"{scheme}://" for scheme in schemes]
    names = f"{', '.join(listed[:-1])} or {listed[-1]}"
    try:
        parts = urlsplit(text)
        port_given = parts.port is not None
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a URL ({names}) with a valid port, got {text!r}") from None
    if parts.scheme not in schemes or not parts.hostname:
        raise argparse.ArgumentTypeError(f"must be a URL ({names}) with a host, got {text!r}")
    if not port_given and parts.netloc.endswith(":"):
        raise argparse.ArgumentTypeError(f"must be a URL ({names}) with a valid port, got {text!r}")
    if any(char.isspace() for char in text):
        raise argparse.ArgumentTypeError(f"must be a URL without spaces, got {text!r}")
    host(parts.hostname.strip("[]"))
    return parts


MAX_NATS_URLS = 32
"""NATS servers one flag may name."""


def nats_url(text: str) -> str:
    """One NATS server's URL (``nats://host:port``; ``tls://``, ``ws://`` and ``wss://`` too), or several separated by
    commas: the servers of one cluster, any of which a role may connect to (:func:`nats_servers` splits them)."""
    urls = nats_servers(text)
    if len(urls) > MAX_NATS_URLS:
        raise argparse.ArgumentTypeError(f"at most {MAX_NATS_URLS} servers, got {len(urls)}")
    for url in urls:
        if not url:
            raise argparse.ArgumentTypeError(f"an empty server between commas in {text!r}")
        _url(url, NATS_SCHEMES)
    return text


def nats_servers(text: str) -> list[str]:
    """The servers a ``--nats-url`` value names, in its order."""
    return text.split(",")


def http_url(text: str) -> str:
    """An ``http://`` or ``https://`` URL with a host (a path is allowed: a service behind a prefix)."""
    _url(text, HTTP_SCHEMES)
    return text


def optional_http_url(text: str) -> str:
    """:func:`http_url`, or the empty string for none."""
    return http_url(text) if text else text


def base_url(text: str) -> str:
    """:func:`http_url` without the trailing slashes, so paths can be appended."""
    return http_url(text).rstrip("/")


def cors_origin(text: str) -> str:
    """An origin as a browser sends it (``scheme://host[:port]``), lower-cased, or ``*``."""
    if text == "*":
        return text
    try:
        parts = _url(text, HTTP_SCHEMES)
    except argparse.ArgumentTypeError:
        parts = None
    if parts is None or "@" in parts.netloc or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise argparse.ArgumentTypeError(f"must be an origin like https://chat.example.com (or *), got {text!r}")
    return f"{parts.scheme}://{parts.netloc.lower()}"


def existing_file(text: str) -> str:
    """A file that exists and can be read, or the empty string for none."""
    if text and not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    if text and not os.access(text, os.R_OK):
        raise argparse.ArgumentTypeError(f"cannot read {text}")
    return text


def output_file(text: str) -> str:
    """A file to write (``-``: standard output): its folder must exist, and it must not be a folder itself."""
    if text == "-":
        return text
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"is a folder, not a file: {text}")
    folder = os.path.dirname(text) or "."
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"no such folder: {folder}")
    return text


def boolean(text: str) -> bool:
    """A switch's value in an environment variable: 1, true, yes, on, or 0, false, no, off (any case)."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"must be one of {', '.join(TRUE_WORDS + FALSE_WORDS)}, got {text!r}")
