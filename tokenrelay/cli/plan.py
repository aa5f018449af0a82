"""What ``tokenrelay up`` starts: each child's command line, the port it must listen on, and its environment.

``up`` configures its children only through their command lines.  Each child gets every flag of its role,
either set by ``up`` itself (NATS, address, port, public URLs) or forwarded from ``up``'s own flag of the same
name (:data:`~tokenrelay.cli.options.FORWARDED`), and starts with the roles' flag variables
(``TOKENRELAY_GATEWAY_*``, ``TOKENRELAY_STREAMER_*``, ``TOKENRELAY_RUNNER_*``) removed from its environment:
a variable left in the shell never overrides what ``up`` chose.  The environment-only settings (API keys,
token secret, NATS credentials, the upstream's key) are inherited as they are.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

from tokenrelay.cli.commands import env_prefix
from tokenrelay.cli.options import FORWARDED
from tokenrelay.cli.ports import free_port

ROLES = ("gateway", "streamer", "runner")
ROLE_ENV_PREFIXES = tuple(env_prefix(role) for role in ROLES)
RUNNER_HOST = "127.0.0.1"
"""Runners serve only ``/healthz`` and ``/metrics``: loopback is enough under ``up``."""


@dataclass
class Child:
    """One supervised process."""

    name: str
    argv: list[str]
    url: str
    health_url: str | None = None
    listen_port: int | None = None
    """The port this child must be the one listening on before ``up`` reports it."""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        """The process's id (once started)."""
        assert self.process is not None
        return self.process.pid


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without the roles' flag variables (``up`` passes every flag on the command line instead)."""
    return {name: value for name, value in environ.items() if not name.startswith(ROLE_ENV_PREFIXES)}


def url_host(host: str) -> str:
    """The address clients on this machine reach ``host`` at (a wildcard address is reached via loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "::") else host


def _role_argv(role: str, nats_url: str, host: str, port: int, args: argparse.Namespace) -> list[str]:
    argv = [sys.executable, "-m", "tokenrelay", role, "--nats-url", nats_url, "--host", host, "--port", str(port)]
    for option in FORWARDED[role]:
        argv += option.forward(args)
    return argv


def plan(args: argparse.Namespace, nats_url: str) -> list[Child]:
    """The role processes ``up`` starts, with their command lines and URLs."""
    host = args.host
    local = url_host(host)
    gateway_url = f"http://{local}:{args.gateway_port}"
    streamer_url = f"http://{local}:{args.streamer_port}"
    gateway = _role_argv("gateway", nats_url, host, args.gateway_port, args)
    gateway += ["--public-url", gateway_url, "--streamer-url", streamer_url]
    streamer = _role_argv("streamer", nats_url, host, args.streamer_port, args)
    if args.streamers == 1:
        streamer += ["--reuse-port", "off", "--process-port", "0"]
        children = [Child("streamer", streamer, streamer_url, f"{streamer_url}/healthz", args.streamer_port)]
    else:
        # One port for every client (the kernel spreads connections over the processes), and each process's own
        # port for its health and metrics.
        children = []
        for i in range(1, args.streamers + 1):
            own = free_port(local)
            argv = [*streamer, "--reuse-port", "on", "--process-port", str(own)]
            health = f"http://{local}:{own}/healthz"
            children.append(Child(f"streamer-{i}", argv, streamer_url, health, args.streamer_port))
    for i in range(1, args.runners + 1):
        port = free_port(RUNNER_HOST)
        argv = _role_argv("runner", nats_url, RUNNER_HOST, port, args)
        url = f"http://{RUNNER_HOST}:{port}"
        children.append(Child(f"runner-{i}", argv, f"{url}/metrics", f"{url}/healthz", port))
    children.append(Child("gateway", gateway, gateway_url, f"{gateway_url}/readyz", args.gateway_port))
    return children
