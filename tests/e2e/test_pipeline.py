"""End to end over real processes: gateway -> NATS -> runners -> NATS -> streamer -> SSE client."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import orjson
import pytest
from websockets.asyncio.client import connect

from tests.helpers import STOPPED_TOKENS, eventually
from tokenrelay.testing.http import create_stream, metric, post, wait_finished
from tokenrelay.testing.procs import NatsServer, System, nats_server, system
from tokenrelay.testing.sse import read_stream
from tokenrelay.testing.synthetic import expected_text

TOKENS_PER_S = 50
RUNNER_CAPACITY = 10
PACE_ARGS = [
    "--synthetic-tokens-per-s", str(TOKENS_PER_S), "--synthetic-ttft-ms", "20",
    "--max-concurrency", str(RUNNER_CAPACITY),
]  # fmt: skip
LENGTH_TOKENS = 100_000  # the synthetic text's natural length at `sut`: no text ends before its max_tokens
RUNNER_ARGS = [*PACE_ARGS, "--synthetic-length-tokens", str(LENGTH_TOKENS)]


@pytest.fixture(scope="module")
def sut(nats: NatsServer) -> Iterator[System]:
    with system(nats.url, runners=2, runner_args=RUNNER_ARGS) as running:
        yield running


@pytest.fixture(scope="module")
def natural() -> Iterator[System]:
    """A system whose texts have the synthetic engine's own natural lengths, 16 to 63 tokens (a NATS of its own: no
    other system's runner takes its streams)."""
    with nats_server() as own, system(own.url, runner_args=PACE_ARGS) as running:
        yield running


async def test_first_delta_arrives_long_before_the_stop_event(sut: System) -> None:
    created = await create_stream(sut.gateway_url, "incremental please", max_tokens=40)
    stream = await read_stream(created["events_url"])
    deltas = stream.of("delta")
    assert len(deltas) >= 10
    # 40 tokens at 50 tokens/s take >= 0.78 s to generate; an all-at-once delivery would show ~0.
    assert stream.terminal.at - deltas[0].at >= 0.4
    assert stream.chunks >= 10, "events must reach the client in separate writes, not one body"


async def test_deltas_concatenate_to_exactly_the_runners_text_with_multibyte_characters(natural: System) -> None:
    prompt = "unicode: café 日本語 🚀"
    created = await create_stream(natural.gateway_url, prompt, max_tokens=1000)
    stream = await read_stream(created["events_url"])
    want = expected_text(prompt, 1000)
    assert stream.text == want
    assert any(ord(ch) > 127 for ch in want), "the synthetic text must exercise multi-byte UTF-8"
    indexes = [e.json()["index"] for e in stream.of("delta")]
    assert indexes == sorted(indexes) and len(set(indexes)) == len(indexes)
    assert stream.terminal.event == "stop"
    assert stream.terminal.json()["finish_reason"] == "stop"
    assert stream.terminal.json()["tokens"] == indexes[-1]


async def test_sse_response_carries_the_contract_headers_and_event_order(sut: System) -> None:
    created = await create_stream(sut.gateway_url, "headers", max_tokens=3)
    stream = await read_stream(created["events_url"])
    assert stream.status == 200
    assert stream.headers["Content-Type"].startswith("text/event-stream")
    assert stream.headers["Cache-Control"] == "no-cache"
    assert stream.headers["X-Accel-Buffering"] == "no"
    names = [e.event for e in stream.events]
    assert names[0] == "start" and names[-1] == "stop"
    assert set(names[1:-1]) == {"delta"}
    start = stream.events[0].json()
    assert start["stream_id"] == created["id"] and start["model"] == "synthetic"
    epoch = stream.events[0].id.split(":")[0]  # type: ignore[union-attr]
    assert [e.id for e in stream.of("delta")] == [f"{epoch}:{e.json()['index']}" for e in stream.of("delta")]


async def test_max_tokens_ends_the_stream_with_finish_reason_length(sut: System) -> None:
    created = await create_stream(sut.gateway_url, "long one", max_tokens=5)
    stream = await read_stream(created["events_url"])
    assert stream.terminal.json() | {"ttft_ms": None} == {
        "finish_reason": "length",
        "tokens": 5,
        "ttft_ms": None,
        "prompt_tokens": 3,  # the synthetic engine's count: the words of "user: long one"
    }
    assert stream.text == expected_text("long one", 5, LENGTH_TOKENS)


async def test_reader_connecting_after_the_stream_finished_gets_the_whole_text(sut: System) -> None:
    created = await create_stream(sut.gateway_url, "late reader", max_tokens=30)
    await wait_finished(sut.gateway_url, created["id"])
    stream = await read_stream(created["events_url"])
    assert next(e.event for e in stream.events) == "start"
    assert stream.text == expected_text("late reader", 30, LENGTH_TOKENS)


async def test_reader_connecting_mid_stream_gets_the_whole_text_from_the_start(sut: System) -> None:
    created = await create_stream(sut.gateway_url, "mid-stream reader", max_tokens=40)
    first = asyncio.create_task(read_stream(created["events_url"]))
    await _wait_for_tokens(sut, 3)  # some tokens have been produced; the exact number does not matter
    late = await read_stream(created["events_url"])
    early = await first
    assert late.text == early.text == expected_text("mid-stream reader", 40, LENGTH_TOKENS)


async def test_two_runners_share_a_burst_of_20_streams(sut: System) -> None:
    before = [await metric(r.url, "tokenrelay_runner_streams_total") for r in sut.runners]
    prompts = [f"burst {i}" for i in range(20)]
    created = await asyncio.gather(*(create_stream(sut.gateway_url, p, max_tokens=40) for p in prompts))
    streams = await asyncio.gather(*(read_stream(c["events_url"]) for c in created))
    for prompt, stream in zip(prompts, streams, strict=True):
        assert stream.text == expected_text(prompt, 40, LENGTH_TOKENS)
    after = [await metric(r.url, "tokenrelay_runner_streams_total") for r in sut.runners]
    served = [a - b for a, b in zip(after, before, strict=True)]
    assert sum(served) == 20
    # Each runner generates at most RUNNER_CAPACITY streams at once, so both must have taken some.
    assert all(n > 0 for n in served), served


async def test_ws_stop_mid_stream_cancels_and_the_runner_produces_no_further_tokens(sut: System) -> None:
    control_url = sut.gateway_url.replace("http", "ws") + "/v1/control"
    async with connect(control_url) as ws:
        start = {"type": "start", "prompt": "stop me", "max_tokens": STOPPED_TOKENS, "ref": "s1"}
        await ws.send(orjson.dumps(start).decode())
        started = orjson.loads(await ws.recv())
        assert started["type"] == "started" and started["ref"] == "s1"
        reader = asyncio.create_task(read_stream(started["events_url"]))
        await _wait_for_tokens(sut, 3)
        await ws.send(orjson.dumps({"type": "stop", "stream_id": started["stream_id"], "ref": 7}).decode())
        stopped = orjson.loads(await ws.recv())
        tokens_at_stop = sum([await metric(r.url, "tokenrelay_runner_tokens_total") for r in sut.runners])
    assert stopped == {
        "type": "stopped", "stream_id": started["stream_id"], "tokens": stopped["tokens"],
        "finish_reason": "cancelled", "halted_ts": stopped["halted_ts"], "ref": 7,
    }  # fmt: skip
    assert isinstance(stopped["halted_ts"], float)
    stream = await reader
    assert stream.terminal.event == "stop"
    assert stream.terminal.json()["finish_reason"] == "cancelled"
    assert stream.terminal.json()["tokens"] == stopped["tokens"] == stream.of("delta")[-1].json()["index"]
    assert stopped["tokens"] >= 3
    assert stream.text == expected_text("stop me", stopped["tokens"], LENGTH_TOKENS)
    # No generation left on any runner (this module's other streams have all ended): nothing can add a token now.
    await eventually(
        lambda: _runners_sum(sut, "tokenrelay_runner_active_streams"),
        lambda active: active == 0,
        what="the runners' generations to end",
    )
    assert sum([await metric(r.url, "tokenrelay_runner_tokens_total") for r in sut.runners]) == tokens_at_stop
    assert sum([await metric(r.url, "tokenrelay_runner_tokens_after_cancel_total") for r in sut.runners]) == 0


async def _runners_sum(sut: System, name: str) -> float:
    """A metric summed over every runner of ``sut``."""
    return sum([await metric(runner.url, name) for runner in sut.runners])


async def _wait_for_tokens(sut: System, count: int) -> None:
    """Wait until the runners have produced ``count`` more tokens (tests in this module run one at a time)."""
    start = await _runners_sum(sut, "tokenrelay_runner_tokens_total")
    await eventually(
        lambda: _runners_sum(sut, "tokenrelay_runner_tokens_total"),
        lambda produced: produced - start >= count,
        what=f"{count} more tokens from the runners",
    )


async def test_http_stop_is_idempotent_and_a_finished_stream_answers_its_final_state(sut: System) -> None:
    created = await create_stream(sut.gateway_url, "finish first", max_tokens=3)
    final = await wait_finished(sut.gateway_url, created["id"])
    assert final["finish_reason"] == "length" and final["tokens"] == 3
    for _ in range(2):
        status, body = await post(created["stop_url"])
        assert (status, body) == (200, {"id": created["id"], "finish_reason": "length", "tokens": 3})


async def test_http_stop_mid_stream_answers_cancelled_with_the_token_count(sut: System) -> None:
    created = await create_stream(sut.gateway_url, "http stop", max_tokens=STOPPED_TOKENS)
    reader = asyncio.create_task(read_stream(created["events_url"]))
    await _wait_for_tokens(sut, 3)
    status, body = await post(created["stop_url"])
    assert status == 200 and body["finish_reason"] == "cancelled"
    again_status, again = await post(created["stop_url"])
    assert (again_status, again) == (200, body)
    stream = await reader
    assert stream.terminal.json()["tokens"] == body["tokens"]
    final = await wait_finished(sut.gateway_url, created["id"])
    assert final["finish_reason"] == "cancelled" and final["tokens"] == body["tokens"]


async def test_status_reports_state_finish_reason_tokens_and_ttft(sut: System) -> None:
    created = await create_stream(sut.gateway_url, "status", max_tokens=4)
    final = await wait_finished(sut.gateway_url, created["id"])
    assert final["id"] == created["id"]
    assert final["finish_reason"] == "length" and final["tokens"] == 4
    assert final["ttft_ms"] is not None and final["ttft_ms"] >= 0


async def test_a_reader_that_disconnects_mid_stream_is_released_by_the_streamer(sut: System) -> None:
    created = await create_stream(sut.gateway_url, "walk away", max_tokens=STOPPED_TOKENS)
    baseline = await metric(sut.streamer_url, "tokenrelay_streamer_readers_open")
    stream = await read_stream(created["events_url"], stop_after=3)  # closes the connection after 3 events
    assert len(stream.events) == 3
    await eventually(
        lambda: metric(sut.streamer_url, "tokenrelay_streamer_readers_open"),
        lambda readers: readers == baseline,
        what="the streamer to release the reader whose client had gone",
    )
    await post(created["stop_url"])


async def test_a_long_flush_interval_merges_fast_tokens_into_few_writes_with_the_exact_text() -> None:
    # 200 tokens at 400 tokens/s, each published alone, to a streamer that writes to a reader at most every 250 ms:
    # the ~0.5 s stream reaches the client in a handful of merged writes (one shared flush timer, none per reader).
    # A NATS of its own: on the shared one, this module's other runners (other pacing, other text length) would
    # take the job too.
    runner = ["--synthetic-tokens-per-s", "400", "--synthetic-ttft-ms", "0", "--publish-interval-ms", "0"]
    runner += ["--synthetic-length-tokens", "1000"]
    with (
        nats_server() as own_nats,
        system(own_nats.url, runner_args=runner, streamer_args=["--flush-interval-ms", "250"]) as merged,
    ):
        created = await create_stream(merged.gateway_url, "merge me", max_tokens=200)
        stream = await read_stream(created["events_url"])
    assert stream.terminal.event == "stop", stream.terminal.json()
    assert stream.text == expected_text("merge me", 200, length_tokens=1000)
    assert stream.terminal.json()["tokens"] == 200
    assert 1 <= len(stream.of("delta")) <= 20, "each write holds whatever arrived during the interval"
