"""An asyncio client of tokenrelay's native API, for IDE plugins and scripts.

::

    async with Client("http://127.0.0.1:8080") as client:
        stream = await client.start(prompt="Why is the sky blue?", max_tokens=200)
        async for delta in stream:
            print(delta, end="", flush=True)
        print(stream.finish_reason, stream.tokens, stream.ttft_ms)

Commands (start, stop, feedback) share one control WebSocket per client; each stream's text
comes over SSE and survives connection drops (resumed with ``Last-Event-ID``).  Errors are the
project's :mod:`tokenrelay.wire.errors` classes, plus :class:`ConnectionLost` and :class:`ProtocolError`.
"""

from tokenrelay.client.client import Client, ClientState
from tokenrelay.client.errors import ConnectionLost, ProtocolError
from tokenrelay.client.owner import Stopped
from tokenrelay.client.sse import ServerSentEvent, SSEDecoder
from tokenrelay.client.stream import Stream
from tokenrelay.client.tracker import Phase, ReconnectPolicy, StreamTracker
from tokenrelay.wire.errors import (
    BadRequest,
    ErrorCode,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    ResumeUnavailable,
    TokenRelayError,
    Unavailable,
)

__all__ = [
    "BadRequest",
    "Client",
    "ClientState",
    "ConnectionLost",
    "ErrorCode",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "Phase",
    "ProtocolError",
    "ReconnectPolicy",
    "ResumeUnavailable",
    "SSEDecoder",
    "ServerSentEvent",
    "Stopped",
    "Stream",
    "StreamTracker",
    "TokenRelayError",
    "Unavailable",
]
