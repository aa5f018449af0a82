"""Spec of the draining site: every connection the kernel queued is accepted at each wake-up, on both loops.

Real aiohttp apps on 127.0.0.1, real client sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import cast

import aiohttp
import pytest
from aiohttp import web

from tests.helpers import LoopFactory, run_on_loop
from tokenrelay.runtime import accept
from tokenrelay.runtime.accept import DrainingSite

QUEUED_CONNECTIONS = 20


async def ping(_: web.Request) -> web.Response:
    return web.Response(text="pong")


@contextlib.asynccontextmanager
async def served() -> AsyncIterator[tuple[web.AppRunner, DrainingSite, int]]:
    app = web.Application()
    app.router.add_get("/ping", ping)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = DrainingSite(runner, "127.0.0.1", 0, backlog=128)
    await site.start()
    try:
        yield runner, site, runner.addresses[0][1]
    finally:
        await runner.cleanup()


def listener(site: DrainingSite) -> accept._Listener:
    server = site._server
    assert isinstance(server, accept._Listener)
    return server


def test_requests_are_served_through_the_site_and_its_port_is_reported(loop_factory: LoopFactory) -> None:
    async def scenario() -> None:
        async with served() as (_, _, port), aiohttp.ClientSession() as session:
            assert port > 0
            for _ in range(3):
                async with session.get(f"http://127.0.0.1:{port}/ping") as response:
                    assert response.status == 200
                    assert await response.text() == "pong"

    run_on_loop(loop_factory, scenario())


def test_one_wake_up_accepts_every_connection_the_kernel_queued(loop_factory: LoopFactory) -> None:
    async def scenario() -> None:
        async with served() as (_, site, port):
            server = listener(site)
            (sock,) = server.sockets
            # The loop does not run between these lines: every connection waits in the kernel's queue.
            clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(QUEUED_CONNECTIONS)]
            try:
                server.accept_queued(sock)
                with pytest.raises(BlockingIOError):  # nothing left queued
                    sock.accept()
                # Each accepted connection is served.
                loop = asyncio.get_running_loop()
                for client in clients:
                    client.setblocking(False)
                    await loop.sock_sendall(client, b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
                for client in clients:
                    reply = await asyncio.wait_for(loop.sock_recv(client, 4096), 5)
                    assert reply.startswith(b"HTTP/1.1 200")
            finally:
                for client in clients:
                    client.close()

    run_on_loop(loop_factory, scenario())


def test_out_of_file_descriptors_a_queued_connection_is_refused_by_closing_it_and_counted(
    loop_factory: LoopFactory,
) -> None:
    refused: list[int] = []

    async def scenario() -> None:
        async with served() as (_, site, port):
            server = listener(site)
            server._on_refused = lambda: refused.append(1)
            (sock,) = server.sockets
            failing = _Fails(sock, times=1)
            loop = asyncio.get_running_loop()
            loop.remove_reader(sock.fileno())
            loop.add_reader(sock.fileno(), server.accept_queued, cast(socket.socket, failing))  # duck-typed socket
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                assert await reader.read() == b""  # closed before a byte was read or written: refused
            finally:
                writer.close()
            async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/ping") as response:
                assert response.status == 200  # descriptors are back
            assert failing.failures == 1 and refused == [1]

    run_on_loop(loop_factory, scenario())


def test_when_not_even_the_reserve_descriptor_helps_accepting_pauses_then_queued_clients_are_served(
    loop_factory: LoopFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accept, "RESOURCE_ERROR_PAUSE_S", 0.05)

    async def scenario() -> None:
        async with served() as (_, site, port):
            server = listener(site)
            (sock,) = server.sockets
            failing = _Fails(sock, times=2)  # the accept with the reserve given up fails too
            loop = asyncio.get_running_loop()
            loop.remove_reader(sock.fileno())
            loop.add_reader(sock.fileno(), server.accept_queued, cast(socket.socket, failing))  # duck-typed socket
            async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/ping") as response:
                assert response.status == 200
            assert failing.failures == 2

    run_on_loop(loop_factory, scenario())


class _Fails:
    """A listening socket whose first ``times`` accepts fail with EMFILE, as in a process out of descriptors."""

    def __init__(self, sock: socket.socket, *, times: int) -> None:
        self._sock = sock
        self._times = times
        self.failures = 0

    def fileno(self) -> int:
        return self._sock.fileno()

    def accept(self) -> tuple[socket.socket, object]:
        if self.failures < self._times:
            self.failures += 1
            raise OSError(errno.EMFILE, "Too many open files")
        return self._sock.accept()


def test_after_cleanup_the_port_refuses_connections(loop_factory: LoopFactory) -> None:
    async def scenario() -> None:
        async with served() as (runner, _, port):
            pass
        assert runner.addresses == []
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()

    run_on_loop(loop_factory, scenario())


def test_an_address_of_a_family_not_enabled_here_is_skipped_and_the_others_serve(
    loop_factory: LoopFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    unbindable = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.1", 0))  # TEST-NET-1: on no interface here
    local = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 0))

    async def addresses(_: DrainingSite) -> list[tuple[object, ...]]:
        return [unbindable, local]

    monkeypatch.setattr(DrainingSite, "_addresses", addresses)

    async def scenario() -> None:
        async with served() as (runner, _, port), aiohttp.ClientSession() as session:
            assert [host for host, _ in runner.addresses] == ["127.0.0.1"]
            async with session.get(f"http://127.0.0.1:{port}/ping") as response:
                assert response.status == 200

    run_on_loop(loop_factory, scenario())


def test_a_host_with_no_bindable_address_fails_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    async def addresses(_: DrainingSite) -> list[tuple[object, ...]]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.1", 0))]

    monkeypatch.setattr(DrainingSite, "_addresses", addresses)

    async def scenario() -> None:
        runner = web.AppRunner(web.Application())
        await runner.setup()
        try:
            with pytest.raises(OSError) as raised:
                await DrainingSite(runner, "192.0.2.1", 0, backlog=16).start()
            assert raised.value.errno == errno.EADDRNOTAVAIL
        finally:
            await runner.cleanup()

    asyncio.run(scenario())


FD_LIMIT = 40
"""The open-files limit of the server process in the descriptor-limit spec (it holds ~15 at rest)."""
SERVER_SCRIPT = f"""
import asyncio, resource, sys
from aiohttp import web
from tokenrelay.runtime.accept import DrainingSite

async def main() -> None:
    refused = []
    runner = web.AppRunner(web.Application())
    await runner.setup()
    site = DrainingSite(runner, "127.0.0.1", 0, backlog=128, on_refused=lambda: refused.append(1))
    await site.start()
    resource.setrlimit(resource.RLIMIT_NOFILE, ({FD_LIMIT}, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    print(runner.addresses[0][1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    print(len(refused), flush=True)

asyncio.run(main())
"""


def test_at_the_process_s_descriptor_limit_queued_connections_are_refused_by_a_close_and_counted() -> None:
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER_SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert server.stdin is not None and server.stdout is not None
    clients: list[socket.socket] = []
    try:
        port = int(server.stdout.readline())
        for _ in range(2 * FD_LIMIT):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        deadline = time.monotonic() + 10
        closed: set[int] = set()
        settled_at = time.monotonic()
        while time.monotonic() < deadline:  # until the closes stop coming (every queued connection was taken)
            before = len(closed)
            for number, client in enumerate(clients):
                if number not in closed and _closed_by_peer(client):
                    closed.add(number)
            if len(closed) != before:
                settled_at = time.monotonic()
            elif closed and time.monotonic() - settled_at > 1.0:
                break
            time.sleep(0.05)
        server.stdin.write("report\n")
        server.stdin.flush()
        refused = int(server.stdout.readline())
    finally:
        for client in clients:
            client.close()
        server.kill()
        server.wait()
    assert refused >= FD_LIMIT // 2 and len(closed) == refused, (refused, len(closed))  # every one past the limit


def _closed_by_peer(client: socket.socket) -> bool:
    """Whether the server closed this connection (end of file, nothing sent); an open one has nothing to read."""
    client.setblocking(False)
    try:
        return client.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
