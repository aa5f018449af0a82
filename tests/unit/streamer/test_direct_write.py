"""Spec of the SSE writer: events go out from the stack that queued them while the writer is parked.

A real aiohttp server on 127.0.0.1 and a raw socket client that reads the HTTP/1.1 bytes as they come.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from aiohttp import web

from tests.helpers import LoopFactory, run_on_loop
from tokenrelay.streamer.chunked import http_chunk
from tokenrelay.streamer.flush import FlushClock
from tokenrelay.streamer.metrics import StreamerMetrics
from tokenrelay.streamer.reader import Reader
from tokenrelay.streamer.writer import DirectWrite, Pump
from tokenrelay.wire.messages import FinishReason, StreamDelta, StreamEnd, StreamStart

SID = "0123456789abcdef0123456789abcdef"
EPOCH = "e1"
FLUSH_INTERVAL_S = 0.05
START = StreamStart(stream_id=SID, epoch=EPOCH, model="m", created=0, runner_id="r", ts=0.0)


def run_on(loop_factory: LoopFactory, scenario: Callable[[Served], Awaitable[None]]) -> None:
    """Serve one reader on the chosen loop and run ``scenario`` against it."""

    async def main() -> None:
        async with serve() as served:
            await scenario(served)

    run_on_loop(loop_factory, main())


@dataclass
class Served:
    reader: Reader
    client: socket.socket
    done: asyncio.Future[None]
    writes: list[bytes]
    """What the server handed its transport, one item per call (only with ``record_writes``)."""


@contextlib.asynccontextmanager
async def serve(*, record_writes: bool = False) -> AsyncIterator[Served]:
    loop = asyncio.get_running_loop()
    reader = Reader(SID, epoch=EPOCH, resume=None, max_buffered_bytes=64 << 20, now=0.0)
    prepared: asyncio.Future[None] = loop.create_future()
    done: asyncio.Future[None] = loop.create_future()
    writes: list[bytes] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        transport = request.transport
        assert transport is not None
        if record_writes:
            _record(transport, writes)
        transport.set_write_buffer_limits(high=0)
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        writer = await response.prepare(request)
        assert writer is not None
        pump = Pump(
            reader, response, writer, StreamerMetrics(), flush=FlushClock(FLUSH_INTERVAL_S), clock=loop.time,
            out=DirectWrite.of(writer, transport), write_from_callback=True,
        )  # fmt: skip
        prepared.set_result(None)
        try:
            await pump.run()
        finally:
            done.set_result(None)
        return response

    app = web.Application()
    app.router.add_get("/events", handler)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.setblocking(False)
    await loop.sock_connect(client, ("127.0.0.1", port))
    await loop.sock_sendall(client, b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await asyncio.wait_for(prepared, 5)
    try:
        yield Served(reader, client, done, writes)
    finally:
        client.close()
        await runner.cleanup()


def _record(transport: asyncio.BaseTransport, writes: list[bytes]) -> None:
    """Keep a copy of every write the server makes (asyncio's transports: uvloop's methods cannot be replaced)."""
    write, writelines = transport.write, transport.writelines  # type: ignore[attr-defined]

    def recording_write(data: bytes) -> None:
        writes.append(bytes(data))
        write(data)

    def recording_writelines(chunks: list[bytes]) -> None:
        chunks = list(chunks)
        writes.append(b"".join(chunks))
        writelines(chunks)

    transport.write, transport.writelines = recording_write, recording_writelines  # type: ignore[attr-defined]


async def read_until(client: socket.socket, marker: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while marker not in data:
        chunk = await asyncio.wait_for(loop.sock_recv(client, 1 << 16), 5)
        assert chunk, f"connection closed before {marker!r}; got {data[-200:]!r}"
        data += chunk
    return data


def test_a_chunk_is_its_hex_size_crlf_the_bytes_crlf() -> None:
    assert http_chunk(b"data: hi\n\n") == b"a\r\ndata: hi\n\n\r\n"
    assert http_chunk(b"x" * 300).startswith(b"12c\r\n")
    with pytest.raises(ValueError, match="last-chunk"):
        http_chunk(b"")


def test_an_event_queued_while_the_writer_is_parked_is_written_without_waking_the_writer(
    loop_factory: LoopFactory,
) -> None:
    run_on(loop_factory, _parked_writer)


async def _parked_writer(served: Served) -> None:
    await read_until(served.client, b"\r\n\r\n")  # the headers went out at prepare
    await asyncio.sleep(0)  # the writer parks
    served.reader.deliver(START, 0.0, b"event: start\ndata: {}\n\n")
    served.reader.deliver(StreamDelta(seq=1, text="hello", index=1, count=1, ts=0.0), 0.0)
    # Both went out at once: a write without tokens (start) starts no flush interval.
    assert not served.reader.wake.is_set()
    assert served.reader.buffer.buffered_bytes == 0
    body = await read_until(served.client, b"hello")
    assert body.startswith(b"17\r\nevent: start\ndata: {}\n\n\r\n")
    served.reader.deliver(StreamDelta(seq=2, text="again", index=2, count=1, ts=0.0), 0.0)
    # A second token within the flush interval waits for the writer's shared tick.
    assert served.reader.wake.is_set()
    assert served.reader.buffer.buffered_bytes > 0
    await read_until(served.client, b"again")
    served.reader.deliver(StreamEnd(seq=3, finish_reason=FinishReason.STOP, tokens=2, ttft_ms=None), 0.0)
    assert served.reader.wake.is_set()  # the terminal event is the writer's to send, then it returns
    await read_until(served.client, b"\r\n0\r\n\r\n")
    await asyncio.wait_for(served.done, 5)


def test_a_write_the_kernel_does_not_take_whole_stays_in_flight_until_the_client_reads_it(
    loop_factory: LoopFactory,
) -> None:
    run_on(loop_factory, _partial_write)


async def _partial_write(served: Served) -> None:
    await read_until(served.client, b"\r\n\r\n")
    await asyncio.sleep(0)
    served.reader.deliver(START, 0.0, b"event: start\ndata: {}\n\n")
    big = "y" * (4 << 20)
    served.reader.deliver(StreamDelta(seq=1, text=big, index=1, count=1, ts=0.0), 0.0)
    assert served.reader.buffer.in_flight_bytes > len(big)  # counted against the reader's limit
    assert served.reader.writing_since is not None  # and the write timeout runs
    assert served.reader.wake.is_set()  # the writer waits for the kernel
    served.reader.deliver(StreamEnd(seq=2, finish_reason=FinishReason.STOP, tokens=1, ttft_ms=None), 0.0)
    body = await read_until(served.client, b"\r\n0\r\n\r\n")
    assert body.count(b"y") == len(big)
    await asyncio.wait_for(served.done, 5)
    assert served.reader.buffer.in_flight_bytes == 0
    assert served.reader.writing_since is None


def test_the_terminal_event_and_the_end_of_the_body_leave_in_one_write() -> None:
    # So a client that stops reading at the terminal event has the whole response, and its next request can go
    # on the same connection.  On asyncio's loop, whose transport can be wrapped to see each write.
    run_on_loop(None, _terminal_write())


async def _terminal_write() -> None:
    async with serve(record_writes=True) as served:
        await read_until(served.client, b"\r\n\r\n")
        served.reader.deliver(START, 0.0, b"event: start\ndata: {}\n\n")
        served.reader.deliver(StreamEnd(seq=1, finish_reason=FinishReason.STOP, tokens=0, ttft_ms=None), 0.0)
        await read_until(served.client, b"\r\n0\r\n\r\n")
        await asyncio.wait_for(served.done, 5)
        last = served.writes[-1]
        assert b"event: stop" in last
        assert last.endswith(b"\r\n0\r\n\r\n")
        assert not any(b"event: stop" in write for write in served.writes[:-1])
