"""A real nginx running a deployment's proxy config in front of a system on loopback ports, stopped by its PID.

The config is the deployment's own file (``deploy/nginx.conf`` in the repository) with only its two upstream
``server`` addresses and its ``listen`` port rewritten to 127.0.0.1 ports, included in a tiny main config. The
gateway's upstream may list several addresses (gateways behind one proxy, as a scaled gateway service is).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from tokenrelay.cli.supervisor import free_port
from tokenrelay.testing.procs import stop_process


def servers(addresses: str | Sequence[str]) -> str:
    """One upstream ``server`` line per address (``host:port``), with deploy/nginx.conf's ``max_fails=0``; at least
    one."""
    listed = [addresses] if isinstance(addresses, str) else list(addresses)
    if not listed:
        raise ValueError("an upstream needs at least one server address")
    return "\n    ".join(f"server {address} max_fails=0;" for address in listed)


def rewrite(conf: str, *, gateway: str | Sequence[str], streamer: str, port: int) -> str:
    """deploy/nginx.conf with its upstream servers and listen port moved to loopback addresses.

    ``gateway`` is one address or several: the gateway upstream gets a ``server`` line for each (round robin)."""
    swaps = {
        r"server\s+gateway:8080\s+max_fails=0\s*;": servers(gateway),
        r"server\s+streamer:8081\s+max_fails=0\s*;": servers(streamer),
        r"listen\s+8000\s*;": f"listen 127.0.0.1:{port};",
    }
    for pattern, replacement in swaps.items():
        conf, count = re.subn(pattern, replacement, conf)
        if count != 1:
            raise ValueError(f"the nginx config should contain {pattern!r} exactly once (found {count})")
    return conf


def worker_user() -> str:
    """The ``user`` line: as root, nginx's workers drop to nobody (whose group differs between distributions)."""
    if os.geteuid() != 0:
        return ""  # nginx ignores ``user`` unless it starts as root
    try:
        nobody = pwd.getpwnam("nobody")
        return f"user nobody {grp.getgrgid(nobody.pw_gid).gr_name};"
    except KeyError:
        return "user root;"


def temp_paths(binary: str, prefix: Path) -> str:
    """Temp paths inside ``prefix`` for every module this nginx build has (each would create its default path)."""
    built = subprocess.run([binary, "-V"], capture_output=True, text=True, check=True).stderr
    lines = [f"client_body_temp_path {prefix}/client_body;", f"proxy_temp_path {prefix}/proxy;"]
    for module in ("fastcgi", "uwsgi", "scgi"):
        if f"--without-http_{module}_module" not in built:
            lines.append(f"{module}_temp_path {prefix}/{module};")
    return "\n        ".join(lines)


def main_conf(binary: str, prefix: Path, include: Path) -> str:
    return f"""
    {worker_user()}
    worker_processes 1;
    pid {prefix}/nginx.pid;
    error_log {prefix}/error.log warn;
    events {{ worker_connections 1024; }}
    http {{
        access_log off;
        {temp_paths(binary, prefix)}
        include {include};
    }}
    """


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def nginx_proxy(
    binary: str, conf_path: Path, *, gateway: str | Sequence[str], streamer: str, port: int | None = None
) -> Iterator[str]:
    """Run ``conf_path`` (a deployment's nginx.conf) in front of ``gateway`` and ``streamer`` (host:port).

    ``gateway`` may name several gateways (host:port each), all in the gateway upstream.

    Yields the proxy's URL; stops nginx by its PID on exit."""
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="tokenrelay-test-nginx-") as tmp:
        prefix = Path(tmp)
        prefix.chmod(0o755)  # workers running as nobody create and read temp files (request bodies) in here
        include = prefix / "tokenrelay.conf"
        include.write_text(rewrite(conf_path.read_text(), gateway=gateway, streamer=streamer, port=port))
        conf = prefix / "nginx.conf"
        conf.write_text(main_conf(binary, prefix, include))
        output = open(prefix / "output.log", "wb")  # noqa: SIM115
        argv = [binary, "-p", f"{prefix}/", "-e", str(prefix / "error.log"), "-c", str(conf), "-g", "daemon off;"]
        process = subprocess.Popen(argv, stdout=output, stderr=output)
        output.close()
        try:
            deadline = time.monotonic() + 10
            while not port_open(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    logs = [(prefix / name).read_text(errors="replace") for name in ("output.log", "error.log")]
                    raise RuntimeError(f"nginx did not start (exit {process.poll()}):\n" + "\n".join(logs))
                time.sleep(0.02)
            yield f"http://127.0.0.1:{port}"
        finally:
            stop_process(process)  # SIGTERM: nginx's fast shutdown, workers included
