"""One stream's generation on a runner: drive the engine, publish events, obey one cancel.

The engine yields typed pieces (text, reasoning, tool-call fragments); each block of one kind (for tool calls:
of one call) is published as its own messages (:class:`~tokenrelay.wire.messages.StreamDelta`,
:class:`~tokenrelay.wire.messages.ReasoningDelta`, :class:`~tokenrelay.wire.messages.ToolCallDelta`), batched by
:mod:`~tokenrelay.runner.batcher`, and ``index`` counts every token whatever its kind.

A stream that moved here from a lost runner (the job's :class:`~tokenrelay.wire.messages.Continuation`) goes on
where its history stops: no ``start``, ``seq`` numbers from the fence, tokens counted from those generated before,
and every event stamped with the new owner's generation and fence, so readers drop what the lost owner publishes
from the fence on should it wake up.

The :class:`Generation` is the single owner of its stream's cancellation.  ``cancel()``
records why and cancels the generation task, which interrupts the engine wherever it waits
(a pacing sleep, an upstream read) so no further token is produced.  The task then publishes
the terminal event and resolves :attr:`Generation.done` with the final token count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Literal

from nats.aio.client import Client as NATS

from tokenrelay.runner.batcher import REASONING, TEXT, DeltaBatcher
from tokenrelay.runner.engines import Engine, EngineError, GenerationRequest, Reasoning, TextTail, ToolCallFragment
from tokenrelay.runner.metrics import RunnerMetrics
from tokenrelay.runner.pace import PublishPace
from tokenrelay.runner.stored import KeptEvents, read_earlier_events
from tokenrelay.runtime import payloads
from tokenrelay.runtime.lifecycle import LifecycleEvent, log_event
from tokenrelay.runtime.payloads import PayloadStore
from tokenrelay.runtime.responses import EventsKeeper
from tokenrelay.wire import codec, subjects
from tokenrelay.wire.errors import ErrorCode
from tokenrelay.wire.messages import (
    CancelReason,
    FinishReason,
    JobRequest,
    ReasoningDelta,
    StreamDelta,
    StreamEnd,
    StreamError,
    StreamEvent,
    StreamRecord,
    StreamStart,
    StreamState,
    ToolCallDelta,
    job_record,
)
from tokenrelay.wire.replay import ReplayLog

log = logging.getLogger(__name__)

ROLE = "runner"

RecordWriter = Callable[[StreamRecord], Awaitable[None]]


HANDED_OFF = "handed_off"
"""The error code of the :class:`Outcome` of a generation left for another runner (:meth:`Generation.hand_off`)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a generation ended."""

    finish_reason: FinishReason
    tokens: int
    error_code: str | None = None


class Generation:
    """Generates one stream and publishes its events on ``tokenrelay.stream.<id>.events``."""

    def __init__(
        self,
        job: JobRequest,
        *,
        engine: Engine,
        nc: NATS,
        runner_id: str,
        pace: PublishPace,
        metrics: RunnerMetrics,
        write_record: RecordWriter,
        replay_log: ReplayLog | None = None,
        payloads: PayloadStore | None = None,
        keeper: EventsKeeper | None = None,
    ) -> None:
        self.job = job
        self._keeper = keeper if job.stored else None
        """Where a stored response's events go as its stream ends (``None``: not a stored response)."""
        self._kept: KeptEvents | None = None
        """A stored response's events so far (``None``: not a stored response, or not started)."""
        self._payloads = payloads
        """Where the job's content is when it names an object there (``payload``)."""
        self._replay_log = replay_log
        """Every event published, kept for readers that ask this runner for history (``None``: not kept)."""
        self._engine = engine
        self._nc = nc
        self._runner_id = runner_id
        self._subject = subjects.events(job.stream_id)
        self._batcher = DeltaBatcher(pace)
        self._metrics = metrics
        self._write_record = write_record
        continuation = job.continuation
        self._gen = continuation.gen if continuation is not None else 0
        """The generation this runner owns the stream as (0: it started it)."""
        self._fence = continuation.seq if continuation is not None else 0
        """The ``seq`` that generation starts at."""
        self._seq = self._fence - 1 if continuation is not None else 0
        self._tokens_before = continuation.tokens if continuation is not None else 0
        """Tokens generated before the stream moved here: counted in every total."""
        self._tokens = self._tokens_before
        self._ttft_ms: float | None = None
        self._prompt_tokens: int | None = None
        """The prompt's length in tokens, as the engine reported it (``None``: it did not)."""
        self._completion_tokens: int | None = None
        """The engine's own count of the tokens it generated (``None``: it gave none)."""
        self._engine_finish: FinishReason | None = None
        """The finish reason the engine decided (``None``: it said nothing, which is ``stop``)."""
        self._first_token_at: float | None = None
        self._cancel_reason: CancelReason | None = None
        self.halted_ts: float | None = None
        """Wall-clock time a cancel stopped the engine."""
        self._abort: tuple[str, str] | None = None
        self._flush_task: asyncio.Task[None] | None = None
        self._task: asyncio.Task[Outcome] | None = None
        self._record_task: asyncio.Task[None] | None = None

    @property
    def tokens(self) -> int:
        """Tokens of the stream so far (those before it moved here included)."""
        return self._tokens

    @property
    def gen(self) -> int:
        """The generation this runner owns the stream as (0: it started it; one more per move)."""
        return self._gen

    def start(self) -> asyncio.Task[Outcome]:
        """Begin generating in a task of its own."""
        self._task = asyncio.create_task(self._run(), name=f"generation-{self.job.stream_id}")
        return self._task

    async def cancel(self, reason: CancelReason) -> Outcome:
        """Halt before the next token and return the outcome once the terminal event is out."""
        assert self._task is not None, "cancel() before start()"
        if self._cancel_reason is None and not self._task.done():
            self._cancel_reason = reason
            self._metrics.cancellations.labels(reason=str(reason)).inc()
            self._task.cancel()
        return await asyncio.shield(self._task)

    async def hand_off(self) -> Outcome:
        """Stop generating and leave the stream unfinished: no terminal event, no finished record (the runner is
        going away; gateways move the stream to another runner, which continues it from its history)."""
        return await self.abort(HANDED_OFF, "")

    async def abort(self, code: str, message: str) -> Outcome:
        """End the stream now with an ``error`` event (the runner is going away)."""
        assert self._task is not None, "abort() before start()"
        if self._cancel_reason is None and self._abort is None and not self._task.done():
            self._abort = (code, message)
            self._task.cancel()
        return await asyncio.shield(self._task)

    async def _run(self) -> Outcome:
        accepted = time.perf_counter()
        self._keep_events()
        try:
            if self.job.continuation is None:
                await self._publish(
                    StreamStart(
                        stream_id=self.job.stream_id,
                        epoch=self.job.epoch,
                        model=self.job.model,
                        created=self.job.created,
                        runner_id=self._runner_id,
                        ts=time.time(),
                    )
                )
            self._save_record(self._record(StreamState.RUNNING))
            log_event(
                LifecycleEvent.STARTED, ROLE, self.job.stream_id,
                runner_id=self._runner_id, model=self.job.model, max_tokens=self.job.max_tokens,
            )  # fmt: skip
            if self.job.payload is not None:
                await self._unpack()
            reason = await self._generate(accepted)
            outcome = Outcome(reason, self._tokens)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or (self._cancel_reason is None and self._abort is None):
                raise  # not a cancel this generation asked for
            task.uncancel()
            self.halted_ts = time.time()
            if self._abort is not None and self._abort[0] == HANDED_OFF:
                return Outcome(FinishReason.ERROR, self._tokens, HANDED_OFF)
            if self._abort is not None:
                await self._finish_with_error(*self._abort)
                return Outcome(FinishReason.ERROR, self._tokens, self._abort[0])
            outcome = Outcome(FinishReason.CANCELLED, self._tokens)
        except EngineError as exc:
            outcome = Outcome(FinishReason.ERROR, self._tokens, exc.code)
            await self._finish_with_error(exc.code, exc.message)
            return outcome
        except Exception as exc:
            log.exception("stream %s: engine failed", self.job.stream_id)
            outcome = Outcome(FinishReason.ERROR, self._tokens, str(ErrorCode.ENGINE_ERROR))
            await self._finish_with_error(str(ErrorCode.ENGINE_ERROR), f"engine failed: {exc}")
            return outcome
        await self._flush()
        await self._publish(
            StreamEnd(
                seq=self._next_seq(),
                finish_reason=outcome.finish_reason,
                tokens=outcome.tokens,
                ttft_ms=self._ttft_ms,
                cancel_reason=self._cancel_reason,
                prompt_tokens=self._prompt_tokens,
                completion_tokens=self._completion_tokens,
                gen=self._gen,
                fence=self._fence,
            )
        )
        self._finish(outcome)
        return outcome

    async def _generate(self, accepted: float) -> FinishReason:
        if self._tokens >= self.job.max_tokens:
            return FinishReason.LENGTH  # a moved stream with nothing left to generate
        tokens = self._engine.stream(self._request())
        batcher = self._batcher
        try:
            async for piece in tokens:
                if self._cancel_reason is not None:
                    # Produced although the cancel had already arrived: wasted compute, not sent.
                    self._metrics.tokens_after_cancel.inc()
                    raise asyncio.CancelledError
                if type(piece) is str:  # the answer's text: the common case, one cheap check of its block
                    if batcher.block is not TEXT and batcher.pending_tokens:
                        await self._flush()
                    self._tokens += 1  # counted inline, as _count_token does: no extra call per text token
                    self._metrics.tokens.inc()
                    if self._ttft_ms is None:
                        self._first_token(accepted)
                    due = batcher.add(piece, time.monotonic())
                elif isinstance(piece, TextTail):
                    if batcher.boundary(TEXT):
                        await self._flush()
                    batcher.add(piece, time.monotonic())
                    continue
                elif isinstance(piece, ToolCallFragment):
                    if batcher.boundary(piece.call):
                        await self._flush()
                    self._count_token(accepted)
                    due = batcher.add_fragment(
                        piece.call, piece.arguments, time.monotonic(), id=piece.id, name=piece.name
                    )
                else:
                    block = REASONING if isinstance(piece, Reasoning) else TEXT
                    if batcher.boundary(block):
                        await self._flush()
                    self._count_token(accepted)
                    due = batcher.add(piece, time.monotonic(), block)
                if due:
                    await self._flush()
                else:
                    self._arm_flush()
                if self._tokens >= self.job.max_tokens:
                    return FinishReason.LENGTH
            return self._engine_finish_reason()
        finally:
            self._disarm_flush()
            await tokens.aclose()  # type: ignore[attr-defined]

    async def _unpack(self) -> None:
        """Take the job's messages from the payload store, where the gateway left those of a job larger than the
        broker's ``max_payload``; content that cannot be read ends the stream with an ``unavailable`` error."""
        try:
            self.job = await payloads.unpack(self.job, self._payloads)
        except payloads.PayloadUnavailable as exc:
            raise EngineError(str(exc.code), exc.message) from None

    def _count_token(self, accepted: float) -> None:
        self._tokens += 1
        self._metrics.tokens.inc()
        if self._ttft_ms is None:
            self._first_token(accepted)

    def _first_token(self, accepted: float) -> None:
        self._first_token_at = time.perf_counter()
        self._ttft_ms = (self._first_token_at - accepted) * 1000
        self._metrics.ttft.observe(self._ttft_ms / 1000)
        log_event(LifecycleEvent.FIRST_TOKEN, ROLE, self.job.stream_id, ttft_ms=self._ttft_ms)

    def _engine_finish_reason(self) -> FinishReason:
        """Why the engine ended: what it said (``tool_calls`` only when its last block is a tool call), else stop."""
        reason = self._engine_finish
        if reason is FinishReason.TOOL_CALLS and not isinstance(self._batcher.block, int):
            return FinishReason.STOP
        if reason in (FinishReason.LENGTH, FinishReason.TOOL_CALLS, FinishReason.CONTENT_FILTER):
            return reason
        return FinishReason.STOP

    def _request(self) -> GenerationRequest:
        return GenerationRequest(
            stream_id=self.job.stream_id,
            model=self.job.model,
            messages=self.job.messages,
            prompt=self.job.prompt,
            max_tokens=self.job.max_tokens,
            max_tokens_set=self.job.max_tokens_set,
            params=self.job.params,
            continuation=self.job.continuation,
            on_prompt_tokens=self._on_prompt_tokens,
            on_completion_tokens=self._on_completion_tokens,
            on_finish_reason=self._on_finish_reason,
        )

    def _on_completion_tokens(self, tokens: int) -> None:
        self._completion_tokens = tokens

    def _on_finish_reason(self, reason: FinishReason) -> None:
        self._engine_finish = reason

    def _on_prompt_tokens(self, tokens: int) -> None:
        self._prompt_tokens = tokens

    async def _finish_with_error(self, code: str, message: str) -> None:
        await self._flush()
        await self._publish(
            StreamError(
                seq=self._next_seq(), code=code, message=message, tokens=self._tokens, gen=self._gen, fence=self._fence
            )
        )
        self._finish(Outcome(FinishReason.ERROR, self._tokens, code))

    def _finish(self, outcome: Outcome) -> None:
        self._metrics.streams.labels(finish_reason=str(outcome.finish_reason)).inc()
        if outcome.error_code is not None:
            self._metrics.errors.labels(code=outcome.error_code).inc()
        tokens_per_s = self._tokens_per_s(outcome.tokens - self._tokens_before)
        if tokens_per_s is not None:
            self._metrics.stream_tokens_per_second.observe(tokens_per_s)
        record = self._record(StreamState.FINISHED)
        self._save_record(
            replace(
                record,
                finish_reason=outcome.finish_reason,
                tokens=outcome.tokens,
                error_code=outcome.error_code,
                cancel_reason=self._cancel_reason,
            )
        )
        log_event(
            LifecycleEvent.FINISHED, ROLE, self.job.stream_id,
            finish_reason=str(outcome.finish_reason), tokens=outcome.tokens, ttft_ms=self._ttft_ms,
            tokens_per_s=tokens_per_s, error_code=outcome.error_code,
            cancel_reason=str(self._cancel_reason) if self._cancel_reason is not None else None,
        )  # fmt: skip

    def _tokens_per_s(self, tokens: int) -> float | None:
        """Decode speed after the first of ``tokens`` generated here (``None`` for fewer than two)."""
        if self._first_token_at is None or tokens < 2:
            return None
        elapsed_s = time.perf_counter() - self._first_token_at
        return (tokens - 1) / elapsed_s if elapsed_s > 0 else None

    def _record(self, state: StreamState) -> StreamRecord:
        return job_record(
            self.job, state, runner_id=self._runner_id, tokens=self._tokens, ttft_ms=self._ttft_ms,
            prompt_tokens=self._prompt_tokens,
        )  # fmt: skip

    def _save_record(self, record: StreamRecord) -> None:
        """Write records in order, off the token path."""
        previous = self._record_task

        async def write() -> None:
            if previous is not None:
                with contextlib.suppress(Exception):
                    await previous
            try:
                await self._write_record(record)
            except Exception as exc:
                log.warning("stream %s: could not save record: %s", record.stream_id, exc)

        self._record_task = asyncio.create_task(write())

    async def records_saved(self) -> None:
        """Wait until every record write of this generation has completed."""
        if self._record_task is not None:
            await self._record_task

    def _arm_flush(self) -> None:
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.create_task(self._flush_at_deadline())

    def _disarm_flush(self) -> None:
        if self._flush_task is not None:
            self._flush_task.cancel()
            self._flush_task = None

    async def _flush_at_deadline(self) -> None:
        deadline = self._batcher.deadline()
        if deadline is None:
            return  # only empty pieces held: they go out with the next text
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        await self._flush()

    async def _flush(self) -> None:
        batcher = self._batcher
        if batcher.pending_tokens == 0:
            return
        now, held_since = time.monotonic(), batcher.held_since
        block, call_id, call_name = batcher.block, batcher.call_id, batcher.call_name
        text, count = batcher.take(now)
        if not text and call_id is None and call_name is None:
            return  # tokens that completed no character: counted in the terminal event, nothing to show
        # Stamped with its oldest token's time on the wall clock, so what the batch held back counts as lag; and
        # with how long that was, so a streamer can tell its own lateness from the holding (runner/pace.py).
        held_s = now - held_since if held_since is not None else 0.0
        seq, index, ts, gen, fence = self._next_seq(), self._tokens, time.time() - held_s, self._gen, self._fence
        if self._kept is None and not isinstance(block, int):
            # The hot path: text or reasoning encoded from its fields, no message made (a stored response's
            # events are kept as messages, below).
            kind: Literal["delta", "reasoning"] = "delta" if block == TEXT else "reasoning"
            data = codec.encode_text_delta(
                kind, seq=seq, text=text, index=index, count=count, ts=ts, held_s=held_s, gen=gen, fence=fence
            )
            await self._send(seq, data)
            return
        delta: StreamDelta | ReasoningDelta | ToolCallDelta
        if block == TEXT:
            delta = StreamDelta(
                seq=seq, text=text, index=index, count=count, ts=ts, held_s=held_s, gen=gen, fence=fence
            )
        elif isinstance(block, int):
            delta = ToolCallDelta(
                seq=seq, call=block, id=call_id, name=call_name, arguments=text, index=index, count=count, ts=ts,
                held_s=held_s, gen=gen, fence=fence,
            )  # fmt: skip
        else:
            delta = ReasoningDelta(
                seq=seq, text=text, index=index, count=count, ts=ts, held_s=held_s, gen=gen, fence=fence
            )
        await self._publish(delta)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def _publish(self, event: StreamEvent) -> None:
        data = codec.encode(event)
        if self._kept is not None:
            await self._kept.add(event, data)
        await self._send(event.seq, data)

    async def _send(self, seq: int, data: bytes) -> None:
        """Keep the encoded event ``seq`` for replays, then publish it."""
        self._metrics.messages.inc()
        if self._replay_log is not None:
            # Kept before it is sent: a replay answered from now on includes it (a reader may see it twice, and
            # drops the copy by seq), so no event can be both missing from a replay and sent before the
            # reader subscribed.
            self._replay_log.append(seq, data)
        await self._nc.publish(self._subject, data)

    def _keep_events(self) -> None:
        """Hold a stored response's events from here on; a moved stream's earlier ones are read back meanwhile."""
        if self._keeper is None:
            return
        earlier = None
        if self.job.continuation is not None:
            earlier = asyncio.create_task(read_earlier_events(self._nc, self.job.stream_id, fence=self._fence))
        self._kept = KeptEvents(self._keeper, self.job.stream_id, earlier=earlier)
