"""Garbage for ``tests/e2e/test_garbage.py``: seeded malformed HTTP requests and WebSocket frames, what the contract
says each must be answered with, and a raw-socket sender that reports what the server did.

Every item is one TCP connection.  Three families:

* ``raw.*``: bytes that are not a valid HTTP/1.1 request (random bytes, truncated or slow requests, bad methods and
  versions, huge or injected headers, bad framing, HTTP/0.9, pipelined junk).  The contract only says "a 4xx or a
  close, never a 5xx": the HTTP parser answers these before any handler runs.
* ``http.*``: well-formed HTTP with bad content (JSON, types, sizes, ids, cursors, keys) to every endpoint, including
  the OpenAI- and Anthropic-compatible ones; each has an exact status and error code.
* ``ws.*``: a proper upgrade to the gateway's ``/v1/control`` (with the key), then frames that break RFC 6455 (close
  codes 1002, 1007, 1009) or well-formed frames whose JSON is garbage (an ``error`` reply with its code); plus
  upgrades that are refused (400, 401, 404).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import random
import re
import string
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import orjson

GATEWAY = "gateway"
STREAMER = "streamer"
NATIVE, OPENAI, ANTHROPIC = "native", "openai", "anthropic"

WS_PROTOCOL_ERROR = 1002
WS_INVALID_TEXT = 1007
WS_MESSAGE_TOO_BIG = 1009

_OP_CONTINUATION, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_CURSOR = re.compile(r"[0-9a-f]{1,32}:(0|[1-9][0-9]{0,9})")
_MAX_CURSOR_CHARS = 64
_URL_SAFE = string.ascii_letters + string.digits + "-._~"
_PRINTABLE = "".join(c for c in string.printable if c not in string.whitespace)


@dataclass(frozen=True, slots=True)
class Expect:
    """What the server must answer to one item.

    ``statuses``: the status of the (first) HTTP response must be one of these, and every other response's too;
    ``close_ok``: closing without any response is also fine; ``code``: the error code the JSON body carries
    (read per ``shape``); ``ws_close``: the close code the server must send; ``ws_errors``: the ``(code, ref)`` of
    each ``error`` reply the control socket must send, in any order; ``ws_silent``: no reply at all.
    """

    statuses: frozenset[int] = frozenset()
    close_ok: bool = False
    code: str | None = None
    shape: str = NATIVE
    ws_close: int | None = None
    ws_errors: tuple[tuple[str, Any], ...] = ()
    ws_silent: bool = False


@dataclass(frozen=True, slots=True)
class Item:
    """One connection's worth of garbage: ``parts`` are written in order, ``pause_s`` apart.

    ``upgrade``: first open ``/v1/control`` properly (with the key), then send ``parts`` as WebSocket bytes.
    ``half_close``: shut the write side after the last part (how a raw request ends; a well-formed one waits for
    its answer).  ``heavy``: over a megabyte on the wire, so only a few are in flight at once.
    """

    kind: str
    target: str
    parts: tuple[bytes, ...]
    expect: Expect
    upgrade: bool = False
    half_close: bool = False
    pause_s: float = 0.0
    heavy: bool = False

    def reproducer(self) -> str:
        """The first bytes of what was sent, for a report."""
        sent = b"".join(self.parts)
        prefix = "<WS upgrade to /v1/control with the key> then " if self.upgrade else ""
        return f"{self.target}: {prefix}{sent[:300]!r}{' ...' if len(sent) > 300 else ''} ({len(sent)} bytes)"


@dataclass
class Outcome:
    """What the server did."""

    statuses: list[int] = field(default_factory=list)
    body: bytes = b""
    """The first response's body."""
    closed: bool = False
    timed_out: bool = False
    ws_close: int | None = None
    ws_texts: list[str] = field(default_factory=list)
    ws_accepted: bool = False
    """A close was expected, but the server answered the frame as a valid one."""


@dataclass(frozen=True, slots=True)
class Context:
    """What the generators need to know about the system under test."""

    key: str
    live_stream_ids: tuple[str, ...]
    max_body_bytes: int
    max_ws_message_bytes: int


# -- building blocks ------------------------------------------------------------------------------------------


def request(
    method: str,
    path: str,
    *,
    key: str | None = None,
    body: bytes | None = None,
    headers: Sequence[tuple[str, str]] = (),
) -> bytes:
    """One well-formed HTTP/1.1 request that asks the server to close the connection after answering."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    if key is not None:
        lines.append(f"Authorization: Bearer {key}")
    lines += [f"{name}: {value}" for name, value in headers]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    length: int | None = None,
    mask: bytes = b"\x5a\x17\xc3\x08",
) -> bytes:
    """One WebSocket frame as a client sends it (masked), or broken on purpose: ``length`` may lie."""
    declared = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    bit = 0x80 if masked else 0
    if declared < 126:
        head += bytes([bit | declared])
    elif declared < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", declared)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", declared)
    if not masked:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _masked_frame(rng: random.Random, opcode: int, payload: bytes, **kwargs: Any) -> bytes:
    return frame(opcode, payload, mask=rng.randbytes(4), **kwargs)


def handshake(key: str | None, *, ws_key: str | None, version: str | None, path: str = "/v1/control") -> bytes:
    """A WebSocket upgrade request (fields left out when ``None``)."""
    headers = [("Upgrade", "websocket"), ("Connection", "Upgrade")]
    if ws_key is not None:
        headers.append(("Sec-WebSocket-Key", ws_key))
    if version is not None:
        headers.append(("Sec-WebSocket-Version", version))
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1"] + [f"{k}: {v}" for k, v in headers]
    if key is not None:
        lines.append(f"Authorization: Bearer {key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _json(value: Any) -> bytes:
    return orjson.dumps(value)


def _hex_id(rng: random.Random) -> str:
    return rng.randbytes(16).hex()


def _bad_id(rng: random.Random) -> str:
    """A stream id that is unknown or of the wrong shape (never one of the normal streams, never a dot segment)."""
    found = _any_bad_id(rng)
    return found if found.strip(".") else "0" + found


def _any_bad_id(rng: random.Random) -> str:
    return rng.choice(
        [
            _hex_id(rng),
            _hex_id(rng).upper(),
            _hex_id(rng)[:31],
            _hex_id(rng) + "0",
            "".join(rng.choice(_URL_SAFE) for _ in range(rng.randint(1, 80))),
            quote(rng.randbytes(rng.randint(1, 24)).decode("latin-1"), safe=""),
        ]
    )


def _word(rng: random.Random, alphabet: str = string.ascii_lowercase, most: int = 12) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, most)))


def _ref(rng: random.Random) -> Any:
    return rng.choice([rng.randint(-(2**40), 2**40), _word(rng, _PRINTABLE, 40)])


def _bad_cursor(rng: random.Random) -> str:
    while True:
        epoch = rng.randbytes(4).hex()
        text = rng.choice(
            [
                f"{epoch}:-{rng.randint(1, 9)}",
                f"{epoch}:0{rng.randint(1, 9)}",
                f"{epoch.upper()}G:{rng.randint(0, 99)}",
                f"{epoch}:{rng.randint(10**10, 10**12)}",
                f"{epoch}:{rng.random()}",
                f"{epoch}",
                f"{epoch}:",
                f":{rng.randint(0, 99)}",
                f"{epoch}:1:2",
                "f" * rng.randint(33, 70) + ":1",
                _word(rng, _PRINTABLE, 80),
            ]
        )
        if len(text) > _MAX_CURSOR_CHARS or not _CURSOR.fullmatch(text):
            return text


# -- raw: not HTTP ----------------------------------------------------------------------------------------------

_RAW_400 = Expect(statuses=frozenset({400}), close_ok=True)
_RAW_4XX = Expect(statuses=frozenset({400, 401}), close_ok=True)
_VALID_LINE = "POST /v1/streams HTTP/1.1"


def _target(rng: random.Random) -> str:
    return rng.choice([GATEWAY, STREAMER])


def _raw(kind: str, rng: random.Random, *parts: bytes, expect: Expect = _RAW_400, pause_s: float = 0.0) -> Item:
    return Item(f"raw.{kind}", _target(rng), parts, expect, half_close=True, pause_s=pause_s)


def raw_random_bytes(rng: random.Random, ctx: Context) -> Item:
    return _raw("random_bytes", rng, rng.randbytes(rng.randint(1, 4096)))


def raw_truncated_request_line(rng: random.Random, ctx: Context) -> Item:
    line = rng.choice([_VALID_LINE, "GET /v1/streams/0123/events HTTP/1.1", "GET /v1/control HTTP/1.1"])
    return _raw("truncated_request_line", rng, line[: rng.randint(1, len(line) - 1)].encode())


def raw_invalid_method(rng: random.Random, ctx: Context) -> Item:
    method = rng.choice(["G@T", "get", "post", "BREW", "FOO", "\x00GET", "G\x7fT", "GET\x01", _word(rng)])
    return _raw("invalid_method", rng, f"{method} /v1/streams HTTP/1.1\r\nHost: x\r\n\r\n".encode("latin-1"))


def raw_bad_version(rng: random.Random, ctx: Context) -> Item:
    version = rng.choice(["HTTP/9.9", "HTTP/1.x", "HTXP/1.1", "HTTP/11", "http/1.1", "HTTP/1.1 extra", "HTTP/"])
    return _raw("bad_version", rng, f"GET /v1/models {version}\r\nHost: x\r\n\r\n".encode())


def raw_huge_header(rng: random.Random, ctx: Context) -> Item:
    size = rng.randint(9_000, 64_000)
    where = rng.choice(["value", "name", "url"])
    big = "".join(rng.choice(_URL_SAFE) for _ in range(64)) * (size // 64)
    if where == "value":
        head = f"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Huge: {big}\r\n\r\n"
    elif where == "name":
        head = f"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-{big}: y\r\n\r\n"
    else:
        head = f"GET /v1/{big} HTTP/1.1\r\nHost: x\r\n\r\n"
    return _raw(f"huge_header_{where}", rng, head.encode())


def raw_too_many_headers(rng: random.Random, ctx: Context) -> Item:
    fields = "".join(f"X-{i}: {_word(rng)}\r\n" for i in range(rng.randint(200, 600)))
    return _raw("too_many_headers", rng, f"GET /v1/models HTTP/1.1\r\nHost: x\r\n{fields}\r\n".encode())


def raw_header_injection(rng: random.Random, ctx: Context) -> Item:
    evil = rng.choice(["a\rb", "a\nInjected: yes", "a\x00b", "a\r\n b", "a\r\rb", "a\x7fb\r\nX-B: \x01"])
    name = rng.choice(["X-Inject", "Authorization", "Last-Event-ID", "Content-Type"])
    if rng.random() < 0.3:  # injection in the name instead
        name, evil = rng.choice(["X A", "X-A ", "X\x00A", "(X)", "X\rA"]), "b"
    text = f"GET /v1/models HTTP/1.1\r\nHost: x\r\n{name}: {evil}\r\n\r\n"
    return _raw("header_injection", rng, text.encode("latin-1"))


def raw_bad_content_length(rng: random.Random, ctx: Context) -> Item:
    value = rng.choice(
        [
            "abc",
            "-5",
            "1 2",
            "0x10",
            "+5",
            "5, 6",
            str(rng.randint(10**20, 10**30)),
            f"5\r\nContent-Length: {rng.randint(6, 99)}",
            "5\r\nTransfer-Encoding: chunked",
        ]
    )
    text = f"POST /v1/streams HTTP/1.1\r\nHost: x\r\nContent-Length: {value}\r\n\r\nhello"
    return _raw("bad_content_length", rng, text.encode())


def raw_bad_chunked(rng: random.Random, ctx: Context) -> Item:
    encoding, body = rng.choice(
        [
            ("chunked", "zz\r\nhello\r\n0\r\n\r\n"),
            ("chunked", "5;\x01\r\nhello\r\n0\r\n\r\n"),
            ("chunked", "5\r\nhelloXX0\r\n\r\n"),
            ("chunked", "-1\r\nhello\r\n0\r\n\r\n"),
            ("chunked", "ffffffffffffffffffffff\r\nhello\r\n"),
            ("gzip", "hello"),
            ("identity, chunked, gzip", "5\r\nhello\r\n0\r\n\r\n"),
        ]
    )
    head = f"POST /v1/streams HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {encoding}\r\n\r\n"
    return _raw("bad_chunked", rng, (head + body).encode("latin-1"))


def raw_slowloris(rng: random.Random, ctx: Context) -> Item:
    """A request trickled in pieces that never completes: the client gives up and closes.

    Sometimes the headers (with the key) complete and only the body is missing, so a handler is waiting to read it.
    """
    target = _target(rng)
    body = _json({"prompt": "slow", "max_tokens": 5})
    path = "/v1/streams" if target == GATEWAY else rng.choice(["/v1/chat/completions", "/v1/messages"])
    text = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ctx.key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    cut = rng.randint(1, len(text) - 1)
    pieces = rng.randint(2, 5)
    bounds = sorted({0, cut, *(rng.randint(1, cut) for _ in range(pieces - 1))})
    parts = tuple(text[a:b] for a, b in itertools.pairwise(bounds))
    return Item("raw.slowloris", target, parts, _RAW_400, half_close=True, pause_s=rng.uniform(0.01, 0.08))


def raw_http09(rng: random.Random, ctx: Context) -> Item:
    path = rng.choice(["/v1/streams", f"/v1/streams/{_hex_id(rng)}", f"/v1/streams/{_hex_id(rng)}/events"])
    end = rng.choice(["\r\n", "\r\n\r\n", "\n"])
    return _raw("http09", rng, f"GET {path}{end}".encode(), expect=_RAW_4XX)


def raw_pipelined_junk(rng: random.Random, ctx: Context) -> Item:
    first = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"  # no key: 401
    junk = rng.choice([rng.randbytes(rng.randint(1, 512)), b"GARBAGE\r\n\r\n", b"G@T / HTTP/1.1\r\n\r\n"])
    return _raw("pipelined_junk", rng, first * rng.randint(1, 3) + junk, expect=_RAW_4XX)


# -- http: well-formed, bad content -----------------------------------------------------------------------------

_NATIVE_ENDPOINTS = (
    (GATEWAY, "POST", "/v1/streams"),
    (GATEWAY, "GET", "/v1/streams/{id}"),
    (GATEWAY, "POST", "/v1/streams/{id}/stop"),
    (GATEWAY, "GET", "/v1/control"),
    (GATEWAY, "GET", "/v1/{word}"),
    (STREAMER, "GET", "/v1/streams/{id}/events"),
    (STREAMER, "POST", "/v1/chat/completions"),
    (STREAMER, "POST", "/v1/messages"),
    (STREAMER, "GET", "/v1/models"),
)


def _http(kind: str, target: str, data: bytes, status: int, code: str, *, shape: str = NATIVE, **kw: Any) -> Item:
    return Item(f"http.{kind}", target, (data,), Expect(statuses=frozenset({status}), code=code, shape=shape), **kw)


def http_unauthorized(rng: random.Random, ctx: Context) -> Item:
    target, method, template = rng.choice(_NATIVE_ENDPOINTS)
    path = template.format(id=_hex_id(rng), word=_word(rng))
    wrong = rng.choice([ctx.key.upper(), ctx.key + "x", ctx.key[:-1], _word(rng, _PRINTABLE, 60)])
    headers = rng.choice(
        [
            [],
            [("Authorization", f"Bearer {wrong}")],
            [("Authorization", f"Basic {ctx.key}")],
            [("Authorization", "Bearer")],
            [("Authorization", ctx.key)],
            [("x-api-key", wrong)],
        ]
    )
    body = _json({"prompt": "x"}) if method == "POST" else None
    return _http("unauthorized", target, request(method, path, headers=headers, body=body), 401, "unauthorized")


def _native_body_defect(rng: random.Random, ctx: Context) -> dict[str, Any]:
    """A ``POST /v1/streams`` body with exactly one thing wrong."""
    prompt = "garbage " + _word(rng)
    good_tokens = rng.randint(1, 50)
    return rng.choice(
        [
            {"prompt": rng.choice([5, "", [], {}, True, 1.5]), "max_tokens": good_tokens},
            {"max_tokens": good_tokens},
            {"prompt": prompt, "max_tokens": rng.choice(["5", 1.5, True, 0, -rng.randint(1, 10**6), 32_769, [], {}])},
            {"prompt": prompt, "max_tokens": 10**6},
            {"prompt": prompt, "model": rng.choice([5, "", "m" * 257, [], {}])},
            {"messages": rng.choice([{}, [], "hi", [5], [{"role": "robot", "content": "x"}], [{"role": "user"}]])},
            {"messages": [{"role": "user", "content": rng.choice([5, None, {}, ["x"]])}]},
            {"messages": [{"role": "user", "content": "x"}] * 257},
            {"prompt": prompt, "messages": [{"role": "user", "content": "x"}]},
        ]
    )


def http_bad_json(rng: random.Random, ctx: Context) -> Item:
    body = rng.choice(
        [
            rng.randbytes(rng.randint(0, 512)),
            b"{bad",
            b'{"prompt": "x",}',
            b"",
            b'{"prompt": "\xff\xfe"}',
            b"NaN",
            b'{"max_tokens": 1e999}',
            _json({"prompt": "x"})[: rng.randint(1, 10)],
            rng.choice([b"[]", b"1", b'"s"', b"null", b"true", b"[{}]"]),
        ]
    )
    target, path, shape = rng.choice(
        [
            (GATEWAY, "/v1/streams", NATIVE),
            (STREAMER, "/v1/chat/completions", OPENAI),
            (STREAMER, "/v1/messages", ANTHROPIC),
        ]
    )
    return _http("bad_json", target, request("POST", path, key=ctx.key, body=body), 400, "bad_request", shape=shape)


def http_wrong_types(rng: random.Random, ctx: Context) -> Item:
    body = _json(_native_body_defect(rng, ctx))
    return _http("wrong_types", GATEWAY, request("POST", "/v1/streams", key=ctx.key, body=body), 400, "bad_request")


def _openai_defect(rng: random.Random, good: dict[str, Any]) -> dict[str, Any]:
    """A chat.completions body with exactly one thing wrong (0, -1 and 10**9 tokens are refused by the gateway)."""
    return rng.choice(
        [
            {**good, "messages": rng.choice([None, [], {}, "hi", [5], [{"role": "robot", "content": "x"}]])},
            {**good, "messages": [{"role": "user", "content": rng.choice([5, [5], [{"type": "image"}], {}])}]},
            {**good, "model": rng.choice([5, "", []])},
            {**good, "max_tokens": rng.choice(["5", 1.5, 0, -1, 10**9])},
            {**good, "n": rng.choice([2, 0, "1"])},
            {**good, "stream": rng.choice(["yes", 1, []])},
            {**good, "stream_options": rng.choice([[1], "x", 5, {"include_usage": rng.choice(["yes", 1])}])},
        ]
    )


def _anthropic_defect(rng: random.Random, good: dict[str, Any]) -> dict[str, Any]:
    """A messages body with exactly one thing wrong."""
    missing = rng.choice(["model", "max_tokens", "messages"])
    without = {k: v for k, v in good.items() if k != missing}
    return rng.choice(
        [
            without,
            {**good, "messages": rng.choice([[], {}, "hi", [5], [{"role": "system", "content": "x"}]])},
            {**good, "messages": [{"role": "user", "content": rng.choice([5, None, [{"type": "image"}]])}]},
            {**good, "model": rng.choice([None, 5, ""])},
            {**good, "max_tokens": rng.choice(["5", 1.5, 0, -1, 10**9, None])},
            {**good, "stream": rng.choice(["yes", 1, None, []])},
            {**good, "system": rng.choice([5, [{"type": "image"}], {}])},
        ]
    )


def http_compat_wrong_types(rng: random.Random, ctx: Context) -> Item:
    good = {"model": "synthetic", "messages": [{"role": "user", "content": "garbage " + _word(rng)}], "max_tokens": 5}
    if rng.random() < 0.5:
        body, path, shape = _openai_defect(rng, good), "/v1/chat/completions", OPENAI
    else:
        body, path, shape = _anthropic_defect(rng, good), "/v1/messages", ANTHROPIC
    data = request("POST", path, key=ctx.key, body=_json(body))
    return _http("compat_wrong_types", STREAMER, data, 400, "bad_request", shape=shape)


def http_oversize(rng: random.Random, ctx: Context) -> Item:
    size = ctx.max_body_bytes + rng.randint(1, 64 * 1024)
    prefix = b'{"prompt": "'
    body = prefix + b"a" * (size - len(prefix) - 2) + b'"}'
    target, path, shape = rng.choice(
        [
            (GATEWAY, "/v1/streams", NATIVE),
            (STREAMER, "/v1/chat/completions", OPENAI),
            (STREAMER, "/v1/messages", ANTHROPIC),
        ]
    )
    data = request("POST", path, key=ctx.key, body=body)
    return _http("oversize", target, data, 413, "payload_too_large", shape=shape, heavy=True)


def http_not_found(rng: random.Random, ctx: Context) -> Item:
    stream = _bad_id(rng)
    target, method, path = rng.choice(
        [
            (GATEWAY, "GET", f"/v1/streams/{stream}"),
            (GATEWAY, "POST", f"/v1/streams/{stream}/stop"),
            (STREAMER, "GET", f"/v1/streams/{stream}/events"),
            (rng.choice([GATEWAY, STREAMER]), "GET", f"/v1/{_word(rng)}/{stream}"),
            (GATEWAY, "GET", f"/static/nope-{_word(rng)}.js"),
            (STREAMER, "GET", "/v1/control"),
        ]
    )
    return _http("not_found", target, request(method, path, key=ctx.key), 404, "not_found")


def http_method_not_allowed(rng: random.Random, ctx: Context) -> Item:
    target, method, path = rng.choice(
        [
            (GATEWAY, rng.choice(["GET", "PUT", "DELETE", "PATCH"]), "/v1/streams"),
            (GATEWAY, rng.choice(["PUT", "DELETE", "PATCH"]), f"/v1/streams/{_hex_id(rng)}"),
            (GATEWAY, rng.choice(["GET", "PUT", "DELETE"]), f"/v1/streams/{_hex_id(rng)}/stop"),
            (STREAMER, rng.choice(["POST", "PUT", "DELETE"]), f"/v1/streams/{_hex_id(rng)}/events"),
            (STREAMER, rng.choice(["GET", "PUT", "DELETE"]), "/v1/chat/completions"),
            (STREAMER, rng.choice(["GET", "PUT", "DELETE"]), "/v1/messages"),
            (STREAMER, rng.choice(["POST", "PUT", "DELETE"]), "/v1/models"),
        ]
    )
    return _http("method_not_allowed", target, request(method, path, key=ctx.key), 405, "method_not_allowed")


def http_control_without_upgrade(rng: random.Random, ctx: Context) -> Item:
    headers = rng.choice([[], [("Upgrade", "websocket")], [("Connection", "Upgrade")], [("Upgrade", "h2c")]])
    data = request("GET", "/v1/control", key=ctx.key, headers=headers)
    return _http("control_without_upgrade", GATEWAY, data, 400, "bad_request")


def http_bad_cursor(rng: random.Random, ctx: Context) -> Item:
    stream = rng.choice([*ctx.live_stream_ids, _hex_id(rng)]) if ctx.live_stream_ids else _hex_id(rng)
    cursor = _bad_cursor(rng)
    if rng.random() < 0.5:
        data = request("GET", f"/v1/streams/{stream}/events", key=ctx.key, headers=[("Last-Event-ID", cursor)])
    else:
        data = request("GET", f"/v1/streams/{stream}/events?last_event_id={quote(cursor, safe='')}", key=ctx.key)
    return _http("bad_cursor", STREAMER, data, 400, "bad_request")


def http_stale_cursor(rng: random.Random, ctx: Context) -> Item:
    """A well-formed cursor into a history that is not the live stream's (epochs are 8 hex digits; this one is 16)."""
    stream = rng.choice(ctx.live_stream_ids)
    cursor = f"{rng.randbytes(8).hex()}:{rng.randint(0, 100)}"
    data = request("GET", f"/v1/streams/{stream}/events", key=ctx.key, headers=[("Last-Event-ID", cursor)])
    return _http("stale_cursor", STREAMER, data, 410, "resume_unavailable")


def http_forged_events_token(rng: random.Random, ctx: Context) -> Item:
    stream = rng.choice([*ctx.live_stream_ids, _hex_id(rng)]) if ctx.live_stream_ids else _hex_id(rng)
    token = rng.choice([_word(rng, _URL_SAFE, 200), base64.urlsafe_b64encode(rng.randbytes(48)).decode(), "x.y.z"])
    data = request("GET", f"/v1/streams/{stream}/events?token={quote(token, safe='')}")
    return _http("forged_events_token", STREAMER, data, 401, "unauthorized")


# -- ws: the control socket -------------------------------------------------------------------------------------


def _ws(kind: str, rng: random.Random, parts: Sequence[bytes], expect: Expect, **kw: Any) -> Item:
    return Item(f"ws.{kind}", GATEWAY, tuple(parts), expect, upgrade=True, **kw)


def _closes(code: int) -> Expect:
    return Expect(ws_close=code)


def _text(rng: random.Random, value: Any) -> bytes:
    return _masked_frame(rng, _OP_TEXT, value if isinstance(value, bytes) else _json(value))


def ws_bad_handshake(rng: random.Random, ctx: Context) -> Item:
    good_key = base64.b64encode(rng.randbytes(16)).decode()
    ws_key, version = rng.choice(
        [
            (None, "13"),
            ("abc", "13"),
            (base64.b64encode(rng.randbytes(rng.choice([8, 15, 17, 32]))).decode(), "13"),
            ("!!!!not-base64!!!!", "13"),
            (good_key, None),
            (good_key, rng.choice(["12", "14", "0", "abc", "13, 8", "-13"])),
        ]
    )
    data = handshake(ctx.key, ws_key=ws_key, version=version)
    return _http("ws_bad_handshake", GATEWAY, data, 400, "bad_request")


def ws_handshake_refused(rng: random.Random, ctx: Context) -> Item:
    good_key = base64.b64encode(rng.randbytes(16)).decode()
    if rng.random() < 0.7:
        key = rng.choice([None, ctx.key + "x", ctx.key.upper()])
        return _http("ws_unauthorized", GATEWAY, handshake(key, ws_key=good_key, version="13"), 401, "unauthorized")
    data = handshake(ctx.key, ws_key=good_key, version="13", path=rng.choice(["/v1/control", "/v1/controls"]))
    return _http("ws_upgrade_elsewhere", STREAMER, data, 404, "not_found")


def ws_reserved_bits(rng: random.Random, ctx: Context) -> Item:
    opcode = rng.choice([_OP_TEXT, _OP_BINARY, _OP_PING])
    parts = [_masked_frame(rng, opcode, b'{"type":"stop"}', rsv=rng.randint(1, 7))]
    return _ws("reserved_bits", rng, parts, _closes(WS_PROTOCOL_ERROR))


def ws_bad_opcode(rng: random.Random, ctx: Context) -> Item:
    opcode = rng.choice([3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
    return _ws("bad_opcode", rng, [_masked_frame(rng, opcode, rng.randbytes(rng.randint(0, 60)))], _closes(1002))


def ws_unmasked(rng: random.Random, ctx: Context) -> Item:
    """RFC 6455 §5.1 says a server must close on a client frame that is not masked (1002).  aiohttp's frame
    reader does not check the mask bit and reads such a frame as if it were masked with zeros (SECURITY.md:
    masking protects intermediaries from what browsers send, and browsers always mask).  Asserted here as it
    is, so that a change either way is noticed: the frame is handled like any other, and the socket lives."""
    errors: tuple[tuple[str, int | None], ...]
    if rng.random() < 0.5:
        payload, errors = _json({"type": "stop", "stream_id": _hex_id(rng), "ref": 1}), (("not_found", 1),)
    else:
        payload, errors = b"{nope", (("bad_request", None),)
    return _ws("unmasked", rng, [frame(_OP_TEXT, payload, masked=False)], Expect(ws_errors=errors))


def ws_control_too_long(rng: random.Random, ctx: Context) -> Item:
    opcode = rng.choice([_OP_PING, _OP_PONG, _OP_CLOSE])
    payload = struct.pack("!H", 1000) + rng.randbytes(rng.randint(124, 400))
    return _ws("control_too_long", rng, [_masked_frame(rng, opcode, payload)], _closes(WS_PROTOCOL_ERROR))


def ws_fragmented_control(rng: random.Random, ctx: Context) -> Item:
    opcode = rng.choice([_OP_PING, _OP_PONG, _OP_CLOSE])
    parts = [_masked_frame(rng, opcode, struct.pack("!H", 1000), fin=False)]
    return _ws("fragmented_control", rng, parts, _closes(WS_PROTOCOL_ERROR))


def ws_bad_fragmentation(rng: random.Random, ctx: Context) -> Item:
    if rng.random() < 0.5:  # a continuation with nothing to continue
        parts = [_masked_frame(rng, _OP_CONTINUATION, b'{"type":"stop"}', fin=rng.random() < 0.5)]
    else:  # a new data frame while a fragmented message is open
        opcode = rng.choice([_OP_TEXT, _OP_BINARY])
        parts = [_masked_frame(rng, _OP_TEXT, b'{"type":', fin=False), _masked_frame(rng, opcode, b'"stop"}')]
    return _ws("bad_fragmentation", rng, parts, _closes(WS_PROTOCOL_ERROR))


def ws_bad_close(rng: random.Random, ctx: Context) -> Item:
    choice = rng.random()
    if choice < 0.3:
        parts, code = [_masked_frame(rng, _OP_CLOSE, rng.randbytes(1))], WS_PROTOCOL_ERROR
    elif choice < 0.7:
        bad = rng.choice([0, 999, 1004, 1005, 1015, 1016, 1100, 2000, 2999])
        parts, code = [_masked_frame(rng, _OP_CLOSE, struct.pack("!H", bad) + b"bye")], WS_PROTOCOL_ERROR
    else:
        reason = rng.choice([b"\xff", b"\xc0\xaf", b"ok\xed\xa0\x80", b"\xe2\x82"])
        parts, code = [_masked_frame(rng, _OP_CLOSE, struct.pack("!H", 1000) + reason)], WS_INVALID_TEXT
    return _ws("bad_close", rng, parts, _closes(code))


_INVALID_UTF8 = (b"\xff", b"\xfe\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\x80")


def ws_invalid_utf8(rng: random.Random, ctx: Context) -> Item:
    text = _json({"type": "stop", "stream_id": _hex_id(rng), "ref": 1})
    cut = rng.randint(0, len(text))
    bad = text[:cut] + rng.choice(_INVALID_UTF8) + text[cut:]
    if rng.random() < 0.5:
        parts = [_masked_frame(rng, _OP_TEXT, bad)]
    else:
        split = rng.randint(0, len(bad))
        parts = [
            _masked_frame(rng, _OP_TEXT, bad[:split], fin=False),
            _masked_frame(rng, _OP_CONTINUATION, bad[split:]),
        ]
    return _ws("invalid_utf8", rng, parts, _closes(WS_INVALID_TEXT))


def ws_oversize_declared(rng: random.Random, ctx: Context) -> Item:
    """A frame whose header announces more than the limit (docs/api.md: "Frames over 1 MiB close ... 1009")."""
    declared = rng.choice([ctx.max_ws_message_bytes + rng.randint(1, 1 << 20), rng.randint(1 << 32, (1 << 63) - 1)])
    if rng.random() < 0.5:
        parts = [_masked_frame(rng, _OP_TEXT, b'{"type":"stop"', length=declared)]
    else:  # the first fragment is small; the continuation announces the rest
        parts = [_masked_frame(rng, _OP_TEXT, b'{"a":', fin=False), _masked_frame(rng, 0, b'"x', length=declared)]
    return _ws("oversize_declared", rng, parts, _closes(WS_MESSAGE_TOO_BIG))


def ws_oversize_fragmented(rng: random.Random, ctx: Context) -> Item:
    """Fragments of honest sizes that add up to more than the limit.

    They add up to exactly the limit (still allowed) until the last, small fragment crosses it: the server has read
    everything sent when it closes, so its close frame is not lost to a reset.
    """
    size = 64 * 1024
    under = ctx.max_ws_message_bytes
    sizes = [size] * (under // size) + ([under % size] if under % size else [])
    parts = [
        _masked_frame(rng, _OP_TEXT if i == 0 else _OP_CONTINUATION, b"x" * n, fin=False) for i, n in enumerate(sizes)
    ]
    parts.append(_masked_frame(rng, _OP_CONTINUATION, b"x" * rng.randint(1, 64), fin=True))
    return _ws("oversize_fragmented", rng, parts, _closes(WS_MESSAGE_TOO_BIG), heavy=True)


def ws_length_lies_short(rng: random.Random, ctx: Context) -> Item:
    """The header says fewer bytes than follow: the rest is read as a frame header with reserved bits set."""
    payload = _json({"type": "stop", "stream_id": _hex_id(rng)})
    lie = rng.randint(0, len(payload) - 1)
    trailing = bytes([0xF0 | rng.randint(0, 15)]) + rng.randbytes(rng.randint(1, 30))
    data = _masked_frame(rng, _OP_TEXT, payload[:lie], length=lie) + trailing
    return _ws("length_lies_short", rng, [data], _closes(WS_PROTOCOL_ERROR))


def ws_length_lies_long(rng: random.Random, ctx: Context) -> Item:
    """The header says more bytes than ever come; the client then shuts its side: no reply, just a close."""
    payload = _json({"type": "stop", "stream_id": _hex_id(rng)})
    data = _masked_frame(rng, _OP_TEXT, payload, length=len(payload) + rng.randint(1, 5000))
    return _ws("length_lies_long", rng, [data], Expect(ws_silent=True), half_close=True)


def ws_binary(rng: random.Random, ctx: Context) -> Item:
    parts = [_masked_frame(rng, _OP_BINARY, rng.randbytes(rng.randint(0, 300)))]
    return _ws("binary", rng, parts, Expect(ws_errors=(("bad_request", None),)))


def _garbage_message(rng: random.Random, ctx: Context) -> tuple[bytes, tuple[str, Any]]:
    """One text message with garbage content and the ``(code, ref)`` of the ``error`` reply it must get."""
    ref = _ref(rng)
    stream = _hex_id(rng)
    choice = rng.randrange(9)
    if choice == 0:
        text = rng.choice([_word(rng, _PRINTABLE, 200), "{nope", "", '{"type": "stop",}', "[]", "1", "null", '"s"'])
        return text.encode(), ("bad_request", None)
    if choice == 1:
        kind: Any = rng.choice([_word(rng), 5, None, [], "START", "Stop"])
        return _json({"type": kind, "ref": ref}), ("bad_request", ref)
    if choice == 2:
        bad_ref = rng.choice([1.5, [1], {"a": 1}, True, "r" * rng.randint(129, 300)])
        return _json({"type": "stop", "stream_id": stream, "ref": bad_ref}), ("bad_request", None)
    if choice == 3:
        return _json({"type": "start", **_native_body_defect(rng, ctx), "ref": ref}), ("bad_request", ref)
    if choice == 4:
        message: dict[str, Any] = {"type": rng.choice(["stop", "feedback"]), "ref": ref, "rating": "up"}
        bad_id: Any = rng.choice([None, "", 5, [], {}])
        if bad_id is not None:
            message["stream_id"] = bad_id
        return _json(message), ("bad_request", ref)
    if choice == 5:
        message = {"type": "feedback", "stream_id": stream, "ref": ref, "rating": rng.choice(["meh", 1, None, "UP"])}
        return _json(message), ("bad_request", ref)
    if choice == 6:
        comment = rng.choice([5, [], "c" * rng.randint(4097, 6000)])
        message = {"type": "feedback", "stream_id": stream, "ref": ref, "rating": "down", "comment": comment}
        return _json(message), ("bad_request", ref)
    if choice == 7:
        return _json({"type": "stop", "stream_id": _bad_id(rng), "ref": ref}), ("not_found", ref)
    return _json({"type": "feedback", "stream_id": _bad_id(rng), "rating": "up", "ref": ref}), ("not_found", ref)


def ws_garbage_messages(rng: random.Random, ctx: Context) -> Item:
    """Well-formed frames with garbage JSON, unknown types, bad fields, unknown streams: one ``error`` reply each,
    and the socket stays open for the next."""
    messages = [_garbage_message(rng, ctx) for _ in range(rng.randint(1, 4))]
    parts = [_text(rng, data) for data, _ in messages]
    return _ws("garbage_messages", rng, parts, Expect(ws_errors=tuple(reply for _, reply in messages)))


Maker = Callable[[random.Random, Context], Item]

MAKERS: Mapping[Maker, float] = {
    raw_random_bytes: 6,
    raw_truncated_request_line: 3,
    raw_invalid_method: 3,
    raw_bad_version: 2,
    raw_huge_header: 2,
    raw_too_many_headers: 1,
    raw_header_injection: 3,
    raw_bad_content_length: 3,
    raw_bad_chunked: 3,
    raw_slowloris: 2,
    raw_http09: 2,
    raw_pipelined_junk: 2,
    http_unauthorized: 7,
    http_bad_json: 5,
    http_wrong_types: 4,
    http_compat_wrong_types: 5,
    http_oversize: 0.6,
    http_not_found: 5,
    http_method_not_allowed: 2,
    http_control_without_upgrade: 1,
    http_bad_cursor: 4,
    http_stale_cursor: 2,
    http_forged_events_token: 1.5,
    ws_bad_handshake: 2,
    ws_handshake_refused: 2,
    ws_reserved_bits: 2,
    ws_bad_opcode: 2,
    ws_unmasked: 2,
    ws_control_too_long: 1.5,
    ws_fragmented_control: 1.5,
    ws_bad_fragmentation: 2,
    ws_bad_close: 2,
    ws_invalid_utf8: 2,
    ws_oversize_declared: 2,
    ws_oversize_fragmented: 0.15,
    ws_length_lies_short: 1.5,
    ws_length_lies_long: 1,
    ws_binary: 1,
    ws_garbage_messages: 8,
}
"""Every generator and its weight (heavy ones, over 1 MiB each, are rare)."""


def generate(rng: random.Random, count: int, ctx: Context) -> list[Item]:
    """``count`` items drawn by weight from :data:`MAKERS`, reproducible from ``rng``'s seed."""
    makers = list(MAKERS)
    weights = [MAKERS[m] for m in makers]
    return [maker(rng, ctx) for maker in rng.choices(makers, weights, k=count)]


def one_of_each(rng: random.Random, ctx: Context) -> list[Item]:
    """One item of every generator (a warm-up that touches every code path once)."""
    return [maker(rng, ctx) for maker in MAKERS]


# -- sending ----------------------------------------------------------------------------------------------------

ACCEPTED_GRACE_S = 0.5
"""How long a server that answered a frame it must refuse still gets to close the connection."""
_STATUS_LINE = re.compile(rb"HTTP/\d(?:\.\d)? (\d{3})[^\r\n]*\r\n")


async def send(item: Item, address: tuple[str, int], *, key: str, timeout_s: float) -> Outcome:
    """Open a connection, send ``item``, and record what the server answered until it closed (or ``timeout_s``)."""
    out = Outcome()
    reader, writer = await asyncio.open_connection(*address, limit=1 << 20)
    try:
        async with asyncio.timeout(timeout_s):
            if item.upgrade:
                with contextlib.suppress(asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    await _upgrade(reader, writer, key, out)
                if out.statuses[:1] != [101]:
                    return out
                await _websocket(item, reader, writer, out)
            else:
                await _http_exchange(item, reader, writer, out)
    except TimeoutError:
        out.timed_out = True
    finally:
        writer.transport.abort()
    return out


async def _write_parts(item: Item, writer: asyncio.StreamWriter) -> None:
    try:
        for i, part in enumerate(item.parts):
            if i and item.pause_s:
                await asyncio.sleep(item.pause_s)
            writer.write(part)
            await writer.drain()
        if item.half_close and writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass  # the server answered and closed before taking everything: what it answered is what counts


async def _http_exchange(item: Item, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, out: Outcome) -> None:
    """Raw items (half-closed) are read until the server closes; a well-formed one until its one response is in."""
    sending = asyncio.create_task(_write_parts(item, writer))
    data = bytearray()
    try:
        while chunk := await reader.read(1 << 16):
            data += chunk
            if not item.half_close and _responses(bytes(data), out, complete_only=True):
                break
        else:
            out.closed = True
    except (ConnectionError, OSError):
        out.closed = True
    finally:
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sending
    _responses(bytes(data), out, complete_only=False)


def _responses(data: bytes, out: Outcome, *, complete_only: bool) -> bool:
    """Parse the HTTP responses in ``data`` into ``out`` (statuses, first body); whether one is complete."""
    statuses: list[int] = []
    first_body = b""
    position = 0
    while (match := _STATUS_LINE.match(data, position)) is not None:
        head_end = data.find(b"\r\n\r\n", position)
        if head_end < 0:
            break
        length = re.search(rb"(?im)^content-length:[ \t]*(\d+)", data[position:head_end])
        body_start = head_end + 4
        body_end = body_start + int(length.group(1)) if length else len(data)
        if body_end > len(data) and complete_only:
            break
        statuses.append(int(match.group(1)))
        if len(statuses) == 1:
            first_body = data[body_start:body_end]
        position = body_end
    if statuses or not complete_only:
        out.statuses, out.body = statuses, first_body
    return bool(statuses)


async def _upgrade(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: str, out: Outcome) -> None:
    ws_key = base64.b64encode(os.urandom(16)).decode()
    writer.write(handshake(key, ws_key=ws_key, version="13"))
    head = await reader.readuntil(b"\r\n\r\n")
    match = _STATUS_LINE.match(head)
    out.statuses.append(int(match.group(1)) if match else 0)


async def _websocket(item: Item, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, out: Outcome) -> None:
    """Read server frames until it closes; answer its close, or close once the expected replies are in.

    Where a close is expected but the server answered the frame as valid (a reply, a pong), it gets
    :data:`ACCEPTED_GRACE_S` more to close, not the whole timeout: it kept the connection.
    """
    sending = asyncio.create_task(_write_parts(item, writer))
    expected = item.expect
    try:
        while True:
            if out.ws_accepted:
                async with asyncio.timeout(ACCEPTED_GRACE_S):
                    opcode, payload = await _read_frame(reader)
            else:
                opcode, payload = await _read_frame(reader)
            if opcode == _OP_CLOSE:
                out.ws_close = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 0
                _close(item, writer)
                break
            if opcode == _OP_TEXT:
                out.ws_texts.append(payload.decode("utf-8", "replace"))
                if expected.ws_errors and len(out.ws_texts) >= len(expected.ws_errors):
                    await sending
                    _close(item, writer)
            if expected.ws_close is not None and opcode in (_OP_TEXT, _OP_PONG):
                out.ws_accepted = True
    except (asyncio.IncompleteReadError, ConnectionError, OSError):
        pass
    except TimeoutError:
        if not out.ws_accepted:
            raise
    finally:
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sending
    out.closed = True


def _close(item: Item, writer: asyncio.StreamWriter) -> None:
    """Answer (or start) the closing handshake, unless this side is already shut."""
    if not item.half_close and not writer.transport.is_closing():
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            writer.write(frame(_OP_CLOSE, struct.pack("!H", 1000)))


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One (unmasked) server frame: its opcode and payload."""
    b0, b1 = await reader.readexactly(2)
    length = b1 & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    mask = await reader.readexactly(4) if b1 & 0x80 else b""
    payload = await reader.readexactly(length)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return b0 & 0x0F, payload


# -- judging ----------------------------------------------------------------------------------------------------


def problems(item: Item, out: Outcome) -> list[str]:
    """Where the server's answer breaks the contract for this item (empty: it kept it)."""
    found = [f"answered {s}" for s in out.statuses if s >= 500]
    if out.timed_out:
        found.append("no answer and no close before the timeout (a hang)")
    expect = item.expect
    if item.upgrade:
        if out.statuses[:1] != [101]:
            found.append(f"the upgrade was answered {out.statuses[:1]}, not 101")
        else:
            found += _ws_problems(expect, out)
        return found
    if not out.statuses:
        if not expect.close_ok:
            found.append("closed without an answer")
        return found
    wrong = [s for s in out.statuses if s not in expect.statuses]
    if wrong:
        found.append(f"answered {out.statuses}, expected only {sorted(expect.statuses)}")
    elif expect.code is not None:
        code = error_code(out.body, expect.shape)
        if code != expect.code:
            found.append(f"error code {code!r}, expected {expect.code!r}: {out.body[:200]!r}")
    return found


def error_code(body: bytes, shape: str) -> str | None:
    """The stable error code an error body carries, in the native, OpenAI or Anthropic shape."""
    try:
        parsed = orjson.loads(body)
        if shape == ANTHROPIC and parsed.get("type") == "error":
            return str(parsed["error"]["message"]).split(":", 1)[0]
        return str(parsed["error"]["code"])
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return None


def _ws_problems(expect: Expect, out: Outcome) -> list[str]:
    found = []
    if expect.ws_close is not None and out.ws_close != expect.ws_close:
        accepted = "; it answered the frame as a valid one" if out.ws_accepted else ""
        found.append(f"closed with {out.ws_close}, expected {expect.ws_close}{accepted} (replies: {out.ws_texts[:2]})")
    if expect.ws_silent and out.ws_texts:
        found.append(f"replied {out.ws_texts[:2]} to an unfinished frame")
    if expect.ws_errors:
        got = sorted((_reply_key(text) for text in out.ws_texts), key=repr)
        want = sorted(((code, ref) for code, ref in expect.ws_errors), key=repr)
        if got != want:
            found.append(f"replies {got}, expected errors {want}")
        if out.ws_close not in (None, 1000):
            found.append(f"the socket closed with {out.ws_close} after a garbage message (it must stay open)")
    return found


def _reply_key(text: str) -> tuple[str, Any]:
    try:
        reply = orjson.loads(text)
    except orjson.JSONDecodeError:
        return ("<not JSON>", text[:80])
    if not isinstance(reply, dict) or reply.get("type") != "error":
        return ("<not an error>", text[:80])
    return (str(reply.get("code")), reply.get("ref"))
