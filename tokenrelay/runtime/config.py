"""Typed configuration of each role. Defaults are named constants with their unit in the name.

The command line (:mod:`tokenrelay.cli.configs`) builds these; code receives them as typed values,
never as ``dict[str, Any]``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from tokenrelay.runtime.auth import KeyRing
from tokenrelay.runtime.tokens import TokenSigner

DEFAULT_HOST = "127.0.0.1"
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_GATEWAY_PORT = 8080
DEFAULT_STREAMER_PORT = 8081
DEFAULT_RUNNER_PORT = 8090

DEFAULT_HISTORY_TTL_S = 600.0
DEFAULT_DRAIN_TIMEOUT_S = 25.0
"""How long a runner told to stop (SIGTERM) lets its streams finish: under Kubernetes' default 30 s grace period."""
DEFAULT_RESPONSE_TTL_S = 3600.0
"""How long a stored response (``POST /v1/responses``) is kept: retrievable, resumable and chainable."""
DEFAULT_MAX_BACKGROUND_RESPONSES_PER_KEY = 100
"""Stored background responses one tenant may hold at once (0: no limit)."""
DEFAULT_HISTORY_MAX_BYTES = 1 << 30
DEFAULT_HEARTBEAT_S = 15.0
DEFAULT_MAX_READER_BUFFER_BYTES = 1 << 20
DEFAULT_HISTORY_BATCH_MESSAGES = 256
DEFAULT_DISCONNECT_GRACE_S = 5.0
DEFAULT_UNREAD_GRACE_S = 30.0
"""Longer than a reader's grace after it left: a GET that waits behind a saturated streamer's backlog must not find
its stream cancelled, and a client that never comes costs this much generation at most."""
DEFAULT_FLUSH_INTERVAL_MS = 10.0
DEFAULT_MAX_FLUSH_INTERVAL_MS = 100.0
DEFAULT_WRITE_TIMEOUT_S = 10.0
DEFAULT_MAX_BODY_BYTES = 16 << 20
"""Fits a request that carries two images of :data:`DEFAULT_MAX_IMAGE_BYTES` as base64 ``data:`` URLs (4/3 of
their size); the JSON parse of a body is bounded by it."""
DEFAULT_MAX_TOKENS_LIMIT = 32_768
DEFAULT_MAX_MESSAGES = 256
DEFAULT_MAX_PROMPT_CHARS = 200_000
DEFAULT_MAX_TOOLS = 128
DEFAULT_MAX_CONTENT_PARTS = 256
DEFAULT_MAX_IMAGE_BYTES = 5 << 20  # decoded bytes of one data: URL image
DEFAULT_MAX_QUEUED_STREAMS = 1_000
DEFAULT_QUEUE_TIMEOUT_S = 10.0
DEFAULT_DISPATCH_ATTEMPT_TIMEOUT_S = 1.0
DEFAULT_CANCEL_TIMEOUT_S = 5.0
DEFAULT_MAX_CONCURRENCY = 256
DEFAULT_PUBLISH_INTERVAL_MS = 5.0
DEFAULT_MAX_PUBLISH_INTERVAL_MS = 100.0
DEFAULT_REPLAY_MAX_BYTES_PER_STREAM = 256 * 1024
DEFAULT_REPLAY_LINGER_S = 30.0
DEFAULT_REPLAY_LINGER_STREAMS = 1000
DEFAULT_RUNNER_HEARTBEAT_INTERVAL_S = 1.0
DEFAULT_RUNNER_STALE_AFTER_S = 3.0
DEFAULT_MAX_MIGRATIONS = 2
"""Times one stream may move to another runner after its owner was lost; past it the stream ends ``runner_lost``."""
DEFAULT_MIGRATION_TIMEOUT_S = 10.0
"""How long a gateway tries to find a runner that continues a lost owner's stream before ending it ``runner_lost``."""
DEFAULT_SYNTHETIC_STEP_MS = 5.0
DEFAULT_SYNTHETIC_TTFT_MS = 50.0
DEFAULT_SYNTHETIC_TOKENS_PER_S = 30.0
DEFAULT_MAX_CONTROL_INFLIGHT = 64
DEFAULT_MAX_WS_MESSAGE_BYTES = 1 << 20
DEFAULT_CORS_ALLOW_ORIGINS = ("*",)
DEFAULT_EVENTS_TOKEN_TTL_S = 3600.0
DEFAULT_CONTROL_TOKEN_TTL_S = 60.0
DEFAULT_MAX_CONTROL_SOCKETS_PER_KEY = 64
DEFAULT_MAX_READERS_PER_STREAM = 32


class StorageKind(enum.StrEnum):
    """JetStream storage for stream history."""

    MEMORY = "memory"
    FILE = "file"


class LiveSubscription(enum.StrEnum):
    """How a streamer subscribes to live events (see :mod:`tokenrelay.streamer.hub`)."""

    SHARED = "shared"
    """One wildcard subscription to every stream: least CPU and memory per stream; every streamer gets every event."""
    PER_STREAM = "per-stream"
    """One subscription per stream read here: the server sends each streamer only its readers' streams."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryConfig:
    """How long and where per-stream history (for late readers and resume) is kept.

    Messages older than ``ttl_s`` seconds are dropped; past ``max_bytes`` the oldest go first.
    """

    ttl_s: float = DEFAULT_HISTORY_TTL_S
    storage: StorageKind = StorageKind.MEMORY
    max_bytes: int = DEFAULT_HISTORY_MAX_BYTES
    replicas: int = 0
    """Copies JetStream keeps of every stream, bucket and store tokenrelay declares (0: decided from the servers the
    NATS cluster advertises, :func:`tokenrelay.runtime.replicas.replicas_for`)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class QuotaLimits:
    """Each API key's limits on one gateway (enforced by :mod:`tokenrelay.gateway.quotas`); 0 means none."""

    requests_per_s: float = 0.0
    """Requests a second (a stop never counts)."""
    burst: int = 0
    """Requests a key may make at once after being idle (0: ``max(1, requests_per_s)``)."""
    max_streams: int = 0
    """Streams running at once."""
    max_control_sockets: int = DEFAULT_MAX_CONTROL_SOCKETS_PER_KEY
    """Control WebSockets open at once."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayConfig:
    """The control plane: admission, dispatch to runners, stop and feedback."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_GATEWAY_PORT
    nats_url: str = DEFAULT_NATS_URL
    public_url: str | None = None
    """Base URL clients use for this gateway (control_url, stop_url); default from host:port."""
    streamer_url: str = f"http://{DEFAULT_HOST}:{DEFAULT_STREAMER_PORT}"
    """Base URL clients use for the streamer (events_url)."""
    history: HistoryConfig = field(default_factory=HistoryConfig)
    api_keys: KeyRing | None = None
    """When set, every endpoint but the ops ones needs one of these keys (``401 unauthorized`` otherwise)."""
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    """Larger request bodies are refused with 413."""
    max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT
    """A larger ``max_tokens`` is refused with 400 ``bad_request``."""
    max_messages: int = DEFAULT_MAX_MESSAGES
    """Messages one request may carry; more is ``400 bad_request``."""
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS
    """Characters of all messages' content together; more is ``400 bad_request``."""
    max_tools: int = DEFAULT_MAX_TOOLS
    """Tools one request may define; more is ``400 bad_request``."""
    max_content_parts: int = DEFAULT_MAX_CONTENT_PARTS
    """Content parts (text, images) of all messages together; more is ``400 bad_request``."""
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    """Decoded bytes of one image sent as a ``data:`` URL; more is ``413 payload_too_large``."""
    default_max_tokens: int | None = None
    """The ``max_tokens`` of a request that gives none (``--default-max-tokens``; capped at ``max_tokens_limit``).
    ``None``: such a request ends at its engine's own limit, under the hard cap ``max_tokens_limit``."""
    default_model: str | None = None
    """The model of a request that names none while the runners serve several (``None``: such a request is
    ``400 bad_request`` naming the models served); with one model served, a request naming none gets it."""
    max_queued_streams: int = DEFAULT_MAX_QUEUED_STREAMS
    """Streams of one model waiting for a runner; beyond this a new stream of that model gets 503 ``overloaded``
    at once."""
    queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S
    """A stream no runner took within this time ends with an ``overloaded`` error event."""
    dispatch_attempt_timeout_s: float = DEFAULT_DISPATCH_ATTEMPT_TIMEOUT_S
    cancel_timeout_s: float = DEFAULT_CANCEL_TIMEOUT_S
    """How long a stop waits for the owner to confirm before answering ``unavailable``."""
    unread_grace_s: float = DEFAULT_UNREAD_GRACE_S
    """A stream no streamer has a reader of this long after admission is cancelled (reason ``disconnect``), as one
    whose readers all left is after the streamers' ``disconnect_grace_s``; 0: never (``gateway/unread.py``)."""
    runner_stale_after_s: float = DEFAULT_RUNNER_STALE_AFTER_S
    """A runner not heard from for this long no longer counts as available (``/readyz``) and is pinged; one that
    does not answer within as long again is lost: its streams move to other runners
    (``max_migrations``), or end ``runner_lost``."""
    max_migrations: int = DEFAULT_MAX_MIGRATIONS
    """Times one stream may move to another runner after its owner was lost (0: never; it ends ``runner_lost``)."""
    migration_timeout_s: float = DEFAULT_MIGRATION_TIMEOUT_S
    """How long a move may look for a runner that takes the stream before it ends ``runner_lost``."""
    max_control_inflight: int = DEFAULT_MAX_CONTROL_INFLIGHT
    """Control messages handled at once per socket; more wait (the socket is not read)."""
    max_ws_message_bytes: int = DEFAULT_MAX_WS_MESSAGE_BYTES
    """A larger control message closes the socket with 1009 (message too big)."""
    tokens: TokenSigner | None = None
    """Signs the ``events`` tokens put in ``events_url``, the ``stop`` tokens in ``stop_url`` and the ``control``
    tokens of ``POST /v1/control/token`` (required with ``api_keys``; the streamers check ``events`` tokens with the
    same secret)."""
    events_token_ttl_s: float = DEFAULT_EVENTS_TOKEN_TTL_S
    """How long the token in an ``events_url`` lets a client read (and resume) the stream."""
    control_token_ttl_s: float = DEFAULT_CONTROL_TOKEN_TTL_S
    """How long a control token may be used to open a control WebSocket."""
    control_allow_origins: tuple[str, ...] = ()
    """Origins whose pages may open the control WebSocket besides the gateway's own (``"*"``: any).
    A client that sends no ``Origin`` (not a browser) is not affected."""
    quotas: QuotaLimits = field(default_factory=QuotaLimits)
    """Each API key's limits on this gateway (see :mod:`tokenrelay.gateway.quotas`)."""

    def base_url(self) -> str:
        """This gateway's public base URL."""
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamerConfig:
    """The data plane: SSE readers fed from NATS."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_STREAMER_PORT
    nats_url: str = DEFAULT_NATS_URL
    reuse_port: bool = False
    """Listen on ``port`` with ``SO_REUSEPORT``, so several streamer processes share it and the kernel spreads
    new connections over them (one Python process uses one core)."""
    process_port: int = 0
    """Also listen here, without ``SO_REUSEPORT`` (0: not): this one process's address, for its own
    ``/metrics`` and ``/healthz`` when ``port`` is shared."""
    history: HistoryConfig = field(default_factory=HistoryConfig)
    api_keys: KeyRing | None = None
    """When set, every endpoint but the ops ones needs one of these keys (``401 unauthorized`` otherwise)."""
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    """A larger request body on the compatible APIs is refused with 413 (``payload_too_large``)."""
    heartbeat_s: float = DEFAULT_HEARTBEAT_S
    """A reader that got nothing for this many seconds is sent a ``: ping`` comment."""
    max_reader_buffer_bytes: int = DEFAULT_MAX_READER_BUFFER_BYTES
    """A reader with more unsent bytes than this is closed with ``slow_consumer``."""
    history_batch_messages: int = DEFAULT_HISTORY_BATCH_MESSAGES
    flush_interval_ms: float = DEFAULT_FLUSH_INTERVAL_MS
    """A reader is written to at most this often; what arrives in between is merged (0: every event)."""
    max_flush_interval_ms: float = DEFAULT_MAX_FLUSH_INTERVAL_MS
    """How far the flush interval may grow while live events reach this streamer late (it follows their
    average lateness; equal to ``flush_interval_ms``: a fixed interval).  See :mod:`tokenrelay.streamer.flush`."""
    direct_writes: bool = False
    """Write an event from the stack that queued it (the NATS callback) while the reader's writer is parked,
    instead of waking the writer task: less CPU per token on many slow streams (0.35 vs 0.40 cores at 4,000
    1-token/s readers).  Off by default until it is shown not to cost a saturated streamer token lag: at
    1,000 x 20 tokens/s its lag p99 was 637-1,536 ms in eight runs against 519-2,384 ms without it (same
    sitting, very noisy), and without it the writer's late wake-up merges what piled up."""
    socket_send_buffer_bytes: int = 0
    """Kernel send buffer of each SSE connection (``SO_SNDBUF``); 0 keeps the kernel's autotuning, which
    lets one client that never reads park up to ``net.ipv4.tcp_wmem``'s maximum (often 4 MiB) in the kernel."""
    write_timeout_s: float = DEFAULT_WRITE_TIMEOUT_S
    """A write the client has not taken within this time closes the reader as ``slow_consumer``."""
    disconnect_grace_s: float = DEFAULT_DISCONNECT_GRACE_S
    """When every reader of an unfinished stream has gone (here and on every other streamer) for
    this long, the generation is cancelled (reason ``disconnect``); 0 never cancels."""
    cancel_timeout_s: float = DEFAULT_CANCEL_TIMEOUT_S
    cors_allow_origins: tuple[str, ...] = DEFAULT_CORS_ALLOW_ORIGINS
    """Origins whose pages may read ``/v1/`` responses (the chat page's origin, usually the gateway's);
    ``"*"`` allows any. Credentials are never allowed, so no origin can read with a user's cookies."""
    tokens: TokenSigner | None = None
    """Checks the ``events`` tokens in ``events_url`` (the gateways' secret)."""
    max_readers_per_stream: int = DEFAULT_MAX_READERS_PER_STREAM
    """Readers one stream may have at once on this streamer; one more answers ``429 rate_limited``."""
    live_subscription: LiveSubscription = LiveSubscription.SHARED
    """``shared``: one wildcard subscription for every stream (for one or a few streamers); ``per-stream``:
    one per stream read here (for many streamers, each of which should receive only its readers' events)."""
    response_ttl_s: float = DEFAULT_RESPONSE_TTL_S
    """Stored responses (their records and events) are kept this long, in the history's storage."""
    max_background_responses_per_key: int = DEFAULT_MAX_BACKGROUND_RESPONSES_PER_KEY
    """Stored background responses one tenant may hold; one more answers ``429 rate_limited`` (0: no limit)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SyntheticConfig:
    """The synthetic engine's pacing and length."""

    ttft_ms: float = DEFAULT_SYNTHETIC_TTFT_MS
    tokens_per_s: float = DEFAULT_SYNTHETIC_TOKENS_PER_S
    """0 means as fast as possible."""
    length_tokens: int = 0
    """Natural length of every text (then ``finish_reason`` ``stop``); 0 derives it from the prompt."""
    step_ms: float = DEFAULT_SYNTHETIC_STEP_MS
    """Tokens after the first are released at decode steps this far apart, shared by every stream of the
    runner, as a batching engine produces them; 0 gives each token a timer of its own."""


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamConfig:
    """An OpenAI-compatible server the ``openai`` engine streams from."""

    url: str
    """Base URL ending in ``/v1`` (``/chat/completions``, or ``/completions`` for a raw prompt, is appended)."""
    model: str
    api_key: str | None = None
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    """No byte from the upstream for this long ends the stream with ``upstream_timeout``."""
    include_usage: bool = True
    """Ask for the upstream's token counts (``stream_options: {"include_usage": true}``); off for a server that
    refuses ``stream_options``."""
    continue_final_message: bool = False
    """Continue a stream that moved here from a lost runner by sending the answer so far as a final assistant
    message with ``continue_final_message: true, add_generation_prompt: false`` (as vLLM accepts them); off: this
    engine takes no moved stream (not every server supports the fields)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunnerConfig:
    """One runner: takes jobs from the queue group and streams tokens of its engine."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_RUNNER_PORT
    """HTTP port for ``/healthz`` and ``/metrics``; 0 picks a free one."""
    nats_url: str = DEFAULT_NATS_URL
    history: HistoryConfig = field(default_factory=HistoryConfig)
    engine: str = "synthetic"
    model: str = "synthetic"
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    """Streams generated at once; further jobs are rejected so another runner takes them."""
    publish_interval_ms: float = DEFAULT_PUBLISH_INTERVAL_MS
    """Tokens that come faster than this are batched into one message; 0 publishes each token."""
    max_publish_interval_ms: float = DEFAULT_MAX_PUBLISH_INTERVAL_MS
    """While a streamer reports live events reaching it late, the interval follows that lateness up to this
    (not below ``publish_interval_ms``; equal: fixed)."""
    heartbeat_interval_s: float = DEFAULT_RUNNER_HEARTBEAT_INTERVAL_S
    replay_max_bytes_per_stream: int = DEFAULT_REPLAY_MAX_BYTES_PER_STREAM
    """The runner serves a stream's history from memory up to this many bytes of events (0: never; JetStream does)."""
    replay_linger_s: float = DEFAULT_REPLAY_LINGER_S
    """A finished stream's history is served from memory this long after its end ..."""
    replay_linger_streams: int = DEFAULT_REPLAY_LINGER_STREAMS
    """... for at most this many finished streams (the oldest go first)."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    upstream: UpstreamConfig | None = None
    """Required by the ``openai`` engine."""
    model_path: str | None = None
    """The ``transformers`` engine's model: a local directory (or a name in the Hugging Face cache)."""
    worker_threads: int = 1
    """``transformers`` engine: generations computed at once (others wait for a thread)."""
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S
    """On SIGTERM the runner takes no new job and lets its streams finish for this long; what still runs then ends
    with ``shutting_down`` (SIGINT: at once)."""
