"""HTTP shell of OpenAI's Responses API: ``POST /v1/responses``, ``GET /v1/responses/{id}`` (JSON, or its events
with ``stream=true`` from ``starting_after``), ``POST /v1/responses/{id}/cancel``, ``DELETE /v1/responses/{id}``,
``GET /v1/responses/{id}/input_items``.

A Response is one tokenrelay stream (its id is ``resp_<stream id>``), admitted by a gateway like any compatible-API
request. With ``store`` (the default) the streamer records it (``streamer/compat/responses_store.py``) and the
runner keeps its events as it ends (``runtime/responses.py``), both for ``--response-ttl-s``: it can then be
retrieved, resumed, continued with ``previous_response_id``, cancelled (background only) and deleted. A
``background`` response runs to its end with no reader at all (no disconnect or unread check cancels it), on
whichever runner took it; any streamer serves it, so it outlives the one that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace

from aiohttp import web
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from tokenrelay.runtime import natsio
from tokenrelay.runtime.responses import ResponseStore, ensure_response_store
from tokenrelay.runtime.service import count_error, json_response, request_tenant
from tokenrelay.streamer.compat.http import OPENAI, STREAM_ID_HEADER, admit, compat_reader, error_response, json_body
from tokenrelay.streamer.compat.response_events import (
    Emitted,
    ResponseCollector,
    ResponseFraming,
    ResponseHead,
    ResponseState,
    encode,
    stream_id_of,
)
from tokenrelay.streamer.compat.response_items import Page, input_items, listing
from tokenrelay.streamer.compat.responses_request import (
    ResponseRequest,
    assistant_turn,
    parse_response_request,
    start_request,
)
from tokenrelay.streamer.compat.responses_store import (
    StoredResponse,
    background_prefix,
    record_key,
)
from tokenrelay.streamer.serving import CONFIG_KEY, KV_KEY, NC_KEY, SSE_HEADERS, collect, serve_reader
from tokenrelay.wire import codec, subjects
from tokenrelay.wire.codec import CodecError
from tokenrelay.wire.content import ChatMessage, JsonObject
from tokenrelay.wire.errors import (
    BadRequest,
    ErrorCode,
    NotFound,
    RateLimited,
    TokenRelayError,
    Unavailable,
    from_code,
)
from tokenrelay.wire.messages import (
    OUT_OF_BAND_SEQ,
    CancelReason,
    CancelReply,
    CancelRequest,
    StreamError,
    StreamEvent,
    StreamRecord,
    StreamState,
)

CANCEL_TIMEOUT_S = 10.0
"""How long a cancel waits for the gateway to say the generation halted."""


class _Stores:
    """The response store, opened on first use (a streamer that never serves a stored response declares nothing)."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._store: ResponseStore | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> ResponseStore:
        if self._store is None:
            async with self._lock:
                if self._store is None:
                    config = self._app[CONFIG_KEY]
                    js = self._app[NC_KEY].jetstream()
                    try:
                        self._store = await ensure_response_store(
                            js, ttl_s=config.response_ttl_s, storage=config.history.storage,
                            replicas=config.history.replicas,
                        )  # fmt: skip
                    except Exception as exc:
                        raise Unavailable(f"the response store cannot be opened: {exc!r}") from None
        return self._store


STORES_KEY = web.AppKey("response_stores", _Stores)


def add_routes(app: web.Application) -> None:
    app[STORES_KEY] = _Stores(app)
    app.router.add_post("/v1/responses", create)
    app.router.add_get("/v1/responses/{id}", retrieve)
    app.router.add_delete("/v1/responses/{id}", delete)
    app.router.add_post("/v1/responses/{id}/cancel", cancel)
    app.router.add_get("/v1/responses/{id}/input_items", list_input_items)


def _error(request: web.Request, exc: TokenRelayError) -> web.Response:
    count_error(request.app, exc.code)
    return error_response(OPENAI, exc)


async def create(request: web.Request) -> web.StreamResponse:
    """``POST /v1/responses``: stream the Response's events, or answer it whole (``queued`` when in background)."""
    app, owner = request.app, request_tenant(request)
    try:
        parsed = parse_response_request(await json_body(request))
        earlier = await _earlier(request, parsed.previous_response_id, owner) if parsed.previous_response_id else ()
        if parsed.store:  # declared before the runner may need it: a short answer can end before admission returns
            await app[STORES_KEY].get()
        if parsed.background:
            await _check_background_cap(app, owner)
        start = replace(start_request(parsed, earlier), owner=owner, detached=parsed.background, stored=parsed.store)
        record = await admit(app, start)
        stored = _stored(record, parsed, earlier)
        if parsed.store:
            await _put_record(app, owner, stored)
    except TokenRelayError as exc:
        return _error(request, exc)
    headers = {STREAM_ID_HEADER: record.stream_id}
    head = stored.head
    if parsed.stream:
        reader = compat_reader(app, record.stream_id, record.epoch, ResponseFraming(head), detached=parsed.background)
        return await serve_reader(request, reader, record.state, {**SSE_HEADERS, **headers})
    if parsed.background:
        state = ResponseState(head)
        state.status = "queued"
        return json_response(state.response(), headers=headers)
    collector = ResponseCollector(head)
    await collect(app, compat_reader(app, record.stream_id, record.epoch, collector, detached=False), record.state)
    if collector.failure is not None and not collector.state.ended:
        return _error(request, from_code(*collector.failure))
    return json_response(collector.state.response(), headers=headers)


def _stored(record: StreamRecord, parsed: ResponseRequest, earlier: tuple[ChatMessage, ...]) -> StoredResponse:
    return StoredResponse(
        stream_id=record.stream_id, epoch=record.epoch, created_at=record.created, model=record.model,
        background=parsed.background, echo=parsed.echo, conversation=earlier + parsed.input,
        input_messages=len(parsed.input),
    )  # fmt: skip


async def _put_record(app: web.Application, owner: str | None, stored: StoredResponse) -> None:
    """Record a stored response; when that fails, its stream is stopped: nobody could reach it again."""
    try:
        key = record_key(owner, stored.stream_id, background=stored.background)
        await (await app[STORES_KEY].get()).put_record(key, stored.encode())
    except TokenRelayError:
        with contextlib.suppress(TokenRelayError):
            await _halt(app, stored.stream_id)
        raise


async def _check_background_cap(app: web.Application, owner: str | None) -> None:
    limit = app[CONFIG_KEY].max_background_responses_per_key
    if limit <= 0:
        return
    held = await (await app[STORES_KEY].get()).count(background_prefix(owner))
    if held >= limit:
        raise RateLimited(
            f"this key holds {held} stored background responses, the most it may (delete some, or wait for them "
            "to expire)",
            retry_after_s=60,
        )


async def _load(request: web.Request, response_id: str, owner: str | None) -> StoredResponse:
    """The caller's stored response ``response_id``, else ``not_found`` (also another tenant's)."""
    stream_id = stream_id_of(response_id)
    if stream_id is None or not subjects.is_stream_id(stream_id):
        raise NotFound(f"no response with id {response_id!r}")
    store = await request.app[STORES_KEY].get()
    for background in (True, False):
        data = await store.get_record(record_key(owner, stream_id, background=background))
        if data is not None:
            try:
                return StoredResponse.decode(data)
            except CodecError:
                break
    raise NotFound(f"no response with id {response_id!r}")


async def _events(request: web.Request, stored: StoredResponse) -> list[StreamEvent] | None:
    """A finished response's events: as its runner kept them, else read from its stream's history (``None``: it
    has not ended)."""
    app = request.app
    kept = await (await app[STORES_KEY].get()).get_events(stored.stream_id)
    if kept is not None:
        return kept
    record = await _stream_record(app, stored.stream_id)
    if record is None or record.state is not StreamState.FINISHED:
        return None
    recorder = _Recorder()
    await collect(
        app, compat_reader(app, stored.stream_id, stored.epoch, recorder, detached=True, merge=False), record.state
    )
    return recorder.events if recorder.failure is None else None


class _Recorder:
    """A framing that keeps the events it is given, unmerged."""

    shares_native = False

    def __init__(self) -> None:
        self.events: list[StreamEvent] = []
        self.failure: tuple[str, str] | None = None

    def event(self, event: StreamEvent) -> bytes:
        self.events.append(event)
        return b""

    def error(self, code: str, message: str, *, id: str | None = None) -> bytes:
        self.failure = (code, message)
        return b""


async def _stream_record(app: web.Application, stream_id: str) -> StreamRecord | None:
    try:
        return await natsio.load_record(app[KV_KEY], stream_id)
    except NotFound:
        return None


async def _earlier(request: web.Request, previous_id: str, owner: str | None) -> tuple[ChatMessage, ...]:
    """The conversation a response continues: the earlier one's messages, then its answer."""
    previous = await _load(request, previous_id, owner)
    events = await _events(request, previous)
    if events is None:
        raise BadRequest(f"previous_response_id {previous_id!r} has not finished yet")
    return previous.conversation + assistant_turn(events)


def _built(head: ResponseHead, events: list[StreamEvent]) -> ResponseState:
    state = ResponseState(head)
    for event in events:
        state.push(event)
    return state


async def retrieve(request: web.Request) -> web.StreamResponse:
    """``GET /v1/responses/{id}``: the Response as it stands; with ``stream=true`` its events after
    ``starting_after`` (a running response's are sent as they come)."""
    app = request.app
    try:
        stored = await _load(request, request.match_info["id"], request_tenant(request))
        streamed = _flag(request, "stream")
        after = _starting_after(request)
        events = await _events(request, stored)
        if not streamed:
            return json_response(await _current(request, stored, events))
        if events is not None:
            return _replayed(stored, events, after)
        record = await _stream_record(app, stored.stream_id)
        if record is None:
            raise NotFound(f"the events of response {stored.head.id!r} are no longer kept")
    except TokenRelayError as exc:
        return _error(request, exc)
    framing = ResponseFraming(stored.head, after=after)
    reader = compat_reader(app, stored.stream_id, stored.epoch, framing, detached=True, merge=after is None)
    return await serve_reader(request, reader, record.state, {**SSE_HEADERS, STREAM_ID_HEADER: stored.stream_id})


def _replayed(stored: StoredResponse, events: list[StreamEvent], after: int | None) -> web.Response:
    """A finished response's events after ``after``, from its kept events (``bad_request`` past the last one)."""
    emitted: list[Emitted] = []
    state = ResponseState(stored.head)
    for event in events:
        emitted.extend(state.push(event))
    last = emitted[-1][0] if emitted else -1
    if after is not None and after >= last:
        raise BadRequest(f"starting_after {after} is past the response's last event ({last})")
    body = b"".join(encode(made) for made in emitted if after is None or made[0] > after)
    return web.Response(body=body, headers={**SSE_HEADERS, STREAM_ID_HEADER: stored.stream_id})


async def _current(request: web.Request, stored: StoredResponse, events: list[StreamEvent] | None) -> JsonObject:
    """The Response object: whole once its stream ended, else ``queued`` / ``in_progress`` with no output yet."""
    if events is not None:
        return _built(stored.head, events).response()
    state = ResponseState(stored.head)
    record = await _stream_record(request.app, stored.stream_id)
    if record is None:
        lost = "the response's stream ended with no events kept, and its history is gone"
        state.push(StreamError(seq=OUT_OF_BAND_SEQ, code=str(ErrorCode.UNAVAILABLE), message=lost, tokens=0))
    elif record.state is StreamState.QUEUED:
        state.status = "queued"
    return state.response()


def _flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "false")
    if value not in ("true", "false"):
        raise BadRequest(f"{name} must be true or false")
    return value == "true"


def _starting_after(request: web.Request) -> int | None:
    value = request.query.get("starting_after")
    if value is None:
        return None
    try:
        after = int(value)
    except ValueError:
        raise BadRequest("starting_after must be an integer") from None
    if after < 0:
        raise BadRequest(f"starting_after must be >= 0, got {after}")
    return after


async def list_input_items(request: web.Request) -> web.Response:
    """``GET /v1/responses/{id}/input_items``: the request's own input items (``limit``, ``order``, ``after``)."""
    try:
        stored = await _load(request, request.match_info["id"], request_tenant(request))
        query = request.query
        page = Page.parse(query.get("limit"), query.get("order"), query.get("after"))
        return json_response(listing(input_items(stored.stream_id, stored.own_input), page))
    except TokenRelayError as exc:
        return _error(request, exc)


async def cancel(request: web.Request) -> web.Response:
    """``POST /v1/responses/{id}/cancel``: halt a background response (idempotent); the Response as it ended."""
    app = request.app
    try:
        stored = await _load(request, request.match_info["id"], request_tenant(request))
        if not stored.background:
            raise BadRequest("only a background response can be cancelled (this one ends when its reader leaves)")
        await _halt(app, stored.stream_id)
        return json_response(await _current(request, stored, await _events(request, stored)))
    except TokenRelayError as exc:
        return _error(request, exc)


async def _halt(app: web.Application, stream_id: str) -> None:
    """Ask the gateways to stop the stream; returns once its generation halted (or had ended)."""
    message = codec.encode(CancelRequest(stream_id=stream_id, reason=CancelReason.CLIENT))
    try:
        msg = await app[NC_KEY].request(subjects.CANCELS, message, timeout=CANCEL_TIMEOUT_S)
        codec.decode_as(msg.data, CancelReply)
    except (NoRespondersError, NatsTimeout):
        raise Unavailable("no gateway answered the cancel in time") from None
    except CodecError as exc:
        raise Unavailable(f"a gateway answered the cancel with a malformed reply: {exc}") from None


async def delete(request: web.Request) -> web.Response:
    """``DELETE /v1/responses/{id}``: forget a stored response (a background one still running is stopped)."""
    app, owner = request.app, request_tenant(request)
    try:
        stored = await _load(request, request.match_info["id"], owner)
        store = await app[STORES_KEY].get()
        if stored.background:
            record = await _stream_record(app, stored.stream_id)
            if record is not None and record.state is not StreamState.FINISHED:
                await _halt(app, stored.stream_id)
        await store.delete_record(record_key(owner, stored.stream_id, background=stored.background))
        await store.delete_events(stored.stream_id)
    except TokenRelayError as exc:
        return _error(request, exc)
    return json_response({"id": stored.head.id, "object": "response.deleted", "deleted": True})
