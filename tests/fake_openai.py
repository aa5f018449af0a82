"""A small OpenAI-compatible server for tests: streams chat chunks and records when its client left."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

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


@dataclass
class FakeUpstream:
    """Serves ``words`` one chunk each ``interval_s``; ``status`` != 200 answers an error instead."""

    words: list[str]
    interval_s: float = 0.02
    status: int = 200
    stall_after: int | None = None
    usage_prompt_tokens: int | None = None
    """When set, a usage-only chunk with this ``prompt_tokens`` follows the words (as ``include_usage`` asks)."""
    calls: list[Call] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/v1"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        call = Call(orjson.loads(await request.read()), headers=dict(request.headers))
        self.calls.append(call)
        if self.status != 200:
            return web.json_response({"error": {"message": "upstream says no"}}, status=self.status)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            for i, word in enumerate(self.words):
                if self.stall_after is not None and i >= self.stall_after:
                    await asyncio.sleep(3600)
                chunk = {
                    "id": "c1",
                    "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": {"content": word}}],
                }
                # Split each event across two writes, mid-character when it has multi-byte ones.
                data = b"data: " + orjson.dumps(chunk) + b"\n\n"
                await response.write(data[: len(data) - 5])
                await response.write(data[len(data) - 5 :])
                call.sent += 1
                await asyncio.sleep(self.interval_s)
            if self.usage_prompt_tokens is not None:
                usage = {"prompt_tokens": self.usage_prompt_tokens, "completion_tokens": len(self.words)}
                await response.write(b"data: " + orjson.dumps({"id": "c1", "choices": [], "usage": usage}) + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
            call.finished = True
        except (asyncio.CancelledError, ConnectionResetError):
            call.disconnected_at = time.monotonic()
            raise
        return response
