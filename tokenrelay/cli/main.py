"""The ``tokenrelay`` command line: ``up`` runs everything; ``gateway|streamer|runner`` run one role;
``loadtest`` measures a running deployment."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tokenrelay.loadtest.command import add_arguments as add_loadtest_arguments
from tokenrelay.loadtest.command import positive_int
from tokenrelay.runtime import config as c
from tokenrelay.runtime.auth import API_KEYS_ENV, KeyFileError, KeyRing, load_keyring
from tokenrelay.runtime.service import EVENT_LOOPS, run_role, setup_logging
from tokenrelay.runtime.tokens import TOKEN_SECRET_ENV, SecretError, TokenSigner, load_signer


@dataclass(frozen=True)
class Option:
    """One command-line option that ``up`` forwards unchanged to the child processes."""

    flag: str
    type: Any
    default: Any
    help: str
    choices: tuple[str, ...] | None = None

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    def add_to(self, parser: argparse.ArgumentParser | Any) -> None:
        parser.add_argument(self.flag, type=self.type, default=self.default, choices=self.choices, help=self.help)

    def forward(self, args: argparse.Namespace) -> list[str]:
        return [self.flag, str(getattr(args, self.dest))]


@dataclass(frozen=True)
class RepeatedOption(Option):
    """An option that may be given several times (``default`` is a tuple); ``up`` forwards every value."""

    def add_to(self, parser: argparse.ArgumentParser | Any) -> None:
        text = f"{self.help} (repeatable; default: {' '.join(self.default)})"
        parser.add_argument(self.flag, type=self.type, action="append", default=None, help=text)

    def forward(self, args: argparse.Namespace) -> list[str]:
        return [part for value in getattr(args, self.dest) or () for part in (self.flag, str(value))]

    def values(self, args: argparse.Namespace) -> tuple[Any, ...]:
        """The values given, or the default when there were none."""
        return tuple(getattr(args, self.dest) or self.default)


def cors_origin(text: str) -> str:
    """An origin as a browser sends it (``scheme://host[:port]``), or ``*``; anything else is a usage error."""
    if text == "*":
        return text
    parts = urlsplit(text)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or "@" in parts.netloc
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise argparse.ArgumentTypeError(f"{text!r} is not an origin like https://chat.example.com (or *)")
    return f"{parts.scheme}://{parts.netloc.lower()}"


HISTORY_OPTIONS = (
    Option("--history-ttl-s", float, c.DEFAULT_HISTORY_TTL_S, "seconds a stream's events are kept for replay"),
    Option("--history-storage", str, "memory", "JetStream storage for history", ("memory", "file")),
    Option("--history-max-bytes", int, c.DEFAULT_HISTORY_MAX_BYTES, "bytes of history kept, oldest dropped first"),
)
ENGINE_OPTIONS = (
    Option("--engine", str, "synthetic", "inference engine of the runners", ("synthetic", "openai", "transformers")),
    Option("--model", str, "synthetic", "model name the runners report"),
    Option("--max-concurrency", int, c.DEFAULT_MAX_CONCURRENCY, "streams one runner generates at once"),
    Option("--publish-interval-ms", float, c.DEFAULT_PUBLISH_INTERVAL_MS,
           "tokens faster than this are batched into one NATS message (0: every token)"),
    Option("--max-publish-interval-ms", float, c.DEFAULT_MAX_PUBLISH_INTERVAL_MS,
           "while a streamer reports tokens reaching it late, the interval follows that lateness up to this, so "
           "each message carries more tokens (not below --publish-interval-ms; equal: fixed)"),
    Option("--replay-max-bytes-per-stream", int, c.DEFAULT_REPLAY_MAX_BYTES_PER_STREAM,
           "a runner serves a stream's history from memory up to this many bytes (0: JetStream only)"),
    Option("--replay-linger-s", float, c.DEFAULT_REPLAY_LINGER_S,
           "a runner keeps serving a finished stream's history from memory this long"),
    Option("--synthetic-ttft-ms", float, c.DEFAULT_SYNTHETIC_TTFT_MS,
           "synthetic engine: delay before the first token"),
    Option("--synthetic-tokens-per-s", float, c.DEFAULT_SYNTHETIC_TOKENS_PER_S,
           "synthetic engine: tokens per second after the first (0: as fast as possible)"),
    Option("--synthetic-length-tokens", int, 0,
           "synthetic engine: natural length of every text (0: derived from the prompt)"),
    Option("--synthetic-step-ms", float, c.DEFAULT_SYNTHETIC_STEP_MS,
           "synthetic engine: decode step shared by all streams; tokens after the first are released at "
           "its boundaries (0: a timer per token)"),
    Option("--upstream-url", str, "", "openai engine: base URL of an OpenAI-compatible server, ending in /v1"),
    Option("--upstream-model", str, "", "openai engine: model name to ask the upstream for"),
    Option("--upstream-timeout-s", float, 60.0, "openai engine: end a stream whose upstream is silent this long"),
    Option("--model-path", str, "", "transformers engine: local model directory (or a cached Hugging Face name)"),
    Option("--worker-threads", int, 1, "transformers engine: generations computed at once"),
)  # fmt: skip
CORS_ALLOW_ORIGIN = RepeatedOption(
    "--cors-allow-origin",
    cors_origin,
    c.DEFAULT_CORS_ALLOW_ORIGINS,
    "an origin (scheme://host:port) whose pages may read the streamer's /v1/ API; * allows any",
)
STREAMER_OPTIONS = (
    Option("--heartbeat-s", float, c.DEFAULT_HEARTBEAT_S, "send ': ping' to readers idle this long"),
    Option("--max-reader-buffer-bytes", int, c.DEFAULT_MAX_READER_BUFFER_BYTES,
           "unsent bytes per reader before it is closed as slow_consumer"),
    Option("--flush-interval-ms", float, c.DEFAULT_FLUSH_INTERVAL_MS,
           "write to a reader at most this often, merging what arrives in between (0: every event)"),
    Option("--max-flush-interval-ms", float, c.DEFAULT_MAX_FLUSH_INTERVAL_MS,
           "while tokens reach the streamer late (it cannot keep up), the interval follows their average "
           "lateness up to this, so writes carry more tokens each (not below --flush-interval-ms; equal: fixed)"),
    Option("--direct-writes", str, "off",
           "on: write events from the NATS callback while a reader's writer is idle (less CPU on many slow "
           "streams; worse lag when the streamer is saturated)", choices=("on", "off")),
    Option("--socket-send-buffer-bytes", int, 0,
           "kernel send buffer per SSE connection (SO_SNDBUF); 0: the kernel's autotuning"),
    Option("--write-timeout-s", float, c.DEFAULT_WRITE_TIMEOUT_S,
           "close a reader as slow_consumer when a write is not taken within this time"),
    Option("--disconnect-grace-s", float, c.DEFAULT_DISCONNECT_GRACE_S,
           "cancel a generation whose readers all left this long ago (0: never)"),
    Option("--max-readers-per-stream", int, c.DEFAULT_MAX_READERS_PER_STREAM,
           "readers one stream may have at once on this streamer (more: 429; 0: no limit)"),
    Option("--live-subscription", str, str(c.LiveSubscription.SHARED),
           "shared: one NATS subscription for every stream's events (least CPU; every streamer gets every "
           "event); per-stream: one per stream read here (for many streamers)",
           choices=tuple(str(mode) for mode in c.LiveSubscription)),
    CORS_ALLOW_ORIGIN,
)  # fmt: skip
API_KEYS_FILE = Option(
    "--api-keys-file", str, "",
    f"file of 'tenant key' lines (or key digests 'tenant sha256:<hex>'); with it, or ${API_KEYS_ENV} "
    "('tenant:key,...'), every endpoint but /healthz, /readyz and /metrics needs Authorization: Bearer <key>; "
    f"gateway and streamer then also need the same ${TOKEN_SECRET_ENV} (at least 32 characters; up makes one)",
)  # fmt: skip
CONTROL_ALLOW_ORIGIN = RepeatedOption(
    "--control-allow-origin",
    cors_origin,
    (),
    "an origin (scheme://host:port) whose pages may open the control WebSocket besides the gateway's own; * any",
)
GATEWAY_OPTIONS = (
    Option("--max-queued-streams", int, c.DEFAULT_MAX_QUEUED_STREAMS, "streams waiting for a runner before 503"),
    Option("--queue-timeout-s", float, c.DEFAULT_QUEUE_TIMEOUT_S, "seconds a stream waits for a runner"),
    Option("--max-tokens-limit", int, c.DEFAULT_MAX_TOKENS_LIMIT, "largest max_tokens a request may ask for"),
    Option("--max-messages", int, c.DEFAULT_MAX_MESSAGES, "messages one request may carry (more: 400)"),
    Option("--max-prompt-chars", int, c.DEFAULT_MAX_PROMPT_CHARS,
           "characters of all messages' content together (more: 400)"),
    Option("--unread-grace-s", float, c.DEFAULT_UNREAD_GRACE_S,
           "cancel a generation no reader has connected to this long after its POST (0: never)"),
    Option("--runner-stale-after-s", float, c.DEFAULT_RUNNER_STALE_AFTER_S,
           "a runner silent this long is pinged; one that does not answer within as long again is lost "
           "(its streams end with a runner_lost error)"),
    Option("--events-token-ttl-s", float, c.DEFAULT_EVENTS_TOKEN_TTL_S,
           "with API keys: how long the token in an events_url lets a client read (and resume) its stream"),
    Option("--control-token-ttl-s", float, c.DEFAULT_CONTROL_TOKEN_TTL_S,
           "with API keys: how long a token from POST /v1/control/token may open a control WebSocket"),
    Option("--key-requests-per-s", float, 0.0,
           "with API keys: requests a second per key on this gateway, stops excepted (more: 429; 0: no limit)"),
    Option("--key-request-burst", int, 0,
           "with API keys: requests a key may make at once after being idle (0: the per-second rate)"),
    Option("--key-max-streams", int, 0, "with API keys: streams a key may run at once via this gateway (0: no limit)"),
    Option("--key-max-control-sockets", int, c.DEFAULT_MAX_CONTROL_SOCKETS_PER_KEY,
           "with API keys: control WebSockets a key may hold open on this gateway (0: no limit)"),
    CONTROL_ALLOW_ORIGIN,
)  # fmt: skip


def _history(args: argparse.Namespace) -> c.HistoryConfig:
    return c.HistoryConfig(
        ttl_s=args.history_ttl_s,
        storage=c.StorageKind(args.history_storage),
        max_bytes=args.history_max_bytes,
    )


EVENT_LOOP = Option(
    "--event-loop",
    str,
    "auto",
    "event loop of the role processes; auto: uvloop where installed, else asyncio",
    EVENT_LOOPS,
)


def _common(parser: argparse.ArgumentParser, *, port: int) -> None:
    parser.add_argument("--nats-url", default=c.DEFAULT_NATS_URL, help="NATS server to connect to")
    parser.add_argument("--host", default=c.DEFAULT_HOST, help="address to listen on")
    parser.add_argument("--port", type=int, default=port, help="port to listen on")
    parser.add_argument("--log-level", default="INFO")
    for option in (*HISTORY_OPTIONS, EVENT_LOOP):
        option.add_to(parser)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = argparse.ArgumentParser(prog="tokenrelay", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run NATS (embedded unless --nats-url), a gateway, a streamer and runners")
    up.add_argument("--nats-url", default=None, help="use this NATS instead of starting an embedded one")
    up.add_argument("--nats-port", type=int, default=4222, help="embedded NATS port (a free one if taken)")
    up.add_argument("--host", default=c.DEFAULT_HOST, help="address gateway and streamer listen on")
    up.add_argument("--gateway-port", type=int, default=c.DEFAULT_GATEWAY_PORT)
    up.add_argument("--streamer-port", type=int, default=c.DEFAULT_STREAMER_PORT)
    up.add_argument("--runners", type=int, default=1, help="runner processes to start")
    up.add_argument("--streamers", type=positive_int, default=1,
                    help="streamer processes to start; more than one share --streamer-port (SO_REUSEPORT), each "
                    "also on a port of its own for its /metrics and /healthz")  # fmt: skip
    up.add_argument("--log-level", default="INFO")
    for option in (*HISTORY_OPTIONS, EVENT_LOOP, *ENGINE_OPTIONS, *STREAMER_OPTIONS, *GATEWAY_OPTIONS, API_KEYS_FILE):
        option.add_to(up)
    up.add_argument(
        "--insecure",
        action="store_true",
        help="allow --host other than a loopback address without API keys (anyone who reaches it can use it)",
    )

    gateway = sub.add_parser("gateway", help="run one gateway (control plane)")
    _common(gateway, port=c.DEFAULT_GATEWAY_PORT)
    gateway.add_argument("--public-url", default=None, help="base URL clients reach this gateway at")
    gateway.add_argument("--streamer-url", default=f"http://{c.DEFAULT_HOST}:{c.DEFAULT_STREAMER_PORT}",
                         help="base URL clients reach the streamers at (for events_url)")  # fmt: skip
    for option in (*GATEWAY_OPTIONS, API_KEYS_FILE):
        option.add_to(gateway)

    streamer = sub.add_parser("streamer", help="run one streamer (SSE data plane)")
    _common(streamer, port=c.DEFAULT_STREAMER_PORT)
    streamer.add_argument("--reuse-port", choices=("on", "off"), default="off",
                          help="on: listen on --port with SO_REUSEPORT, so several streamer processes share it and "
                          "the kernel spreads connections over them (up --streamers N does this)")  # fmt: skip
    streamer.add_argument("--process-port", type=int, default=0,
                          help="also listen on this port, without SO_REUSEPORT: this process's own address, for "
                          "its /metrics and /healthz when --port is shared (0: none)")  # fmt: skip
    for option in (*STREAMER_OPTIONS, API_KEYS_FILE):
        option.add_to(streamer)

    feedback = sub.add_parser("feedback", help="work with stored feedback")
    feedback_sub = feedback.add_subparsers(dest="feedback_command", required=True)
    export = feedback_sub.add_parser("export", help="write every stored feedback item as JSON Lines")
    export.add_argument("--nats-url", default=c.DEFAULT_NATS_URL, help="NATS server holding the feedback")
    export.add_argument("--output", "-o", default="-", help="file to write (default: standard output)")
    export.add_argument("--log-level", default="WARNING")

    runner = sub.add_parser("runner", help="run one runner (inference engine)")
    _common(runner, port=c.DEFAULT_RUNNER_PORT)
    for option in ENGINE_OPTIONS:
        option.add_to(runner)

    loadtest = sub.add_parser("loadtest", help="open many concurrent streams against a deployment and measure them")
    add_loadtest_arguments(loadtest)
    return parser


def api_keys(args: argparse.Namespace) -> KeyRing | None:
    """The keys from ``--api-keys-file`` and ``$TOKENRELAY_API_KEYS``; a bad entry is a usage error."""
    try:
        return load_keyring(args.api_keys_file or None, os.environ.get(API_KEYS_ENV))
    except (KeyFileError, OSError) as exc:
        raise SystemExit(f"tokenrelay {args.command}: API keys: {exc}") from None


def token_signer(args: argparse.Namespace, keys: KeyRing | None) -> TokenSigner | None:
    """The signer for ``$TOKENRELAY_TOKEN_SECRET``; with API keys it is required (a usage error without it)."""
    try:
        signer = load_signer(os.environ.get(TOKEN_SECRET_ENV))
    except SecretError as exc:
        raise SystemExit(f"tokenrelay {args.command}: ${TOKEN_SECRET_ENV}: {exc}") from None
    if keys is not None and signer is None:
        raise SystemExit(
            f"tokenrelay {args.command}: API keys need ${TOKEN_SECRET_ENV}, a secret of at least 32 characters "
            "that every gateway and streamer shares (it signs the tokens in events_url and control tokens)"
        )
    return signer


def gateway_config(args: argparse.Namespace) -> c.GatewayConfig:
    """Typed gateway config from parsed arguments."""
    keys = api_keys(args)
    quotas = c.QuotaLimits(
        requests_per_s=args.key_requests_per_s, burst=args.key_request_burst,
        max_streams=args.key_max_streams, max_control_sockets=args.key_max_control_sockets,
    )  # fmt: skip
    return c.GatewayConfig(
        host=args.host, port=args.port, nats_url=args.nats_url, public_url=args.public_url,
        streamer_url=args.streamer_url, history=_history(args), max_queued_streams=args.max_queued_streams,
        queue_timeout_s=args.queue_timeout_s, max_tokens_limit=args.max_tokens_limit,
        max_messages=args.max_messages, max_prompt_chars=args.max_prompt_chars,
        runner_stale_after_s=args.runner_stale_after_s, unread_grace_s=args.unread_grace_s,
        api_keys=keys, tokens=token_signer(args, keys),
        events_token_ttl_s=args.events_token_ttl_s, control_token_ttl_s=args.control_token_ttl_s,
        control_allow_origins=CONTROL_ALLOW_ORIGIN.values(args), quotas=quotas,
    )  # fmt: skip


def streamer_config(args: argparse.Namespace) -> c.StreamerConfig:
    """Typed streamer config from parsed arguments."""
    keys = api_keys(args)
    return c.StreamerConfig(
        host=args.host, port=args.port, nats_url=args.nats_url, history=_history(args),
        reuse_port=args.reuse_port == "on", process_port=args.process_port,
        heartbeat_s=args.heartbeat_s, max_reader_buffer_bytes=args.max_reader_buffer_bytes,
        disconnect_grace_s=args.disconnect_grace_s, flush_interval_ms=args.flush_interval_ms,
        max_flush_interval_ms=max(args.max_flush_interval_ms, args.flush_interval_ms),
        write_timeout_s=args.write_timeout_s, socket_send_buffer_bytes=args.socket_send_buffer_bytes,
        cors_allow_origins=CORS_ALLOW_ORIGIN.values(args), api_keys=keys, tokens=token_signer(args, keys),
        max_readers_per_stream=args.max_readers_per_stream, direct_writes=args.direct_writes == "on",
        live_subscription=c.LiveSubscription(args.live_subscription),
    )  # fmt: skip


def runner_config(args: argparse.Namespace) -> c.RunnerConfig:
    """Typed runner config from parsed arguments."""
    synthetic = c.SyntheticConfig(
        ttft_ms=args.synthetic_ttft_ms,
        tokens_per_s=args.synthetic_tokens_per_s,
        length_tokens=args.synthetic_length_tokens,
        step_ms=args.synthetic_step_ms,
    )
    return c.RunnerConfig(
        host=args.host, port=args.port, nats_url=args.nats_url, history=_history(args), engine=args.engine,
        model=args.model, max_concurrency=args.max_concurrency, publish_interval_ms=args.publish_interval_ms,
        max_publish_interval_ms=args.max_publish_interval_ms, synthetic=synthetic, upstream=_upstream(args),
        model_path=args.model_path or None,
        worker_threads=args.worker_threads, replay_max_bytes_per_stream=args.replay_max_bytes_per_stream,
        replay_linger_s=args.replay_linger_s,
    )  # fmt: skip


def _upstream(args: argparse.Namespace) -> c.UpstreamConfig | None:
    if args.engine != "openai":
        return None
    if not args.upstream_url or not args.upstream_model:
        raise SystemExit("tokenrelay runner: --engine openai needs --upstream-url and --upstream-model")
    # The key comes from the environment so it never shows in a process list.
    key = os.environ.get("TOKENRELAY_UPSTREAM_API_KEY") or None
    return c.UpstreamConfig(
        url=args.upstream_url, model=args.upstream_model, api_key=key, read_timeout_s=args.upstream_timeout_s
    )


def _export_feedback(args: argparse.Namespace) -> int:
    from tokenrelay.cli.feedback import export

    if args.output == "-":
        count = asyncio.run(export(args.nats_url, sys.stdout.buffer))
    else:
        with open(args.output, "wb") as out:
            count = asyncio.run(export(args.nats_url, out))
    print(f"exported {count} feedback item(s)", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tokenrelay`` console script."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        if args.command == "up":
            from tokenrelay.cli.supervisor import up

            return up(args)
        if args.command == "gateway":
            from tokenrelay.gateway.app import run as run_gateway

            run_role(run_gateway(gateway_config(args)), event_loop=args.event_loop)
        elif args.command == "streamer":
            from tokenrelay.streamer.app import run as run_streamer

            run_role(run_streamer(streamer_config(args)), event_loop=args.event_loop)
        elif args.command == "feedback":
            return _export_feedback(args)
        elif args.command == "loadtest":
            from tokenrelay.loadtest.command import run as run_loadtest

            return run_loadtest(args)
        elif args.command == "runner":
            from tokenrelay.runner.app import run as run_runner

            run_role(run_runner(runner_config(args)), event_loop=args.event_loop)
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"tokenrelay {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0
