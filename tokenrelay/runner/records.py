"""Writing a stream's record only while this runner's generation still owns the stream.

A stream moves to another runner when its runner is lost; the move raises the record's
:attr:`~tokenrelay.wire.messages.StreamRecord.generation`.  The lost runner may only have been partitioned or
stopped: when it wakes up, its writes must not overwrite the newer owner's record.  Each write reads the record
first and is a compare-and-set on the revision it read, so a newer generation's record written in between is never
overwritten either; a write under a newer generation is refused, which tells the runner it was superseded.
"""

from __future__ import annotations

import enum

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from tokenrelay.wire import codec
from tokenrelay.wire.codec import CodecError
from tokenrelay.wire.messages import StreamRecord

MAX_RECORD_WRITE_TRIES = 5
"""Compare-and-set attempts per record write; past them (the record changing under every one) the write fails."""


class RecordWriteConflict(Exception):
    """The record changed under every one of :data:`MAX_RECORD_WRITE_TRIES` compare-and-set attempts."""

    def __init__(self, stream_id: str, tries: int) -> None:
        super().__init__(f"stream {stream_id}: its record changed under each of {tries} writes")
        self.stream_id = stream_id
        self.tries = tries


class RecordWrite(enum.Enum):
    """What to do with a record about to be written, given the one stored."""

    WRITE = "write"
    REFUSE = "refuse"
    """A newer generation owns the stream: the writer was superseded."""


def record_write(generation: int, stored: StreamRecord | None) -> RecordWrite:
    """Whether a record of ``generation`` may replace ``stored`` (``None``: no record, or one that cannot be read)."""
    if stored is not None and stored.generation > generation:
        return RecordWrite.REFUSE
    return RecordWrite.WRITE


async def write_fenced(
    kv: KeyValue, record: StreamRecord, data: bytes, *, last: int | None = None, max_tries: int = MAX_RECORD_WRITE_TRIES
) -> int | None:
    """Write ``record`` (encoded: ``data``) unless a newer generation's is stored: the revision written, or ``None``
    when refused.

    ``last``: the revision this writer wrote before, if any: tried first as the compare-and-set's revision, so a
    stream's later writes need no read while nobody else wrote its record (a read then, on a conflict).  Raises
    :class:`RecordWriteConflict` when the record changed between the read and the write ``max_tries`` times.
    """
    key = record.stream_id
    for _ in range(max_tries):
        if last is not None:
            revision, last = last, None
        else:
            stored, revision = await _read(kv, key)
            if record_write(record.generation, stored) is RecordWrite.REFUSE:
                return None
        try:
            if revision == 0:
                return await kv.create(key, data)  # also over a deleted record: nats-py writes on its tombstone
            return await kv.update(key, data, last=revision)
        except KeyWrongLastSequenceError:
            continue  # written in between: read it again
    raise RecordWriteConflict(key, max_tries)


async def _read(kv: KeyValue, key: str) -> tuple[StreamRecord | None, int]:
    """The stored record (``None``: none, or malformed) and its revision (0: none at all)."""
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return None, 0
    if entry.value is None or entry.revision is None:
        return None, entry.revision or 0
    try:
        return codec.decode_as(entry.value, StreamRecord), entry.revision
    except CodecError:
        return None, entry.revision  # unreadable (a newer process's?): overwritten, as a plain put did
