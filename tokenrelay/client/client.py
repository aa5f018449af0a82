"""The client: one control WebSocket for commands, one SSE connection per stream being read."""

from __future__ import annotations

import enum
import weakref
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, Unpack

import aiohttp

from tokenrelay.client.control import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MAX_PENDING_REQUESTS,
    DEFAULT_OPEN_TIMEOUT_S,
    DEFAULT_REPLY_TIMEOUT_S,
    ControlChannel,
    expect,
)
from tokenrelay.client.owner import Stopped
from tokenrelay.client.request import MessageLike, RequestParams, start_command
from tokenrelay.client.sse import DEFAULT_MAX_EVENT_CHARS
from tokenrelay.client.stream import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_READ_TIMEOUT_S,
    EventsOptions,
    Stream,
)
from tokenrelay.client.tracker import DEFAULT_MAX_RECONNECT_DELAY_S, DEFAULT_MAX_RECONNECTS, DEFAULT_RECONNECT_DELAY_S

DEFAULT_MAX_CONNECTIONS = 100


class ClientState(enum.Enum):
    """A client is used between opening and closing; a closed one cannot be used again."""

    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


def control_url_for(gateway_url: str) -> str:
    """``http(s)://host`` -> ``ws(s)://host/v1/control``."""
    base = gateway_url.rstrip("/")
    if base.startswith(("http://", "https://")):
        base = "ws" + base.removeprefix("http")
    return f"{base}/v1/control"


class Client:
    """An asyncio client of tokenrelay's native API.

    Use it as ``async with Client("http://127.0.0.1:8080") as client:``.  Every stream of the
    client shares one control WebSocket (opened on the first command, again on the next command
    if it dropped); each stream being read holds one SSE connection.

    Limits (each a keyword with its unit):

    * ``max_reconnects``: reconnects in a row without a new event before a stream raises
      :class:`~tokenrelay.client.ConnectionLost`.
    * ``reconnect_delay_s`` / ``max_reconnect_delay_s``: first and largest wait between reconnects
      (exponential backoff with jitter).
    * ``connect_timeout_s``: opening an SSE connection takes longer -> the attempt failed.
    * ``read_timeout_s``: an SSE connection silent this long (heartbeats included) is treated as dropped.
    * ``max_event_chars``: a bigger SSE event raises :class:`~tokenrelay.client.ProtocolError`.
    * ``max_connections``: SSE connections open at once; more streams wait for a free one.
    * ``open_timeout_s``: opening the control socket takes longer -> ``ConnectionLost``.
    * ``reply_timeout_s``: a command's reply takes longer -> ``Unavailable``.
    * ``max_pending_requests``: commands in flight at once on the control socket; more wait.
    * ``max_message_bytes``: a bigger control reply closes the socket.

    ``api_key`` (when the deployment has keys) is sent as ``Authorization: Bearer`` on every
    request and on the control socket's handshake.
    """

    def __init__(
        self,
        gateway_url: str,
        *,
        control_url: str | None = None,
        max_reconnects: int = DEFAULT_MAX_RECONNECTS,
        reconnect_delay_s: float = DEFAULT_RECONNECT_DELAY_S,
        max_reconnect_delay_s: float = DEFAULT_MAX_RECONNECT_DELAY_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
        max_event_chars: int = DEFAULT_MAX_EVENT_CHARS,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        open_timeout_s: float = DEFAULT_OPEN_TIMEOUT_S,
        reply_timeout_s: float = DEFAULT_REPLY_TIMEOUT_S,
        max_pending_requests: int = DEFAULT_MAX_PENDING_REQUESTS,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        api_key: str | None = None,
    ) -> None:
        self.gateway_url = gateway_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        """Sent on every request and on the control socket's handshake."""
        self.state = ClientState.NEW
        self._events = EventsOptions(
            max_reconnects=max_reconnects,
            reconnect_delay_s=reconnect_delay_s,
            max_reconnect_delay_s=max_reconnect_delay_s,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
            max_event_chars=max_event_chars,
        )
        self._max_connections = max_connections
        self._control = ControlChannel(
            control_url or control_url_for(self.gateway_url),
            open_timeout_s=open_timeout_s,
            reply_timeout_s=reply_timeout_s,
            max_pending_requests=max_pending_requests,
            max_message_bytes=max_message_bytes,
            headers=self._headers,
        )
        self._session: aiohttp.ClientSession | None = None
        self._streams: weakref.WeakSet[Stream] = weakref.WeakSet()

    @property
    def control_sockets_opened(self) -> int:
        """How many times the shared control socket was opened (1 while it never dropped)."""
        return self._control.sockets_opened

    async def start(
        self,
        *,
        prompt: str | None = None,
        messages: Sequence[MessageLike] | None = None,
        max_tokens: int | None = None,
        model: str | None = None,
        params: Mapping[str, Any] | None = None,
        **fields: Unpack[RequestParams],
    ) -> Stream:
        """Start a stream (give ``prompt`` or ``messages``); read it by iterating the returned :class:`Stream`.

        ``messages`` are :class:`~tokenrelay.wire.messages.ChatMessage` values or OpenAI chat message objects
        (tool results, an assistant's tool calls, image parts included).  The typed keywords
        (:class:`~tokenrelay.client.RequestParams`: ``tools``, ``tool_choice``, ``temperature``, ``stop``,
        ``seed``, ``reasoning_effort``, ...) and every field of ``params`` (vendor fields such as ``top_k``) reach
        the engine as sent.  A field given twice, or an owned one in ``params``, raises :class:`ValueError`.
        """
        command = start_command(
            prompt=prompt, messages=messages, max_tokens=max_tokens, model=model, params=params, fields=fields
        )
        reply = expect(await self._request(command), "started", stream_id=str, events_url=str)
        return self.stream(reply["stream_id"], reply["events_url"])

    def stream(self, stream_id: str, events_url: str, *, cursor: str | None = None) -> Stream:
        """Attach to an existing stream: all of it, or what follows ``cursor`` (an event id seen before)."""
        self._check_usable()
        stream = Stream(self, stream_id, events_url, cursor=cursor, options=self._events)
        self._streams.add(stream)
        return stream

    async def stop(self, stream_id: str) -> Stopped:
        """Stop a stream; returns once the runner confirmed that generation halted (idempotent)."""
        reply = await self._request({"type": "stop", "stream_id": stream_id}, idempotent=True)
        expect(reply, "stopped", stream_id=str, tokens=int, finish_reason=(str, type(None)))
        halted_ts = reply.get("halted_ts")
        return Stopped(
            reply["stream_id"],
            reply["tokens"],
            reply["finish_reason"],
            float(halted_ts) if isinstance(halted_ts, int | float) else None,
        )

    async def feedback(self, stream_id: str, rating: Literal["up", "down"], comment: str | None = None) -> None:
        """Rate a stream ``up`` or ``down``, optionally with a comment; returns once the gateway stored it."""
        command: dict[str, Any] = {"type": "feedback", "stream_id": stream_id, "rating": rating}
        if comment is not None:
            command["comment"] = comment
        expect(await self._request(command), "ack")

    async def http_session(self) -> aiohttp.ClientSession:
        """The HTTP session that SSE connections use (created on first use)."""
        self._check_usable()
        if self._session is None:
            # A fresh TCP connection per SSE request: a reconnect must not reuse a kept-alive
            # connection to the instance that just ended the stream (a load balancer picks anew).
            connector = aiohttp.TCPConnector(limit=self._max_connections, force_close=True)
            self._session = aiohttp.ClientSession(connector=connector, headers=self._headers)
            self.state = ClientState.OPEN
        return self._session

    async def close(self) -> None:
        """Close every stream's connection, the control socket and the HTTP session."""
        if self.state is ClientState.CLOSED:
            return
        self.state = ClientState.CLOSED
        for stream in list(self._streams):
            await stream.aclose()
        await self._control.close()
        if self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> Client:
        await self.http_session()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _request(self, command: dict[str, Any], *, idempotent: bool = False) -> dict[str, Any]:
        self._check_usable()
        self.state = ClientState.OPEN
        return await self._control.request(command, idempotent=idempotent)

    def _check_usable(self) -> None:
        if self.state is ClientState.CLOSED:
            raise RuntimeError(f"the client is {self.state.value}")
