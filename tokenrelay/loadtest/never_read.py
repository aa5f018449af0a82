"""Readers that never read: each sends its events request, then holds the connection without reading a byte.

The socket gets a small receive buffer before it connects, so the window it advertises stays small and the
server's writes back up quickly, as they do behind a stalled client.  The request goes out through the event
loop's own streams (asyncio's or uvloop's transports alike) with a write buffer limit of zero, so the send
counts as done only once every byte is in the kernel; a reader whose request did not go out is an error,
never a stream that was "never read".
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol, cast
from urllib.parse import urlsplit

from tokenrelay.loadtest.codes import error_code
from tokenrelay.loadtest.stats import Outcome, RunTotals

DEFAULT_RECEIVE_BUFFER_BYTES = 4096
"""SO_RCVBUF of a never-read reader (the kernel doubles it and enforces its own minimum)."""
DEFAULT_FIRST_POLL_S = 0.5
DEFAULT_MAX_POLL_S = 2.0
"""A never-read reader checks its stream's state with a backoff between these (seconds)."""
TCP_ESTABLISHED = 1
"""``tcpi_state`` of an open connection (Linux ``include/net/tcp_states.h``)."""

StreamFinished = Callable[[], Awaitable[bool]]
"""Asks whether the reader's stream finished (``True`` also when that cannot be known: stop holding it)."""


class SocketOptions(Protocol):
    """A socket, or the stand-in for one that an event loop's transport gives (asyncio's and uvloop's differ)."""

    def getsockopt(self, level: int, option: int, buflen: int, /) -> bytes:
        """The raw value of a socket option."""


def peer_closed(sock: SocketOptions | None) -> bool:
    """Whether the server ended this connection (Linux ``TCP_INFO``; ``False`` where unknown)."""
    option = getattr(socket, "TCP_INFO", None)
    if option is None or sock is None:
        return False
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, option, 8)
    except OSError:
        return False
    return bool(info) and info[0] != TCP_ESTABLISHED


def events_request(events_url: str, headers: Mapping[str, str]) -> bytes:
    """The raw ``GET`` of an events URL, with ``headers`` (an ``Authorization``, say) after the usual ones."""
    url = urlsplit(events_url)
    target = (url.path or "/") + (f"?{url.query}" if url.query else "")
    lines = [f"GET {target} HTTP/1.1", f"Host: {url.netloc}", "Accept: text/event-stream"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class NeverReadReader:
    """One reader that never reads: :meth:`hold` sends the request, then waits until the stream is over.

    ``request_sent`` turns true once the whole request is in the kernel; only then does the reader count as
    :attr:`~tokenrelay.loadtest.stats.Outcome.NEVER_READ` (before that, its failure is an error like any other).

    Limits: ``receive_buffer_bytes`` is the socket's receive buffer (the window the server sees);
    ``first_poll_s`` / ``max_poll_s`` bound the backoff between checks of whether the server closed the
    connection or the stream finished.
    """

    def __init__(
        self,
        totals: RunTotals,
        *,
        headers: Mapping[str, str],
        local_address: str | None = None,
        receive_buffer_bytes: int = DEFAULT_RECEIVE_BUFFER_BYTES,
        first_poll_s: float = DEFAULT_FIRST_POLL_S,
        max_poll_s: float = DEFAULT_MAX_POLL_S,
    ) -> None:
        self._totals = totals
        self._headers = dict(headers)
        self._local_address = local_address
        self._receive_buffer_bytes = receive_buffer_bytes
        self._first_poll_s = first_poll_s
        self._max_poll_s = max_poll_s
        self.request_sent = False

    @property
    def outcome(self) -> Outcome:
        """``NEVER_READ`` once the request went out, else ``FAILED`` (however the reader ended)."""
        return Outcome.NEVER_READ if self.request_sent else Outcome.FAILED

    async def hold(self, events_url: str, finished: StreamFinished) -> Outcome:
        """Send the request and hold the connection unread until the server closes it or ``finished()``."""
        try:
            writer = await self._send(events_url)
        except (OSError, ssl.SSLError, ValueError) as exc:
            self._totals.error(error_code(exc))
            return self.outcome
        try:
            await self._wait_for_end(writer.get_extra_info("socket"), finished)
        finally:
            writer.transport.abort()
        return self.outcome

    async def _send(self, events_url: str) -> asyncio.StreamWriter:
        url = urlsplit(events_url)
        host, tls = url.hostname or "127.0.0.1", url.scheme == "https"
        sock = await self._connect(host, url.port or (443 if tls else 80))
        try:
            _, writer = await asyncio.open_connection(
                sock=sock,
                ssl=ssl.create_default_context() if tls else None,
                server_hostname=host if tls else None,
                limit=self._receive_buffer_bytes,
            )
        except BaseException:
            sock.close()
            raise
        # uvloop's transports have every method of asyncio.Transport without deriving from it: no isinstance check.
        transport = cast(asyncio.Transport, writer.transport)
        try:
            # Not one byte is read from here on: what the server sends waits in the kernel's buffers.
            transport.pause_reading()
            # With no write buffer allowed, drain() returns only once the kernel has taken every byte.
            transport.set_write_buffer_limits(high=0)
            writer.write(events_request(events_url, self._headers))
            await writer.drain()
        except BaseException:
            transport.abort()
            raise
        self.request_sent = True
        return writer

    async def _connect(self, host: str, port: int) -> socket.socket:
        loop = asyncio.get_running_loop()
        wanted = socket.AF_INET if self._local_address is not None else socket.AF_UNSPEC
        found = await loop.getaddrinfo(host, port, family=wanted, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = found[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            # Before connecting, so the window scale agreed in the handshake keeps the advertised window small.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._receive_buffer_bytes)
            if self._local_address is not None:
                sock.bind((self._local_address, 0))
            await loop.sock_connect(sock, address)
        except BaseException:
            sock.close()
            raise
        return sock

    async def _wait_for_end(self, sock: SocketOptions | None, finished: StreamFinished) -> None:
        delay_s = self._first_poll_s
        while True:
            await asyncio.sleep(delay_s)
            if peer_closed(sock):
                self._totals.never_read_closed_by_server += 1
                return
            if await finished():
                return
            delay_s = min(delay_s * 2, self._max_poll_s)
