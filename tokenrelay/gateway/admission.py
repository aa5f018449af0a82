"""Admission for the compatible APIs a streamer serves, answered over NATS.

``POST /v1/chat/completions``, ``POST /v1/completions`` and ``POST /v1/messages`` arrive at a streamer (the data
plane), but admitting a stream — validation against this gateway's limits, the queue bound,
a live runner — is the gateway's job.  The streamer asks on ``tokenrelay.api.start`` (queue
group ``gateways``: any gateway answers) and gets the new stream's record or a refusal with
a stable error code; ``tokenrelay.api.models`` lists the models the live runners serve (each runner may
serve several).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from tokenrelay.gateway.params import OWNED_FIELDS
from tokenrelay.gateway.requests import completion_request, stream_request
from tokenrelay.gateway.streams import StreamManager
from tokenrelay.runtime import natsio, payloads
from tokenrelay.runtime.config import GatewayConfig
from tokenrelay.runtime.payloads import PayloadStore
from tokenrelay.runtime.tasks import TaskSet
from tokenrelay.wire import codec, subjects
from tokenrelay.wire.codec import CodecError
from tokenrelay.wire.errors import ErrorCode, RetryLater, TokenRelayError
from tokenrelay.wire.messages import Message, ModelList, ModelsRequest, StartRefused, StartRequest

log = logging.getLogger(__name__)


class Admission:
    """Answers the streamers' start and models requests with this gateway's :class:`StreamManager`."""

    def __init__(
        self, config: GatewayConfig, *, nc: NATS, streams: StreamManager, payloads: PayloadStore | None = None
    ) -> None:
        self._config = config
        self._payloads = payloads
        """Where a start request larger than the broker's ``max_payload`` left its content."""
        self._nc = nc
        self._streams = streams
        self._subs: list[Subscription] = []
        self._tasks = TaskSet()

    async def start(self) -> None:
        queue = subjects.GATEWAY_QUEUE_GROUP
        self._subs.append(await self._nc.subscribe(subjects.API_START, queue=queue, cb=self._on_start))
        self._subs.append(await self._nc.subscribe(subjects.API_MODELS, queue=queue, cb=self._on_models))
        await self._nc.flush()

    async def close(self) -> None:
        for sub in self._subs:
            await natsio.unsubscribe_quietly(sub)
        self._tasks.cancel()

    async def _on_start(self, msg: Msg) -> None:
        self._tasks.spawn(self._answer_start(msg), name="answer-start")

    async def _answer_start(self, msg: Msg) -> None:
        reply: Message
        try:
            request = codec.decode_as(msg.data, StartRequest)
        except CodecError as exc:
            reply = StartRefused(code=str(ErrorCode.BAD_REQUEST), message=f"malformed start request: {exc}")
        else:
            reply = await self._admit_carried(request)
        await msg.respond(codec.encode(reply))

    async def _admit_carried(self, request: StartRequest) -> Message:
        """:meth:`admit` with the request's content taken from the payload store where it was left (the object is
        deleted once read: a start request is answered once)."""
        if request.payload is None:
            return await self.admit(request)
        try:
            unpacked = await payloads.unpack(request, self._payloads)
        except payloads.PayloadUnavailable as exc:
            return StartRefused(code=str(ErrorCode.UNAVAILABLE), message=str(exc))
        finally:
            if self._payloads is not None:
                self._tasks.spawn(self._payloads.delete(request.payload), name="forget-start")
        return await self.admit(unpacked)

    async def admit(self, request: StartRequest) -> Message:
        """The new stream's record, or why it was refused."""
        # A field tokenrelay owns is taken from the request's own fields only, never from its params.
        body: dict[str, Any] = {key: value for key, value in request.params.items() if key not in OWNED_FIELDS}
        if request.prompt is None:
            body["messages"] = [m.to_openai() for m in request.messages]
        else:
            body["prompt"] = request.prompt
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.model is not None:
            body["model"] = request.model
        try:
            if request.owner is not None:  # the streamer authenticated the key; its tenant's rate counts here
                self._streams.quotas.check_rate(request.owner, time.monotonic())
            if request.prompt is None:
                parsed = stream_request(self._config, body)
            else:  # a text completion: its raw prompt is continued as is, never made a chat message
                parsed = completion_request(self._config, body)
            parsed = replace(parsed, detached=request.detached, stored=request.stored)
            return await self._streams.create(parsed, owner=request.owner)
        except TokenRelayError as exc:
            retry = exc.retry_after_s if isinstance(exc, RetryLater) else None
            return StartRefused(code=str(exc.code), message=exc.message, retry_after_s=retry)

    async def _on_models(self, msg: Msg) -> None:
        try:
            codec.decode_as(msg.data, ModelsRequest)
        except CodecError as exc:
            log.warning("malformed models request: %s", exc)
            return
        models = tuple(self._streams.live_models())
        await msg.respond(codec.encode(ModelList(models=models)))
