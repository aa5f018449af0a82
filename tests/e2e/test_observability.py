"""Every process exposes the metrics an operator needs, and logs one structured line per stream lifecycle event."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from websockets.asyncio.client import connect

from tests.helpers import STOPPED_TOKENS, eventually
from tokenrelay.runtime.lifecycle import LifecycleEvent, format_line
from tokenrelay.testing.http import (
    create_stream,
    get_json,
    metric,
    post,
    stalled_reader,
    wait_finished,
    wait_for_metric,
)
from tokenrelay.testing.procs import NatsServer, System, system
from tokenrelay.testing.sse import read_stream

# -- the log line format (sans-I/O) ---------------------------------------------------------------


def test_a_lifecycle_line_starts_with_event_role_and_stream_id() -> None:
    line = format_line(LifecycleEvent.CREATED, "gateway", "abc123", {"model": "synthetic", "max_tokens": 40})
    assert line == "event=stream.created role=gateway stream_id=abc123 model=synthetic max_tokens=40"


def test_a_lifecycle_line_leaves_out_none_values() -> None:
    line = format_line(LifecycleEvent.FINISHED, "runner", "s", {"error_code": None, "tokens": 3})
    assert line == "event=stream.finished role=runner stream_id=s tokens=3"


def test_a_lifecycle_line_quotes_values_that_would_break_the_format() -> None:
    line = format_line(LifecycleEvent.FEEDBACK, "gateway", "s", {"comment": 'a b="c"\nevent=x', "empty": ""})
    assert line == r'event=stream.feedback role=gateway stream_id=s comment="a b=\"c\"\nevent=x" empty=""'


def test_a_lifecycle_line_writes_floats_with_millisecond_precision_and_bools_as_words() -> None:
    line = format_line(
        LifecycleEvent.FIRST_TOKEN, "runner", "s", {"ttft_ms": 12.34567, "whole": 3.0, "live": True, "inf": math.inf}
    )
    assert line == "event=stream.first_token role=runner stream_id=s ttft_ms=12.346 whole=3 live=true inf=inf"


# -- the running system ---------------------------------------------------------------------------

TOKENS_PER_S = 50
LONG_TEXTS = ["--synthetic-length-tokens", "100000"]


@pytest.fixture(scope="module")
def sut(nats: NatsServer) -> Iterator[System]:
    info = ["--log-level", "INFO"]
    with system(
        nats.url,
        runner_args=[*info, "--synthetic-tokens-per-s", str(TOKENS_PER_S), "--synthetic-ttft-ms", "0", *LONG_TEXTS],
        gateway_args=info,
        streamer_args=[*info, "--max-reader-buffer-bytes", "4096", "--socket-send-buffer-bytes", "1"],
    ) as running:
        yield running


_LINE = re.compile(r"(\w+)=(\"(?:[^\"\\]|\\.)*\"|\S*)")


def lifecycle(sut: System, role: str, stream_id: str) -> list[dict[str, str]]:
    """The lifecycle lines one role logged for one stream, parsed into fields."""
    lines = Path(sut.log_dir, f"{role}.log").read_text(errors="replace").splitlines()
    found = []
    for line in lines:
        if "tokenrelay.lifecycle" in line and f"stream_id={stream_id}" in line:
            fields = line.split("tokenrelay.lifecycle ", 1)[1]
            found.append({key: value.strip('"') for key, value in _LINE.findall(fields)})
    return found


async def wait_for_lines(sut: System, role: str, stream_id: str, events: set[str]) -> list[dict[str, str]]:
    """Wait until ``role`` has logged each of ``events`` for the stream; its lifecycle lines for the stream."""

    async def lines() -> list[dict[str, str]]:
        return lifecycle(sut, role, stream_id)

    return await eventually(
        lines, lambda found: events <= {line["event"] for line in found}, what=f"{role} to log {events} for {stream_id}"
    )


async def test_a_finished_stream_tells_its_story_in_one_line_per_event_in_every_process(sut: System) -> None:
    stream = await create_stream(sut.gateway_url, "observe me", max_tokens=20)
    await read_stream(stream["events_url"])
    stream_id = stream["id"]

    gateway = await wait_for_lines(sut, "gateway", stream_id, {"stream.created", "stream.dispatched"})
    runner_events = {"stream.started", "stream.first_token", "stream.finished"}
    runner = await wait_for_lines(sut, "runner-0", stream_id, runner_events)
    streamer = await wait_for_lines(sut, "streamer-0", stream_id, {"reader.opened", "reader.closed"})

    assert [line["event"] for line in gateway] == ["stream.created", "stream.dispatched"]
    assert [line["event"] for line in runner] == ["stream.started", "stream.first_token", "stream.finished"]
    assert all(line["role"] == role for lines, role in ((gateway, "gateway"), (runner, "runner")) for line in lines)
    finished = runner[-1]
    assert (finished["finish_reason"], finished["tokens"]) == ("length", "20")
    assert float(finished["ttft_ms"]) >= 0 and float(finished["tokens_per_s"]) > 0
    assert streamer[-1]["event"] == "reader.closed" and streamer[-1]["outcome"] == "finished"


async def test_a_stopped_stream_logs_the_stop_and_its_outcome(sut: System) -> None:
    stream = await create_stream(sut.gateway_url, "stop me", max_tokens=STOPPED_TOKENS)
    stream_id = stream["id"]
    await wait_for_lines(sut, "runner-0", stream_id, {"stream.first_token"})
    status, body = await post(f"{sut.gateway_url}/v1/streams/{stream_id}/stop")
    assert status == 200 and body["finish_reason"] == "cancelled"

    gateway = await wait_for_lines(sut, "gateway", stream_id, {"stream.stop_requested", "stream.stopped"})
    runner = await wait_for_lines(sut, "runner-0", stream_id, {"stream.finished"})
    assert [line["reason"] for line in gateway if line["event"] == "stream.stop_requested"] == ["client"]
    stopped = next(line for line in gateway if line["event"] == "stream.stopped")
    assert stopped["finish_reason"] == "cancelled" and float(stopped["stop_ms"]) >= 0
    assert (runner[-1]["finish_reason"], runner[-1]["cancel_reason"]) == ("cancelled", "client")


async def test_feedback_is_logged_with_its_rating(sut: System) -> None:
    stream = await create_stream(sut.gateway_url, "rate me", max_tokens=3)
    await wait_finished(sut.gateway_url, stream["id"])
    async with connect(sut.gateway_url.replace("http", "ws") + "/v1/control") as ws:
        feedback = {"type": "feedback", "stream_id": stream["id"], "rating": "down", "comment": "too short"}
        await ws.send(orjson.dumps(feedback).decode())
        assert '"ack"' in str(await ws.recv())
    lines = await wait_for_lines(sut, "gateway", stream["id"], {"stream.feedback"})
    feedback = next(line for line in lines if line["event"] == "stream.feedback")
    assert (feedback["rating"], feedback["comment_chars"]) == ("down", "9")


async def test_the_gateway_counts_open_control_sockets_and_streams_by_state(sut: System) -> None:
    url = sut.gateway_url
    async with connect(url.replace("http", "ws") + "/v1/control"), connect(url.replace("http", "ws") + "/v1/control"):
        assert await wait_for_metric(url, "tokenrelay_gateway_control_sockets_open", 2) == 2
    await eventually(
        lambda: metric(url, "tokenrelay_gateway_control_sockets_open"),
        lambda sockets: sockets == 0,
        what="the gateway to count its closed control sockets gone",
    )
    assert await metric(url, "tokenrelay_gateway_streams_queued") == 0
    assert await metric(url, "tokenrelay_gateway_streams_created_total") >= 1


async def test_errors_are_counted_by_code_in_the_process_that_answered_them(sut: System) -> None:
    before_gateway = await metric(sut.gateway_url, "tokenrelay_gateway_errors_total", code="bad_request")
    before_streamer = await metric(sut.streamer_url, "tokenrelay_streamer_errors_total", code="not_found")
    status, body = await post(f"{sut.gateway_url}/v1/streams", {"prompt": ""})
    assert (status, body["error"]["code"]) == (400, "bad_request")
    status, body = await get_json(f"{sut.streamer_url}/v1/streams/{'0' * 32}/events")
    assert (status, body["error"]["code"]) == (404, "not_found")
    assert await metric(sut.gateway_url, "tokenrelay_gateway_errors_total", code="bad_request") == before_gateway + 1
    assert await metric(sut.streamer_url, "tokenrelay_streamer_errors_total", code="not_found") == before_streamer + 1


async def test_the_runner_reports_ttft_decode_speed_tokens_and_cancellations(sut: System) -> None:
    stream = await create_stream(sut.gateway_url, "speed", max_tokens=10)
    await wait_finished(sut.gateway_url, stream["id"])
    runner = sut.runners[0].url
    assert await metric(runner, "tokenrelay_runner_ttft_seconds_count") >= 1
    assert await metric(runner, "tokenrelay_runner_stream_tokens_per_second_count") >= 1
    assert await metric(runner, "tokenrelay_runner_tokens_total") >= 10
    assert await metric(runner, "tokenrelay_runner_capacity") >= 1
    assert await metric(runner, "tokenrelay_runner_active_streams") >= 0
    assert "tokenrelay_runner_cancellations_total" in await _exposition(runner)


async def test_the_streamer_reports_open_readers_token_lag_and_tokens_delivered(sut: System) -> None:
    streamer = sut.streamer_url
    lag_before = await metric(streamer, "tokenrelay_streamer_token_lag_seconds_count")
    delivered_before = await metric(streamer, "tokenrelay_streamer_tokens_delivered_total")
    # A stream that runs until it is stopped: its reader is open, and gets live tokens, however late it comes.
    stream = await create_stream(sut.gateway_url, "lag", max_tokens=STOPPED_TOKENS)
    async with aiohttp.ClientSession() as session, session.get(stream["events_url"]) as response:
        assert await wait_for_metric(streamer, "tokenrelay_streamer_readers_open", 1) >= 1
        await wait_for_metric(streamer, "tokenrelay_streamer_token_lag_seconds_count", lag_before + 1)
        status, stopped = await post(f"{sut.gateway_url}/v1/streams/{stream['id']}/stop")
        assert status == 200 and stopped["finish_reason"] == "cancelled"
        await response.read()
    assert await metric(streamer, "tokenrelay_streamer_token_lag_seconds_count") > lag_before
    # Tokens that arrive before the reader's subscription come from history and are not live.
    delivered = await metric(streamer, "tokenrelay_streamer_tokens_delivered_total") - delivered_before
    assert 0 < delivered <= stopped["tokens"]


async def test_a_reader_closed_as_a_slow_consumer_is_counted(sut: System) -> None:
    before = await metric(sut.streamer_url, "tokenrelay_streamer_slow_consumer_disconnects_total")
    stream = await create_stream(sut.gateway_url, "never read " * 50, max_tokens=2000)
    sock = await asyncio.to_thread(stalled_reader, stream["events_url"], receive_buffer_bytes=1024)
    try:
        await wait_for_metric(sut.streamer_url, "tokenrelay_streamer_slow_consumer_disconnects_total", before + 1)
        await wait_for_metric(sut.streamer_url, "tokenrelay_streamer_errors_total", 1, code="slow_consumer")
    finally:
        sock.close()
    await post(f"{sut.gateway_url}/v1/streams/{stream['id']}/stop")


async def _exposition(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        return await response.text()


async def test_every_process_reports_its_memory_and_cpu(sut: System) -> None:
    for url in (sut.gateway_url, sut.streamer_url, sut.runners[0].url):
        assert await metric(url, "process_resident_memory_bytes") > 0
        assert await metric(url, "process_cpu_seconds_total") > 0
