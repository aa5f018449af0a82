"""``tokenrelay loadtest`` over the OpenAI and Anthropic APIs against an in-process fake server.

The fake answers every request with fixed events, written in one go, so what is counted does not depend on timing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

from tokenrelay.loadtest.apis import Api
from tokenrelay.loadtest.driver import run_loadtest
from tokenrelay.loadtest.plan import LoadTestConfig, parse_int_mix
from tokenrelay.loadtest.stats import Outcome, RunTotals

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Seen = list[tuple[dict[str, Any], dict[str, str]]]


def sse(obj: object, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(obj) + b"\n\n"


def openai_chunk(content: str | None = None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    return sse({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


async def stream(request: web.Request, body: bytes) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(body)
    return response


async def openai_with_usage(request: web.Request) -> web.StreamResponse:
    # Three chunks, one of them two tokens merged: usage says four.
    usage = sse({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5}})
    body = openai_chunk("a") + openai_chunk("bc") + openai_chunk("d") + openai_chunk(finish="length")
    return await stream(request, body + usage + b"data: [DONE]\n\n")


async def openai_without_done(request: web.Request) -> web.StreamResponse:
    return await stream(request, openai_chunk("a"))


async def openai_overloaded(request: web.Request) -> web.StreamResponse:
    body = {"error": {"message": "too many", "type": "server_error", "code": "overloaded"}}
    return web.json_response(body, status=503)


async def openai_json_answer(request: web.Request) -> web.StreamResponse:
    return web.json_response({"object": "chat.completion", "choices": []})


async def anthropic_message(request: web.Request) -> web.StreamResponse:
    text = [
        sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}, event)
        for piece, event in (("a", "content_block_delta"), ("b", "content_block_delta"))
    ]
    body = (
        sse({"type": "message_start", "message": {"usage": {"input_tokens": 1, "output_tokens": 1}}}, "message_start")
        + sse({"type": "ping"}, "ping")
        + b"".join(text)
        + sse({"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 2}}, "m")
        + sse({"type": "message_stop"}, "message_stop")
    )
    return await stream(request, body)


async def run_against(api: Api, path: str, handler: Handler, *, streams: int = 2) -> tuple[RunTotals, Seen]:
    """A load test over ``api`` against a fake whose ``path`` answers with ``handler``; its totals and the
    (body, headers) of every request the fake saw."""
    seen: Seen = []

    async def recording(request: web.Request) -> web.StreamResponse:
        seen.append((orjson.loads(await request.read()), dict(request.headers)))
        return await handler(request)

    app = web.Application()
    app.router.add_post(path, recording)
    async with TestServer(app, host="127.0.0.1") as server:
        config = LoadTestConfig(
            gateway_url=str(server.make_url("")), api=api, model="m", api_key="k", streams=streams,
            max_tokens=parse_int_mix("4"), quiet=True, drain_s=5,
        )  # fmt: skip
        return (await run_loadtest(config, progress=None)).totals, seen


async def test_openai_streams_count_the_usage_tokens_and_report_ttft_and_gaps_but_no_lag() -> None:
    totals, seen = await run_against(Api.OPENAI, "/v1/chat/completions", openai_with_usage)
    assert totals.outcomes[Outcome.COMPLETED] == 2
    assert totals.errors == {}
    assert totals.delivered == 8
    assert (totals.lost, totals.duplicated) == (0, 0)
    assert totals.ttft.n == 2
    assert totals.inter_token.n == 4  # two gaps between each stream's three chunks
    assert totals.start.n == 2
    assert totals.token_lag.n == totals.history_lag.n == 0
    body, headers = seen[0]
    assert body["model"] == "m" and body["stream"] is True and body["max_tokens"] == 4
    assert headers["Authorization"] == "Bearer k"


async def test_anthropic_streams_count_the_output_tokens_of_the_message_delta() -> None:
    totals, seen = await run_against(Api.ANTHROPIC, "/v1/messages", anthropic_message)
    assert totals.outcomes[Outcome.COMPLETED] == 2
    assert totals.errors == {}
    assert totals.delivered == 4
    assert totals.ttft.n == 2
    assert totals.inter_token.n == 2
    _, headers = seen[0]
    assert headers["x-api-key"] == "k"


async def test_an_error_answer_rejects_the_stream_under_its_code() -> None:
    totals, _ = await run_against(Api.OPENAI, "/v1/chat/completions", openai_overloaded)
    assert totals.outcomes[Outcome.REJECTED] == 2
    assert totals.errors == {"overloaded": 2}
    assert totals.rejected.n == 2


async def test_a_body_that_ends_before_done_fails_the_stream_as_a_connection_error() -> None:
    totals, _ = await run_against(Api.OPENAI, "/v1/chat/completions", openai_without_done, streams=1)
    assert totals.outcomes[Outcome.FAILED] == 1
    assert totals.errors == {"connection_error": 1}
    assert totals.delivered == 1


async def test_an_answer_that_is_not_an_event_stream_fails_as_a_protocol_error() -> None:
    totals, _ = await run_against(Api.OPENAI, "/v1/chat/completions", openai_json_answer, streams=1)
    assert totals.outcomes[Outcome.FAILED] == 1
    assert totals.errors == {"protocol_error": 1}
