"""Resume anywhere: a reader that keeps dropping its connection assembles exactly the uninterrupted text."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections.abc import Iterator

import orjson
import pytest

from tokenrelay.testing.http import create_stream, post, wait_finished, wait_for_metric
from tokenrelay.testing.procs import NatsServer, System, nats_server, system
from tokenrelay.testing.sse import Stream, read_stream
from tokenrelay.testing.synthetic import expected_text

RUNNER_ARGS = ["--synthetic-tokens-per-s", "100", "--synthetic-ttft-ms", "0", "--synthetic-length-tokens", "100000"]


@pytest.fixture(scope="module", params=["shared", "per-stream"])
def sut(nats: NatsServer, request: pytest.FixtureRequest) -> Iterator[System]:
    """Two streamers, with either way of subscribing to live events (``--live-subscription``)."""
    streamer_args = ["--live-subscription", request.param]
    with system(nats.url, streamers=2, runner_args=RUNNER_ARGS, streamer_args=streamer_args) as running:
        yield running


def _events_url(streamer_url: str, stream_id: str) -> str:
    return f"{streamer_url}/v1/streams/{stream_id}/events"


async def _read_from(url: str, cursor: str | None, stop_after: int | None = None) -> Stream:
    headers = {"Last-Event-ID": cursor} if cursor else None
    return await read_stream(url, headers=headers, stop_after=stop_after)


async def test_a_reader_dropping_20_times_on_alternating_streamers_gets_exactly_the_text(sut: System) -> None:
    # A stream far longer than the test (300 s of tokens), stopped after the 20th drop: exactly 20 drops however
    # slow the machine is (a stream that ended by itself let a slow run drop only 5 times).
    rng = random.Random(7)
    created = await create_stream(sut.gateway_url, "resume twenty times", max_tokens=30_000)
    text, cursor = "", None
    for drop in range(20):
        streamer = sut.streamers[drop % 2]
        part = await _read_from(_events_url(streamer.url, created["id"]), cursor, stop_after=rng.randint(2, 14))
        assert part.events[-1].event not in ("stop", "error")
        text += part.text
        cursor = part.events[-1].id or cursor
    status, _ = await post(created["stop_url"])
    assert status == 200
    rest = await _read_from(_events_url(sut.streamers[0].url, created["id"]), cursor)
    text += rest.text
    end = rest.terminal.json()
    assert end["finish_reason"] == "cancelled"
    assert text == expected_text("resume twenty times", end["tokens"], 100000)


async def test_resuming_after_the_terminal_event_returns_the_terminal_event_again(sut: System) -> None:
    created = await create_stream(sut.gateway_url, "finished", max_tokens=10)
    whole = await read_stream(created["events_url"])
    again = await _read_from(_events_url(sut.streamers[1].url, created["id"]), whole.terminal.id)
    assert [e.event for e in again.events] == ["stop"]
    assert again.terminal.json() == whole.terminal.json()


async def test_a_cursor_of_another_epoch_is_410_resume_unavailable(sut: System) -> None:
    created = await create_stream(sut.gateway_url, "forged", max_tokens=5)
    forged = await _read_from(created["events_url"], "deadbeef:3")
    assert forged.status == 410
    assert orjson.loads(forged.body)["error"]["code"] == "resume_unavailable"


async def test_a_cursor_past_the_end_gets_a_bad_request_error_event_and_no_text(sut: System) -> None:
    # A cursor inside a batch is refused the same way; tests/unit/streamer/test_replay.py covers it without timing.
    created = await create_stream(sut.gateway_url, "cursor games", max_tokens=5)
    whole = await read_stream(created["events_url"])
    epoch = whole.events[0].id.split(":")[0]  # type: ignore[union-attr]
    bad = await _read_from(created["events_url"], f"{epoch}:999")
    assert bad.terminal.event == "error"
    assert bad.terminal.json()["code"] == "bad_request"
    assert not bad.of("delta")


async def test_resume_on_a_second_streamer_after_the_first_was_killed() -> None:
    with nats_server() as own, system(own.url, streamers=2, runner_args=RUNNER_ARGS) as sut:
        created = await create_stream(sut.gateway_url, "survive a crash", max_tokens=200)
        first = await read_stream(_events_url(sut.streamers[0].url, created["id"]), stop_after=40)
        os.kill(sut.streamers[0].process.pid, signal.SIGKILL)
        rest = await _read_from(_events_url(sut.streamers[1].url, created["id"]), first.events[-1].id)
    assert first.text + rest.text == expected_text("survive a crash", 200, 100000)


async def test_a_cursor_into_expired_history_gets_resume_unavailable_never_a_partial_stream() -> None:
    args = ["--history-ttl-s", "1"]
    # The reader connects before the first token and the tokens come 20 ms apart (twice the flush interval), so
    # the stream arrives as several deltas and the cursor below lies inside it: a reader that connected late got
    # the tokens from history merged into one delta, and there was no second one (failed once in CI).
    paced = ["--synthetic-ttft-ms", "300", "--synthetic-tokens-per-s", "50"]
    with (
        nats_server() as own,
        system(own.url, runner_args=RUNNER_ARGS + args + paced, streamer_args=args, gateway_args=args) as sut,
    ):
        created = await create_stream(sut.gateway_url, "short memory", max_tokens=5)
        whole = await read_stream(created["events_url"])
        await wait_finished(sut.gateway_url, created["id"])
        for _ in range(100):
            await asyncio.sleep(0.1)
            late = await _read_from(created["events_url"], whole.of("delta")[1].id)
            if late.events and late.terminal.event == "error":
                break
        assert late.terminal.json()["code"] == "resume_unavailable"
        assert not late.of("delta")


async def test_a_streamer_shutting_down_ends_readers_with_a_retryable_error_and_they_resume_elsewhere() -> None:
    with nats_server() as own, system(own.url, streamers=2, runner_args=RUNNER_ARGS) as sut:
        # A stream far longer than the test, stopped once its reader resumed: the shutdown always comes mid-stream
        # however slow the machine (a 3 s stream could have ended before it).
        created = await create_stream(sut.gateway_url, "rolling restart", max_tokens=30_000)
        reader = asyncio.create_task(read_stream(_events_url(sut.streamers[0].url, created["id"])))
        await wait_for_metric(sut.streamers[0].url, "tokenrelay_streamer_readers_open", 1)
        sut.streamers[0].process.send_signal(signal.SIGTERM)
        first = await reader
        assert first.terminal.event == "error"
        assert first.terminal.json()["code"] == "shutting_down"
        resumed = await _read_from(_events_url(sut.streamers[1].url, created["id"]), first.of("delta")[-1].id, 3)
        assert resumed.events[-1].event == "delta"
        status, _ = await post(created["stop_url"])
        assert status == 200
        rest = await _read_from(_events_url(sut.streamers[1].url, created["id"]), resumed.events[-1].id)
        assert sut.streamers[0].process.wait(timeout=10) == 0
    end = rest.terminal.json()
    assert end["finish_reason"] == "cancelled"
    assert first.text + resumed.text + rest.text == expected_text("rolling restart", end["tokens"], 100000)
