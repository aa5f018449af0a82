"""An asyncio client of tokenrelay's native API, for IDE plugins and scripts.

::

    async with Client("http://127.0.0.1:8080") as client:
        stream = await client.start(prompt="Why is the sky blue?", max_tokens=200)
        async for delta in stream:
            print(delta, end="", flush=True)
        print(stream.finish_reason, stream.tokens, stream.ttft_ms)

Typed content (a model's reasoning, its tool calls assembled from their fragments) comes from
``stream.events()``, ``stream.reasoning`` and ``stream.tool_calls``::

    stream = await client.start(messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[weather])
    async for event in stream.events():
        match event:
            case ReasoningDelta(text=text) | TextDelta(text=text):
                print(text, end="")
            case Finished(finish_reason="tool_calls", tool_calls=calls):
                print(calls[0].name, calls[0].parsed_arguments())

Commands (start, stop, feedback) share one control WebSocket per client; each stream's events
come over SSE and survive connection drops (resumed with ``Last-Event-ID``).  Errors are the
project's :mod:`tokenrelay.wire.errors` classes, plus :class:`ConnectionLost` and :class:`ProtocolError`.
"""

from tokenrelay.client.client import Client, ClientState
from tokenrelay.client.errors import ConnectionLost, ProtocolError
from tokenrelay.client.events import (
    ContentEvent,
    Finished,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from tokenrelay.client.owner import Stopped
from tokenrelay.client.request import RequestParams, function_tool
from tokenrelay.client.sse import ServerSentEvent, SSEDecoder
from tokenrelay.client.stream import Stream
from tokenrelay.client.tracker import Phase, ReconnectPolicy, StreamTracker
from tokenrelay.wire.content import ChatMessage, ContentPart
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
    "ChatMessage",
    "Client",
    "ClientState",
    "ConnectionLost",
    "ContentEvent",
    "ContentPart",
    "ErrorCode",
    "Finished",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "Phase",
    "ProtocolError",
    "ReasoningDelta",
    "ReconnectPolicy",
    "RequestParams",
    "ResumeUnavailable",
    "SSEDecoder",
    "ServerSentEvent",
    "Stopped",
    "Stream",
    "StreamEvent",
    "StreamTracker",
    "TextDelta",
    "TokenRelayError",
    "ToolCall",
    "ToolCallDelta",
    "Unavailable",
    "Usage",
    "function_tool",
]
