"""Shared fixtures: one real nats-server (from the wheel) for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.procs import NatsServer, nats_server


@pytest.fixture(scope="session")
def nats() -> Iterator[NatsServer]:
    """A nats-server with JetStream on a free 127.0.0.1 port and a temporary store."""
    with nats_server() as server:
        yield server
