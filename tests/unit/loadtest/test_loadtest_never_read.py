"""A never-read reader sends its events request on either event loop, then holds the connection without reading.

The server is an in-process asyncio listener on 127.0.0.1 that records the request it got; each spec runs on
asyncio's loop and on uvloop (whose transports are not asyncio's classes).
"""

from __future__ import annotations

import asyncio
import socket

from tests.helpers import LoopFactory, run_on_loop
from tokenrelay.loadtest.never_read import NeverReadReader, events_request
from tokenrelay.loadtest.stats import Outcome, RunTotals

POLL_S = 0.01
TIMEOUT_S = 10.0
AUTH = {"Authorization": "Bearer k-1"}


class RecordingServer:
    """Takes one request, answers with a short head, then closes (or keeps) the connection."""

    def __init__(self, *, close: bool) -> None:
        self.close = close
        self.requests: list[bytes] = []
        self.url = ""
        self._server: asyncio.Server | None = None
        self._release = asyncio.Event()

    async def __aenter__(self) -> RecordingServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/v1/streams/s1/events?x=1"
        return self

    async def __aexit__(self, *_: object) -> None:
        self._release.set()
        assert self._server is not None
        self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.requests.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n: hi\n\n")
        await writer.drain()
        if not self.close:
            await self._release.wait()
        writer.close()


async def never_finished() -> bool:
    return False


def test_never_read_request_names_the_path_query_host_and_every_header() -> None:
    request = events_request("http://h.example:8081/v1/streams/s1/events?a=b", AUTH)
    assert request == (
        b"GET /v1/streams/s1/events?a=b HTTP/1.1\r\nHost: h.example:8081\r\nAccept: text/event-stream\r\n"
        b"Authorization: Bearer k-1\r\n\r\n"
    )


def test_a_never_read_reader_sends_its_request_and_ends_as_never_read_when_the_server_closes(
    loop_factory: LoopFactory,
) -> None:
    async def main() -> None:
        totals = RunTotals()
        reader = NeverReadReader(totals, headers=AUTH, first_poll_s=POLL_S, max_poll_s=POLL_S)
        async with RecordingServer(close=True) as server:
            outcome = await asyncio.wait_for(reader.hold(server.url, never_finished), TIMEOUT_S)
        assert outcome is Outcome.NEVER_READ
        assert reader.request_sent
        assert server.requests == [events_request(server.url, AUTH)]
        assert totals.never_read_closed_by_server == 1
        assert not totals.errors

    run_on_loop(loop_factory, main())


def test_a_never_read_reader_lets_go_of_its_connection_once_its_stream_finished(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        totals = RunTotals()
        reader = NeverReadReader(totals, headers={}, first_poll_s=POLL_S, max_poll_s=POLL_S)
        asked: list[bool] = []

        async def finished_on_second_ask() -> bool:
            asked.append(True)
            return len(asked) >= 2

        async with RecordingServer(close=False) as server:
            outcome = await asyncio.wait_for(reader.hold(server.url, finished_on_second_ask), TIMEOUT_S)
        assert outcome is Outcome.NEVER_READ
        assert len(asked) == 2
        assert totals.never_read_closed_by_server == 0
        assert not totals.errors

    run_on_loop(loop_factory, main())


def test_a_never_read_reader_that_cannot_connect_counts_a_connection_error_and_fails(
    loop_factory: LoopFactory,
) -> None:
    async def main() -> None:
        totals = RunTotals()
        reader = NeverReadReader(totals, headers={})
        with socket.socket() as bound:  # bound, never listening: a connection to it is refused
            bound.bind(("127.0.0.1", 0))
            port = bound.getsockname()[1]
            outcome = await reader.hold(f"http://127.0.0.1:{port}/v1/streams/s1/events", never_finished)
        assert outcome is Outcome.FAILED
        assert not reader.request_sent
        assert dict(totals.errors) == {"connection_error": 1}

    run_on_loop(loop_factory, main())
