"""The writes a gateway makes for a stream: its record in the streams bucket, and the events of one that ends here.

Each function is one step of the dispatch's shell (``gateway/streams.py``) over NATS and JetStream; what to write
and when is decided by the dispatcher (``gateway/dispatch.py``).
"""

from __future__ import annotations

import time
from dataclasses import replace

from nats.aio.client import Client as NATS
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from tokenrelay.gateway.actions import EndUnstarted
from tokenrelay.runtime import natsio
from tokenrelay.wire import codec, subjects
from tokenrelay.wire.errors import ErrorCode
from tokenrelay.wire.messages import (
    OUT_OF_BAND_SEQ,
    FinishReason,
    JobRequest,
    StreamEnd,
    StreamError,
    StreamRecord,
    StreamStart,
    StreamState,
    job_record,
)

NEW_RECORD_TIMEOUT_S = 8.0
"""How long admission keeps trying to store a new stream's record while the records' bucket elects a leader (about
3 s on a three-node cluster; a write in flight to a server that died is given up only after NATS's 5 s request
timeout): past it the POST answers ``unavailable``."""


async def store_new(kv: KeyValue, job: JobRequest) -> StreamRecord:
    """Store a new stream's record as queued; the record stored (the runner's, if its write came first)."""
    record = job_record(job, StreamState.QUEUED)
    data = codec.encode(record)
    try:
        # Asked again while the bucket elects a leader (a node lost): the POST waits a moment instead of failing.
        # A create that reached the bucket before its answer was lost finds the key taken, by this same record.
        await natsio.retrying(
            f"stream {job.stream_id}: record", lambda: kv.create(job.stream_id, data), timeout_s=NEW_RECORD_TIMEOUT_S
        )
    except KeyWrongLastSequenceError:
        # The id is new, so the key can only hold this stream: the runner that took the job stored it
        # running (or already finished) before our write arrived.  Its record is the newer one.
        stored = await kv.get(job.stream_id)
        if stored.value is None:
            raise
        taken = codec.decode_as(stored.value, StreamRecord)
        if taken.epoch != job.epoch:
            raise
        return taken
    return record


async def end_unstarted(nc: NATS, kv: KeyValue, end: EndUnstarted, *, gateway_id: str) -> StreamRecord:
    """Publish start + terminal event for a stream no runner ever took, and record it finished (the record)."""
    job = end.job
    start = StreamStart(
        stream_id=job.stream_id, epoch=job.epoch, model=job.model, created=job.created,
        runner_id=gateway_id, ts=time.time(),
    )  # fmt: skip
    terminal: StreamEnd | StreamError
    if end.error is not None:
        terminal = StreamError(seq=1, code=str(end.error), message="no runner took the stream in time", tokens=0)
    else:
        terminal = StreamEnd(
            seq=1, finish_reason=FinishReason.CANCELLED, tokens=0, ttft_ms=None, cancel_reason=end.cancel_reason
        )
    subject = subjects.events(job.stream_id)
    await nc.publish(subject, codec.encode(start))
    await nc.publish(subject, codec.encode(terminal))
    error_code = str(end.error) if end.error is not None else None
    record = job_record(job, StreamState.FINISHED, finish_reason=end.finish_reason, error_code=error_code)
    data = codec.encode(record)
    await natsio.retrying(  # a put is idempotent: asked again through an election of the records' bucket
        f"stream {job.stream_id}: record", lambda: kv.put(job.stream_id, data), timeout_s=NEW_RECORD_TIMEOUT_S
    )
    return record


async def fail_lost(nc: NATS, kv: KeyValue, stream_id: str) -> StreamRecord | None:
    """End an unfinished stream with an out-of-band ``runner_lost`` error; the record as it was, or ``None`` when
    there was nothing to fail (finished already, or another gateway won the compare-and-set)."""
    entry = await kv.get(stream_id)
    if entry.value is None or entry.revision is None:
        return None
    record = codec.decode_as(entry.value, StreamRecord)
    if record.state is StreamState.FINISHED:
        return None
    finished = replace(
        record, state=StreamState.FINISHED, finish_reason=FinishReason.ERROR, error_code=str(ErrorCode.RUNNER_LOST)
    )
    try:
        await kv.update(stream_id, codec.encode(finished), last=entry.revision)
    except KeyWrongLastSequenceError:
        return None  # the runner finished it after all, or another gateway got there first
    error = StreamError(
        seq=OUT_OF_BAND_SEQ,
        code=str(ErrorCode.RUNNER_LOST),
        message="the runner generating this stream stopped responding",
        tokens=record.tokens,
    )
    await nc.publish(subjects.events(stream_id), codec.encode(error))
    return record
