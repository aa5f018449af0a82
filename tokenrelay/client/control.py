"""The control WebSocket one client shares between all its streams (``WS /v1/control``).

Each command carries a fresh integer ``ref``; the gateway echoes it on the reply, which is
how replies find their request while many are in flight.  The socket is opened on the first
command and, if it dropped, again on the next one.  A gateway that is shutting down refuses
commands with ``shutting_down`` before doing anything, then closes the socket (1012): such a
command is sent again on a fresh socket (behind a load balancer, to another gateway).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Mapping
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.protocol import State

from tokenrelay.client.errors import ConnectionLost, ProtocolError
from tokenrelay.wire.errors import Unavailable, from_code

log = logging.getLogger(__name__)

DEFAULT_OPEN_TIMEOUT_S = 10.0
DEFAULT_REPLY_TIMEOUT_S = 30.0
DEFAULT_MAX_PENDING_REQUESTS = 64
DEFAULT_MAX_MESSAGE_BYTES = 2**20
SHUTTING_DOWN_RETRIES = 5
"""Times a command refused ``shutting_down`` is sent again, each on a fresh socket."""
SHUTTING_DOWN_RETRY_DELAY_S = 0.1
"""The pause before the first such resend, doubling after each."""

Reply = dict[str, Any]


class ControlChannel:
    """Request/reply over one shared control WebSocket.

    * ``open_timeout_s``: opening the socket takes longer -> :class:`ConnectionLost`.
    * ``reply_timeout_s``: a reply takes longer -> ``Unavailable`` (the command may have run).
    * ``max_pending_requests``: more commands than this wait for one in flight to finish
      (the gateway handles 64 at once per socket).
    * ``max_message_bytes``: a bigger reply closes the socket (RFC 6455 close code 1009).
    * ``headers``: sent with the opening handshake (e.g. ``Authorization``).
    """

    def __init__(
        self,
        url: str,
        *,
        open_timeout_s: float = DEFAULT_OPEN_TIMEOUT_S,
        reply_timeout_s: float = DEFAULT_REPLY_TIMEOUT_S,
        max_pending_requests: int = DEFAULT_MAX_PENDING_REQUESTS,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.url = url
        self.headers = dict(headers or {})
        self.open_timeout_s = open_timeout_s
        self.reply_timeout_s = reply_timeout_s
        self.max_message_bytes = max_message_bytes
        self.sockets_opened = 0
        """How many times a control socket was opened (1 while it never dropped)."""
        self._slots = asyncio.Semaphore(max_pending_requests)
        self._refs = itertools.count(1)
        self._pending: dict[int, tuple[ClientConnection, asyncio.Future[Reply]]] = {}
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._open_lock = asyncio.Lock()
        self._closed = False

    async def request(self, message: dict[str, Any], *, idempotent: bool = False) -> Reply:
        """Send one command and return its reply; an ``error`` reply raises its typed error.

        If the socket drops before the reply, an ``idempotent`` command (``stop``) is sent once
        more on a fresh socket; any other raises :class:`ConnectionLost` (it may have run).
        """
        delay_s = SHUTTING_DOWN_RETRY_DELAY_S
        for attempt in itertools.count():
            async with self._slots:
                reply = await self._once(message, idempotent=idempotent)
            refused_to_go = reply.get("type") == "error" and reply.get("code") == "shutting_down"
            if not refused_to_go or attempt >= SHUTTING_DOWN_RETRIES or self._closed:
                break
            log.info("the gateway behind %s is shutting down; sending %s on a fresh socket", self.url, message["type"])
            await self._leave()
            await asyncio.sleep(delay_s)
            delay_s *= 2
        if reply.get("type") == "error":
            code, text = reply.get("code"), reply.get("message")
            raise from_code(code if isinstance(code, str) else "internal", str(text))
        return reply

    async def _once(self, message: dict[str, Any], *, idempotent: bool) -> Reply:
        try:
            return await self._round_trip(message)
        except ConnectionLost:
            if not idempotent or self._closed:
                raise
            log.info("control socket %s dropped before the reply; sending %s again", self.url, message["type"])
            return await self._round_trip(message)

    async def _leave(self) -> None:
        """Stop using the current socket (its gateway is going away); the next command opens a fresh one.  Replies
        still due on it arrive: it closes when its gateway closes it."""
        async with self._open_lock:
            self._ws = None

    async def close(self) -> None:
        """Close the socket; commands still waiting fail with :class:`ConnectionLost`."""
        self._closed = True
        async with self._open_lock:
            ws, reader = self._ws, self._reader
            self._ws = self._reader = None
        if ws is not None:
            await ws.close()
        if reader is not None:
            await reader
        self._fail_pending(None, "the client was closed")

    async def _round_trip(self, message: dict[str, Any]) -> Reply:
        ref = next(self._refs)
        text = orjson.dumps({**message, "ref": ref}).decode()
        try:
            async with asyncio.timeout(self.reply_timeout_s):
                waiter = await self._send(ref, text)
                return await waiter
        except TimeoutError:
            raise Unavailable(f"no reply to {message.get('type')!r} within {self.reply_timeout_s} s") from None
        finally:
            self._pending.pop(ref, None)

    async def _send(self, ref: int, text: str) -> asyncio.Future[Reply]:
        # A send that finds the socket already closed never left this process, so it is safe to
        # repeat once on a fresh socket; a socket that drops after the send fails the command.
        try:
            return await self._send_on(await self._connection(), ref, text)
        except ConnectionClosed:
            log.info("control socket %s was closed; opening it again", self.url)
        try:
            return await self._send_on(await self._connection(), ref, text)
        except ConnectionClosed as exc:
            raise ConnectionLost(f"the control socket {self.url} closed: {exc}", attempts=2) from exc

    async def _send_on(self, ws: ClientConnection, ref: int, text: str) -> asyncio.Future[Reply]:
        waiter: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[ref] = (ws, waiter)
        try:
            await ws.send(text)
        except ConnectionClosed:
            waiter.cancel()
            raise
        return waiter

    async def _connection(self) -> ClientConnection:
        async with self._open_lock:
            if self._closed:
                raise ConnectionLost("the client was closed")
            if self._ws is not None and self._ws.state is State.OPEN:
                return self._ws
            try:
                ws = await connect(
                    self.url,
                    open_timeout=self.open_timeout_s,
                    max_size=self.max_message_bytes,
                    additional_headers=self.headers or None,
                )
            except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
                raise ConnectionLost(f"cannot open the control socket {self.url}: {exc}", attempts=1) from exc
            self._ws = ws
            self.sockets_opened += 1
            self._reader = asyncio.create_task(self._read(ws), name="tokenrelay-control-reader")
            return ws

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for frame in ws:
                self._deliver(frame)
        except ConnectionClosed:
            pass
        finally:
            if self._ws is ws:
                self._ws = None
            self._fail_pending(ws, "the control socket closed before the reply")

    def _deliver(self, frame: str | bytes) -> None:
        try:
            reply = orjson.loads(frame)
        except orjson.JSONDecodeError:
            log.warning("control socket %s: a reply that is not JSON was dropped", self.url)
            return
        ref = reply.get("ref") if isinstance(reply, dict) else None
        pending = self._pending.get(ref) if isinstance(ref, int) else None
        if pending is None:
            log.warning("control socket %s: a reply for no pending request was dropped: %.200r", self.url, reply)
            return
        waiter = pending[1]
        if not waiter.done():
            waiter.set_result(reply)

    def _fail_pending(self, ws: ClientConnection | None, why: str) -> None:
        for sent_on, waiter in list(self._pending.values()):
            if (ws is None or sent_on is ws) and not waiter.done():
                waiter.set_exception(ConnectionLost(f"{why} ({self.url})"))


def expect(reply: Reply, kind: str, **fields: type | tuple[type, ...]) -> Reply:
    """Check a reply's ``type`` and the types of ``fields``, or raise :class:`ProtocolError`."""
    if reply.get("type") != kind:
        raise ProtocolError(f"expected a {kind!r} reply, got {reply.get('type')!r}")
    for name, field_type in fields.items():
        value = reply.get(name)
        if not isinstance(value, field_type) or isinstance(value, bool):
            raise ProtocolError(f"the {kind!r} reply's {name!r} has the wrong type: {value!r}")
    return reply
