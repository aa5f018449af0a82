"""Spec of fenced record writes: a runner never overwrites the record of a newer generation of its stream, and its
writes are compare-and-sets on the revision it read (an in-memory bucket with nats-py's errors)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.unit.runner.fakes import FakeKV
from tokenrelay.runner.records import RecordWrite, RecordWriteConflict, record_write, write_fenced
from tokenrelay.wire import codec
from tokenrelay.wire.messages import StreamRecord, StreamState

KEY = "0" * 32
RECORD = StreamRecord(stream_id=KEY, state=StreamState.RUNNING, model="m", created=1, epoch="e", gateway_id="g")


def of(generation: int, state: StreamState = StreamState.RUNNING) -> StreamRecord:
    return replace(RECORD, generation=generation, state=state)


@pytest.mark.parametrize(
    ("writing", "stored", "decision"),
    [
        (0, None, RecordWrite.WRITE),
        (0, 0, RecordWrite.WRITE),
        (1, 0, RecordWrite.WRITE),
        (1, 1, RecordWrite.WRITE),
        (0, 1, RecordWrite.REFUSE),
        (1, 2, RecordWrite.REFUSE),
    ],
)
def test_a_record_is_written_unless_a_newer_generation_wrote_one(
    writing: int, stored: int | None, decision: RecordWrite
) -> None:
    assert record_write(writing, None if stored is None else of(stored)) is decision


async def test_a_first_record_is_created() -> None:
    kv = FakeKV()
    assert await write_fenced(kv, of(0), codec.encode(of(0)))  # type: ignore[arg-type]
    assert kv.record(KEY) == of(0)


async def test_a_record_replaces_its_own_generations_and_older_ones() -> None:
    kv = FakeKV()
    kv.store(KEY, codec.encode(of(0)))
    assert await write_fenced(kv, of(1), codec.encode(of(1)))  # type: ignore[arg-type]
    finished = of(1, StreamState.FINISHED)
    assert await write_fenced(kv, finished, codec.encode(finished))  # type: ignore[arg-type]
    assert kv.record(KEY) == finished


async def test_a_write_under_a_newer_generations_record_is_refused_and_changes_nothing() -> None:
    kv = FakeKV()
    kv.store(KEY, codec.encode(of(2)))
    stale = of(1, StreamState.FINISHED)
    assert not await write_fenced(kv, stale, codec.encode(stale))  # type: ignore[arg-type]
    assert kv.record(KEY) == of(2)


async def test_a_newer_generation_written_between_the_read_and_the_write_refuses_it() -> None:
    kv = FakeKV()
    kv.store(KEY, codec.encode(of(0)))

    def move() -> None:  # the gateway records the move just before this runner's compare-and-set
        kv.interfere = None
        kv.store(KEY, codec.encode(of(1)))

    kv.interfere = move
    assert not await write_fenced(kv, of(0), codec.encode(of(0)))  # type: ignore[arg-type]
    assert kv.record(KEY) == of(1)


async def test_a_record_that_changes_under_every_write_fails_after_the_last_try() -> None:
    kv = FakeKV()
    kv.store(KEY, codec.encode(of(0)))

    def rewrite() -> None:
        kv.store(KEY, codec.encode(of(0)))

    kv.interfere = rewrite
    with pytest.raises(RecordWriteConflict) as caught:
        await write_fenced(kv, of(0), codec.encode(of(0)), max_tries=3)  # type: ignore[arg-type]
    assert caught.value.tries == 3


async def test_an_unreadable_record_is_overwritten() -> None:
    kv = FakeKV()
    kv.store(KEY, b"not a record")
    assert await write_fenced(kv, of(0), codec.encode(of(0)))  # type: ignore[arg-type]
    assert kv.record(KEY) == of(0)


async def test_a_writer_s_next_write_on_the_revision_it_wrote_needs_no_read() -> None:
    kv = FakeKV()
    first = await write_fenced(kv, of(0), codec.encode(of(0)))  # type: ignore[arg-type]
    reads = 0
    original_get = kv.get

    async def counted_get(key: str) -> object:
        nonlocal reads
        reads += 1
        return await original_get(key)

    kv.get = counted_get  # type: ignore[method-assign,assignment]
    finished = of(0, StreamState.FINISHED)
    assert await write_fenced(kv, finished, codec.encode(finished), last=first) is not None  # type: ignore[arg-type]
    assert reads == 0 and kv.record(KEY).state is StreamState.FINISHED


async def test_a_write_on_a_revision_someone_else_wrote_over_reads_again_and_is_refused_under_a_newer_generation() -> (
    None
):
    kv = FakeKV()
    first = await write_fenced(kv, of(0), codec.encode(of(0)))  # type: ignore[arg-type]
    kv.store(KEY, codec.encode(of(1)))  # a gateway moved the stream meanwhile
    finished = of(0, StreamState.FINISHED)
    assert await write_fenced(kv, finished, codec.encode(finished), last=first) is None  # type: ignore[arg-type]
    assert kv.record(KEY).generation == 1
