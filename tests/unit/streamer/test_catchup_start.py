"""Spec of when a reader's catch-up reads history: a new stream's reader waits for the stream's first event
instead, and a reader that starts live gets no task until a gap shows.

The catch-up's history reads are counted, not made: what is asked is whether a reader reads history at all.
"""

from __future__ import annotations

import asyncio
from typing import cast

from nats.aio.client import Client as NATS

from tokenrelay.streamer.catchup import CatchUp
from tokenrelay.streamer.frames import frame
from tokenrelay.streamer.metrics import StreamerMetrics
from tokenrelay.streamer.reader import Reader
from tokenrelay.streamer.reader_state import ReaderState
from tokenrelay.wire.cursor import Cursor
from tokenrelay.wire.messages import StreamDelta, StreamStart, StreamState

EPOCH = "e1"
NOW = 1_000_000.0
"""The wall clock, as the catch-up sees it."""
LONG_S = 30.0
"""A wait that only the reader's live events may end (the test would time out first)."""


class CountingCatchUp(CatchUp):
    """Counts its history reads instead of making them; the live connection's outages are the test's."""

    def __init__(self, *, start_wait_s: float, outages: list[int | None], seen: bool = False) -> None:
        super().__init__(
            cast(NATS, None),
            clock=lambda: 0.0,
            metrics=StreamerMetrics(),
            live_outages=lambda: outages[0],
            unseen=lambda stream_id, created: not seen,
            start_wait_s=start_wait_s,
            wall_clock=lambda: NOW,
        )
        self.reads = 0

    async def read(self, reader: Reader) -> None:
        self.reads += 1


def new_reader(resume: Cursor | None = None) -> Reader:
    return Reader("s1", epoch=EPOCH, resume=resume, max_buffered_bytes=1 << 20, now=0.0)


def live(reader: Reader, event: StreamStart | StreamDelta) -> None:
    reader.deliver(event, 0.0, frame(event, EPOCH))


START = StreamStart(stream_id="s1", epoch=EPOCH, model="m", created=0, runner_id="r", ts=0.0)


def delta(seq: int) -> StreamDelta:
    return StreamDelta(seq=seq, text=f"t{seq}", index=seq, count=1, ts=0.0)


async def waiting() -> None:
    """Let the catch-up task start and reach its wait."""
    for _ in range(5):
        await asyncio.sleep(0)


async def caught_up(catching: CountingCatchUp, reader: Reader, state: StreamState, created: int | None = None) -> None:
    """Start the reader's catch-up; return once it is done."""
    handle = catching.start(reader, state, created=created)
    for _ in range(1000):
        if reader.state is not ReaderState.CATCHING_UP:
            return
        await asyncio.sleep(0.001)
    handle.cancel()
    raise AssertionError("the catch-up did not finish")


async def test_a_queued_streams_reader_whose_first_live_event_is_the_start_reads_no_history() -> None:
    outages: list[int | None] = [0]
    catching, reader = CountingCatchUp(start_wait_s=LONG_S, outages=outages), new_reader()
    done = asyncio.create_task(caught_up(catching, reader, StreamState.QUEUED))
    await waiting()
    live(reader, START)
    live(reader, delta(1))
    await done
    assert catching.reads == 0
    assert reader.state is ReaderState.LIVE
    assert reader.replay.next_seq == 2


async def test_a_first_live_event_after_a_gap_ends_the_wait_and_the_reader_reads_history() -> None:
    catching, reader = CountingCatchUp(start_wait_s=LONG_S, outages=[0]), new_reader()
    done = asyncio.create_task(caught_up(catching, reader, StreamState.QUEUED))
    await waiting()
    live(reader, delta(2))  # 0 and 1 went by before it came
    await done
    assert catching.reads == 1


async def test_with_no_live_event_within_the_wait_the_reader_reads_history() -> None:
    catching, reader = CountingCatchUp(start_wait_s=0.001, outages=[0]), new_reader()
    await caught_up(catching, reader, StreamState.QUEUED)
    assert catching.reads == 1


async def test_an_outage_of_the_live_connection_during_the_wait_makes_the_reader_read_history() -> None:
    outages: list[int | None] = [0]
    catching, reader = CountingCatchUp(start_wait_s=LONG_S, outages=outages), new_reader()
    done = asyncio.create_task(caught_up(catching, reader, StreamState.QUEUED))
    await waiting()
    outages[0] = 1  # it reconnected: events may have been lost meanwhile
    live(reader, START)
    await done
    assert catching.reads == 1


async def test_a_live_connection_that_cannot_promise_every_event_means_no_wait() -> None:
    catching, reader = CountingCatchUp(start_wait_s=LONG_S, outages=[None]), new_reader()
    await caught_up(catching, reader, StreamState.QUEUED)
    assert catching.reads == 1


async def test_a_running_stream_admitted_moments_ago_is_waited_for_as_a_queued_one() -> None:
    catching, reader = CountingCatchUp(start_wait_s=LONG_S, outages=[0]), new_reader()
    done = asyncio.create_task(caught_up(catching, reader, StreamState.RUNNING, created=int(NOW) - 2))
    await waiting()
    live(reader, START)
    await done
    assert catching.reads == 0


async def test_readers_of_older_or_finished_streams_with_a_cursor_or_with_events_from_memory_do_not_wait() -> None:
    catching = CountingCatchUp(start_wait_s=LONG_S, outages=[0])
    await caught_up(catching, new_reader(), StreamState.RUNNING)  # no record read: age unknown
    await caught_up(catching, new_reader(), StreamState.RUNNING, created=int(NOW) - 60)
    await caught_up(catching, new_reader(), StreamState.FINISHED, created=int(NOW))
    await caught_up(catching, new_reader(Cursor(EPOCH, 3)), StreamState.QUEUED)
    prefilled = new_reader()
    prefilled.deliver(START, 0.0, notify=False)  # as the hub hands a head start that was not whole
    prefilled.prefilled = True
    await caught_up(catching, prefilled, StreamState.QUEUED)
    assert catching.reads == 5


async def test_a_reader_of_a_stream_whose_start_went_by_before_it_joined_reads_history_without_waiting() -> None:
    # It may have ended already (nothing more would come live): the hub forgets a stream's events at its end.
    catching = CountingCatchUp(start_wait_s=LONG_S, outages=[0], seen=True)
    await caught_up(catching, new_reader(), StreamState.QUEUED)
    assert catching.reads == 1


async def test_live_events_that_came_in_order_before_the_catch_up_started_count() -> None:
    catching, reader = CountingCatchUp(start_wait_s=LONG_S, outages=[0]), new_reader()
    live(reader, START)  # between joining the hub and the catch-up's start
    await caught_up(catching, reader, StreamState.QUEUED)
    assert catching.reads == 0


def live_reader() -> Reader:
    """A reader whose first events were whole from memory: it starts live."""
    reader = new_reader()
    reader.deliver(START, 0.0)
    reader.caught_up()
    return reader


async def test_a_reader_that_starts_live_gets_a_catch_up_task_only_once_a_live_event_shows_a_gap() -> None:
    catching, reader = CountingCatchUp(start_wait_s=LONG_S, outages=[0]), live_reader()
    tasks = len(asyncio.all_tasks())
    handle = catching.start(reader, StreamState.RUNNING)
    assert len(asyncio.all_tasks()) == tasks  # nothing waits on its behalf
    live(reader, delta(2))  # seq 1 never came
    assert len(asyncio.all_tasks()) == tasks + 1
    await waiting()
    assert catching.reads == 1
    handle.cancel()


async def test_a_catch_up_cancelled_before_any_gap_starts_none_later() -> None:
    catching, reader = CountingCatchUp(start_wait_s=LONG_S, outages=[0]), live_reader()
    catching.start(reader, StreamState.RUNNING).cancel()
    tasks = len(asyncio.all_tasks())
    live(reader, delta(2))
    assert len(asyncio.all_tasks()) == tasks
    await waiting()
    assert catching.reads == 0
