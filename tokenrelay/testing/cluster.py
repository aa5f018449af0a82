"""A real NATS cluster for integration tests: nats-servers from the wheel, routed to each other on loopback ports.

Each node has JetStream with a store of its own, a server name, a client port, a cluster (route) port and a
monitoring port; all of them stay the same when a node is killed and started again, so it rejoins as itself.
:func:`nats_cluster` waits until JetStream has a meta leader: before that no stream can be declared.

A node runs from command-line flags, or from a deployment's own configuration file: :func:`deployment_config`
writes each node's copy with only its listen addresses, its store and its route hosts moved to loopback ports, the
way :mod:`tokenrelay.testing.nginx` runs a deployment's nginx.conf.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import tempfile
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tokenrelay.cli.supervisor import free_port, nats_ready, nats_server_argv, nats_server_binary
from tokenrelay.testing.procs import stop_process, wait_until

CLUSTER_NAME = "tokenrelay-test"
META_LEADER_TIMEOUT_S = 30.0


def _free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


@dataclass
class NatsNode:
    """One node of a test cluster: its ports and store outlive its process."""

    name: str
    port: int
    cluster_port: int
    monitor_port: int
    store_dir: str
    routes: list[int] = field(default_factory=list)
    """The cluster ports of every node (its own included: nats-server ignores a route to itself)."""
    process: subprocess.Popen[bytes] | None = None
    log_path: str = ""
    config_file: str = ""
    """A nats-server configuration that sets everything but the node's name; empty: the node runs from flags."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Variables laid over this process's environment for the server (those its configuration refers to)."""

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    def argv(self) -> list[str]:
        if self.config_file:
            return [nats_server_binary(), "--config", self.config_file, "--server_name", self.name]
        routes = ",".join(f"nats://127.0.0.1:{port}" for port in self.routes)
        return [
            *nats_server_argv(self.port, self.store_dir), "--server_name", self.name, "--http_port",
            str(self.monitor_port), "--cluster_name", CLUSTER_NAME, "--cluster", f"nats://127.0.0.1:{self.cluster_port}",
            "--routes", routes,
        ]  # fmt: skip

    def start(self) -> None:
        """Start (or start again) this node's process; it rejoins the cluster with its store."""
        self.log_path = os.path.join(self.store_dir, "nats.log")
        with open(self.log_path, "ab") as log:
            env = {**os.environ, **self.env} if self.env else None
            self.process = subprocess.Popen(self.argv(), stdout=log, stderr=log, env=env)
        wait_until(self._ready, what=f"nats node {self.name}")

    def _ready(self) -> bool:
        """Whether the node greets clients; a node that exited (a configuration it refuses) fails with its log."""
        if self.process is not None and self.process.poll() is not None:
            log = Path(self.log_path).read_text(errors="replace")
            raise RuntimeError(f"nats node {self.name} exited with {self.process.returncode}:\n{log}")
        return nats_ready("127.0.0.1", self.port)

    def kill(self) -> None:
        """SIGKILL: the node dies as a crashed machine would (its store is kept)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)

    def jsz(self) -> dict[str, object]:
        """The node's ``/jsz`` monitoring answer."""
        with urllib.request.urlopen(f"{self.monitor_url}/jsz", timeout=2) as answer:
            found: dict[str, object] = json.load(answer)
            return found


@dataclass
class NatsCluster:
    """Several routed nats-servers with JetStream."""

    nodes: list[NatsNode]

    @property
    def url(self) -> str:
        """Every node's client URL, comma-separated (what ``--nats-url`` takes)."""
        return ",".join(node.url for node in self.nodes)

    def live(self) -> list[NatsNode]:
        """The nodes whose process runs."""
        return [node for node in self.nodes if node.process is not None and node.process.poll() is None]

    def meta_leader(self) -> str | None:
        """JetStream's meta leader as a live node reports it, when that leader is alive itself (``None``: none
        elected yet, or the others still name a node that died: they do until they elect another, seconds later)."""
        alive = {node.name for node in self.live()}
        for node in self.live():
            with contextlib.suppress(OSError, ValueError):
                meta = node.jsz().get("meta_cluster")
                if isinstance(meta, dict) and meta.get("leader") in alive:
                    return str(meta["leader"])
        return None

    def wait_for_meta_leader(self, timeout_s: float = META_LEADER_TIMEOUT_S) -> str:
        wait_until(lambda: self.meta_leader() is not None, timeout_s=timeout_s, what="a JetStream meta leader")
        leader = self.meta_leader()
        assert leader is not None
        return leader

    def node(self, name: str) -> NatsNode:
        return next(node for node in self.nodes if node.name == name)


ConfigWriter = Callable[[NatsNode, Sequence[NatsNode]], str]
"""Writes one node's configuration file, given every node (their ports are set), and returns its path."""


@contextlib.contextmanager
def nats_cluster(
    size: int = 3,
    *,
    names: Sequence[str] = (),
    config: ConfigWriter | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[NatsCluster]:
    """Start ``size`` clustered nats-servers with JetStream on free loopback ports; stop them afterwards.

    ``names`` are the server names (default ``n0``, ``n1``...); ``config`` writes each node's configuration file
    (default: flags only); ``env`` is laid over this process's environment for every server."""
    names = list(names) or [f"n{i}" for i in range(size)]
    if len(names) != size:
        raise ValueError(f"{size} nodes need {size} names, got {names}")
    with tempfile.TemporaryDirectory(prefix="tokenrelay-test-cluster-") as tmp:
        ports = _free_ports(3 * size)
        nodes = []
        for i, name in enumerate(names):
            store = os.path.join(tmp, name)
            os.makedirs(store)
            nodes.append(NatsNode(name, ports[3 * i], ports[3 * i + 1], ports[3 * i + 2], store, env=dict(env or {})))
        for node in nodes:
            node.routes = [other.cluster_port for other in nodes]
        for node in nodes:
            node.config_file = config(node, nodes) if config is not None else ""
        cluster = NatsCluster(nodes)
        try:
            for node in nodes:
                node.start()
            cluster.wait_for_meta_leader()
            yield cluster
        finally:
            for node in nodes:
                node.stop()


# A deployment's node configuration, moved to loopback ports

CLIENT_PORT = 4222
CLUSTER_PORT = 6222
MONITOR_PORT = 8222
"""The ports a deployment's configuration listens on (nats-server's defaults)."""


def _swap(conf: str, pattern: str, replacement: str) -> str:
    conf, count = re.subn(pattern, lambda _: replacement, conf, flags=re.M)
    if count != 1:
        raise ValueError(f"the nats-server config should contain {pattern!r} exactly once (found {count})")
    return conf


def rewrite(conf: str, node: NatsNode, nodes: Sequence[NatsNode]) -> str:
    """A deployment's node configuration with its client, monitoring and route listeners, its JetStream store and its
    route to each node (``nats-route://<node name>:6222``) moved to ``node``'s and the other nodes' loopback ports."""
    conf = _swap(conf, rf"^listen:\s*0\.0\.0\.0:{CLIENT_PORT}$", f"listen: 127.0.0.1:{node.port}")
    conf = _swap(conf, rf"^http:\s*0\.0\.0\.0:{MONITOR_PORT}$", f"http: 127.0.0.1:{node.monitor_port}")
    conf = _swap(conf, rf"^\s*listen:\s*0\.0\.0\.0:{CLUSTER_PORT}$", f"  listen: 127.0.0.1:{node.cluster_port}")
    conf = _swap(conf, r"^\s*store_dir:\s*\S+$", f"  store_dir: {json.dumps(node.store_dir)}")
    for other in nodes:
        route = f"nats-route://127.0.0.1:{other.cluster_port}"
        conf = _swap(conf, rf"nats-route://{re.escape(other.name)}:{CLUSTER_PORT}\b", route)
    left = re.findall(r"nats-route://(?!127\.0\.0\.1:)\S+", conf)
    if left:
        raise ValueError(f"the nats-server config routes to hosts that are not nodes of this cluster: {left}")
    return conf


def deployment_config(conf_path: Path, *, beside: Mapping[str, str] | None = None) -> ConfigWriter:
    """Writes each node's copy of ``conf_path`` (see :func:`rewrite`) into ``<store>/config/``, with ``beside``
    (file name -> text: the files it includes) next to it."""
    conf = conf_path.read_text()

    def write(node: NatsNode, nodes: Sequence[NatsNode]) -> str:
        directory = Path(node.store_dir, "config")
        directory.mkdir(exist_ok=True)
        for name, text in (beside or {}).items():
            (directory / name).write_text(text)
        path = directory / conf_path.name
        path.write_text(rewrite(conf, node, nodes))
        return str(path)

    return write
