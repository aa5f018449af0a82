"""History from the runner's memory: late readers and resumes of a stream its runner still holds are
served by that runner (no broker walk), and everything else by JetStream, with the same text either way."""

from __future__ import annotations

import asyncio

import nats as nats_client
import pytest

from tokenrelay.testing.http import create_stream, metric, post, wait_finished, wait_for_metric
from tokenrelay.testing.procs import nats_server, system
from tokenrelay.testing.sse import read_stream
from tokenrelay.testing.synthetic import expected_text
from tokenrelay.wire import codec, subjects
from tokenrelay.wire.messages import ReplayPage, ReplayRequest
from tokenrelay.wire.replay import decode_page

FETCHES = "tokenrelay_streamer_history_fetches_total"
RUNNER_ARGS = ["--synthetic-tokens-per-s", "100", "--synthetic-ttft-ms", "0", "--synthetic-length-tokens", "100000"]


async def _fetches(streamer_url: str) -> tuple[float, float]:
    return await metric(streamer_url, FETCHES, source="runner"), await metric(streamer_url, FETCHES, source="jetstream")


async def test_a_late_reader_and_a_resume_of_a_running_stream_are_served_by_its_runner_alone() -> None:
    # The streamer is given no memory of the stream's first events, so its first reader reads history too.
    streamer_args = ["--live-subscription", "per-stream"]
    with nats_server() as own, system(own.url, runner_args=RUNNER_ARGS, streamer_args=streamer_args) as sut:
        created = await create_stream(sut.gateway_url, "late to the party", max_tokens=150)
        await asyncio.sleep(0.5)  # ~50 tokens out before anyone reads
        first = await read_stream(created["events_url"], stop_after=4)
        rest = await read_stream(created["events_url"], headers={"Last-Event-ID": first.of("delta")[-1].id or ""})
        assert first.text + rest.text == expected_text("late to the party", 150, 100000)
        assert rest.terminal.json()["finish_reason"] == "length"
        assert await _fetches(sut.streamer_url) == (2, 0)


async def test_a_late_first_reader_is_served_from_the_streamers_memory_and_its_resume_by_the_runner() -> None:
    # The streamer keeps a running stream's first events (16 KiB: ~130 tokens) for its first reader: at 20 tokens/s
    # and with a stream stopped only after that reader, the reader comes within them however slow the machine (at
    # 100 tokens/s a 150-token stream left it 0.8 s).
    slow = ["--synthetic-tokens-per-s", "20", "--synthetic-ttft-ms", "0", "--synthetic-length-tokens", "100000"]
    with nats_server() as own, system(own.url, runner_args=slow) as sut:
        created = await create_stream(sut.gateway_url, "late to the party", max_tokens=30_000)
        # Tokens out before anyone reads: the streamer saw them go by.
        await wait_for_metric(sut.runners[0].url, "tokenrelay_runner_tokens_total", 10)
        first = await read_stream(created["events_url"], stop_after=4)
        status, _ = await post(created["stop_url"])
        assert status == 200
        rest = await read_stream(created["events_url"], headers={"Last-Event-ID": first.of("delta")[-1].id or ""})
        end = rest.terminal.json()
        assert end["finish_reason"] == "cancelled"
        assert first.text + rest.text == expected_text("late to the party", end["tokens"], 100000)
        assert await _fetches(sut.streamer_url) == (1, 0)
        assert await metric(sut.streamer_url, "tokenrelay_streamer_history_reads_skipped_total") == 1


async def test_a_finished_stream_is_still_served_by_its_runner_while_it_lingers() -> None:
    with nats_server() as own, system(own.url, runner_args=RUNNER_ARGS) as sut:
        created = await create_stream(sut.gateway_url, "just ended", max_tokens=20)
        await wait_finished(sut.gateway_url, created["id"])
        whole = await read_stream(created["events_url"])
        assert whole.text == expected_text("just ended", 20, 100000)
        assert await _fetches(sut.streamer_url) == (1, 0)


@pytest.mark.parametrize(
    "runner_args",
    [
        pytest.param(["--replay-linger-s", "0"], id="runner-let-it-go"),
        pytest.param(["--replay-max-bytes-per-stream", "0"], id="runner-keeps-nothing"),
    ],
)
async def test_a_stream_its_runner_no_longer_holds_is_read_from_jetstream(runner_args: list[str]) -> None:
    with nats_server() as own, system(own.url, runner_args=RUNNER_ARGS + runner_args) as sut:
        created = await create_stream(sut.gateway_url, "ask the broker", max_tokens=20)
        await wait_finished(sut.gateway_url, created["id"])
        whole = await read_stream(created["events_url"])
        assert whole.text == expected_text("ask the broker", 20, 100000)
        assert whole.terminal.json()["finish_reason"] == "length"
        runner_reads, jetstream_reads = await _fetches(sut.streamer_url)
        assert runner_reads == 0 and jetstream_reads >= 1


async def test_a_stream_past_the_runners_byte_limit_is_read_whole_from_jetstream() -> None:
    args = [*RUNNER_ARGS, "--replay-max-bytes-per-stream", "2000"]
    streamer_args = ["--live-subscription", "per-stream"]  # no first events from the streamer's memory
    with nats_server() as own, system(own.url, runner_args=args, streamer_args=streamer_args) as sut:
        created = await create_stream(sut.gateway_url, "too long to hold", max_tokens=200)
        await asyncio.sleep(1.0)  # far past 2,000 bytes of events
        whole = await read_stream(created["events_url"])
        assert whole.text == expected_text("too long to hold", 200, 100000)
        runner_reads, jetstream_reads = await _fetches(sut.streamer_url)
        assert runner_reads == 0 and jetstream_reads >= 1


async def test_a_runner_answers_pages_for_its_stream_and_no_one_answers_for_an_unknown_one() -> None:
    with nats_server() as own, system(own.url, runner_args=RUNNER_ARGS) as sut:
        created = await create_stream(sut.gateway_url, "paged", max_tokens=30)
        await wait_finished(sut.gateway_url, created["id"])
        nc = await nats_client.connect(own.url)
        try:
            request = ReplayRequest(stream_id=created["id"], from_seq=2, max_events=3)
            reply = await nc.request(subjects.replay(created["id"]), codec.encode(request), timeout=5)
            page = decode_page(reply.data)
            assert page.header == ReplayPage(stream_id=created["id"], events=3, more=True, held=True)
            assert [codec.decode_event(e).seq for e in page.events] == [2, 3, 4]

            other = subjects.new_stream_id()
            with pytest.raises(nats_client.errors.NoRespondersError):
                await nc.request(subjects.replay(other), codec.encode(ReplayRequest(stream_id=other, max_events=3)))
            # Asked on one stream's subject about another: not answered from this stream's log.
            mixed = await nc.request(
                subjects.replay(created["id"]), codec.encode(ReplayRequest(stream_id=other, max_events=3)), timeout=5
            )
            assert decode_page(mixed.data).header.held is False
        finally:
            await nc.close()
