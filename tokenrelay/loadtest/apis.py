"""The streaming APIs a load test can drive, sans-I/O: each request's path, headers and body, and each stream's
accounting from the server-sent events that answer it.

* ``native`` — tokenrelay's own: ``POST /v1/streams``, then the events (read by the driver itself).
* ``openai`` — ``POST /v1/chat/completions`` with ``stream: true``: ``chat.completion.chunk`` objects in ``data:``
  lines, then ``data: [DONE]``. Each chunk whose ``delta.content`` is non-empty is one piece of text.
* ``anthropic`` — ``POST /v1/messages`` with ``stream: true``: named events; each ``content_block_delta`` with a
  ``text_delta`` is one piece of text, ``message_delta`` carries the stop reason and ``usage.output_tokens``,
  ``message_stop`` ends the stream.

A piece of text counts as one token unless the server reports usage (OpenAI's ``usage.completion_tokens`` with
``stream_options.include_usage``, Anthropic's ``usage.output_tokens``): servers may put several tokens in one chunk,
and usage is then the count. Neither API stamps a chunk with the time it was produced (OpenAI's ``created`` is whole
seconds, the same on every chunk), so no token lag is measured for them; nor do their chunks carry an index, so lost
or repeated tokens cannot be told apart from merged ones.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:  # the command line imports this module through the plan: it stays cheap
    from tokenrelay.client.sse import ServerSentEvent

DEFAULT_MODEL = "synthetic"
ANTHROPIC_VERSION = "2023-06-01"
"""The ``anthropic-version`` header Anthropic's API requires (compatible servers ignore it)."""
OPENAI_DONE = "[DONE]"
OPENAI_FINISHED = frozenset({"stop", "length", "tool_calls", "function_call"})
"""OpenAI finish reasons of a stream that ended as asked; any other (``content_filter``, tokenrelay's own
``cancelled`` or ``error``) fails the stream as ``finish_reason_<reason>``."""
ANTHROPIC_FINISHED = frozenset({"end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn"})
"""Anthropic stop reasons of a stream that ended as asked; any other (``refusal``, tokenrelay's own ``cancelled``
or ``error``) fails the stream as ``finish_reason_<reason>``."""
UNNAMED_ERROR = "internal"
"""The code of an error event that names none (the native API's choice for the same)."""
UNFINISHED = "connection_error"
"""The code of a stream whose body ended before its terminal event (the native API's choice for the same)."""


class Api(enum.Enum):
    """Which API the load test speaks to its target."""

    NATIVE = "native"
    OPENAI = "openai"
    ANTHROPIC = "anthropic"


API_PATHS = {Api.NATIVE: "/v1/streams", Api.OPENAI: "/v1/chat/completions", Api.ANTHROPIC: "/v1/messages"}
"""Where each API's streams start, below the target's base URL."""


def auth_headers(api: Api, api_key: str | None) -> dict[str, str]:
    """The headers every request carries: the key as ``Authorization: Bearer`` (``x-api-key`` for Anthropic)."""
    if api is Api.ANTHROPIC:
        version = {"anthropic-version": ANTHROPIC_VERSION}
        return {"x-api-key": api_key, **version} if api_key else version
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def request_body(api: Api, *, model: str, prompt: str, max_tokens: int) -> bytes:
    """The JSON body that starts one streamed answer to ``prompt`` (for ``native``: no model, the gateway picks)."""
    if api is Api.NATIVE:
        return orjson.dumps({"prompt": prompt, "max_tokens": max_tokens})
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    if api is Api.OPENAI:
        body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


def error_object_code(error: object) -> str | None:
    """The code an API's ``error`` object names: its ``code`` (OpenAI, tokenrelay), else its ``type`` (Anthropic)."""
    if not isinstance(error, dict):
        return None
    for key in ("code", "type"):
        value = error.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def api_error_code(status: int, body: bytes) -> str:
    """The code of an error answer: what its ``error`` object names, or ``http_<status>`` when it names none."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        payload = None
    code = error_object_code(payload.get("error")) if isinstance(payload, dict) else None
    return code or f"http_{status}"


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class StreamAccount:
    """One stream's accounting from its events: pieces of text seen, usage, how it ended.

    :meth:`feed` takes each event and returns how many pieces of text it carried (0 or 1); malformed JSON raises
    ``ValueError`` (the driver counts it as ``protocol_error``). Once :attr:`ended` is true the stream is over.
    """

    __slots__ = ("error", "finish_reason", "pieces", "saw_end", "usage_tokens")

    finished_reasons: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self.pieces = 0
        """Events that carried a non-empty piece of text."""
        self.usage_tokens: int | None = None
        """The tokens the server says it generated (``None``: it did not say)."""
        self.finish_reason: str | None = None
        self.error: str | None = None
        """The code of an error the stream ended with."""
        self.saw_end = False

    def feed(self, event: ServerSentEvent) -> int:
        """Account for one event; the pieces of text it carried."""
        raise NotImplementedError

    @property
    def ended(self) -> bool:
        """Whether the stream is over (its terminal event, or an error)."""
        return self.saw_end or self.error is not None

    @property
    def tokens(self) -> int:
        """Tokens delivered: the server's usage when it reported one, else one per piece of text."""
        return self.pieces if self.usage_tokens is None else self.usage_tokens

    def failure(self) -> str | None:
        """The error code the stream failed with once its body ended, or ``None`` when it ended as asked."""
        if self.error is not None:
            return self.error
        if not self.saw_end:
            return UNFINISHED
        reason = self.finish_reason
        if reason is None or reason in self.finished_reasons:
            return None
        return f"finish_reason_{reason}"

    def _piece(self, text: object) -> int:
        if isinstance(text, str) and text:
            self.pieces += 1
            return 1
        return 0

    def _fail(self, error: object) -> int:
        self.error = error_object_code(error) or UNNAMED_ERROR
        return 0


def _object(data: str) -> dict[str, Any]:
    obj = orjson.loads(data)
    if not isinstance(obj, dict):
        raise ValueError(f"an event's data is not a JSON object: {data[:80]!r}")
    return obj


class OpenAIAccount(StreamAccount):
    """Chat completion chunks: ``choices[0].delta.content``, ``finish_reason``, ``usage``, ``[DONE]``."""

    __slots__ = ()

    finished_reasons = OPENAI_FINISHED

    def feed(self, event: ServerSentEvent) -> int:
        """Account for one ``data:`` chunk (an ``error`` object in it ends the stream)."""
        if event.data.strip() == OPENAI_DONE:
            self.saw_end = True
            return 0
        chunk = _object(event.data)
        if "error" in chunk or event.event == "error":
            return self._fail(chunk.get("error", chunk))
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage_tokens = _count(usage.get("completion_tokens"))
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return 0
        choice = choices[0]
        if isinstance(choice.get("finish_reason"), str):
            self.finish_reason = choice["finish_reason"]
        delta = choice.get("delta")
        return self._piece(delta.get("content")) if isinstance(delta, dict) else 0


class AnthropicAccount(StreamAccount):
    """Message events: ``content_block_delta`` text, ``message_delta`` stop reason and usage, ``message_stop``."""

    __slots__ = ()

    finished_reasons = ANTHROPIC_FINISHED

    def feed(self, event: ServerSentEvent) -> int:
        """Account for one named event (the name is the event's ``type``; ``ping`` and the rest carry nothing)."""
        obj = _object(event.data)
        kind = obj.get("type", event.event)
        if kind == "content_block_delta":
            delta = obj.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "text_delta":
                return self._piece(delta.get("text"))
        elif kind == "message_delta":
            self._message_delta(obj)
        elif kind == "message_stop":
            self.saw_end = True
        elif kind == "error":
            return self._fail(obj.get("error"))
        return 0

    def _message_delta(self, obj: dict[str, Any]) -> None:
        delta, usage = obj.get("delta"), obj.get("usage")
        if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
            self.finish_reason = delta["stop_reason"]
        if isinstance(usage, dict):
            self.usage_tokens = _count(usage.get("output_tokens"))


def new_account(api: Api) -> StreamAccount:
    """A fresh accounting for one stream of ``api`` (``openai`` or ``anthropic``)."""
    if api is Api.OPENAI:
        return OpenAIAccount()
    if api is Api.ANTHROPIC:
        return AnthropicAccount()
    raise ValueError(f"the {api.value} API's events are read by the driver itself")
