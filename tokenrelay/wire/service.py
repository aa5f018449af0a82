"""Wire messages of the services around streams: the compatible APIs' admission and model list, feedback, history
replay from runners, and streamers' lag reports (a stream's job, events and records are in ``wire/messages.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tokenrelay.wire.content import ChatMessage, JsonObject
from tokenrelay.wire.version import PROTOCOL_VERSION, WHEN_ABSENT


@dataclass(frozen=True, slots=True, kw_only=True)
class Feedback:
    """A user's rating of one stream, stored durably in JetStream."""

    type: Literal["feedback"] = "feedback"
    stream_id: str
    rating: Literal["up", "down"]
    comment: str | None = None
    ts: float


@dataclass(frozen=True, slots=True, kw_only=True)
class StartRequest:
    """Streamer -> any gateway (``tokenrelay.api.start``): admit a stream for a compatible-API request."""

    type: Literal["start_request"] = "start_request"
    messages: tuple[ChatMessage, ...]
    max_tokens: int | None = None
    model: str | None = None
    params: JsonObject = field(default_factory=dict)
    """The request's other fields in the OpenAI chat shape, as the job's ``params``."""
    prompt: str | None = None
    """A text completion's raw prompt, as the job's ``prompt`` (:attr:`messages` empty)."""
    owner: str | None = None
    """The tenant of the API key the streamer authenticated (``None`` without keys)."""
    payload: str | None = None
    """As the job's ``payload``: the object holding this whole request when it is larger than ``max_payload``
    (the gateway refuses it ``unavailable`` when it cannot read the object)."""
    detached: bool = False
    """Whether the stream runs to its end with no reader (a background response): no disconnect or unread check
    cancels it (as the job's ``detached``)."""
    stored: bool = False
    """Whether the runner keeps the stream's events when it ends (as the job's ``stored``)."""
    v: int = field(default=PROTOCOL_VERSION, metadata={WHEN_ABSENT: 1})
    """The sender's :data:`PROTOCOL_VERSION` (1: it predates the field)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StartRefused:
    """Gateway -> streamer: the stream was not admitted; ``code`` is an :class:`~tokenrelay.wire.errors.ErrorCode`."""

    type: Literal["start_refused"] = "start_refused"
    code: str
    message: str
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelsRequest:
    """Streamer -> any gateway (``tokenrelay.api.models``): which models do live runners serve?"""

    type: Literal["models_request"] = "models_request"


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelList:
    """Gateway -> streamer: the models of the runners alive now, each once."""

    type: Literal["model_list"] = "model_list"
    models: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamDone:
    """Runner -> the gateway that admitted a stream (``tokenrelay.gateway.<id>.done``): it finished."""

    type: Literal["stream_done"] = "stream_done"
    stream_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayRequest:
    """Streamer -> the runner of a stream (``tokenrelay.stream.<id>.replay``): its events from ``from_seq`` on."""

    type: Literal["replay_request"] = "replay_request"
    stream_id: str
    from_seq: int = 0
    max_events: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayPage:
    """Runner -> streamer: the first line of a replay page; ``events`` encoded events follow, one per line."""

    type: Literal["replay_page"] = "replay_page"
    stream_id: str
    events: int
    more: bool
    """More events were published after this page's last one: ask again from its ``seq`` + 1."""
    held: bool = True
    """``False``: the runner no longer holds this stream's events (read them from JetStream)."""


LAG_REPORT_INTERVAL_S = 0.25
"""How often a late streamer sends :class:`StreamerLag`."""
LAG_REPORT_TTL_S = 1.0
"""How long one :class:`StreamerLag` counts at a runner: four report intervals, so one lost report changes nothing
and a streamer that went away stops slowing anyone down."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamerLag:
    """Streamer -> runners (``tokenrelay.streamers.lag``): how late live events reach it, on average.

    Sent every :data:`LAG_REPORT_INTERVAL_S` while it is late (above its flush interval) and once with ``lag_s`` 0
    when it is on time again; runners hold tokens up to that long so they go out in fewer messages
    (``runner/pace.py``).
    """

    type: Literal["streamer_lag"] = "streamer_lag"
    streamer_id: str
    lag_s: float
