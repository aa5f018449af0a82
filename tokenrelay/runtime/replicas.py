"""How many copies JetStream keeps of what tokenrelay declares, sans-I/O: asked, or decided from the cluster.

``--replicas N`` is used as given. ``--replicas 0`` (the default) decides from the ``INFO`` the connected server sent:
a server that is in no cluster gets 1; a cluster that advertises at least :data:`CLUSTER_REPLICAS` servers to its
clients (``connect_urls``, itself included) gets :data:`CLUSTER_REPLICAS`, so losing any one node loses nothing; a
smaller cluster gets 1 (two JetStream servers cannot outvote the loss of either). A cluster that advertises no servers
(``no_advertise``) cannot be measured: the flag is then required. Every server counted is taken to run JetStream;
where some do not, give ``--replicas``.
"""

from __future__ import annotations

from collections.abc import Mapping

CLUSTER_REPLICAS = 3
"""Copies on a cluster of at least this many servers: a majority survives the loss of any one."""


class ReplicasUnknown(ValueError):
    """The cluster's size cannot be learnt from its servers: ``--replicas`` must say it."""


def replicas_for(requested: int, server_info: Mapping[str, object]) -> int:
    """The replicas to declare with: ``requested`` when > 0, else decided from the server's ``INFO``."""
    if requested > 0:
        return requested
    cluster = server_info.get("cluster")
    if not cluster:
        return 1
    urls = server_info.get("connect_urls")
    servers = len(set(urls)) if isinstance(urls, list) else 0
    if servers == 0:
        raise ReplicasUnknown(
            f"the NATS server is in cluster {cluster!r} but advertises none of its servers to clients "
            "(no_advertise): pass --replicas (3 for a cluster of 3 or more JetStream servers)"
        )
    return CLUSTER_REPLICAS if servers >= CLUSTER_REPLICAS else 1
