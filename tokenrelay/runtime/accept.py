"""An aiohttp site that accepts every queued connection each time its listening socket is readable.

uvloop's own TCP server accepted about one connection per event-loop iteration while the loop was
busy (asyncio's accepts up to ``backlog`` per wake-up).  A streamer saturated by live tokens runs long
iterations, so new readers waited in the kernel's accept queue: at 1,000 streams x 20 tokens/s on two
cores the queue held ~480 connections and TTFT p50 was 9.3 s; with this site it held at most 5 and
TTFT p50 was 1.8-3.0 s (``python -m bench.compare --scenario active --event-loop uvloop``).
:class:`DrainingSite` accepts with ``add_reader`` and non-blocking ``accept`` calls, on either loop, and
hands each connection to the loop with ``connect_accepted_socket``.

Out of file descriptors (a streamer at its ``ulimit -n`` with thousands of readers), ``accept`` fails with
``EMFILE`` and the connections queued in the kernel would hang until the backlog overflowed.  The listener keeps one
descriptor in reserve: it gives it up to accept a queued connection, closes that connection at once (a clean
refusal the client sees as a closed connection), takes the reserve back, and counts the refusal (``on_refused``).
It logs one line per second at most meanwhile, not one per connection.  Only when even that fails does it pause
accepting for :data:`RESOURCE_ERROR_PAUSE_S`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tokenrelay.runtime.tasks import TaskSet

log = logging.getLogger(__name__)

MAX_ACCEPTS_PER_WAKEUP = 512
"""Connections taken from the kernel per readable event at most, so a flood cannot hold the loop."""
RESOURCE_ERROR_PAUSE_S = 1.0
"""How long accepting pauses after the process ran out of file descriptors or memory (as asyncio's server does)."""
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_DESCRIPTOR_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE})
REFUSAL_LOG_INTERVAL_S = 1.0
"""Connections refused for want of descriptors are logged as one line per this long at most."""


def _reserve_descriptor() -> int | None:
    """One descriptor held so a connection can still be accepted (and refused) when the process has no other."""
    try:
        return os.open(os.devnull, os.O_RDONLY)
    except OSError:
        return None


class _Listener(asyncio.AbstractServer):
    """The listening sockets and their accept loops; what :class:`DrainingSite` holds as its server."""

    def __init__(
        self, socks: list[socket.socket], handler: web.Server, on_refused: Callable[[], None] | None = None
    ) -> None:
        self._socks = socks
        self._handler = handler
        self._on_refused = on_refused
        self._reserve = _reserve_descriptor()
        self._refused_unlogged = 0
        self._refusal_logged_at = float("-inf")
        self._loop = asyncio.get_running_loop()
        self._connecting = TaskSet()
        self._serving = False
        self._closed = asyncio.Event()
        self._paused: dict[socket.socket, asyncio.TimerHandle] = {}

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening sockets while serving (aiohttp reads the bound addresses from here)."""
        return tuple(self._socks) if self._serving else ()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        if self._serving or self._closed.is_set():
            return
        self._serving = True
        for sock in self._socks:
            self._loop.add_reader(sock.fileno(), self.accept_queued, sock)

    async def serve_forever(self) -> None:
        await self.start_serving()
        await self._closed.wait()

    def close(self) -> None:
        """Stop accepting and close the listening sockets (accepted connections belong to aiohttp's server)."""
        if self._closed.is_set():
            return
        for sock in self._socks:
            if self._serving:
                self._loop.remove_reader(sock.fileno())
            sock.close()
        for handle in self._paused.values():
            handle.cancel()
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None
        self._serving = False
        self._connecting.cancel()
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def accept_queued(self, sock: socket.socket) -> None:
        """Accept what the kernel has queued on ``sock`` (up to :data:`MAX_ACCEPTS_PER_WAKEUP`)."""
        for _ in range(MAX_ACCEPTS_PER_WAKEUP):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up while queued
            except OSError as exc:
                if exc.errno not in _RESOURCE_ERRNOS:
                    raise  # the loop's exception handler logs it; the next wake-up tries again
                if exc.errno in _DESCRIPTOR_ERRNOS and self._refuse_one(sock):
                    continue
                log.error("accept failed (%s); pausing accepts for %.1f s", exc, RESOURCE_ERROR_PAUSE_S)
                self._loop.remove_reader(sock.fileno())
                self._paused[sock] = self._loop.call_later(RESOURCE_ERROR_PAUSE_S, self._resume, sock)
                return
            conn.setblocking(False)
            self._connecting.spawn(self._connect(conn))

    def _refuse_one(self, sock: socket.socket) -> bool:
        """No descriptor left: accept one queued connection with the reserve and close it at once; whether one was."""
        if self._reserve is None:
            return False
        os.close(self._reserve)
        try:
            conn, _ = sock.accept()
        except OSError:
            self._reserve = _reserve_descriptor()
            return False  # nothing queued any more, or not even this worked
        conn.close()  # first: the connection holds the one descriptor the reserve is taken back into
        self._reserve = _reserve_descriptor()
        if self._on_refused is not None:
            self._on_refused()
        self._refused_unlogged += 1
        now = self._loop.time()
        if now - self._refusal_logged_at >= REFUSAL_LOG_INTERVAL_S:
            log.warning("out of file descriptors: refused %d connection(s) by closing them", self._refused_unlogged)
            self._refused_unlogged, self._refusal_logged_at = 0, now
        return True

    def _resume(self, sock: socket.socket) -> None:
        del self._paused[sock]
        if self._serving:
            self._loop.add_reader(sock.fileno(), self.accept_queued, sock)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._handler, conn)
        except BaseException:
            conn.close()
            raise


class DrainingSite(web.BaseSite):
    """A TCP site whose accept loop drains the kernel's queue on every wake-up (see the module docstring)."""

    __slots__ = ("_host", "_on_refused", "_port", "_reuse_port")

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, *, backlog: int, reuse_port: bool = False,
        on_refused: Callable[[], None] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._reuse_port = reuse_port
        self._on_refused = on_refused
        """Told of each connection refused for want of file descriptors (a metric)."""

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        handler = self._runner.server
        assert handler is not None  # BaseSite's constructor checked it
        socks: list[socket.socket] = []
        try:
            for family, kind, proto, _, address in await self._addresses():
                sock = socket.socket(family, kind, proto)
                socks.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if self._reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio's create_server
                try:
                    sock.bind(address)
                except OSError as exc:
                    if exc.errno != errno.EADDRNOTAVAIL:
                        raise
                    socks.pop().close()  # that family is not enabled here (asyncio's create_server skips it too)
                    continue
                sock.listen(self._backlog)
                sock.setblocking(False)
        except OSError:
            for sock in socks:
                sock.close()
            raise
        if not socks:
            raise OSError(errno.EADDRNOTAVAIL, f"no address of {self._host!r} can be bound here")
        listener = _Listener(socks, handler, self._on_refused)
        await listener.start_serving()
        self._server = listener

    async def _addresses(self) -> list[tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[Any, ...]]]:
        """Every address ``host`` resolves to for listening, each once."""
        infos = await asyncio.get_running_loop().getaddrinfo(
            self._host, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        return list(dict.fromkeys(infos))
