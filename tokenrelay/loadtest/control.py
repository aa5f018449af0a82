"""The one control WebSocket a load test shares between all its streams, for ``stop``.

Each ``stop`` carries a fresh integer ``ref`` that the gateway echoes on its reply. At most
``max_in_flight`` commands are outstanding (the gateway handles 64 at once per socket); a
socket that drops fails its pending commands with ``connection_error`` and is opened again by
the next command.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import aiohttp
import orjson

DEFAULT_MAX_IN_FLIGHT = 64

Reply = dict[str, Any]


class ControlError(Exception):
    """A command failed; ``code`` is the gateway's error code or a client-side one."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class SharedControlSocket:
    """Request/reply over one WebSocket; ``timeout_s`` bounds opening it and each reply."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        *,
        headers: dict[str, str],
        timeout_s: float,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        self.url = url
        self.opened = 0
        """How many times the socket was opened."""
        self._session = session
        self._headers = headers
        self._timeout_s = timeout_s
        self._slots = asyncio.Semaphore(max_in_flight)
        self._refs = itertools.count(1)
        self._pending: dict[int, tuple[aiohttp.ClientWebSocketResponse, asyncio.Future[Reply]]] = {}
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def stop(self, stream_id: str) -> Reply:
        """Send ``stop`` and return the ``stopped`` reply; raise :class:`ControlError` otherwise."""
        reply = await self.request({"type": "stop", "stream_id": stream_id})
        if reply.get("type") == "error":
            raise ControlError(str(reply.get("code", "internal")), str(reply.get("message", "")))
        if reply.get("type") != "stopped":
            raise ControlError("protocol_error", f"expected a 'stopped' reply, got {reply.get('type')!r}")
        return reply

    async def request(self, message: dict[str, Any]) -> Reply:
        """One command and its reply (any ``type``)."""
        async with self._slots:
            ref = next(self._refs)
            try:
                async with asyncio.timeout(self._timeout_s):
                    ws = await self._connection()
                    waiter: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
                    self._pending[ref] = (ws, waiter)
                    await ws.send_str(orjson.dumps({**message, "ref": ref}).decode())
                    return await waiter
            except TimeoutError:
                raise ControlError("timeout", f"no reply within {self._timeout_s} s") from None
            except (aiohttp.ClientError, ConnectionError) as exc:
                raise ControlError("connection_error", str(exc) or type(exc).__name__) from None
            finally:
                self._pending.pop(ref, None)

    async def close(self) -> None:
        """Close the socket; pending commands fail."""
        async with self._lock:
            ws, reader = self._ws, self._reader
            self._ws = self._reader = None
        if ws is not None:
            await ws.close()
        if reader is not None:
            await reader

    async def _connection(self) -> aiohttp.ClientWebSocketResponse:
        async with self._lock:
            if self._ws is not None and not self._ws.closed:
                return self._ws
            ws = await self._session.ws_connect(self.url, headers=self._headers, heartbeat=None)
            self._ws = ws
            self.opened += 1
            self._reader = asyncio.create_task(self._read(ws), name="loadtest-control-reader")
            return ws

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for frame in ws:
                if frame.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    self._deliver(frame.data)
        finally:
            for sent_on, waiter in self._pending.values():
                if sent_on is ws and not waiter.done():
                    waiter.set_exception(ConnectionError("the control socket closed before the reply"))

    def _deliver(self, data: str | bytes) -> None:
        try:
            reply = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(reply, dict):
            return
        ref = reply.get("ref")
        pending = self._pending.get(ref) if isinstance(ref, int) else None
        if pending is not None and not pending[1].done():
            pending[1].set_result(reply)
