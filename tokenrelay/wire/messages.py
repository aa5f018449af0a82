"""Wire messages exchanged over NATS between gateway, runner and streamer.

Each message is a small frozen dataclass with a literal ``type`` tag; :mod:`tokenrelay.wire.codec`
is the only place that turns them into bytes and back.  Per-stream events carry ``seq``:
0 for :class:`StreamStart`, then 1, 2, ... for each content event, and the last one for the
terminal :class:`StreamEnd` or :class:`StreamError`.  ``seq`` lets a reader merge replayed
history with live messages without gaps or duplicates.

A stream's content is typed: :class:`StreamDelta` carries the answer's text, :class:`ReasoningDelta`
the model's reasoning, :class:`ToolCallDelta` a fragment of a tool call.  Every one of them has its
own ``seq`` (so a reader resumes exactly inside a reasoning block or a tool call's arguments), and
``index`` counts every generated token of the stream, reasoning and tool calls included.  A block is
a run of events of one kind (for tool calls: of one ``call``); text-only streams are made of
:class:`StreamDelta` alone, exactly as before typed content existed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal

from tokenrelay.wire.content import ChatMessage, JsonObject
from tokenrelay.wire.service import (
    LAG_REPORT_INTERVAL_S,
    LAG_REPORT_TTL_S,
    Feedback,
    ModelList,
    ModelsRequest,
    ReplayPage,
    ReplayRequest,
    StartRefused,
    StartRequest,
    StreamDone,
    StreamerLag,
)
from tokenrelay.wire.version import PROTOCOL_VERSION, WHEN_ABSENT


class StreamState(enum.StrEnum):
    """Lifecycle of a stream: queued -> running -> finished (or queued -> finished)."""

    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"


class FinishReason(enum.StrEnum):
    """Why a generation ended."""

    STOP = "stop"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"
    """The model ended its turn to have tools called (its last block is a tool call)."""
    CONTENT_FILTER = "content_filter"
    """The engine withheld the rest (its content filter)."""
    CANCELLED = "cancelled"
    ERROR = "error"


class CancelReason(enum.StrEnum):
    """Who asked for a cancellation."""

    CLIENT = "client"
    DISCONNECT = "disconnect"
    RUNNER_LOST = "runner_lost"


@dataclass(frozen=True, slots=True, kw_only=True)
class Continuation:
    """Where a moved stream goes on: the owner it was taken from was lost, and another runner continues it.

    Built by the gateway that moved it from the stream's history (everything the lost owner's generation published
    before the cut-off): the new owner publishes no ``start``, numbers its events from :attr:`seq`, counts tokens
    from :attr:`tokens`, and stamps every event with ``gen`` = :attr:`gen` and ``fence`` = :attr:`seq`.
    """

    gen: int
    """The new owner's generation (1 for the first move)."""
    seq: int
    """The first ``seq`` the new owner publishes: the cut-off, one past the last event it continues."""
    tokens: int
    """Tokens of the stream so far (``index`` of its last content event)."""
    text: str = ""
    """The answer's text so far (every text delta joined)."""
    typed: bool = False
    """Whether reasoning or tool-call content came before: only an engine that can continue typed content may
    take the stream (:attr:`RunnerHeartbeat.continues`)."""


class Continues(enum.StrEnum):
    """What a runner's engine can continue when a stream moves to it (:attr:`RunnerHeartbeat.continues`)."""

    NOTHING = "nothing"
    TEXT = "text"
    """A stream whose content so far is the answer's text alone."""
    ANY = "any"
    """Any stream, reasoning and tool calls included (a deterministic engine)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class JobRequest:
    """Gateway -> runners (queue group): please generate this stream."""

    type: Literal["job"] = "job"
    stream_id: str
    epoch: str
    gateway_id: str
    model: str
    messages: tuple[ChatMessage, ...]
    """The conversation to continue; empty for a text completion (:attr:`prompt`)."""
    max_tokens: int
    """The most tokens the runner generates: the client's limit, the gateway's ``--default-max-tokens``, or (see
    :attr:`max_tokens_set`) its hard cap ``--max-tokens-limit``."""
    created: int
    owner: str | None = None
    """The tenant that owns the stream; the runner keeps it in every record it writes."""
    max_tokens_set: bool = True
    """Whether the client or the operator set :attr:`max_tokens`.  ``False``: nobody did, so the engine ends at its
    own limit (an ``openai`` upstream is sent no ``max_tokens``) and :attr:`max_tokens` is only the hard cap the
    runner still stops at.  A job without the field comes from a gateway older than it, whose limit was set."""
    params: JsonObject = field(default_factory=dict)
    """Every other field of the client's request in the OpenAI chat shape (``temperature``, ``tools``,
    ``tool_choice``, ``stop``, ``seed``, ``response_format``, ``reasoning_effort``, vendor fields...), as sent: an
    ``openai`` engine passes them on unchanged, other engines honour what they can."""
    prompt: str | None = None
    """The raw text of a text completion (``POST /v1/completions``), continued as is: never made a chat message,
    :attr:`messages` empty, its other fields (``suffix``, ``stop``, ...) in :attr:`params` (``None``: a chat)."""
    answer_by: float | None = None
    """Wall-clock time (``time.time()``) after which no runner may take this offer: the gateway has stopped waiting
    for its answer and may offer the stream again, so a runner that took it then would generate it beside another
    (``None``: no limit)."""
    payload: str | None = None
    """The object of the payload store (``tokenrelay_payloads``) that holds this whole job, :attr:`messages` left
    empty: a job larger than the broker's ``max_payload`` travels so (``None``: the messages are here).  A runner
    that cannot read the object ends the stream with an ``unavailable`` error event."""
    detached: bool = False
    """Whether the stream runs to its end with no reader (a background response): no disconnect or unread check
    cancels it."""
    stored: bool = False
    """Whether the runner keeps the stream's events in the response store when it ends (a stored response)."""
    continuation: Continuation | None = None
    """Set when the stream moved here from a lost owner: go on from there (``None``: a new stream)."""
    v: int = field(default=PROTOCOL_VERSION, metadata={WHEN_ABSENT: 1})
    """The sender's :data:`PROTOCOL_VERSION` (1: it predates the field)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class JobAccepted:
    """Runner -> gateway: the job is mine; cancel it on my subject."""

    type: Literal["job_accepted"] = "job_accepted"
    stream_id: str
    runner_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class JobRejected:
    """Runner -> gateway: the job was not taken (``code`` says why, e.g. ``overloaded``)."""

    type: Literal["job_rejected"] = "job_rejected"
    stream_id: str
    code: str
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamStart:
    """First event of every stream (seq 0)."""

    type: Literal["start"] = "start"
    stream_id: str
    seq: int = 0
    epoch: str
    model: str
    created: int
    runner_id: str
    ts: float
    v: int = field(default=PROTOCOL_VERSION, metadata={WHEN_ABSENT: 1})
    """The sender's :data:`PROTOCOL_VERSION` (1: it predates the field)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamDelta:
    """One or more tokens. ``index`` is the token count after this batch; ``count`` is in it.

    ``ts`` is the wall-clock time (seconds) the batch's oldest token was made, for lag measurement; ``held_s`` how
    long the runner held it back before publishing the batch (so ``ts + held_s`` is when it was published).
    """

    type: Literal["delta"] = "delta"
    seq: int
    text: str
    index: int
    count: int
    ts: float
    held_s: float = 0.0
    gen: int = 0
    """The generation of the owner that published it: 0 for the runner that started the stream, one more for each
    runner it moved to since (:class:`StreamFence`)."""
    fence: int = 0
    """The ``seq`` its generation starts at (0 for generation 0): an older generation's events from there on are
    void."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReasoningDelta:
    """One or more tokens of the model's reasoning, shown apart from its answer; fields as :class:`StreamDelta`."""

    type: Literal["reasoning"] = "reasoning"
    seq: int
    text: str
    index: int
    count: int
    ts: float
    held_s: float = 0.0
    gen: int = 0
    """The generation of the owner that published it: 0 for the runner that started the stream, one more for each
    runner it moved to since (:class:`StreamFence`)."""
    fence: int = 0
    """The ``seq`` its generation starts at (0 for generation 0): an older generation's events from there on are
    void."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCallDelta:
    """A fragment of one tool call the model makes.

    ``call`` is the call's ordinal in the stream (0, 1, ...), the same on every fragment of that call; fragments of
    parallel calls may interleave.  The call's first fragment carries its ``id`` and ``name``; ``arguments`` is the
    next piece of the arguments' JSON text, so one call's fragments joined in ``seq`` order are its whole arguments.
    ``index``, ``count``, ``ts`` and ``held_s`` as :class:`StreamDelta`.
    """

    type: Literal["tool_call"] = "tool_call"
    seq: int
    call: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""
    index: int
    count: int
    ts: float
    held_s: float = 0.0
    gen: int = 0
    """The generation of the owner that published it: 0 for the runner that started the stream, one more for each
    runner it moved to since (:class:`StreamFence`)."""
    fence: int = 0
    """The ``seq`` its generation starts at (0 for generation 0): an older generation's events from there on are
    void."""


ContentDelta = StreamDelta | ReasoningDelta | ToolCallDelta
"""The per-stream events that carry content (everything between the start and the terminal event)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamEnd:
    """Terminal event of a generation that ended with a finish reason."""

    type: Literal["end"] = "end"
    seq: int
    finish_reason: FinishReason
    tokens: int
    ttft_ms: float | None
    cancel_reason: CancelReason | None = None
    prompt_tokens: int | None = None
    """The prompt's length in tokens, when the engine reported it."""
    completion_tokens: int | None = None
    """The engine's own count of the tokens it generated (its usage report), when it gave one; ``tokens`` is what
    the runner counted and published."""
    gen: int = 0
    """The generation of the owner that published it: 0 for the runner that started the stream, one more for each
    runner it moved to since (:class:`StreamFence`)."""
    fence: int = 0
    """The ``seq`` its generation starts at (0 for generation 0): an older generation's events from there on are
    void."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamError:
    """Terminal event of a generation that failed; ``code`` is an :class:`~tokenrelay.wire.errors.ErrorCode`."""

    type: Literal["error"] = "error"
    seq: int
    code: str
    message: str
    tokens: int
    gen: int = 0
    """The generation of the owner that published it: 0 for the runner that started the stream, one more for each
    runner it moved to since (:class:`StreamFence`)."""
    fence: int = 0
    """The ``seq`` its generation starts at (0 for generation 0): an older generation's events from there on are
    void."""


OUT_OF_BAND_SEQ = -1
"""``seq`` of a terminal :class:`StreamError` published by someone other than the stream's runner
(the gateway, when that runner is lost): it ends every reader wherever it is."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamFence:
    """Gateway -> a stream's readers (on its events subject, out of band): the stream moved to generation ``gen``,
    which starts at ``seq`` number ``fence``; every older generation's events from ``fence`` on are void.

    Published after the cut-off is recorded and before the new owner is offered the stream, so a reader (and the
    JetStream history, which stores it in the same order) learns of it before any event of the new generation
    and before anything a superseded owner that wakes up publishes later.  Never sent to a client.
    """

    type: Literal["fence"] = "fence"
    seq: int = OUT_OF_BAND_SEQ
    gen: int
    fence: int


StreamEvent = StreamStart | StreamDelta | ReasoningDelta | ToolCallDelta | StreamEnd | StreamError
TERMINAL_EVENTS = (StreamEnd, StreamError)


@dataclass(frozen=True, slots=True, kw_only=True)
class UnknownEvent:
    """Never on the wire: a stream's event of a ``type`` this process does not know (a newer runner's).

    It stands in for that event so a reader's merge counts its ``seq`` as seen and waits for no gap; it carries
    no content, and nothing is sent for it.
    """

    seq: int
    tag: str
    """The event's ``type``."""
    gen: int = 0
    """The event's ``gen`` (its generation's events are kept or dropped as those of a known type are)."""
    fence: int = 0
    """The event's ``fence``."""


ReceivedEvent = StreamEvent | UnknownEvent | StreamFence
"""A per-stream event as a streamer receives it (:func:`~tokenrelay.wire.codec.decode_received_event`)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelRequest:
    """Gateway -> owner (runner, or the gateway holding it queued): stop this stream."""

    type: Literal["cancel"] = "cancel"
    stream_id: str
    reason: CancelReason


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelReply:
    """Owner -> gateway, sent once generation has halted (or had already ended)."""

    type: Literal["cancel_reply"] = "cancel_reply"
    stream_id: str
    found: bool
    finish_reason: FinishReason | None
    tokens: int
    halted_ts: float | None = None
    """Wall-clock time the engine stopped, when this cancel is what stopped it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunnerHeartbeat:
    """Runner -> everyone, every ``heartbeat_interval_s``: I am alive, with this load."""

    type: Literal["runner_heartbeat"] = "runner_heartbeat"
    runner_id: str
    engine: str
    model: str
    active: int
    capacity: int
    ts: float
    streams: tuple[str, ...] = ()
    """Ids of the streams this runner is generating now that are on this heartbeat's :attr:`page`
    (:func:`~tokenrelay.wire.pages.page_of`): a heartbeat stays small whatever the runner's stream count."""
    page: int = 0
    """Which of the :attr:`pages` this heartbeat lists (its successive heartbeats go through them in turn)."""
    pages: int = 1
    """Over how many heartbeats the runner's streams are listed (1: all in each)."""
    v: int = field(default=PROTOCOL_VERSION, metadata={WHEN_ABSENT: 1})
    """The sender's :data:`PROTOCOL_VERSION` (1: it predates the field)."""
    models: tuple[str, ...] = ()
    """Every model this runner takes jobs of (on ``tokenrelay.jobs.<model>``); empty from a runner that predates
    it, which serves ``model`` alone (:meth:`served_models`)."""
    continues: Continues = Continues.NOTHING
    """What this runner's engine can continue of a stream that moved to it from a lost runner."""
    leaving: bool = False
    """The runner's last word: it is going away now (past its drain timeout), answers nothing more, and leaves the
    unfinished :attr:`streams` to be moved; gateways check it at once instead of waiting for it to be silent."""
    accepts_params: tuple[str, ...] | None = None
    """The request ``params`` fields this runner's engine can honour, for every model it serves; ``None``: any (an
    engine that passes them on, or a runner that predates the field).  Admission refuses a field no runner of the
    model accepts (``unsupported_parameter``)."""

    def accepts(self, name: str) -> bool:
        """Whether this runner's engine can honour the request parameter ``name``."""
        return self.accepts_params is None or name in self.accepts_params

    def served_models(self) -> tuple[str, ...]:
        """The models this runner takes jobs of: :attr:`models`, or ``(model,)`` when it names none."""
        return self.models or (self.model,)


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamRecord:
    """A stream's state, kept in the ``tokenrelay_streams`` KV bucket (key: stream id)."""

    type: Literal["record"] = "record"
    stream_id: str
    state: StreamState
    model: str
    created: int
    epoch: str
    gateway_id: str
    runner_id: str | None = None
    finish_reason: FinishReason | None = None
    tokens: int = 0
    ttft_ms: float | None = None
    error_code: str | None = None
    cancel_reason: CancelReason | None = None
    owner: str | None = None
    """The tenant whose API key created the stream (``None`` when no keys are configured): only it may
    read, stop, query or rate the stream."""
    prompt_tokens: int | None = None
    """The engine's count of the prompt, once it gave one."""
    detached: bool = False
    """As :attr:`JobRequest.detached`: no reader leaving cancels the stream."""
    generation: int = 0
    """The generation of the stream's current owner (0: the runner that started it; one more per move).  A
    runner writes the record only while no newer generation has: a superseded owner's writes are refused."""


def job_record(
    job: JobRequest,
    state: StreamState,
    *,
    runner_id: str | None = None,
    finish_reason: FinishReason | None = None,
    tokens: int = 0,
    ttft_ms: float | None = None,
    error_code: str | None = None,
    prompt_tokens: int | None = None,
) -> StreamRecord:
    """The record of ``job``'s stream in ``state``: the job's identity (its owner included) and these fields.

    Every writer of a stream's record (the admitting gateway, the runner) builds it here, so none can drop a
    field that must last for the stream's life, such as the owner every access is checked against.
    """
    return StreamRecord(
        stream_id=job.stream_id, state=state, model=job.model, created=job.created, epoch=job.epoch,
        gateway_id=job.gateway_id, owner=job.owner, runner_id=runner_id, finish_reason=finish_reason,
        tokens=tokens, ttft_ms=ttft_ms, error_code=error_code, prompt_tokens=prompt_tokens, detached=job.detached,
        generation=job.continuation.gen if job.continuation is not None else 0,
    )  # fmt: skip


Message = (
    JobRequest
    | JobAccepted
    | JobRejected
    | StreamStart
    | StreamDelta
    | ReasoningDelta
    | ToolCallDelta
    | StreamEnd
    | StreamError
    | StreamFence
    | CancelRequest
    | CancelReply
    | RunnerHeartbeat
    | StreamRecord
    | Feedback
    | StartRequest
    | StartRefused
    | ModelsRequest
    | ModelList
    | StreamDone
    | ReplayRequest
    | ReplayPage
    | StreamerLag
)

__all__ = [
    "LAG_REPORT_INTERVAL_S", "LAG_REPORT_TTL_S", "PROTOCOL_VERSION", "WHEN_ABSENT", "Feedback", "ModelList",
    "ModelsRequest", "ReplayPage", "ReplayRequest", "StartRefused", "StartRequest", "StreamDone", "StreamerLag",
]  # fmt: skip
"""Defined in ``wire/service.py`` and ``wire/version.py``, named here too: every wire message is importable from
this module."""
