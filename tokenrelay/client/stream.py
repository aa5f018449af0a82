"""One stream as an async iterator of its text (or of its typed events), read from ``GET {events_url}`` with resume
on drops."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

import aiohttp
import orjson

from tokenrelay.client.errors import ConnectionLost, ProtocolError, code_for_status
from tokenrelay.client.events import ContentEvent, Finished, StreamEvent, TextDelta, ToolCall, Usage
from tokenrelay.client.owner import Stopped, StreamOwner
from tokenrelay.client.sse import DEFAULT_MAX_EVENT_CHARS, SSEDecoder
from tokenrelay.client.tracker import (
    DEFAULT_MAX_RECONNECT_DELAY_S,
    DEFAULT_MAX_RECONNECTS,
    DEFAULT_RECONNECT_DELAY_S,
    Phase,
    ReconnectPolicy,
    StreamTracker,
)
from tokenrelay.wire.content import ChatMessage
from tokenrelay.wire.errors import TokenRelayError, from_code

log = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_READ_TIMEOUT_S = 45.0
"""Three of the streamer's default 15 s heartbeats: silence this long means the connection is dead."""
MAX_ERROR_BODY_BYTES = 64 * 1024
RETRYABLE_STATUSES = frozenset({502, 503, 504})


@dataclass(frozen=True, slots=True)
class EventsOptions:
    """Limits of an events connection; see :class:`~tokenrelay.client.Client` for their meaning."""

    max_reconnects: int = DEFAULT_MAX_RECONNECTS
    reconnect_delay_s: float = DEFAULT_RECONNECT_DELAY_S
    max_reconnect_delay_s: float = DEFAULT_MAX_RECONNECT_DELAY_S
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    max_event_chars: int = DEFAULT_MAX_EVENT_CHARS


class _Retry(Exception):
    """A connection attempt that failed in a way worth another attempt."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class Stream:
    """The text of one stream, delta by delta: ``async for delta in stream``.

    Iterating yields the answer's text only, so a model's reasoning and tool calls never mix into
    it; ``async for event in stream.events()`` yields every typed event instead (text, reasoning,
    tool-call fragments, then :class:`~tokenrelay.client.Finished`).  Read a stream one of the
    two ways: each event is given once.

    Attributes follow the events: ``text`` (everything so far), ``reasoning``, ``tool_calls``
    (fragments joined), ``tokens``, ``cursor`` (the last SSE ``id``), and once the stream ended
    ``finish_reason``, ``usage`` and ``ttft_ms``.  When the
    connection drops before the terminal event, the stream reconnects with
    ``Last-Event-ID: <cursor>`` and goes on exactly where it was (``reconnects`` counts this).
    An ``error`` event, or an HTTP error that retrying cannot fix, raises its typed error.
    """

    def __init__(
        self,
        client: StreamOwner,
        stream_id: str,
        events_url: str,
        *,
        cursor: str | None = None,
        options: EventsOptions = EventsOptions(),
    ) -> None:
        self.stream_id = stream_id
        self.events_url = events_url
        self.reconnects = 0
        """Connections opened after the first one."""
        self._client = client
        self._options = options
        self._tracker = StreamTracker(cursor=cursor)
        self._decoder = SSEDecoder(max_event_chars=options.max_event_chars)
        if cursor is not None:
            self._decoder.last_event_id = cursor
        self._policy = ReconnectPolicy(
            max_reconnects=options.max_reconnects,
            reconnect_delay_s=options.reconnect_delay_s,
            max_reconnect_delay_s=options.max_reconnect_delay_s,
        )
        self._ready: collections.deque[ContentEvent] = collections.deque()
        """The events of the last chunk read, not yet given out (bounded by one chunk)."""
        self._response: aiohttp.ClientResponse | None = None
        self._connections = 0
        self._drop_cause: BaseException | None = None
        self._reading = False
        self._closed = False

    # -- what the events said --------------------------------------------------------------------

    @property
    def text(self) -> str:
        """The answer's text received so far (reasoning and tool calls apart)."""
        return self._tracker.text

    @property
    def reasoning(self) -> str:
        """The model's reasoning received so far (empty when the model gave none)."""
        return self._tracker.reasoning

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        """The tool calls received so far, each one's fragments joined; whole once the stream finished."""
        return self._tracker.tool_calls

    @property
    def usage(self) -> Usage:
        """Tokens delivered so far; once the ``stop`` event arrived, also the engine's counts."""
        return self._tracker.usage

    def assistant_message(self) -> ChatMessage:
        """The model's turn as the next request's ``messages`` carries it: its text and its tool calls."""
        return ChatMessage(
            role="assistant", content=self.text, tool_calls=tuple(call.to_wire() for call in self.tool_calls)
        )

    @property
    def tokens(self) -> int:
        """Tokens delivered so far; after the end, the stream's total."""
        return self._tracker.tokens

    @property
    def cursor(self) -> str | None:
        """The last event id received: where a reconnect resumes."""
        return self._tracker.cursor

    @property
    def finish_reason(self) -> str | None:
        """``stop``, ``length``, ``tool_calls``, ``content_filter``, ``cancelled`` or ``error`` once the ``stop``
        event arrived."""
        return self._tracker.finish_reason

    @property
    def ttft_ms(self) -> float | None:
        """Time to first token in milliseconds, from the ``stop`` event."""
        return self._tracker.ttft_ms

    @property
    def prompt_tokens(self) -> int | None:
        """The engine's count of the prompt, from the ``stop`` event (``None`` when it gave none)."""
        return self._tracker.prompt_tokens

    @property
    def completion_tokens(self) -> int | None:
        """The engine's count of what it generated, from the ``stop`` event (``None`` when it gave none)."""
        return self._tracker.completion_tokens

    @property
    def model(self) -> str | None:
        """The model named by the ``start`` event (not repeated on a resumed connection)."""
        return self._tracker.model

    @property
    def ended(self) -> bool:
        """Whether the terminal event (``stop`` or ``error``) arrived."""
        return self._tracker.ended

    # -- control -------------------------------------------------------------------------------

    async def stop(self) -> Stopped:
        """Stop the generation (over the client's control socket); the iterator then ends as ``cancelled``."""
        return await self._client.stop(self.stream_id)

    async def feedback(self, rating: Literal["up", "down"], comment: str | None = None) -> None:
        """Rate the stream; returns once the gateway stored it."""
        await self._client.feedback(self.stream_id, rating, comment)

    # -- iteration -----------------------------------------------------------------------------

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> str:
        while True:
            event = await self._guarded_next()
            if isinstance(event, TextDelta) and event.text:
                return event.text

    async def events(self) -> AsyncIterator[StreamEvent]:
        """Every typed event in order: :class:`~tokenrelay.client.TextDelta`,
        :class:`~tokenrelay.client.ReasoningDelta`, :class:`~tokenrelay.client.ToolCallDelta`, and last
        :class:`~tokenrelay.client.Finished` when the stream finished (an ``error`` event raises instead)."""
        while True:
            try:
                event = await self._guarded_next()
            except StopAsyncIteration:
                break
            yield event
        if self._tracker.phase is Phase.FINISHED and self.finish_reason is not None:
            yield Finished(self.finish_reason, self.usage, self.tool_calls, self.ttft_ms)

    async def _guarded_next(self) -> ContentEvent:
        if self._reading:
            raise RuntimeError(f"stream {self.stream_id} is already being read by another task")
        self._reading = True
        try:
            return await self._next()
        finally:
            self._reading = False

    async def collect(self) -> str:
        """Read to the end; return the whole text (reasoning and tool calls are then in their attributes)."""
        async for _ in self:
            pass
        return self.text

    async def aclose(self) -> None:
        """Close the connection; iteration ends (the generation goes on: use :meth:`stop` to end it)."""
        self._closed = True
        self._disconnect()

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _next(self) -> ContentEvent:
        while not self._ready:
            if self._tracker.phase is Phase.FAILED and self._tracker.error is not None:
                self._disconnect()
                raise self._tracker.error
            if self._tracker.phase is Phase.FINISHED or self._closed:
                self._disconnect()
                raise StopAsyncIteration
            await self._receive()
        return self._ready.popleft()

    async def _receive(self) -> None:
        """Read one chunk (connecting first if needed) and apply the events it completes."""
        response = self._response or await self._connect()
        try:
            chunk = await response.content.readany()
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._interrupt(exc)
            return
        if not chunk:
            self._interrupt(ConnectionResetError("the server ended the response before a terminal event"))
            return
        for event in self._decoder.feed(chunk):
            content = self._tracker.receive_content(event)
            if event.id:
                self._policy.progressed()
            if content is not None:
                self._ready.append(content)
            if self._tracker.phase is not Phase.OPEN:
                break
        if self._tracker.phase is Phase.INTERRUPTED:
            self._interrupt(ConnectionResetError("the streamer is shutting down"))

    def _interrupt(self, cause: BaseException) -> None:
        if self._closed:
            return
        log.info("stream %s: connection lost at %s (%s); resuming", self.stream_id, self.cursor, cause)
        self._disconnect()
        self._tracker.interrupt()
        self._drop_cause = cause

    def _disconnect(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None

    async def _connect(self) -> aiohttp.ClientResponse:
        """Open the events response, waiting between attempts; raise when retrying cannot help."""
        while True:
            if self._connections > 0 or self._drop_cause is not None:
                await self._backoff()
            try:
                response = await self._open()
            except _Retry as exc:
                self._drop_cause = exc.cause
                continue
            if self._connections > 0:
                self.reconnects += 1
            self._connections += 1
            self._decoder.reset()
            self._tracker.resume()
            self._response = response
            return response

    async def _backoff(self) -> None:
        delay_s = self._policy.next_delay_s(self._decoder.retry_ms)
        if delay_s is None:
            attempts = self._policy.attempts
            message = f"stream {self.stream_id}: events connection lost; {attempts} reconnects failed"
            raise ConnectionLost(f"{message} (last: {self._drop_cause})", attempts=attempts) from self._drop_cause
        await asyncio.sleep(delay_s)

    async def _open(self) -> aiohttp.ClientResponse:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self._decoder.last_event_id:
            headers["Last-Event-ID"] = self._decoder.last_event_id
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self._options.connect_timeout_s, sock_read=self._options.read_timeout_s
        )
        session = await self._client.http_session()
        try:
            response = await session.get(self.events_url, headers=headers, timeout=timeout)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _Retry(exc) from exc
        if response.status == 200:
            if response.content_type != "text/event-stream":
                response.close()
                raise ProtocolError(f"{self.events_url} answered {response.content_type}, not text/event-stream")
            return response
        error = await http_error(response)
        if response.status in RETRYABLE_STATUSES:
            raise _Retry(error)
        raise error


async def http_error(response: aiohttp.ClientResponse) -> TokenRelayError:
    """The typed error of a non-2xx response (``{"error": {"code", "message"}}``); closes the response."""
    body = bytearray()
    try:
        while len(body) < MAX_ERROR_BODY_BYTES and (chunk := await response.content.read(MAX_ERROR_BODY_BYTES)):
            body += chunk
    except (aiohttp.ClientError, TimeoutError):
        pass  # the status alone still names the error
    finally:
        response.close()
    code, message = code_for_status(response.status), f"HTTP {response.status} {response.reason or ''}".strip()
    try:
        error = orjson.loads(body).get("error")
        code, message = str(error["code"]), str(error["message"])
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError):
        pass
    retry_after = response.headers.get("Retry-After", "")
    retry_after_s = float(retry_after) if retry_after.isdigit() else None
    return from_code(code, message, retry_after_s=retry_after_s)
