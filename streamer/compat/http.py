"""HTTP shell of the compatible APIs: ``POST /v1/chat/completions``, ``GET /v1/models``, ``POST /v1/messages``.

Admission goes through a gateway over NATS (``tokenrelay.api.start``); the stream is then
read here like any other, with the OpenAI framing instead of the native one.  A client of
these endpoints has no cursor, so its stream is cancelled as soon as it disconnects.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from streamer.app import CONFIG_KEY, HUB_KEY, NC_KEY, SSE_HEADERS, collect, serve_reader
from streamer.compat import anthropic, openai
from streamer.frames import Framing
from streamer.hub import Reader
from tokenrelay import codec, subjects
from tokenrelay.codec import CodecError
from tokenrelay.errors import BadRequest, ErrorCode, Overloaded, TokenRelayError, Unavailable, from_code
from tokenrelay.messages import ModelList, ModelsRequest, StartRefused, StartRequest, StreamRecord
from tokenrelay.service import json_response

ADMIT_TIMEOUT_S = 5.0
"""How long a streamer waits for a gateway to admit a compatible-API stream."""
STREAM_ID_HEADER = "X-Tokenrelay-Stream-Id"
OWNED_BY = "tokenrelay"

_STATUS_OF_STREAM_ERRORS: dict[str, int] = {
    ErrorCode.OVERLOADED: 503,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.SHUTTING_DOWN: 503,
    ErrorCode.RUNNER_LOST: 502,
    ErrorCode.UPSTREAM_ERROR: 502,
    ErrorCode.UPSTREAM_UNAVAILABLE: 502,
    ErrorCode.UPSTREAM_TIMEOUT: 504,
}


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/messages", messages)


async def admit(app: web.Application, start: StartRequest) -> StreamRecord:
    """Ask any gateway to admit the stream; its record, or the gateway's error."""
    try:
        msg = await app[NC_KEY].request(subjects.API_START, codec.encode(start), timeout=ADMIT_TIMEOUT_S)
        reply = codec.decode(msg.data)
    except NoRespondersError:
        raise Unavailable("no gateway is available") from None
    except NatsTimeout:
        raise Unavailable("no gateway answered in time") from None
    except CodecError as exc:
        raise Unavailable(f"a gateway answered with a malformed reply: {exc}") from None
    if isinstance(reply, StartRefused):
        raise from_code(reply.code, reply.message, retry_after_s=reply.retry_after_s)
    if not isinstance(reply, StreamRecord):
        raise Unavailable(f"a gateway answered with {type(reply).__name__}")
    return reply


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise _PayloadTooLarge(exc.text or "the body is too large") from None
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(obj, dict):
        raise BadRequest("the body must be a JSON object")
    return obj


class _PayloadTooLarge(TokenRelayError):
    code = ErrorCode.PAYLOAD_TOO_LARGE
    http_status = 413


def _openai_error(code: str, message: str, status: int, retry_after_s: int | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
    return json_response(openai.error_body(code, message), status=status, headers=headers)


def _openai_error_of(exc: TokenRelayError) -> web.Response:
    retry = exc.retry_after_s if isinstance(exc, Overloaded) else None
    return _openai_error(str(exc.code), exc.message, exc.http_status, retry)


def _reader(app: web.Application, record: StreamRecord, framing: Framing) -> Reader:
    config, hub = app[CONFIG_KEY], app[HUB_KEY]
    return Reader(
        record.stream_id,
        epoch=record.epoch,
        resume=None,
        max_buffered_bytes=config.max_reader_buffer_bytes,
        now=hub.clock(),
        framing=framing,
        resumable=False,
    )


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """OpenAI ``POST /v1/chat/completions``: ``chat.completion.chunk`` events, or one ``chat.completion``."""
    app = request.app
    try:
        start, options = openai.parse_chat_request(await _json_body(request))
        record = await admit(app, start)
    except TokenRelayError as exc:
        return _openai_error_of(exc)
    headers = {STREAM_ID_HEADER: record.stream_id}
    if options.stream:
        chunks = openai.ChunkFraming(
            stream_id=record.stream_id, model=record.model, created=record.created, include_usage=options.include_usage
        )
        return await serve_reader(request, _reader(app, record, chunks), record, {**SSE_HEADERS, **headers})
    collector = openai.TextCollector()
    text = (await collect(app, _reader(app, record, collector), record)).decode()
    if collector.failure is not None:
        code, message = collector.failure
        return _openai_error(code, message, _STATUS_OF_STREAM_ERRORS.get(code, 500))
    assert collector.end is not None  # a reader closes with an end or a failure
    body = openai.completion_body(
        stream_id=record.stream_id, model=record.model, created=record.created, text=text, end=collector.end
    )
    return json_response(body, headers=headers)


async def models(request: web.Request) -> web.Response:
    """OpenAI ``GET /v1/models``: the models the live runners serve."""
    try:
        msg = await request.app[NC_KEY].request(
            subjects.API_MODELS, codec.encode(ModelsRequest()), timeout=ADMIT_TIMEOUT_S
        )
        listed = codec.decode_as(msg.data, ModelList)
    except (NoRespondersError, NatsTimeout, CodecError):
        return _openai_error_of(Unavailable("no gateway answered"))
    now = int(time.time())
    data = [{"id": model, "object": "model", "created": now, "owned_by": OWNED_BY} for model in listed.models]
    return json_response({"object": "list", "data": data})


def _anthropic_error(code: str, message: str, status: int, retry_after_s: int | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
    body = anthropic.error_body(code, message)
    return json_response(body, status=anthropic.http_status(code, status), headers=headers)


async def messages(request: web.Request) -> web.StreamResponse:
    """Anthropic ``POST /v1/messages``: ``message_start`` ... ``message_stop`` events, or one ``message``."""
    app = request.app
    try:
        start, options = anthropic.parse_messages_request(await _json_body(request))
        record = await admit(app, start)
    except TokenRelayError as exc:
        retry = exc.retry_after_s if isinstance(exc, Overloaded) else None
        return _anthropic_error(str(exc.code), exc.message, exc.http_status, retry)
    headers = {STREAM_ID_HEADER: record.stream_id}
    if options.stream:
        framing = anthropic.EventFraming(stream_id=record.stream_id, model=record.model)
        return await serve_reader(request, _reader(app, record, framing), record, {**SSE_HEADERS, **headers})
    collector = openai.TextCollector()
    text = (await collect(app, _reader(app, record, collector), record)).decode()
    if collector.failure is not None:
        code, message = collector.failure
        return _anthropic_error(code, message, _STATUS_OF_STREAM_ERRORS.get(code, 500))
    assert collector.end is not None  # a reader closes with an end or a failure
    body = anthropic.message_body(stream_id=record.stream_id, model=record.model, text=text, end=collector.end)
    return json_response(body, headers=headers)
