"""The ``tokenrelay`` command line: ``up`` runs everything; ``gateway|streamer|runner`` run one role;
``loadtest`` measures a running deployment; ``feedback export`` writes the stored feedback.

A bad flag, a bad environment variable, or a port in use is one line on standard error and exit status 2, before
anything connects (the parser: :mod:`tokenrelay.cli.parser`; the commands: :mod:`tokenrelay.cli.commands`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from tokenrelay.cli.commands import build_parser
from tokenrelay.cli.configs import (
    UsageError,
    check_event_loop,
    check_nats_security,
    gateway_config,
    runner_config,
    streamer_config,
)
from tokenrelay.cli.ports import check_listen
from tokenrelay.cli.supervisor import up
from tokenrelay.runtime.service import ListenError, run_role, setup_logging

__all__ = ["build_parser", "gateway_config", "main", "runner_config", "streamer_config"]

EXIT_USAGE = 2
"""Bad flags or environment, or a port that cannot be listened on: nothing was started."""
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tokenrelay`` console script."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    command = " ".join(part for part in (args.command, getattr(args, "feedback_command", None)) if part)
    try:
        return _run(args)
    except UsageError as exc:
        print(f"tokenrelay {command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ListenError as exc:
        print(f"tokenrelay {command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except OSError as exc:
        print(f"tokenrelay {command}: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _run(args: argparse.Namespace) -> int:
    if args.command == "up":
        return up(args)
    if args.command == "feedback":
        return _export_feedback(args)
    if args.command == "loadtest":
        from tokenrelay.loadtest.command import run as run_loadtest

        return run_loadtest(args)
    check_nats_security()
    check_event_loop(args)
    if args.command == "gateway":
        from tokenrelay.gateway.app import run as run_gateway

        gateway = gateway_config(args)
        check_listen(gateway.host, gateway.port)
        run_role(run_gateway(gateway), event_loop=args.event_loop)
    elif args.command == "streamer":
        from tokenrelay.streamer.app import run as run_streamer

        streamer = streamer_config(args)
        check_listen(streamer.host, streamer.port, reuse_port=streamer.reuse_port)
        check_listen(streamer.host, streamer.process_port)
        run_role(run_streamer(streamer), event_loop=args.event_loop)
    elif args.command == "runner":
        from tokenrelay.runner.app import run as run_runner

        runner = runner_config(args)
        check_listen(runner.host, runner.port)
        run_role(run_runner(runner), event_loop=args.event_loop)
    return 0


def _export_feedback(args: argparse.Namespace) -> int:
    from tokenrelay.cli.feedback import export

    check_nats_security()
    if args.output == "-":
        count = asyncio.run(export(args.nats_url, sys.stdout.buffer))
    else:
        with open(args.output, "wb") as out:
            count = asyncio.run(export(args.nats_url, out))
    print(f"exported {count} feedback item(s)", file=sys.stderr)
    return 0
