"""Streams over an OpenAI- or Anthropic-compatible API: one ``POST`` whose answer is the stream.

The body's bytes go through the sans-I/O :class:`~tokenrelay.client.sse.SSEDecoder` and the API's
:class:`~tokenrelay.loadtest.apis.StreamAccount` (no SDK: the load generator stays cheap). The run's totals get
the start latency (``POST`` sent → response headers), TTFT (``POST`` sent → first piece of text), the gaps between
pieces (arrival to arrival) and the tokens delivered; no token lag (these APIs carry no producer timestamp).
"""

from __future__ import annotations

import time

import aiohttp

from tokenrelay.client.errors import ProtocolError
from tokenrelay.client.sse import SSEDecoder
from tokenrelay.loadtest.apis import API_PATHS, Api, StreamAccount, api_error_code, new_account, request_body
from tokenrelay.loadtest.codes import error_code
from tokenrelay.loadtest.plan import StreamPlan
from tokenrelay.loadtest.stats import Outcome, RunTotals

EVENT_STREAM = "text/event-stream"
NOT_A_STREAM = "protocol_error"
"""The code of a ``200`` answer that is not an event stream (a server that ignored ``stream: true``)."""


class CompatStreams:
    """Starts and reads streams over ``api`` at ``base_url`` (no ``/v1``), counting into ``totals``."""

    def __init__(self, totals: RunTotals, *, api: Api, base_url: str, model: str) -> None:
        self.totals = totals
        self.api = api
        self.model = model
        self.url = base_url.rstrip("/") + API_PATHS[api]

    async def run(self, session: aiohttp.ClientSession, plan: StreamPlan) -> Outcome:
        """Send one stream's request and read its answer to the end; how the stream ended."""
        body = request_body(self.api, model=self.model, prompt=plan.prompt, max_tokens=plan.max_tokens)
        headers = {"Content-Type": "application/json", "Accept": EVENT_STREAM}
        account = new_account(self.api)
        sent = time.perf_counter()
        try:
            async with session.post(self.url, data=body, headers=headers) as response:
                elapsed_ms = (time.perf_counter() - sent) * 1000
                if response.status != 200:
                    self.totals.rejected.record(elapsed_ms)
                    self.totals.error(api_error_code(response.status, await response.read()))
                    return Outcome.REJECTED
                self.totals.start.record(elapsed_ms)
                if not response.headers.get("Content-Type", "").startswith(EVENT_STREAM):
                    self.totals.error(NOT_A_STREAM)
                    return Outcome.FAILED
                await self._consume(response, account, sent)
        except (aiohttp.ClientError, OSError, ValueError, ProtocolError) as exc:
            self.totals.error(error_code(exc))
            return Outcome.FAILED
        finally:
            self.totals.delivered += account.tokens - account.pieces  # the server's usage corrects the count
        failure = account.failure()
        if failure is None:
            return Outcome.COMPLETED
        self.totals.error(failure)
        return Outcome.FAILED

    async def _consume(self, response: aiohttp.ClientResponse, account: StreamAccount, sent: float) -> None:
        """Read events until the stream's terminal one (or an error, or the body's end)."""
        totals = self.totals
        decoder = SSEDecoder()
        last_arrival: float | None = None
        async for chunk in response.content.iter_any():
            arrival = time.perf_counter()
            for event in decoder.feed(chunk):
                if not account.feed(event):
                    if account.ended:
                        return
                    continue
                totals.delivered += 1
                if last_arrival is None:
                    totals.ttft.record((arrival - sent) * 1000)
                else:
                    totals.inter_token.record((arrival - last_arrival) * 1000)
                last_arrival = arrival
