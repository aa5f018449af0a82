"""Ports: whether one can be listened on, a free one, and which process listens on one.

The command line checks a role's ports before the role connects to NATS, so a port in use is reported at once
(the role itself binds only once NATS answers), and ``up`` checks that each port it reports is its own child's.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from pathlib import Path

from tokenrelay.runtime.service import ListenError

PROC_NET_TCP = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
TCP_LISTEN = "0A"
"""The state column of a listening socket in ``/proc/net/tcp``."""


def check_listen(host: str, port: int, *, reuse_port: bool = False) -> None:
    """Raise :class:`ListenError` unless ``host:port`` can be listened on now, as the roles listen (port 0: any)."""
    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise ListenError(host, port, exc) from None
    bound = 0
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno != errno.EADDRNOTAVAIL:  # a family not enabled here is skipped, as the roles skip it
                    raise ListenError(host, port, exc) from None
                continue
            bound += 1
    if not bound:
        raise ListenError(host, port, OSError(errno.EADDRNOTAVAIL, os.strerror(errno.EADDRNOTAVAIL)))


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


def listening_inodes(port: int) -> set[str] | None:
    """The inodes of the TCP sockets listening on ``port`` (any address); ``None`` where ``/proc`` does not say."""
    inodes: set[str] = set()
    found = False
    for table in PROC_NET_TCP:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        found = True
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == TCP_LISTEN and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(inode)
    return inodes if found else None


def listens_on(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` holds a socket listening on ``port``; ``None`` where ``/proc`` cannot tell."""
    inodes = listening_inodes(port)
    if inodes is None:
        return None
    sockets = {f"socket:[{inode}]" for inode in inodes}
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return None
    for name in names:
        with contextlib.suppress(OSError):
            if os.readlink(fd_dir / name) in sockets:
                return True
    return False
