"""The ``openai`` engine: stream from any OpenAI-compatible server (vLLM, llama.cpp, Ollama, TGI).

The request goes upstream in the OpenAI chat shape: the messages as clients send them and every field of the
job's ``params`` unchanged (``temperature``, ``tools``, ``stop``, ``reasoning_effort``, vendor fields...); only
``model``, ``messages``, ``max_tokens``, ``stream`` and ``stream_options`` are tokenrelay's; a request that set
no ``max_tokens`` (and no ``--default-max-tokens``) is sent none, so the upstream decides.  A text completion (a
job with a raw ``prompt``) goes to the upstream's own ``/completions`` instead, with ``prompt`` in place of
``messages`` (its ``suffix`` and every other field as sent); its chunks' ``choices[0].text`` is relayed.  With
``include_usage`` (``--upstream-include-usage``, on by default) it asks for ``stream_options:
{"include_usage": true}`` and reads the final usage chunk; turn it off for a server that refuses
``stream_options``.  Reasoning, tool calls, the finish reason and usage of the answer are relayed
(:mod:`~tokenrelay.runner.engines.openai_chunks`).

A stream that moved here from a lost runner continues from its text so far, when ``continue_final_message``
(``--upstream-continue-final-message``) says the upstream can: a chat is sent its messages and the answer so far as
a final assistant message, with vLLM's ``continue_final_message: true, add_generation_prompt: false``; a text
completion is sent its prompt followed by the answer so far.  A limit the client set is sent as what is left of it,
and usage counts the tokens before the move: completion tokens are those plus the upstream's, prompt tokens the
upstream's less them (its prompt now holds the answer so far).  Reasoning and tool calls are not continued.

Cancelling closes the upstream HTTP connection at once: that is how those servers notice the
client left and free the sequence's GPU slot.  Upstream failures become ``error`` events:
``upstream_unavailable`` (cannot connect), ``upstream_timeout`` (nothing within
``read_timeout_s``), ``upstream_error`` (non-200 answer or a malformed stream).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson

from tokenrelay.runner.engines.base import EngineError, GenerationRequest, Piece, require_text_continuation
from tokenrelay.runner.engines.openai_chunks import chunk_pieces
from tokenrelay.runner.engines.textstream import LineSplitter
from tokenrelay.wire.errors import ErrorCode
from tokenrelay.wire.messages import Continues

log = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_READ_TIMEOUT_S = 60.0
MAX_ERROR_BODY_CHARS = 300
REUSE_WAIT_S = 1.0
"""How long a stream read to its ``[DONE]`` waits for the rest of its body (the chunked end) before its connection
goes back to the pool; past it the connection is closed."""
MAX_REUSE_TAIL_BYTES = 64 * 1024
"""What may follow ``[DONE]`` in a body whose connection is kept; more than this and the connection is closed."""
_DATA = "data:"


class OpenAIEngine:
    """Streams chat completions (and text completions) from ``base_url`` (which ends in ``/v1``)."""

    name = "openai"
    accepts_params: frozenset[str] | None = None
    """Every field goes upstream as sent: the upstream, not tokenrelay, decides what it honours."""
    continues: Continues
    """``TEXT`` when the upstream is told it can continue a final assistant message, else ``NOTHING``."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
        include_usage: bool = True,
        continue_final_message: bool = False,
        max_connections: int = 0,
    ) -> None:
        self.model = model
        self._max_connections = max_connections
        """Upstream connections open at once at most (0: no limit): the runner's ``--max-concurrency``, so every
        stream it takes has its own (aiohttp's default of 100 made streams past the 100th wait for a whole stream)."""
        self.continues = Continues.TEXT if continue_final_message else Continues.NOTHING
        self._include_usage = include_usage
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._completions_url = base_url.rstrip("/") + "/completions"
        self._headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = aiohttp.ClientTimeout(sock_connect=connect_timeout_s, sock_read=read_timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._reusing: set[asyncio.Task[None]] = set()
        """Streams read to their ``[DONE]`` whose body's end is awaited before their connection is kept."""

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._max_connections)
            self._session = aiohttp.ClientSession(timeout=self._timeout, connector=connector)
        return self._session

    def _body(self, request: GenerationRequest) -> bytes:
        """The client's fields as sent, and tokenrelay's own (which replace any of the same name)."""
        require_text_continuation(request)
        body: dict[str, Any] = {**request.params, "model": self.model, "stream": True}
        so_far = request.continuation.text if request.continuation is not None else None
        if request.prompt is None:
            body["messages"] = [m.to_openai() for m in request.messages]
            if so_far is not None:  # the answer so far, continued where it stops rather than answered anew
                body["messages"].append({"role": "assistant", "content": so_far})
                body.update(continue_final_message=True, add_generation_prompt=False)
        else:  # a text completion: the raw prompt, its suffix and every other field as sent
            body["prompt"] = request.prompt + (so_far or "")
        body.pop("max_completion_tokens", None)  # the limit is tokenrelay's: max_tokens below
        if request.max_tokens_set:
            # What is left of it (at least 1: the runner takes no continuation with nothing left).
            body["max_tokens"] = max(1, request.max_tokens - request.tokens_before)
        else:
            # Nobody set a limit: the upstream applies its own (the runner still stops at the hard cap).
            body.pop("max_tokens", None)
        body.pop("stream_options", None)
        if self._include_usage:
            body["stream_options"] = {"include_usage": True}
        return orjson.dumps(body)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Piece]:
        """Yield the pieces of each chunk of the upstream stream (reasoning, text, tool-call fragments)."""
        request = continued_usage(request)
        try:
            url = self._url if request.prompt is None else self._completions_url
            response = await self._client().post(url, data=self._body(request), headers=self._headers)
        except (aiohttp.ClientConnectionError, OSError) as exc:
            raise EngineError(str(ErrorCode.UPSTREAM_UNAVAILABLE), f"cannot reach the upstream: {exc}") from None
        except TimeoutError:
            raise EngineError(str(ErrorCode.UPSTREAM_TIMEOUT), "the upstream did not accept the connection") from None
        whole = False
        try:
            if response.status != 200:
                body = (await response.text(errors="replace"))[:MAX_ERROR_BODY_CHARS]
                raise EngineError(str(ErrorCode.UPSTREAM_ERROR), f"the upstream answered {response.status}: {body}")
            async for piece in self._pieces(response, request):
                yield piece
            whole = True
        except TimeoutError:
            raise EngineError(str(ErrorCode.UPSTREAM_TIMEOUT), "the upstream stopped sending") from None
        except aiohttp.ClientPayloadError as exc:
            raise EngineError(str(ErrorCode.UPSTREAM_ERROR), f"the upstream stream broke: {exc}") from None
        finally:
            if whole:
                self._keep(response)
            else:
                # Closing (not releasing) drops the TCP connection now, even mid-body: the upstream sees
                # its client go away and stops generating.  Runs on cancel, on max_tokens and on errors.
                response.close()

    @property
    def connections_settling(self) -> int:
        """Connections of streams read to their ``[DONE]`` that wait for their body's end before they are kept."""
        return len(self._reusing)

    def _keep(self, response: aiohttp.ClientResponse) -> None:
        """A stream read to its ``[DONE]`` (or its end): its connection goes back to the pool for the next stream,
        which then opens none (a TCP handshake and a connection set up on both ends, on every stream before)."""
        if response.content.at_eof():
            response.release()
            return
        task = asyncio.create_task(self._keep_at_eof(response), name="upstream-keep")
        self._reusing.add(task)
        task.add_done_callback(self._reusing.discard)

    async def _keep_at_eof(self, response: aiohttp.ClientResponse) -> None:
        """Wait (beside the stream's end event, not before it) for the body's end, then keep the connection; close
        it if the end does not come within :data:`REUSE_WAIT_S` or more than :data:`MAX_REUSE_TAIL_BYTES` come."""
        tail = 0
        try:
            async with asyncio.timeout(REUSE_WAIT_S):
                while tail <= MAX_REUSE_TAIL_BYTES and (chunk := await response.content.readany()):
                    tail += len(chunk)
        except (TimeoutError, aiohttp.ClientError, OSError):
            response.close()
            return
        if response.content.at_eof():
            response.release()
        else:
            response.close()

    async def _pieces(self, response: aiohttp.ClientResponse, request: GenerationRequest) -> AsyncIterator[Piece]:
        lines = LineSplitter()
        async for chunk in response.content.iter_any():
            for line in lines.feed(chunk):
                if not line.startswith(_DATA):
                    continue
                payload = line[len(_DATA) :].strip()
                if payload == "[DONE]":
                    return
                for piece in chunk_pieces(payload, request):
                    yield piece

    async def aclose(self) -> None:
        """Close the HTTP session (connections still awaiting their body's end first)."""
        for task in list(self._reusing):
            task.cancel()
        if self._session is not None:
            await self._session.close()
            await asyncio.sleep(0)


def continued_usage(request: GenerationRequest) -> GenerationRequest:
    """``request`` with its usage reports shifted by the tokens before a move: the upstream's completion count plus
    them, its prompt count less them (never below 0); unchanged for a new stream."""
    before = request.tokens_before
    if before == 0:
        return request
    return dataclasses.replace(
        request,
        on_prompt_tokens=_shifted(request.on_prompt_tokens, lambda tokens: max(0, tokens - before)),
        on_completion_tokens=_shifted(request.on_completion_tokens, lambda tokens: tokens + before),
    )


def _shifted(report: Callable[[int], None] | None, shift: Callable[[int], int]) -> Callable[[int], None] | None:
    if report is None:
        return None
    return lambda tokens: report(shift(tokens))
