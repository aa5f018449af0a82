"""The ``openai`` engine: stream from any OpenAI-compatible server (vLLM, llama.cpp, Ollama, TGI).

Cancelling closes the upstream HTTP connection at once: that is how those servers notice the
client left and free the sequence's GPU slot.  Upstream failures become ``error`` events:
``upstream_unavailable`` (cannot connect), ``upstream_timeout`` (nothing within
``read_timeout_s``), ``upstream_error`` (non-200 answer or a malformed stream).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from tokenrelay.runner.engines.base import EngineError, GenerationRequest
from tokenrelay.runner.engines.textstream import LineSplitter
from tokenrelay.wire.errors import ErrorCode

log = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_READ_TIMEOUT_S = 60.0
MAX_ERROR_BODY_CHARS = 300
_DATA = "data:"


class OpenAIEngine:
    """Streams chat completions from ``base_url`` (which ends in ``/v1``)."""

    name = "openai"

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    ) -> None:
        self.model = model
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = aiohttp.ClientTimeout(sock_connect=connect_timeout_s, sock_read=read_timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    def _body(self, request: GenerationRequest) -> bytes:
        return orjson.dumps(
            {
                "model": self.model,
                "messages": [m.to_openai() for m in request.messages],
                "max_tokens": request.max_tokens,
                "stream": True,
            }
        )

    async def stream(self, request: GenerationRequest) -> AsyncIterator[str]:
        """Yield each non-empty ``choices[0].delta.content`` of the upstream stream."""
        try:
            response = await self._client().post(self._url, data=self._body(request), headers=self._headers)
        except (aiohttp.ClientConnectionError, OSError) as exc:
            raise EngineError(str(ErrorCode.UPSTREAM_UNAVAILABLE), f"cannot reach the upstream: {exc}") from None
        except TimeoutError:
            raise EngineError(str(ErrorCode.UPSTREAM_TIMEOUT), "the upstream did not accept the connection") from None
        try:
            if response.status != 200:
                body = (await response.text(errors="replace"))[:MAX_ERROR_BODY_CHARS]
                raise EngineError(str(ErrorCode.UPSTREAM_ERROR), f"the upstream answered {response.status}: {body}")
            async for text in self._texts(response, request):
                yield text
        except TimeoutError:
            raise EngineError(str(ErrorCode.UPSTREAM_TIMEOUT), "the upstream stopped sending") from None
        except aiohttp.ClientPayloadError as exc:
            raise EngineError(str(ErrorCode.UPSTREAM_ERROR), f"the upstream stream broke: {exc}") from None
        finally:
            # Closing (not releasing) drops the TCP connection now, even mid-body: the upstream sees
            # its client go away and stops generating.  Runs on cancel, on max_tokens and on errors.
            response.close()

    async def _texts(self, response: aiohttp.ClientResponse, request: GenerationRequest) -> AsyncIterator[str]:
        lines = LineSplitter()
        async for chunk in response.content.iter_any():
            for line in lines.feed(chunk):
                if not line.startswith(_DATA):
                    continue
                payload = line[len(_DATA) :].strip()
                if payload == "[DONE]":
                    return
                text = _delta_text(payload, request)
                if text:
                    yield text

    async def aclose(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            await asyncio.sleep(0)


def _delta_text(payload: str, request: GenerationRequest) -> str | None:
    """A chunk's ``choices[0].delta.content``; a ``usage`` it carries (the upstream's prompt count) is reported."""
    try:
        chunk: Any = orjson.loads(payload)
        usage = chunk.get("usage")
        if isinstance(usage, dict) and isinstance(prompt := usage.get("prompt_tokens"), int) and prompt >= 0:
            request.report_prompt_tokens(prompt)
        choices = chunk.get("choices") or []
        if not choices:
            return None  # e.g. a usage-only chunk
        content = (choices[0].get("delta") or {}).get("content")
    except (orjson.JSONDecodeError, AttributeError, TypeError) as exc:
        raise EngineError(str(ErrorCode.UPSTREAM_ERROR), f"malformed upstream chunk: {payload[:80]!r}") from exc
    if content is not None and not isinstance(content, str):
        raise EngineError(str(ErrorCode.UPSTREAM_ERROR), "upstream delta content is not a string")
    return content
