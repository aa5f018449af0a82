"""OpenAI-compatible text completions (``POST /v1/completions``), sans-I/O: request parsing, chunk framing, bodies.

The API editors' autocomplete uses: a raw ``prompt`` continued as is (never made a chat message) and, for
fill-in-the-middle, the ``suffix`` that follows the cursor.  The request travels as a start request with
:attr:`~tokenrelay.wire.messages.StartRequest.prompt` set and no messages; ``suffix``, ``stop``, ``temperature``,
``echo``, ``logprobs`` and every other field tokenrelay does not own (:data:`OWNED_FIELDS`) go in ``params`` as sent,
for the admitting gateway to check (``gateway/requests.py``) and the engine to honour.

A stream carries one completion: one prompt (a string, or an array of one string), ``n`` of 1.  ``max_tokens``
defaults to 16, as OpenAI's does (the gateway applies it).  Chunks and the completion carry ``logprobs: null``: no
engine relays them.  The ``id`` is the tokenrelay stream id, as for chat completions; errors are OpenAI's shape
(:func:`~tokenrelay.streamer.compat.openai.error_body`).
"""

from __future__ import annotations

from typing import Any

import orjson

from tokenrelay.streamer.compat.common import Collector
from tokenrelay.streamer.compat.openai import (
    DONE,
    ChatOptions,
    error_body,
    finish_reason,
    optional_int,
    optional_model,
    response_options,
    usage,
)
from tokenrelay.streamer.sse import encode_event
from tokenrelay.wire.errors import BadRequest
from tokenrelay.wire.messages import StartRequest, StreamDelta, StreamEnd, StreamError, StreamEvent

OBJECT = "text_completion"
OWNED_FIELDS = frozenset({"model", "prompt", "stream", "stream_options", "max_tokens"})
"""The request's fields tokenrelay acts on itself; every other one is passed on in the stream's ``params``."""


def parse_completion_request(obj: dict[str, Any]) -> tuple[StartRequest, ChatOptions]:
    """An OpenAI ``completions`` body as a start request: its prompt, ``max_tokens``, ``model``, and every other
    field in ``params`` as sent; ``bad_request`` naming the field for what cannot be put in that form (the
    admitting gateway checks the rest: lengths, ``max_tokens``' range, ``suffix``, ``stop``, ``n``...)."""
    if "messages" in obj:
        raise BadRequest("messages is not a field of a completion: send prompt, or use /v1/chat/completions")
    model = optional_model(obj)
    max_tokens = optional_int("max_tokens", obj.get("max_tokens"))
    options = response_options(obj)
    params = {key: value for key, value in obj.items() if key not in OWNED_FIELDS}
    request = StartRequest(
        messages=(), prompt=_prompt(obj.get("prompt")), max_tokens=max_tokens, model=model, params=params
    )
    return request, options


def _prompt(value: Any) -> str:
    """The one prompt: a string, or an array of one string (arrays of token ids are not taken: the engines are
    given text)."""
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        if len(value) != 1:
            raise BadRequest(
                f"prompt holds {len(value)} prompts; a stream carries one completion: send one prompt per request"
            )
        value = value[0]
    if not isinstance(value, str):
        raise BadRequest("prompt must be a string (or an array of one string)")
    return value


class CompletionFraming:
    """Stream events as ``text_completion`` SSE ``data:`` chunks, then ``data: [DONE]``.

    Each delta is a chunk whose ``choices[0].text`` is its text; the end is a chunk with empty text and the
    ``finish_reason``, then (with ``include_usage``) one with ``choices: []`` and ``usage``.  The start sends
    nothing (a completion has no role).  A completion is text: the engines make no reasoning or tool calls of a
    prompt, so only text deltas are framed.
    """

    shares_native = False

    def __init__(self, *, stream_id: str, model: str, created: int, include_usage: bool) -> None:
        self._base = {"id": stream_id, "object": OBJECT, "created": created, "model": model}
        self._include_usage = include_usage

    def _chunk(self, text: str, finish: str | None = None) -> bytes:
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
        return _data({**self._base, "choices": [choice]})

    def event(self, event: StreamEvent) -> bytes:
        if isinstance(event, StreamDelta):
            return self._chunk(event.text)
        if isinstance(event, StreamEnd):
            out = self._chunk("", finish_reason(event))
            if self._include_usage:
                out += _data({**self._base, "choices": [], "usage": usage(event)})
            return out + DONE
        if isinstance(event, StreamError):
            return self.error(event.code, event.message)
        return b""

    def error(self, code: str, message: str, *, id: str | None = None) -> bytes:
        return _data(error_body(code, message))


def completion_body(*, stream_id: str, model: str, created: int, content: Collector, end: StreamEnd) -> dict[str, Any]:
    """The ``text_completion`` object of a finished non-streaming request."""
    choice = {"text": content.text("text"), "index": 0, "logprobs": None, "finish_reason": finish_reason(end)}
    return {
        "id": stream_id,
        "object": OBJECT,
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": usage(end),
    }


def _data(obj: dict[str, Any]) -> bytes:
    return encode_event(orjson.dumps(obj).decode())
