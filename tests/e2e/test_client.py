"""``tokenrelay.client``: the sans-I/O stream tracker and reconnect policy, then the client against a real system."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import orjson
import pytest

from tests.helpers import STOPPED_TOKENS
from tokenrelay.client import (
    BadRequest,
    Client,
    ConnectionLost,
    ErrorCode,
    NotFound,
    Phase,
    ProtocolError,
    ReconnectPolicy,
    ResumeUnavailable,
    ServerSentEvent,
    StreamTracker,
    TokenRelayError,
    Unavailable,
)
from tokenrelay.testing.http import metric, wait_finished
from tokenrelay.testing.procs import NatsServer, System, nats_server, system
from tokenrelay.testing.synthetic import expected_text
from tokenrelay.wire.errors import from_code

LENGTH_TOKENS = 100_000  # the synthetic text's natural length at `sut`: no text ends before its max_tokens
NATURAL_TOKENS = 60  # the natural length at `natural`, whose texts end by themselves (1.2 s at 50 tokens/s)
PACE_ARGS = ["--synthetic-tokens-per-s", "50", "--synthetic-ttft-ms", "0"]
RUNNER_ARGS = [*PACE_ARGS, "--synthetic-length-tokens", str(LENGTH_TOKENS)]
NATURAL_RUNNER_ARGS = [*PACE_ARGS, "--synthetic-length-tokens", str(NATURAL_TOKENS)]
UNKNOWN_ID = "0" * 32
CONDITION_TIMEOUT_S = 30.0


# -- the sans-I/O core ---------------------------------------------------------------------------


def sse(event: str, data: object, id: str | None = None) -> ServerSentEvent:
    return ServerSentEvent(event, orjson.dumps(data).decode(), id, id or "")


def test_the_tracker_keeps_the_text_the_cursor_and_the_final_state() -> None:
    tracker = StreamTracker()
    assert tracker.receive(sse("start", {"stream_id": "s", "model": "m", "created": 1}, "e:0")) is None
    assert tracker.receive(sse("delta", {"text": "Hi", "index": 1}, "e:1")) == "Hi"
    assert tracker.receive(sse("delta", {"text": " there", "index": 3}, "e:3")) == " there"
    assert (tracker.cursor, tracker.tokens, tracker.model) == ("e:3", 3, "m")
    tracker.receive(sse("stop", {"finish_reason": "length", "tokens": 3, "ttft_ms": 12.5, "prompt_tokens": 4}, "e:3"))
    assert (tracker.phase, tracker.finish_reason, tracker.ttft_ms) == (Phase.FINISHED, "length", 12.5)
    assert tracker.prompt_tokens == 4


def test_the_tracker_drops_a_delta_it_already_holds() -> None:
    tracker = StreamTracker(cursor="e:5")
    assert tracker.tokens == 5
    assert tracker.receive(sse("delta", {"text": "again", "index": 5}, "e:5")) is None
    assert tracker.receive(sse("delta", {"text": "new", "index": 6}, "e:6")) == "new"


def test_an_error_event_becomes_its_typed_error_and_keeps_a_code_that_has_no_class() -> None:
    tracker = StreamTracker()
    tracker.receive(sse("error", {"code": "runner_lost", "message": "gone"}))
    assert tracker.phase is Phase.FAILED
    assert isinstance(tracker.error, TokenRelayError)
    assert (tracker.error.code, tracker.error.message) == (ErrorCode.RUNNER_LOST, "gone")
    assert isinstance(from_code("bad_request", "no"), BadRequest)
    assert from_code("from_the_future", "hm").message == "from_the_future: hm"


def test_a_streamer_shutting_down_without_an_id_means_resume_elsewhere() -> None:
    tracker = StreamTracker()
    tracker.receive(sse("error", {"code": "shutting_down", "message": "bye"}))
    assert (tracker.phase, tracker.error) == (Phase.INTERRUPTED, None)
    tracker.resume()
    tracker.receive(sse("error", {"code": "shutting_down", "message": "runner stops"}, "e:4"))
    assert tracker.phase is Phase.FAILED


def test_an_event_after_the_terminal_event_raises_an_error_naming_the_phase() -> None:
    tracker = StreamTracker()
    tracker.receive(sse("stop", {"finish_reason": "stop", "tokens": 0, "ttft_ms": None}, "e:0"))
    with pytest.raises(ProtocolError, match="finished"):
        tracker.receive(sse("delta", {"text": "late", "index": 1}, "e:1"))


@pytest.mark.parametrize(
    "event",
    [ServerSentEvent("delta", "not json", "e:1", "e:1"), sse("delta", {"text": 1, "index": 1}), sse("stop", [])],
)
def test_malformed_event_data_raises_protocol_error(event: ServerSentEvent) -> None:
    with pytest.raises(ProtocolError):
        StreamTracker().receive(event)


def test_unknown_event_types_are_skipped() -> None:
    tracker = StreamTracker()
    assert tracker.receive(ServerSentEvent("message", "whatever", None, "")) is None
    assert tracker.phase is Phase.OPEN


def test_reconnect_delays_double_up_to_the_largest_then_the_attempts_run_out() -> None:
    policy = ReconnectPolicy(
        max_reconnects=4, reconnect_delay_s=0.5, max_reconnect_delay_s=1.5, random_fraction=lambda: 1
    )
    assert [policy.next_delay_s() for _ in range(5)] == [0.5, 1.0, 1.5, 1.5, None]
    policy.progressed()
    assert policy.next_delay_s(server_retry_ms=200) == pytest.approx(0.2)


def test_reconnect_delays_are_jittered_between_half_and_all_of_the_delay() -> None:
    low = ReconnectPolicy(reconnect_delay_s=1.0, random_fraction=lambda: 0)
    assert low.next_delay_s() == 0.5


# -- against a real system -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sut(nats: NatsServer) -> Iterator[System]:
    with system(nats.url, runner_args=RUNNER_ARGS) as running:
        yield running


@pytest.fixture(scope="module")
def natural() -> Iterator[System]:
    """A system whose texts end by themselves after ``NATURAL_TOKENS`` (a NATS of its own: no other system's runner
    takes its streams)."""
    with nats_server() as own, system(own.url, runner_args=NATURAL_RUNNER_ARGS) as running:
        yield running


class Proxy:
    """A TCP proxy on 127.0.0.1 whose connections a test can cut, and which can refuse new ones."""

    def __init__(self, target_url: str) -> None:
        host, _, port = target_url.removeprefix("http://").partition(":")
        self.target = (host, int(port))
        self.accepted = 0
        self.refused = 0
        self.refuse_next = 0
        self._live: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def via(self, url: str) -> str:
        return f"{self.url}{url.split('/', 3)[3].join(['/', ''])}"

    def cut(self) -> None:
        for writer in list(self._live):
            writer.transport.abort()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()
        await asyncio.gather(*self._handlers)  # they end once their sockets are cut
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        try:
            await self._serve(reader, writer)
        finally:
            self._handlers.discard(handler)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse_next > 0:
            self.refuse_next -= 1
            self.refused += 1
            writer.transport.abort()
            return
        self.accepted += 1
        self._live.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self._live.discard(writer)
            writer.transport.abort()
            return
        self._live.add(up_writer)
        if writer.transport.is_closing():  # cut while connecting upstream
            up_writer.transport.abort()
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._live -= {writer, up_writer}
            writer.transport.abort()
            up_writer.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()


@contextlib.asynccontextmanager
async def proxy_to(url: str) -> AsyncIterator[Proxy]:
    proxy = Proxy(url)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


async def wait_for(predicate: Callable[[], Awaitable[bool]], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CONDITION_TIMEOUT_S
    while not await predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_a_stream_yields_the_whole_text_then_its_finish_reason(sut: System) -> None:
    async with Client(sut.gateway_url) as client:
        stream = await client.start(prompt="hello client", max_tokens=20)
        deltas = [delta async for delta in stream]
    assert "".join(deltas) == stream.text == expected_text("hello client", 20, LENGTH_TOKENS)
    assert (stream.finish_reason, stream.tokens, stream.model) == ("length", 20, "synthetic")
    assert stream.ttft_ms is not None and stream.ttft_ms >= 0
    assert stream.prompt_tokens == 3  # the synthetic engine's count: the words of "user: hello client"
    assert stream.cursor is not None and stream.cursor.endswith(":20")
    assert stream.reconnects == 0


async def test_a_stream_that_ends_naturally_finishes_with_stop(natural: System) -> None:
    async with Client(natural.gateway_url) as client:
        stream = await client.start(messages=[{"role": "user", "content": "natural end"}], max_tokens=200)
        text = await stream.collect()
    assert text == expected_text("natural end", 200, NATURAL_TOKENS)
    assert (stream.finish_reason, stream.tokens) == ("stop", NATURAL_TOKENS)


async def test_stop_halts_the_generation_and_the_iterator_ends_as_cancelled(sut: System) -> None:
    async with Client(sut.gateway_url) as client:
        stream = await client.start(prompt="stop me", max_tokens=STOPPED_TOKENS)
        stopped = None
        async for _ in stream:
            if stream.tokens >= 5 and stopped is None:
                stopped = await stream.stop()
    assert stopped is not None
    assert (stopped.stream_id, stopped.finish_reason) == (stream.stream_id, "cancelled")
    assert stream.finish_reason == "cancelled"
    assert stream.tokens == stopped.tokens < STOPPED_TOKENS
    assert stream.text == expected_text("stop me", stream.tokens, LENGTH_TOKENS)
    record = await wait_finished(sut.gateway_url, stream.stream_id)
    assert (record["finish_reason"], record["tokens"]) == ("cancelled", stopped.tokens)


async def test_stopping_a_finished_stream_answers_its_final_state(sut: System) -> None:
    async with Client(sut.gateway_url) as client:
        stream = await client.start(prompt="already done", max_tokens=3)
        await stream.collect()
        stopped = await stream.stop()
    assert (stopped.finish_reason, stopped.tokens) == ("length", 3)


async def test_a_stream_resumes_across_a_cut_connection_with_no_token_lost_or_repeated(sut: System) -> None:
    async with proxy_to(sut.streamer_url) as proxy, Client(sut.gateway_url, reconnect_delay_s=0.01) as client:
        started = await client.start(prompt="cut me off", max_tokens=STOPPED_TOKENS)
        stream = client.stream(started.stream_id, proxy.via(started.events_url))
        stopped = None
        async for _ in stream:
            if stream.tokens >= 10 and stream.reconnects == 0:
                proxy.cut()
            elif stream.reconnects == 1 and stream.tokens >= 20 and stopped is None:
                stopped = await stream.stop()
    assert stopped is not None
    assert stream.text == expected_text("cut me off", stream.tokens, LENGTH_TOKENS)
    assert (stream.finish_reason, stream.tokens) == ("cancelled", stopped.tokens)
    assert stream.reconnects == 1 and proxy.accepted == 2


async def test_a_stream_keeps_reconnecting_while_the_streamer_is_unreachable_then_resumes(sut: System) -> None:
    async with proxy_to(sut.streamer_url) as proxy, Client(sut.gateway_url, reconnect_delay_s=0.01) as client:
        started = await client.start(prompt="flaky network", max_tokens=STOPPED_TOKENS)
        stream = client.stream(started.stream_id, proxy.via(started.events_url))
        stopped = None
        async for _ in stream:
            if stream.tokens >= 5 and proxy.refused == 0 and proxy.refuse_next == 0:
                proxy.refuse_next = 3
                proxy.cut()
            elif stream.reconnects == 1 and stream.tokens >= 15 and stopped is None:
                stopped = await stream.stop()
    assert stopped is not None
    assert stream.text == expected_text("flaky network", stream.tokens, LENGTH_TOKENS)
    assert (stream.finish_reason, stream.tokens) == ("cancelled", stopped.tokens)
    assert (proxy.refused, proxy.accepted, stream.reconnects) == (3, 2, 1)


async def test_exhausted_reconnects_raise_connection_lost(sut: System) -> None:
    client = Client(sut.gateway_url, max_reconnects=2, reconnect_delay_s=0.01)
    async with proxy_to(sut.streamer_url) as proxy, client:
        started = await client.start(prompt="lost forever", max_tokens=STOPPED_TOKENS)
        stream = client.stream(started.stream_id, proxy.via(started.events_url))
        with pytest.raises(ConnectionLost) as caught:
            async for _ in stream:
                if stream.tokens >= 3 and proxy.refuse_next == 0:
                    proxy.refuse_next = 1000
                    proxy.cut()
        await stream.stop()
    assert isinstance(caught.value, Unavailable) and caught.value.code == "unavailable"
    # aiohttp itself repeats a GET once when the connection is reset, so 2 attempts are 2 to 4 connections.
    assert caught.value.attempts == 2 and 2 <= proxy.refused <= 4
    assert stream.text == expected_text("lost forever", stream.tokens, LENGTH_TOKENS)


async def test_a_streamer_shutting_down_mid_stream_is_resumed_on_another_streamer(nats: NatsServer) -> None:
    with system(nats.url, streamers=2, runner_args=RUNNER_ARGS) as two:
        first, second = two.streamers
        async with proxy_to(first.url) as balancer, Client(two.gateway_url, reconnect_delay_s=0.01) as client:
            started = await client.start(prompt="streamer restarts", max_tokens=STOPPED_TOKENS)
            stream = client.stream(started.stream_id, balancer.via(started.events_url))
            signalled, stopped = False, None
            async for _ in stream:
                if stream.tokens >= 5 and not signalled:
                    balancer.target = Proxy(second.url).target  # the balancer sends new connections elsewhere
                    first.process.send_signal(signal.SIGTERM)
                    signalled = True
                elif stream.reconnects == 1 and stream.tokens >= 15 and stopped is None:
                    stopped = await stream.stop()
    assert stopped is not None
    assert stream.text == expected_text("streamer restarts", stream.tokens, LENGTH_TOKENS)
    assert (stream.finish_reason, stream.tokens, stream.reconnects) == ("cancelled", stopped.tokens, 1)


async def test_attaching_with_a_cursor_gets_exactly_the_rest_of_the_text(sut: System) -> None:
    async with Client(sut.gateway_url) as client:
        first = await client.start(prompt="read in two halves", max_tokens=30)
        async for _ in first:
            if first.tokens >= 10:
                break
        await first.aclose()
        rest = client.stream(first.stream_id, first.events_url, cursor=first.cursor)
        await rest.collect()
    assert first.text + rest.text == expected_text("read in two halves", 30, LENGTH_TOKENS)
    assert (rest.finish_reason, rest.tokens) == ("length", 30)


async def test_feedback_is_acknowledged_and_counted(sut: System) -> None:
    before = await metric(sut.gateway_url, "tokenrelay_gateway_feedback_total")
    async with Client(sut.gateway_url) as client:
        stream = await client.start(prompt="rate me", max_tokens=2)
        await stream.collect()
        await stream.feedback("up", comment="great ✓ 日本")
        await client.feedback(stream.stream_id, "down")
    assert await metric(sut.gateway_url, "tokenrelay_gateway_feedback_total") == before + 2


async def test_concurrent_streams_share_one_control_websocket(sut: System) -> None:
    prompts = [f"concurrent {i}" for i in range(8)]
    async with Client(sut.gateway_url) as client:
        streams = await asyncio.gather(*(client.start(prompt=p, max_tokens=15) for p in prompts))

        async def one_socket() -> bool:
            return await metric(sut.gateway_url, "tokenrelay_gateway_control_sockets_open") == 1

        await wait_for(one_socket, "exactly one control socket open at the gateway")
        texts = await asyncio.gather(*(stream.collect() for stream in streams))
        await asyncio.gather(*(stream.stop() for stream in streams))
        assert client.control_sockets_opened == 1
    assert texts == [expected_text(p, 15, LENGTH_TOKENS) for p in prompts]


async def test_a_dropped_control_socket_is_opened_again_for_the_next_command(sut: System) -> None:
    async with proxy_to(sut.gateway_url) as proxy, Client(proxy.url) as client:
        stream = await client.start(prompt="control drops", max_tokens=STOPPED_TOKENS)
        proxy.cut()
        stopped = await stream.stop()
        await stream.feedback("down")
        assert client.control_sockets_opened == 2
    assert stopped.finish_reason == "cancelled"


async def test_a_bad_request_raises_bad_request_and_the_socket_stays_usable(sut: System) -> None:
    async with Client(sut.gateway_url) as client:
        with pytest.raises(BadRequest) as caught:
            await client.start(prompt="zero", max_tokens=0)
        assert caught.value.code == "bad_request" and "max_tokens" in caught.value.message
        with pytest.raises(BadRequest):
            await client.start(prompt="both", messages=[{"role": "user", "content": "both"}])
        stream = await client.start(prompt="after the errors", max_tokens=2)
        await stream.collect()
        assert client.control_sockets_opened == 1


async def test_stopping_or_rating_an_unknown_stream_raises_not_found(sut: System) -> None:
    async with Client(sut.gateway_url) as client:
        with pytest.raises(NotFound) as caught:
            await client.stop(UNKNOWN_ID)
        assert caught.value.code == "not_found"
        with pytest.raises(NotFound):
            await client.feedback(UNKNOWN_ID, "up")


async def test_reading_an_unknown_stream_raises_not_found(sut: System) -> None:
    async with Client(sut.gateway_url) as client:
        with pytest.raises(NotFound):
            await client.stream(UNKNOWN_ID, f"{sut.streamer_url}/v1/streams/{UNKNOWN_ID}/events").collect()


async def test_a_cursor_of_another_epoch_raises_resume_unavailable(sut: System) -> None:
    async with Client(sut.gateway_url) as client:
        stream = await client.start(prompt="epochs", max_tokens=2)
        await stream.collect()
        with pytest.raises(ResumeUnavailable):
            await client.stream(stream.stream_id, stream.events_url, cursor="ffffffff:1").collect()
        with pytest.raises(BadRequest):
            await client.stream(stream.stream_id, stream.events_url, cursor="not a cursor").collect()


async def test_an_error_event_raises_its_typed_error(sut: System) -> None:
    async with Client(sut.gateway_url) as client:
        stream = await client.start(prompt="past the end", max_tokens=4)
        await stream.collect()
        assert stream.cursor is not None
        epoch = stream.cursor.partition(":")[0]
        beyond = client.stream(stream.stream_id, stream.events_url, cursor=f"{epoch}:999")
        with pytest.raises(BadRequest):
            await beyond.collect()
        assert beyond.ended and beyond.reconnects == 0


async def test_a_closed_client_cannot_be_used_again(sut: System) -> None:
    client = Client(sut.gateway_url)
    async with client:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        await client.start(prompt="too late")
