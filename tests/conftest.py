"""Shared fixtures: one real nats-server (from the wheel) for the whole session.

Role processes started by tests inherit this process's environment, so every gateway and streamer of
the session shares one token secret (required with API keys); a test about a missing or different
secret gives its processes an environment of their own.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Callable, Iterator

import pytest

from tests.helpers import LoopFactory
from tokenrelay.runtime.tokens import TOKEN_SECRET_ENV
from tokenrelay.testing.procs import NatsServer, nats_server

os.environ.setdefault(TOKEN_SECRET_ENV, secrets.token_urlsafe(32))


@pytest.fixture(scope="session")
def nats() -> Iterator[NatsServer]:
    """A nats-server with JetStream on a free 127.0.0.1 port and a temporary store."""
    with nats_server() as server:
        yield server


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_factory(request: pytest.FixtureRequest) -> LoopFactory:
    """Both event loops the roles run on (uvloop's transports and servers are not asyncio's)."""
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    return None
