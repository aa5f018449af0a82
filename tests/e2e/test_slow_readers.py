"""A client that never reads costs bounded memory and is closed as ``slow_consumer``; others keep flowing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tokenrelay.testing.http import create_stream, metric, stalled_reader, wait_finished, wait_for_metric
from tokenrelay.testing.procs import NatsServer, System, system
from tokenrelay.testing.sse import read_stream
from tokenrelay.testing.synthetic import expected_text

STALLED = 5
LENGTH = 40_000  # ~180 KB of text: well past the kernel's buffers (~24 KiB for a stalled reader) + 128 KiB of ours
TOKENS_PER_S = 5_000
"""Fast, but a pace a reading client keeps up with on a busy CI machine (~8 s in all): the reading client may fall
behind by ~5.8 s of text before it is closed.  Faster paces (7,500 and 15,000 tokens/s) had the reading client closed
on slow CI runs: the test's client shares two cores with a runner, a streamer and NATS at full speed."""
TTFT_MS = 500
"""The readers connect before the first token, so none of them starts behind a history read: live events held
while a busy runner answers one count against the same buffer limit."""
READER_BUFFER_BYTES = 131_072
"""Room for a reading client to fall behind for a moment (at 30,000 tokens/s and 64 KiB, a loaded 2-core machine
closed the one client that reads in 4 of 5 runs)."""


@pytest.fixture(scope="module", params=["off", "on"], ids=lambda v: f"direct-writes-{v}")
def sut(nats: NatsServer, request: pytest.FixtureRequest) -> Iterator[System]:
    with system(
        nats.url,
        runner_args=[
            "--synthetic-tokens-per-s",
            str(TOKENS_PER_S),
            "--synthetic-ttft-ms",
            str(TTFT_MS),
            "--synthetic-length-tokens",
            str(LENGTH),
        ],
        streamer_args=[
            "--max-reader-buffer-bytes",
            str(READER_BUFFER_BYTES),
            "--write-timeout-s",
            "1",
            "--socket-send-buffer-bytes",
            "16384",
            "--direct-writes",
            request.param,
        ],
        gateway_args=["--max-tokens-limit", str(LENGTH)],
    ) as running:
        yield running


async def test_readers_that_never_read_are_closed_as_slow_consumers_while_a_normal_reader_gets_everything(
    sut: System,
) -> None:
    before = await metric(sut.streamer_url, 'tokenrelay_streamer_reader_errors_total{code="slow_consumer"}')
    created = await create_stream(sut.gateway_url, "firehose", max_tokens=LENGTH)
    stalled = [stalled_reader(created["events_url"]) for _ in range(STALLED)]
    try:
        normal = await read_stream(created["events_url"])
        assert normal.terminal.event == "stop", normal.terminal.data
        assert normal.text == expected_text("firehose", LENGTH, LENGTH)
        # Deltas that piled up were merged into fewer, larger events.
        assert len(normal.of("delta")) < LENGTH
        await wait_for_metric(
            sut.streamer_url, 'tokenrelay_streamer_reader_errors_total{code="slow_consumer"}', before + STALLED
        )
    finally:
        for sock in stalled:
            sock.close()


async def test_a_late_reader_of_a_history_far_larger_than_its_buffer_gets_the_whole_text(sut: System) -> None:
    created = await create_stream(sut.gateway_url, "long history", max_tokens=LENGTH)
    await wait_finished(sut.gateway_url, created["id"])
    late = await read_stream(created["events_url"])
    assert late.terminal.event == "stop", late.terminal.data
    assert late.text == expected_text("long history", LENGTH, LENGTH)


async def test_a_late_reader_that_never_reads_is_closed_as_a_slow_consumer(sut: System) -> None:
    before = await metric(sut.streamer_url, 'tokenrelay_streamer_reader_errors_total{code="slow_consumer"}')
    created = await create_stream(sut.gateway_url, "nobody reads the past", max_tokens=LENGTH)
    await wait_finished(sut.gateway_url, created["id"])
    stalled = stalled_reader(created["events_url"])
    try:
        await wait_for_metric(
            sut.streamer_url, 'tokenrelay_streamer_reader_errors_total{code="slow_consumer"}', before + 1
        )
    finally:
        stalled.close()


async def test_a_stalled_reader_past_its_buffer_limit_is_dropped_long_before_the_write_timeout(
    nats: NatsServer,
) -> None:
    """The limit, not the (here one-hour) write timeout, ends it; the held live events count too."""
    with system(
        nats.url,
        runner_args=[
            "--synthetic-tokens-per-s",
            "2000",
            "--synthetic-ttft-ms",
            "0",
            "--synthetic-length-tokens",
            "20000",
        ],
        streamer_args=[
            "--max-reader-buffer-bytes",
            "32768",
            "--write-timeout-s",
            "3600",
            "--socket-send-buffer-bytes",
            "4096",
        ],
        gateway_args=["--max-tokens-limit", "20000"],
    ) as running:
        created = await create_stream(running.gateway_url, "limit first", max_tokens=20_000)
        stalled = stalled_reader(created["events_url"])
        try:
            await wait_for_metric(
                running.streamer_url, 'tokenrelay_streamer_reader_errors_total{code="slow_consumer"}', 1, timeout_s=60
            )
        finally:
            stalled.close()
