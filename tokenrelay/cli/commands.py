"""The ``tokenrelay`` command line as one parser: each command, its flags, and their environment variables.

Every flag may also come from ``TOKENRELAY_<COMMAND>_<FLAG>`` (``TOKENRELAY_GATEWAY_PORT``,
``TOKENRELAY_FEEDBACK_EXPORT_OUTPUT``): one name per command, so a variable meant for one role never reaches
another (``docs/configuration.md`` lists them all).
"""

from __future__ import annotations

import argparse

from tokenrelay.cli import options as o
from tokenrelay.cli.parser import CommandLine
from tokenrelay.loadtest.command import API_KEY_ENV, positive_int
from tokenrelay.loadtest.command import add_arguments as add_loadtest_arguments
from tokenrelay.runtime import config as c
from tokenrelay.runtime import values as v

DESCRIPTION = """\
Stream LLM tokens: up runs everything on this machine; gateway, streamer and runner run one role each;
loadtest measures a running deployment; feedback export writes the stored feedback."""
ENV_PREFIX = "TOKENRELAY_"
COMMANDS = ("up", "gateway", "streamer", "runner", "loadtest", "feedback export")
"""Each command that takes flags, as typed after ``tokenrelay``."""


def env_prefix(command: str) -> str:
    """The prefix of a command's variables: ``TOKENRELAY_GATEWAY_``, ``TOKENRELAY_FEEDBACK_EXPORT_``."""
    return f"{ENV_PREFIX}{command.upper().replace(' ', '_')}_"


NATS_URL_ENV = f"{ENV_PREFIX}NATS_URL"
"""One variable for the NATS servers of every command: they all join the same cluster."""
SHARED = {"nats_url": NATS_URL_ENV}


def build_parser() -> CommandLine:
    """The whole command line."""
    parser = CommandLine(prog="tokenrelay", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_up(sub.add_parser("up", help="run NATS (embedded unless --nats-url), a gateway, a streamer and runners",
                          env_prefix=env_prefix("up"), env_names=SHARED))  # fmt: skip
    add_gateway(
        sub.add_parser(
            "gateway", help="run one gateway (control plane)", env_prefix=env_prefix("gateway"), env_names=SHARED
        )
    )
    add_streamer(
        sub.add_parser(
            "streamer", help="run one streamer (SSE data plane)", env_prefix=env_prefix("streamer"), env_names=SHARED
        )
    )
    add_runner(
        sub.add_parser(
            "runner", help="run one runner (inference engine)", env_prefix=env_prefix("runner"), env_names=SHARED
        )
    )
    feedback = sub.add_parser("feedback", help="work with stored feedback")
    feedback_sub = feedback.add_subparsers(dest="feedback_command", required=True, metavar="COMMAND")
    add_feedback_export(
        feedback_sub.add_parser(
            "export",
            help="write every stored feedback item as JSON Lines",
            env_prefix=env_prefix("feedback export"),
            env_names=SHARED,
        )
    )
    add_loadtest(
        sub.add_parser(
            "loadtest",
            help="open many concurrent streams against a deployment and measure them",
            env_prefix=env_prefix("loadtest"),
            env_names={"api_key": API_KEY_ENV},  # the name it had before every flag had a variable
            unsplit={"prompt"},  # a prompt may contain commas: the variable holds one
        )
    )
    return parser


def add_up(parser: argparse.ArgumentParser) -> None:
    """``tokenrelay up``: its own flags, then every role's, which it forwards."""
    add = parser.add_argument
    add("--nats-url", type=v.nats_url, default=None,
        help="use these NATS servers (comma-separated: one cluster) instead of starting an embedded one")  # fmt: skip
    add("--nats-port", type=v.FIXED_PORT, default=4222, help="embedded NATS port (a free one if taken)")
    add("--host", type=v.host, default=c.DEFAULT_HOST,
        help="address gateway and streamer listen on (runners always use 127.0.0.1)")  # fmt: skip
    add("--gateway-port", type=v.FIXED_PORT, default=c.DEFAULT_GATEWAY_PORT, help="port the gateway listens on")
    add("--streamer-port", type=v.FIXED_PORT, default=c.DEFAULT_STREAMER_PORT, help="port the streamer listens on")
    add("--runners", type=positive_int, default=1, help="runner processes to start")
    add("--streamers", type=positive_int, default=1,
        help="streamer processes to start; more than one share --streamer-port (SO_REUSEPORT), each "
        "also on a port of its own for its /metrics and /healthz")  # fmt: skip
    up_options = (*o.SHARED_OPTIONS, *o.UP_ENGINE_OPTIONS, *o.STREAMER_OPTIONS, *o.GATEWAY_OPTIONS, o.MAX_BODY_BYTES)
    for option in up_options:
        option.add_to(parser)
    o.API_KEYS_FILE.add_to(parser)
    add("--insecure", action="store_true", default=False,
        help="allow --host other than a loopback address without API keys (anyone who reaches it can use "
        "it)")  # fmt: skip


def add_gateway(parser: argparse.ArgumentParser) -> None:
    """``tokenrelay gateway``."""
    o.add_role_address(parser, port=c.DEFAULT_GATEWAY_PORT)
    parser.add_argument("--public-url", type=v.http_url, default=None,
                        help="base URL clients reach this gateway at (none: http://<host>:<port>)")  # fmt: skip
    parser.add_argument("--streamer-url", type=v.http_url, default=f"http://{c.DEFAULT_HOST}:{c.DEFAULT_STREAMER_PORT}",
                        help="base URL clients reach the streamers at (for events_url)")  # fmt: skip
    for option in (*o.SHARED_OPTIONS, *o.GATEWAY_OPTIONS, o.MAX_BODY_BYTES, o.API_KEYS_FILE):
        option.add_to(parser)


def add_streamer(parser: argparse.ArgumentParser) -> None:
    """``tokenrelay streamer``."""
    o.add_role_address(parser, port=c.DEFAULT_STREAMER_PORT)
    parser.add_argument("--reuse-port", choices=("on", "off"), default="off",
                        help="on: listen on --port with SO_REUSEPORT, so several streamer processes share it and "
                        "the kernel spreads connections over them (up --streamers N does this)")  # fmt: skip
    parser.add_argument("--process-port", type=v.PORT, default=0,
                        help="also listen on this port, without SO_REUSEPORT: this process's own address, for "
                        "its /metrics and /healthz when --port is shared (0: none)")  # fmt: skip
    for option in (*o.SHARED_OPTIONS, *o.STREAMER_OPTIONS, o.MAX_BODY_BYTES, o.API_KEYS_FILE):
        option.add_to(parser)


def add_runner(parser: argparse.ArgumentParser) -> None:
    """``tokenrelay runner``."""
    o.add_role_address(parser, port=c.DEFAULT_RUNNER_PORT)
    for option in (*o.SHARED_OPTIONS, *o.ENGINE_OPTIONS):
        option.add_to(parser)


def add_feedback_export(parser: argparse.ArgumentParser) -> None:
    """``tokenrelay feedback export``."""
    parser.add_argument("--nats-url", type=v.nats_url, default=c.DEFAULT_NATS_URL,
                        help="NATS servers holding the feedback (comma-separated: one cluster)")  # fmt: skip
    parser.add_argument("--output", "-o", type=v.output_file, default="-", help="file to write (-: standard output)")
    parser.add_argument("--log-level", type=v.log_level, choices=v.LOG_LEVELS, default="WARNING", help="log level")


def add_loadtest(parser: argparse.ArgumentParser) -> None:
    """``tokenrelay loadtest``: its own flags (:mod:`tokenrelay.loadtest.command`)."""
    add_loadtest_arguments(parser)


def command_parsers(parser: argparse.ArgumentParser) -> dict[str, CommandLine]:
    """Each command's own parser in ``parser`` (from :func:`build_parser`), by :data:`COMMANDS` name."""
    found: dict[str, CommandLine] = {}

    def walk(node: argparse.ArgumentParser, path: str) -> None:
        for action in node._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(child, f"{path} {name}".strip())
        if path in COMMANDS and isinstance(node, CommandLine):
            found[path] = node

    walk(parser, "")
    return found
