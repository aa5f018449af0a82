"""Typed role configurations from parsed arguments, and the checks that need more than one flag or the environment.

Everything here runs before a role connects to anything: a problem is a :class:`UsageError`, which the command
line reports in one line with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import os

from tokenrelay.cli.options import CONTROL_ALLOW_ORIGIN, CORS_ALLOW_ORIGIN
from tokenrelay.cli.parser import given_as
from tokenrelay.runtime import config as c
from tokenrelay.runtime.auth import API_KEYS_ENV, KeyFileError, KeyRing, load_keyring
from tokenrelay.runtime.natsauth import NatsSecurity, NatsSecurityError
from tokenrelay.runtime.service import loop_factory
from tokenrelay.runtime.tokens import TOKEN_SECRET_ENV, SecretError, TokenSigner, load_signer

UPSTREAM_API_KEY_ENV = "TOKENRELAY_UPSTREAM_API_KEY"
"""The openai engine's key for its upstream: from the environment, so it never shows in a process list."""


class UsageError(Exception):
    """The flags or the environment ask for something that cannot run; the message names the flag or variable."""


def api_keys(args: argparse.Namespace) -> KeyRing | None:
    """The keys from ``--api-keys-file`` and ``$TOKENRELAY_API_KEYS``, ``None`` without either."""
    flag = given_as(args, "api_keys_file", "--api-keys-file")
    try:
        from_file = load_keyring(args.api_keys_file or None, None)
    except (KeyFileError, OSError) as exc:
        raise UsageError(f"{flag}: API keys: {exc}") from None
    try:
        from_env = load_keyring(None, os.environ.get(API_KEYS_ENV))
    except KeyFileError as exc:
        raise UsageError(f"{API_KEYS_ENV}: {exc}") from None
    if from_file is None or from_env is None:
        return from_env if from_file is None else from_file
    try:
        return from_file.union(from_env)
    except KeyFileError as exc:
        raise UsageError(f"{flag} and {API_KEYS_ENV}: {exc}") from None


def token_signer(keys: KeyRing | None) -> TokenSigner | None:
    """The signer for ``$TOKENRELAY_TOKEN_SECRET``; with API keys it is required."""
    try:
        signer = load_signer(os.environ.get(TOKEN_SECRET_ENV))
    except SecretError as exc:
        raise UsageError(f"{TOKEN_SECRET_ENV}: {exc}") from None
    if keys is not None and signer is None:
        raise UsageError(
            f"API keys need {TOKEN_SECRET_ENV}, a secret of at least 32 characters that every gateway and streamer "
            "shares (it signs the tokens in events_url and control tokens)"
        )
    return signer


def check_nats_security() -> None:
    """Refuse ``TOKENRELAY_NATS_*`` settings that could not work (a missing file, a user without a password...).

    A bad environment value like any other (:class:`UsageError`: one line naming the variable, exit status 2), found
    before the role starts instead of when it connects.
    """
    try:
        NatsSecurity.from_env(os.environ).connect_options()
    except NatsSecurityError as exc:
        raise UsageError(f"NATS settings: {exc}") from None


def check_event_loop(args: argparse.Namespace) -> None:
    """Refuse ``--event-loop uvloop`` where uvloop is not installed."""
    try:
        loop_factory(args.event_loop)
    except ImportError:
        flag = given_as(args, "event_loop", "--event-loop")
        raise UsageError(f"{flag}: uvloop needs the uvloop package (pip install uvloop)") from None


def _history(args: argparse.Namespace) -> c.HistoryConfig:
    return c.HistoryConfig(
        ttl_s=args.history_ttl_s,
        storage=c.StorageKind(args.history_storage),
        max_bytes=args.history_max_bytes,
        replicas=args.replicas,
    )


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
        default_max_tokens=args.default_max_tokens or None, default_model=args.default_model or None,
        max_messages=args.max_messages, max_prompt_chars=args.max_prompt_chars, max_tools=args.max_tools,
        max_content_parts=args.max_content_parts, max_image_bytes=args.max_image_bytes,
        max_body_bytes=args.max_body_bytes,
        runner_stale_after_s=args.runner_stale_after_s, unread_grace_s=args.unread_grace_s,
        max_migrations=args.max_migrations, migration_timeout_s=args.migration_timeout_s,
        api_keys=keys, tokens=token_signer(keys),
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
        cors_allow_origins=CORS_ALLOW_ORIGIN.values(args), api_keys=keys, tokens=token_signer(keys),
        max_body_bytes=args.max_body_bytes,
        max_readers_per_stream=args.max_readers_per_stream, direct_writes=args.direct_writes == "on",
        live_subscription=c.LiveSubscription(args.live_subscription), response_ttl_s=args.response_ttl_s,
        max_background_responses_per_key=args.max_background_responses_per_key,
    )  # fmt: skip


def runner_config(args: argparse.Namespace) -> c.RunnerConfig:
    """Typed runner config from parsed arguments."""
    check_engine(args)
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
        replay_linger_s=args.replay_linger_s, drain_timeout_s=args.drain_timeout_s,
    )  # fmt: skip


def check_engine(args: argparse.Namespace) -> None:
    """Refuse an engine without what it needs: the openai engine's upstream, the transformers engine's model."""
    engine = given_as(args, "engine", "--engine")
    if args.engine == "openai" and not (args.upstream_url and args.upstream_model):
        raise UsageError(f"{engine} openai needs --upstream-url and --upstream-model")
    if args.engine == "transformers":
        if not args.model_path:
            raise UsageError(f"{engine} transformers needs --model-path")
        if any(importlib.util.find_spec(name) is None for name in ("torch", "transformers")):
            raise UsageError(f"{engine} transformers needs: pip install 'tokenrelay[transformers]'")
        if args.model_path.startswith(("/", ".", "~")) and not os.path.isdir(os.path.expanduser(args.model_path)):
            # A path, not a name in the Hugging Face cache: it must be a model's folder.
            flag = given_as(args, "model_path", "--model-path")
            raise UsageError(f"{flag}: no such folder: {args.model_path}")


def _upstream(args: argparse.Namespace) -> c.UpstreamConfig | None:
    if args.engine != "openai":
        return None
    key = os.environ.get(UPSTREAM_API_KEY_ENV) or None
    return c.UpstreamConfig(
        url=args.upstream_url,
        model=args.upstream_model,
        api_key=key,
        read_timeout_s=args.upstream_timeout_s,
        include_usage=args.upstream_include_usage == "on",
        continue_final_message=args.upstream_continue_final_message == "on",
    )
