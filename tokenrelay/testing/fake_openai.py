"""A small OpenAI-compatible server for tests: streams chat chunks (and, on ``/v1/completions``, text completion
chunks) and records when its client left.

Besides the answer's words it can stream reasoning (``reasoning_content`` or ``reasoning`` deltas), tool-call
fragments (``tool_calls`` deltas), a final chunk with a ``finish_reason`` and a usage-only chunk, in that order:
reasoning, words, tool calls, finish, usage.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import orjson
from aiohttp import web

from tokenrelay.cli.supervisor import free_port


@dataclass
class Call:
    """One streaming request the fake upstream served."""

    body: dict[str, object]
    sent: int = 0
    finished: bool = False
    disconnected_at: float | None = None
    headers: dict[str, str] = field(default_factory=dict)
    path: str = "/v1/chat/completions"
    """The route it came to (``/v1/completions`` for a text completion)."""
    peer: str = ""
    """The client's address and port: calls with the same one came over the same kept-alive connection."""


@dataclass(frozen=True)
class Answer:
    """What the fake upstream streams for one request: reasoning, then words, then tool-call fragments, then a
    final chunk with ``finish_reason`` (when set)."""

    words: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tool_fragments: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass
class FakeUpstream:
    """Serves ``words`` one chunk each ``interval_s``; ``status`` != 200 answers an error instead."""

    words: list[str]
    interval_s: float = 0.02
    status: int = 200
    stall_after: int | None = None
    usage_prompt_tokens: int | None = None
    """When set, a usage-only chunk with this ``prompt_tokens`` follows the words (as ``include_usage`` asks); its
    ``completion_tokens`` counts every chunk of content sent."""
    reasoning: list[str] = field(default_factory=list)
    """Reasoning pieces sent before the words, one chunk each, in the delta field ``reasoning_field``."""
    reasoning_field: str = "reasoning_content"
    tool_fragments: list[dict[str, Any]] = field(default_factory=list)
    """Entries of ``delta.tool_calls`` sent after the words, one chunk each (``index``, ``id``?, ``function``)."""
    finish_reason: str | None = None
    """When set, a chunk with an empty delta and this ``finish_reason`` follows the content."""
    answer: Callable[[dict[str, object]], Answer] | None = None
    """When set, what to stream for a request is this function of its body (instead of ``words``, ``reasoning``,
    ``tool_fragments`` and ``finish_reason``): a multi-turn conversation gets the answer its turn calls for."""
    end_after_done_s: float = 0.0
    """A pause between ``data: [DONE]`` and the end of the body (as a server that ends its response in a write of
    its own may make it arrive later)."""
    calls: list[Call] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        app.router.add_post("/v1/completions", self._text_completions)
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/v1"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _answer(self, body: dict[str, object]) -> Answer:
        if self.answer is not None:
            return self.answer(body)
        return Answer(self.words, self.reasoning, self.tool_fragments, self.finish_reason)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        call = Call(orjson.loads(await request.read()), headers=dict(request.headers), peer=_peer(request))
        self.calls.append(call)
        if self.status != 200:
            return web.json_response({"error": {"message": "upstream says no"}}, status=self.status)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        answer = self._answer(call.body)
        try:
            deltas: list[dict[str, Any]] = [{self.reasoning_field: piece} for piece in answer.reasoning]
            deltas += [{"content": word} for word in answer.words]
            deltas += [{"tool_calls": [fragment]} for fragment in answer.tool_fragments]
            for i, delta in enumerate(deltas):
                if self.stall_after is not None and i >= self.stall_after:
                    await asyncio.sleep(3600)
                chunk = {"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}
                # Split each event across two writes, mid-character when it has multi-byte ones.
                data = b"data: " + orjson.dumps(chunk) + b"\n\n"
                await response.write(data[: len(data) - 5])
                await response.write(data[len(data) - 5 :])
                call.sent += 1
                await asyncio.sleep(self.interval_s)
            if answer.finish_reason is not None:
                choice = {"index": 0, "delta": {}, "finish_reason": answer.finish_reason}
                await response.write(b"data: " + orjson.dumps({"id": "c1", "choices": [choice]}) + b"\n\n")
            if self.usage_prompt_tokens is not None:
                usage = {"prompt_tokens": self.usage_prompt_tokens, "completion_tokens": len(deltas)}
                await response.write(b"data: " + orjson.dumps({"id": "c1", "choices": [], "usage": usage}) + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
            call.finished = True
            if self.end_after_done_s:
                await asyncio.sleep(self.end_after_done_s)
        except (asyncio.CancelledError, ConnectionResetError):
            call.disconnected_at = time.monotonic()
            raise
        return response

    async def _text_completions(self, request: web.Request) -> web.StreamResponse:
        """``/v1/completions``: records the body and streams ``words`` as ``text_completion`` chunks
        (``choices[0].text``), then the finish reason and usage when set."""
        body = orjson.loads(await request.read())
        call = Call(body, headers=dict(request.headers), path=request.path, peer=_peer(request))
        self.calls.append(call)
        if self.status != 200:
            return web.json_response({"error": {"message": "upstream says no"}}, status=self.status)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        answer = self._answer(call.body)
        for word in answer.words:
            choice = {"index": 0, "text": word, "logprobs": None, "finish_reason": None}
            data = b"data: " + orjson.dumps({"id": "t1", "object": "text_completion", "choices": [choice]}) + b"\n\n"
            await response.write(data[: len(data) - 5])  # split mid-event, as the chat route does
            await response.write(data[len(data) - 5 :])
            call.sent += 1
            await asyncio.sleep(self.interval_s)
        if answer.finish_reason is not None:
            choice = {"index": 0, "text": "", "logprobs": None, "finish_reason": answer.finish_reason}
            await response.write(b"data: " + orjson.dumps({"id": "t1", "choices": [choice]}) + b"\n\n")
        if self.usage_prompt_tokens is not None:
            usage = {"prompt_tokens": self.usage_prompt_tokens, "completion_tokens": len(answer.words)}
            await response.write(b"data: " + orjson.dumps({"id": "t1", "choices": [], "usage": usage}) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        call.finished = True
        return response


class _Served(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


S = TypeVar("S", bound=_Served)


@contextlib.contextmanager
def served_in_thread(server: S, *, timeout_s: float = 10.0) -> Iterator[S]:
    """Run a fake server on an event loop of its own in a thread while the block runs (a module fixture's lifetime)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(timeout_s)
        yield server
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(timeout_s)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout_s)


def _peer(request: web.Request) -> str:
    """``host:port`` of the request's client connection."""
    peer = request.transport.get_extra_info("peername") if request.transport is not None else None
    return f"{peer[0]}:{peer[1]}" if peer else ""
