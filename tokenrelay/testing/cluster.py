"""A real NATS cluster for integration tests: nats-servers from the wheel, routed to each other on loopback ports.

Each node has JetStream with a store of its own, a server name, a client port, a cluster (route) port and a
monitoring port; all of them stay the same when a node is killed and started again, so it rejoins as itself.
:func:`nats_cluster` waits until JetStream has a meta leader: before that no stream can be declared.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

from tokenrelay.cli.supervisor import free_port, nats_ready, nats_server_argv
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

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    def argv(self) -> list[str]:
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
            self.process = subprocess.Popen(self.argv(), stdout=log, stderr=log)
        wait_until(lambda: nats_ready("127.0.0.1", self.port), what=f"nats node {self.name}")

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


@contextlib.contextmanager
def nats_cluster(size: int = 3) -> Iterator[NatsCluster]:
    """Start ``size`` clustered nats-servers with JetStream on free loopback ports; stop them afterwards."""
    with tempfile.TemporaryDirectory(prefix="tokenrelay-test-cluster-") as tmp:
        ports = _free_ports(3 * size)
        nodes = []
        for i in range(size):
            store = os.path.join(tmp, f"n{i}")
            os.makedirs(store)
            nodes.append(NatsNode(f"n{i}", ports[3 * i], ports[3 * i + 1], ports[3 * i + 2], store))
        for node in nodes:
            node.routes = [other.cluster_port for other in nodes]
        cluster = NatsCluster(nodes)
        try:
            for node in nodes:
                node.start()
            cluster.wait_for_meta_leader()
            yield cluster
        finally:
            for node in nodes:
                node.stop()
