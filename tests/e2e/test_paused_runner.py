"""A runner that is paused (SIGSTOP), not gone, stays a member of the runners' queue group, and NATS still hands it
its share of the offers, which it cannot answer.  New streams start on the live runner all the same: each is
offered once through the group and, when that offer goes unanswered, to the live runner alone; the gateway counts
each offer by where it went and how it ended."""

from __future__ import annotations

import asyncio
import os
import signal

from tests.helpers import eventually
from tokenrelay.testing.http import create_stream, metric
from tokenrelay.testing.offers import OfferLog
from tokenrelay.testing.procs import NatsServer, system
from tokenrelay.testing.sse import read_stream
from tokenrelay.testing.synthetic import expected_text, synthetic_args

STREAMS = 16
"""Streams started while a runner is paused: the odds that none of their offers through the queue group goes to it
are 1 in 65,536."""
TOKENS = 5
LENGTH_TOKENS = 1_000
RUNNER = synthetic_args(tokens_per_s=1_000, length_tokens=LENGTH_TOKENS)
STALE = ["--runner-stale-after-s", "1"]
OFFERS = "tokenrelay_gateway_job_offers_total"


def test_new_streams_start_on_the_live_runner_while_another_runner_is_paused(nats: NatsServer) -> None:
    with system(nats.url, runner_args=RUNNER, runners=2, gateway_args=STALE) as sut:
        paused = sut.runners[0]

        async def main() -> None:
            await eventually(
                lambda: metric(sut.gateway_url, "tokenrelay_gateway_runners_available"), lambda n: n == 1,
                what="the paused runner counted out",
            )  # fmt: skip
            offers = await OfferLog.watching(sut.nats_url)
            prompts = [f"while paused {i}" for i in range(STREAMS)]
            created = await asyncio.gather(*(create_stream(sut.gateway_url, p, max_tokens=TOKENS) for p in prompts))
            streams = await asyncio.gather(*(read_stream(c["events_url"]) for c in created))
            for prompt, stream in zip(prompts, streams, strict=True):
                assert stream.terminal.event == "stop", stream.terminal
                assert stream.text == expected_text(prompt, TOKENS, LENGTH_TOKENS)
            offered = [offers.of(c["id"]) for c in created]
            await offers.close()
            assert all(len(o.group) == 1 for o in offered), "a stream went through the queue group more than once"
            retried = [o for o in offered if o.addressed]
            assert retried, "no offer went to the paused runner (this run showed nothing)"
            assert len({subject for o in retried for subject in o.addressed}) == 1, "the paused runner was addressed"
            assert await metric(sut.gateway_url, OFFERS, to="group") == STREAMS
            assert await metric(sut.gateway_url, OFFERS, to="group", outcome="timed_out") >= len(retried)
            addressed = sum(len(jobs) for o in retried for jobs in o.addressed.values())
            assert await metric(sut.gateway_url, OFFERS, to="runner") == addressed

        os.kill(paused.process.pid, signal.SIGSTOP)
        try:
            asyncio.run(main())
        finally:
            os.kill(paused.process.pid, signal.SIGCONT)
