"""The flags of the roles, as tables that both a role's own command and ``tokenrelay up`` read.

A role's parser adds these options; ``up`` adds the same ones (with the demo's defaults where it has its own)
and forwards each value to the children that use it, so a flag means the same thing on both commands.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tokenrelay.cli.parser import Repeat
from tokenrelay.runner.engines.registry import ENGINES
from tokenrelay.runtime import config as c
from tokenrelay.runtime import values as v
from tokenrelay.runtime.auth import API_KEYS_ENV
from tokenrelay.runtime.service import EVENT_LOOPS
from tokenrelay.runtime.tokens import TOKEN_SECRET_ENV

UP_SYNTHETIC_LENGTH_TOKENS = 240
"""``up``'s synthetic answers: long enough to watch them stream and to press Stop, and below the chat page's
``max_tokens`` (256) so that they end on their own (``finish_reason`` ``stop``)."""
UP_SYNTHETIC_TOKENS_PER_S = 30.0
"""``up``'s synthetic pace: about what a person reads along with (240 tokens take 8 s)."""


@dataclass(frozen=True)
class Option:
    """One flag of a role, which ``up`` also takes and forwards unchanged to the children of that role."""

    flag: str
    type: Callable[[str], Any]
    default: Any
    help: str
    choices: tuple[str, ...] | None = None

    @property
    def dest(self) -> str:
        """The attribute of the parsed arguments that holds the value."""
        return self.flag.removeprefix("--").replace("-", "_")

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        """Add this flag to ``parser``."""
        parser.add_argument(self.flag, type=self.type, default=self.default, choices=self.choices, help=self.help)

    def forward(self, args: argparse.Namespace) -> list[str]:
        """The flag and its parsed value, for a child's command line."""
        return [self.flag, str(getattr(args, self.dest))]

    def with_default(self, default: Any) -> Option:
        """The same flag with another default (``up``'s demo)."""
        return dataclasses.replace(self, default=default)


@dataclass(frozen=True)
class RepeatedOption(Option):
    """A flag that may be given several times (``default`` is a tuple); ``up`` forwards every value."""

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        """Add this flag to ``parser``; the values given replace the default."""
        parser.add_argument(self.flag, type=self.type, action=Repeat, default=self.default, help=self.help)

    def forward(self, args: argparse.Namespace) -> list[str]:
        """The flag once per value."""
        return [part for value in self.values(args) for part in (self.flag, str(value))]

    def values(self, args: argparse.Namespace) -> tuple[Any, ...]:
        """The values given, or the default when there were none."""
        return tuple(getattr(args, self.dest))


LOG_LEVEL = Option("--log-level", v.log_level, "INFO", "log level", v.LOG_LEVELS)
EVENT_LOOP = Option(
    "--event-loop", str, "auto", "event loop of the role processes; auto: uvloop where installed, else asyncio",
    EVENT_LOOPS,
)  # fmt: skip
HISTORY_OPTIONS = (
    Option("--history-ttl-s", v.POSITIVE_DURATION, c.DEFAULT_HISTORY_TTL_S,
           "seconds a stream's events are kept for replay"),
    Option("--history-storage", str, str(c.StorageKind.MEMORY), "JetStream storage for history",
           tuple(str(kind) for kind in c.StorageKind)),
    Option("--history-max-bytes", v.POSITIVE_COUNT, c.DEFAULT_HISTORY_MAX_BYTES,
           "bytes of history kept, oldest dropped first"),
    Option("--replicas", v.COUNT, 0,
           "copies JetStream keeps of records, history, feedback and stored requests and responses; 0: 3 on a "
           "cluster that advertises at least 3 servers, 1 on one server (required where a cluster advertises none)"),
)  # fmt: skip
ENGINE_OPTIONS = (
    Option("--engine", str, "synthetic", "inference engine of the runners", ENGINES),
    Option("--model", str, "synthetic", "model name the runners report"),
    Option("--max-concurrency", v.POSITIVE_COUNT, c.DEFAULT_MAX_CONCURRENCY, "streams one runner generates at once"),
    Option("--publish-interval-ms", v.DURATION, c.DEFAULT_PUBLISH_INTERVAL_MS,
           "tokens faster than this are batched into one NATS message (0: every token)"),
    Option("--max-publish-interval-ms", v.DURATION, c.DEFAULT_MAX_PUBLISH_INTERVAL_MS,
           "while a streamer reports tokens reaching it late, the interval follows that lateness up to this, so "
           "each message carries more tokens (not below --publish-interval-ms; equal: fixed)"),
    Option("--replay-max-bytes-per-stream", v.COUNT, c.DEFAULT_REPLAY_MAX_BYTES_PER_STREAM,
           "a runner serves a stream's history from memory up to this many bytes (0: JetStream only)"),
    Option("--replay-linger-s", v.DURATION, c.DEFAULT_REPLAY_LINGER_S,
           "a runner keeps serving a finished stream's history from memory this long"),
    Option("--drain-timeout-s", v.DURATION, c.DEFAULT_DRAIN_TIMEOUT_S,
           "on SIGTERM a runner takes no new stream and lets its streams finish for this long; what still runs "
           "then moves to other runners (SIGINT: ends at once with shutting_down)"),
    Option("--synthetic-ttft-ms", v.DURATION, c.DEFAULT_SYNTHETIC_TTFT_MS,
           "synthetic engine: delay before the first token"),
    Option("--synthetic-tokens-per-s", v.RATE, c.DEFAULT_SYNTHETIC_TOKENS_PER_S,
           "synthetic engine: tokens per second after the first (0: as fast as possible)"),
    Option("--synthetic-length-tokens", v.COUNT, 0,
           "synthetic engine: natural length of every text (0: 16-63 tokens, derived from the prompt)"),
    Option("--synthetic-step-ms", v.DURATION, c.DEFAULT_SYNTHETIC_STEP_MS,
           "synthetic engine: decode step shared by all streams; tokens after the first are released at "
           "its boundaries (0: a timer per token)"),
    Option("--upstream-url", v.optional_http_url, "",
           "openai engine: base URL of an OpenAI-compatible server, ending in /v1"),
    Option("--upstream-model", str, "", "openai engine: model name to ask the upstream for"),
    Option("--upstream-timeout-s", v.POSITIVE_DURATION, 60.0,
           "openai engine: end a stream whose upstream is silent this long"),
    Option("--upstream-include-usage", str, "on",
           "openai engine: ask the upstream for its token counts (stream_options.include_usage); off for a "
           "server that refuses stream_options", choices=("on", "off")),
    Option("--upstream-continue-final-message", str, "off",
           "openai engine: take streams that move here from a lost runner, continuing the answer so far as a final "
           "assistant message (continue_final_message, as vLLM accepts it)", choices=("on", "off")),
    Option("--model-path", str, "", "transformers engine: local model directory (or a cached Hugging Face name)"),
    Option("--worker-threads", v.POSITIVE_COUNT, 1, "transformers engine: generations computed at once"),
)  # fmt: skip
UP_ENGINE_OPTIONS = tuple(
    option.with_default(UP_SYNTHETIC_LENGTH_TOKENS) if option.flag == "--synthetic-length-tokens"
    else option.with_default(UP_SYNTHETIC_TOKENS_PER_S) if option.flag == "--synthetic-tokens-per-s"
    else option
    for option in ENGINE_OPTIONS
)  # fmt: skip
"""The runners' flags as ``up`` takes them: the synthetic engine answers at a pace a person can watch."""
CORS_ALLOW_ORIGIN = RepeatedOption(
    "--cors-allow-origin", v.cors_origin, c.DEFAULT_CORS_ALLOW_ORIGINS,
    "an origin (scheme://host:port) whose pages may read the streamer's /v1/ API; * allows any (repeatable)",
)  # fmt: skip
STREAMER_OPTIONS = (
    Option("--heartbeat-s", v.POSITIVE_DURATION, c.DEFAULT_HEARTBEAT_S, "send ': ping' to readers idle this long"),
    Option("--max-reader-buffer-bytes", v.POSITIVE_COUNT, c.DEFAULT_MAX_READER_BUFFER_BYTES,
           "unsent bytes per reader before it is closed as slow_consumer"),
    Option("--flush-interval-ms", v.DURATION, c.DEFAULT_FLUSH_INTERVAL_MS,
           "write to a reader at most this often, merging what arrives in between (0: every event)"),
    Option("--max-flush-interval-ms", v.DURATION, c.DEFAULT_MAX_FLUSH_INTERVAL_MS,
           "while tokens reach the streamer late (it cannot keep up), the interval follows their average "
           "lateness up to this, so writes carry more tokens each (not below --flush-interval-ms; equal: fixed)"),
    Option("--direct-writes", str, "off",
           "on: write events from the NATS callback while a reader's writer is idle (less CPU on many slow "
           "streams; worse lag when the streamer is saturated)", choices=("on", "off")),
    Option("--socket-send-buffer-bytes", v.COUNT, 0,
           "kernel send buffer per SSE connection (SO_SNDBUF); 0: the kernel's autotuning"),
    Option("--write-timeout-s", v.POSITIVE_DURATION, c.DEFAULT_WRITE_TIMEOUT_S,
           "close a reader as slow_consumer when a write is not taken within this time"),
    Option("--disconnect-grace-s", v.DURATION, c.DEFAULT_DISCONNECT_GRACE_S,
           "cancel a generation whose readers all left this long ago (0: never)"),
    Option("--max-readers-per-stream", v.COUNT, c.DEFAULT_MAX_READERS_PER_STREAM,
           "readers one stream may have at once on this streamer (more: 429; 0: no limit)"),
    Option("--live-subscription", str, str(c.LiveSubscription.SHARED),
           "shared: one NATS subscription for every stream's events (least CPU; every streamer gets every "
           "event); per-stream: one per stream read here (for many streamers)",
           choices=tuple(str(mode) for mode in c.LiveSubscription)),
    Option("--response-ttl-s", v.POSITIVE_DURATION, c.DEFAULT_RESPONSE_TTL_S,
           "keep stored responses (POST /v1/responses) this long: retrievable, resumable, chainable"),
    Option("--max-background-responses-per-key", v.COUNT, c.DEFAULT_MAX_BACKGROUND_RESPONSES_PER_KEY,
           "stored background responses one API key's tenant may hold (one more: 429; 0: no limit)"),
    CORS_ALLOW_ORIGIN,
)  # fmt: skip
MAX_BODY_BYTES = Option(
    "--max-body-bytes", v.POSITIVE_COUNT, c.DEFAULT_MAX_BODY_BYTES,
    "largest request body the gateway's API and the streamer's compatible APIs read (more: 413 payload_too_large)",
)  # fmt: skip
"""Taken by the gateway and the streamer alike (one flag of ``up``, forwarded to both)."""
API_KEYS_FILE = Option(
    "--api-keys-file", v.existing_file, "",
    f"file of 'tenant key' lines (or key digests 'tenant sha256:<hex>'); with it, or ${API_KEYS_ENV} "
    "('tenant:key,...'), every endpoint but /healthz, /readyz and /metrics needs Authorization: Bearer <key>; "
    f"gateway and streamer then also need the same ${TOKEN_SECRET_ENV} (at least 32 characters; up makes one)",
)  # fmt: skip
CONTROL_ALLOW_ORIGIN = RepeatedOption(
    "--control-allow-origin", v.cors_origin, (),
    "an origin (scheme://host:port) whose pages may open the control WebSocket besides the gateway's own; * any "
    "(repeatable)",
)  # fmt: skip
GATEWAY_OPTIONS = (
    Option("--max-queued-streams", v.COUNT, c.DEFAULT_MAX_QUEUED_STREAMS,
           "streams of one model waiting for a runner before 503"),
    Option("--queue-timeout-s", v.POSITIVE_DURATION, c.DEFAULT_QUEUE_TIMEOUT_S, "seconds a stream waits for a runner"),
    Option("--max-tokens-limit", v.POSITIVE_COUNT, c.DEFAULT_MAX_TOKENS_LIMIT,
           "largest max_tokens a request may ask for"),
    Option("--default-max-tokens", v.COUNT, 0,
           "max_tokens of a request that gives none (at most --max-tokens-limit; 0: none, such a request ends at "
           "the engine's own limit)"),
    Option("--default-model", str, "",
           "model of a request that names none while the runners serve several (empty: such a request is 400, "
           "naming the models served); with one model served, a request naming none gets it"),
    Option("--max-messages", v.POSITIVE_COUNT, c.DEFAULT_MAX_MESSAGES, "messages one request may carry (more: 400)"),
    Option("--max-prompt-chars", v.POSITIVE_COUNT, c.DEFAULT_MAX_PROMPT_CHARS,
           "characters of all messages' content together (more: 400)"),
    Option("--max-tools", v.POSITIVE_COUNT, c.DEFAULT_MAX_TOOLS, "tools one request may define (more: 400)"),
    Option("--max-content-parts", v.POSITIVE_COUNT, c.DEFAULT_MAX_CONTENT_PARTS,
           "content parts (text, images) of all messages together (more: 400)"),
    Option("--max-image-bytes", v.POSITIVE_COUNT, c.DEFAULT_MAX_IMAGE_BYTES,
           "decoded bytes of one image sent as a data: URL (more: 413 payload_too_large)"),
    Option("--unread-grace-s", v.DURATION, c.DEFAULT_UNREAD_GRACE_S,
           "cancel a generation no reader has connected to this long after its POST (0: never)"),
    Option("--runner-stale-after-s", v.POSITIVE_DURATION, c.DEFAULT_RUNNER_STALE_AFTER_S,
           "a runner silent this long is pinged; one that does not answer within as long again is lost "
           "(its streams move to another runner, see --max-migrations, or end with a runner_lost error)"),
    Option("--max-migrations", v.COUNT, c.DEFAULT_MAX_MIGRATIONS,
           "times one stream may move to another runner of its model after its runner was lost (0: never; the "
           "stream ends with runner_lost)"),
    Option("--migration-timeout-s", v.POSITIVE_DURATION, c.DEFAULT_MIGRATION_TIMEOUT_S,
           "how long moving a lost runner's stream may look for a runner that takes it (then runner_lost)"),
    Option("--events-token-ttl-s", v.POSITIVE_DURATION, c.DEFAULT_EVENTS_TOKEN_TTL_S,
           "with API keys: how long the token in an events_url lets a client read (and resume) its stream"),
    Option("--control-token-ttl-s", v.POSITIVE_DURATION, c.DEFAULT_CONTROL_TOKEN_TTL_S,
           "with API keys: how long a token from POST /v1/control/token may open a control WebSocket"),
    Option("--key-requests-per-s", v.RATE, 0.0,
           "with API keys: requests a second per key on this gateway, stops excepted (more: 429; 0: no limit)"),
    Option("--key-request-burst", v.COUNT, 0,
           "with API keys: requests a key may make at once after being idle (0: the per-second rate)"),
    Option("--key-max-streams", v.COUNT, 0,
           "with API keys: streams a key may run at once via this gateway (0: no limit)"),
    Option("--key-max-control-sockets", v.COUNT, c.DEFAULT_MAX_CONTROL_SOCKETS_PER_KEY,
           "with API keys: control WebSockets a key may hold open on this gateway (0: no limit)"),
    CONTROL_ALLOW_ORIGIN,
)  # fmt: skip

SHARED_OPTIONS = (LOG_LEVEL, *HISTORY_OPTIONS, EVENT_LOOP)
"""What every role takes besides its address and NATS, and ``up`` forwards to each child."""
FORWARDED = {
    "gateway": (*SHARED_OPTIONS, *GATEWAY_OPTIONS, MAX_BODY_BYTES, API_KEYS_FILE),
    "streamer": (*SHARED_OPTIONS, *STREAMER_OPTIONS, MAX_BODY_BYTES, API_KEYS_FILE),
    "runner": (*SHARED_OPTIONS, *UP_ENGINE_OPTIONS),
}
"""Per role, the flags ``up`` passes on with its own values; ``up`` sets each child's address, port and NATS."""


def add_role_address(parser: argparse.ArgumentParser, *, port: int) -> None:
    """The flags every role takes for where it listens and which NATS it joins."""
    parser.add_argument("--nats-url", type=v.nats_url, default=c.DEFAULT_NATS_URL,
                        help="NATS servers to connect to (comma-separated: the servers of one cluster)")  # fmt: skip
    parser.add_argument("--host", type=v.host, default=c.DEFAULT_HOST, help="address to listen on")
    parser.add_argument("--port", type=v.PORT, default=port, help="port to listen on (0: any free port)")
