"""How many copies JetStream keeps: as asked, else decided from what the connected server says of its cluster."""

from __future__ import annotations

import pytest

from tokenrelay.runtime.replicas import CLUSTER_REPLICAS, ReplicasUnknown, replicas_for

THREE = ["10.0.0.1:4222", "10.0.0.2:4222", "10.0.0.3:4222"]


def test_replicas_asked_for_are_used_whatever_the_server_says() -> None:
    assert replicas_for(5, {}) == 5
    assert replicas_for(1, {"cluster": "c", "connect_urls": THREE}) == 1


def test_a_server_in_no_cluster_keeps_one_copy() -> None:
    assert replicas_for(0, {"cluster": None, "connect_urls": None}) == 1
    assert replicas_for(0, {}) == 1


def test_a_cluster_advertising_three_or_more_servers_keeps_three_copies() -> None:
    assert replicas_for(0, {"cluster": "c", "connect_urls": THREE}) == CLUSTER_REPLICAS == 3
    assert replicas_for(0, {"cluster": "c", "connect_urls": [*THREE, "10.0.0.4:4222", "10.0.0.5:4222"]}) == 3


def test_a_cluster_of_two_keeps_one_copy_as_two_cannot_outvote_the_loss_of_either() -> None:
    assert replicas_for(0, {"cluster": "c", "connect_urls": THREE[:2]}) == 1


def test_a_server_advertised_twice_counts_once() -> None:
    assert replicas_for(0, {"cluster": "c", "connect_urls": [THREE[0], THREE[0], THREE[1]]}) == 1


def test_a_cluster_that_advertises_no_servers_needs_the_flag() -> None:
    with pytest.raises(ReplicasUnknown, match="--replicas"):
        replicas_for(0, {"cluster": "c", "connect_urls": []})
    with pytest.raises(ReplicasUnknown):
        replicas_for(0, {"cluster": "c"})
