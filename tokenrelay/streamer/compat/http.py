"""HTTP shell of the compatible APIs: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``
(and ``GET /v1/models/{id}``), ``POST /v1/messages``.

Admission goes through a gateway over NATS (``tokenrelay.api.start``); the stream is then
read here like any other, with the API's framing instead of the native one.  A client of
these endpoints has no cursor, so its stream is cancelled as soon as it disconnects.  Every
API shares one request flow (:func:`_serve`); a :class:`_Dialect` supplies what differs.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Protocol

from aiohttp import web
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from tokenrelay.runtime import payloads
from tokenrelay.runtime.payloads import PayloadStore
from tokenrelay.runtime.service import count_error, json_response, request_tenant
from tokenrelay.streamer.compat import anthropic, completions, openai
from tokenrelay.streamer.compat.common import Collector
from tokenrelay.streamer.frames import Framing
from tokenrelay.streamer.reader import Reader
from tokenrelay.streamer.serving import CONFIG_KEY, HUB_KEY, NC_KEY, SSE_HEADERS, collect, serve_reader
from tokenrelay.wire import codec, subjects
from tokenrelay.wire.codec import CodecError
from tokenrelay.wire.errors import (
    ErrorCode,
    ModelNotFound,
    PayloadTooLarge,
    RetryLater,
    TokenRelayError,
    Unavailable,
    from_code,
)
from tokenrelay.wire.messages import ModelList, ModelsRequest, StartRefused, StartRequest, StreamEnd, StreamRecord

ADMIT_TIMEOUT_S = 5.0
"""How long a streamer waits for a gateway to admit a compatible-API stream."""
STREAM_ID_HEADER = "X-Tokenrelay-Stream-Id"
OWNED_BY = "tokenrelay"
PAYLOADS_KEY = web.AppKey("payloads", PayloadStore)
"""The payload store a streamer leaves requests larger than one NATS message in (absent: they are refused)."""

_STATUS_OF_STREAM_ERRORS: dict[str, int] = {
    ErrorCode.UNSUPPORTED_PARAMETER: 400,  # the request's fault, the same every time: no 5xx an SDK would retry
    ErrorCode.OVERLOADED: 503,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.SHUTTING_DOWN: 503,
    ErrorCode.RUNNER_LOST: 502,
    ErrorCode.UPSTREAM_ERROR: 502,
    ErrorCode.UPSTREAM_UNAVAILABLE: 502,
    ErrorCode.UPSTREAM_TIMEOUT: 504,
}
"""HTTP status of a non-streamed request whose stream ended in an error that has no status of its own."""


def stream_error_status(code: str) -> int:
    """The HTTP status of a non-streamed request whose stream ended with the error ``code`` (500 for one not listed
    in the table above: the server's fault)."""
    return _STATUS_OF_STREAM_ERRORS.get(code, 500)


class _Options(Protocol):
    @property
    def stream(self) -> bool: ...


class _Dialect(Protocol):
    """What one compatible API does differently: its request, its framing, its bodies."""

    def parse(self, obj: dict[str, Any]) -> tuple[StartRequest, _Options]: ...

    def framing(self, record: StreamRecord, options: _Options) -> Framing: ...

    def body(self, record: StreamRecord, content: Collector, end: StreamEnd) -> dict[str, Any]: ...

    def error_body(self, code: str, message: str) -> dict[str, Any]: ...

    def status(self, code: str, status: int) -> int: ...


class _OpenAI:
    def parse(self, obj: dict[str, Any]) -> tuple[StartRequest, _Options]:
        return openai.parse_chat_request(obj)

    def framing(self, record: StreamRecord, options: _Options) -> Framing:
        assert isinstance(options, openai.ChatOptions)
        return openai.ChunkFraming(
            stream_id=record.stream_id, model=record.model, created=record.created, include_usage=options.include_usage
        )

    def body(self, record: StreamRecord, content: Collector, end: StreamEnd) -> dict[str, Any]:
        return openai.completion_body(
            stream_id=record.stream_id, model=record.model, created=record.created, content=content, end=end
        )

    def error_body(self, code: str, message: str) -> dict[str, Any]:
        return openai.error_body(code, message)

    def status(self, code: str, status: int) -> int:
        return status


class _Completions(_OpenAI):
    """OpenAI's text completions: its own request, chunks and body; errors and statuses as chat completions."""

    def parse(self, obj: dict[str, Any]) -> tuple[StartRequest, _Options]:
        return completions.parse_completion_request(obj)

    def framing(self, record: StreamRecord, options: _Options) -> Framing:
        assert isinstance(options, openai.ChatOptions)
        return completions.CompletionFraming(
            stream_id=record.stream_id, model=record.model, created=record.created, include_usage=options.include_usage
        )

    def body(self, record: StreamRecord, content: Collector, end: StreamEnd) -> dict[str, Any]:
        return completions.completion_body(
            stream_id=record.stream_id, model=record.model, created=record.created, content=content, end=end
        )


class _Anthropic:
    def parse(self, obj: dict[str, Any]) -> tuple[StartRequest, _Options]:
        return anthropic.parse_messages_request(obj)

    def framing(self, record: StreamRecord, options: _Options) -> Framing:
        assert isinstance(options, anthropic.MessagesOptions)
        return anthropic.EventFraming(
            stream_id=record.stream_id, model=record.model, open_text_first=not options.may_begin_with_a_block
        )

    def body(self, record: StreamRecord, content: Collector, end: StreamEnd) -> dict[str, Any]:
        return anthropic.message_body(stream_id=record.stream_id, model=record.model, content=content, end=end)

    def error_body(self, code: str, message: str) -> dict[str, Any]:
        return anthropic.error_body(code, message)

    def status(self, code: str, status: int) -> int:
        return anthropic.http_status(code, status)


OPENAI: _Dialect = _OpenAI()
ANTHROPIC: _Dialect = _Anthropic()
COMPLETIONS: _Dialect = _Completions()


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", text_completions)
    app.router.add_get("/v1/models", models)
    # An id may hold "/" (meta-llama/Llama-3.1-8B-Instruct), and any other character: an unknown one is a 404 in
    # OpenAI's shape, never the routing's own.
    app.router.add_get(r"/v1/models/{id:[\s\S]+}", model)
    app.router.add_post("/v1/messages", messages)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """OpenAI ``POST /v1/chat/completions``: ``chat.completion.chunk`` events, or one ``chat.completion``."""
    return await _serve(request, OPENAI)


async def text_completions(request: web.Request) -> web.StreamResponse:
    """OpenAI ``POST /v1/completions`` (a raw prompt, ``suffix`` for fill-in-the-middle): ``text_completion``
    chunks, or one ``text_completion``."""
    return await _serve(request, COMPLETIONS)


async def messages(request: web.Request) -> web.StreamResponse:
    """Anthropic ``POST /v1/messages``: ``message_start`` ... ``message_stop`` events, or one ``message``."""
    return await _serve(request, ANTHROPIC)


async def models(request: web.Request) -> web.Response:
    """OpenAI ``GET /v1/models``: the models the live runners serve."""
    try:
        listed = await live_models(request.app)
    except TokenRelayError as exc:
        return error_response(OPENAI, exc)
    now = int(time.time())
    return json_response({"object": "list", "data": [_model_object(name, now) for name in listed]})


async def model(request: web.Request) -> web.Response:
    """OpenAI ``GET /v1/models/{id}``: one model the live runners serve, or ``404 model_not_found``."""
    name = request.match_info["id"]
    try:
        if name not in await live_models(request.app):
            raise ModelNotFound(f"no runner serves model {name!r}")
    except TokenRelayError as exc:
        count_error(request.app, exc.code)
        return error_response(OPENAI, exc)
    return json_response(_model_object(name, int(time.time())))


async def live_models(app: web.Application) -> tuple[str, ...]:
    """The models the live runners serve, as any gateway knows them (``unavailable`` when none answers)."""
    try:
        msg = await app[NC_KEY].request(subjects.API_MODELS, codec.encode(ModelsRequest()), timeout=ADMIT_TIMEOUT_S)
        return codec.decode_as(msg.data, ModelList).models
    except (NoRespondersError, NatsTimeout, CodecError):
        raise Unavailable("no gateway answered") from None


def _model_object(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": OWNED_BY}


async def _serve(request: web.Request, dialect: _Dialect) -> web.StreamResponse:
    """Admit the stream, then stream it in the dialect's framing or answer with one body."""
    app = request.app
    try:
        start, options = dialect.parse(await json_body(request))
        record = await admit(app, replace(start, owner=request_tenant(request)))
    except TokenRelayError as exc:
        count_error(app, exc.code)
        return error_response(dialect, exc)
    headers = {STREAM_ID_HEADER: record.stream_id}
    if options.stream:
        reader = compat_reader(app, record.stream_id, record.epoch, dialect.framing(record, options))
        return await serve_reader(request, reader, record.state, {**SSE_HEADERS, **headers})
    collector = Collector()
    await collect(
        app, compat_reader(app, record.stream_id, record.epoch, collector), record.state
    )  # the collector keeps the content itself
    if collector.failure is not None:
        code, message = collector.failure
        count_error(app, code)
        status = dialect.status(code, stream_error_status(code))
        return json_response(dialect.error_body(code, message), status=status)
    assert collector.end is not None  # a reader closes with an end or a failure
    return json_response(dialect.body(record, collector, collector.end), headers=headers)


async def admit(app: web.Application, start: StartRequest) -> StreamRecord:
    """Ask any gateway to admit the stream; its record, or the gateway's error.  A request larger than NATS
    carries in one message (its ``max_payload``) leaves its content in the payload store for the gateway
    (``payload_too_large`` without a store)."""
    nc, store = app[NC_KEY], app.get(PAYLOADS_KEY)
    start = await payloads.carry(start, store, name=payloads.start_payload_name(), max_payload_bytes=nc.max_payload)
    data = codec.encode(start)
    if len(data) > nc.max_payload:
        raise PayloadTooLarge(
            f"the request makes {len(data)} bytes to send for admission; NATS carries at most {nc.max_payload} "
            "bytes in one message (its max_payload): send smaller images or fewer messages"
        )
    try:
        msg = await nc.request(subjects.API_START, data, timeout=ADMIT_TIMEOUT_S)
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


async def json_body(request: web.Request) -> dict[str, Any]:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge(exc.text or "the body is too large") from None
    return codec.parse_json_object(raw)


def error_response(dialect: _Dialect, exc: TokenRelayError) -> web.Response:
    """One of our errors in the dialect's shape, with ``Retry-After`` for ``overloaded``."""
    headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, RetryLater) else None
    code = str(exc.code)
    return json_response(
        dialect.error_body(code, exc.message), status=dialect.status(code, exc.http_status), headers=headers
    )


def compat_reader(
    app: web.Application, stream_id: str, epoch: str, framing: Framing, *, detached: bool = False, merge: bool = True
) -> Reader:
    """A reader of a compatible API's client: from the stream's start (it has no cursor), not resumable, framed by
    ``framing``; ``detached``: its leaving never cancels the stream; ``merge`` off: content events kept apart."""
    config, hub = app[CONFIG_KEY], app[HUB_KEY]
    return Reader(
        stream_id, epoch=epoch, resume=None, max_buffered_bytes=config.max_reader_buffer_bytes, now=hub.clock(),
        framing=framing, resumable=False, detached=detached, merge_content=merge,
    )  # fmt: skip
