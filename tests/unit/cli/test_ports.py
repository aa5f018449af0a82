"""A port in use: one line naming it and exit status 2, from a role, from ``up``, and from the serve loop itself."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tokenrelay.cli import supervisor
from tokenrelay.cli.plan import Child
from tokenrelay.cli.ports import check_listen, free_port, listens_on
from tokenrelay.runtime.service import ListenError, serve

IN_USE = "address already in use"


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A free 127.0.0.1 port that this test then holds (bound and listening)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("role", ["gateway", "streamer", "runner"])
def test_a_role_on_a_port_in_use_says_which_and_exits_2(run_cli: Any, role: str, taken_port: int) -> None:
    outcome = run_cli(role, "--port", str(taken_port))
    assert outcome.status == 2
    assert outcome.lines == [f"tokenrelay {role}: cannot listen on 127.0.0.1:{taken_port}: {IN_USE}"]


def test_a_streamer_whose_process_port_is_in_use_names_that_port(run_cli: Any, taken_port: int) -> None:
    outcome = run_cli("streamer", "--port", str(free_port()), "--process-port", str(taken_port))
    assert outcome.lines == [f"tokenrelay streamer: cannot listen on 127.0.0.1:{taken_port}: {IN_USE}"]


@pytest.mark.parametrize("flag", ["--gateway-port", "--streamer-port"])
def test_up_with_a_port_in_use_names_the_flag_and_the_port_and_starts_nothing(
    run_cli: Any, flag: str, taken_port: int
) -> None:
    other = "--streamer-port" if flag == "--gateway-port" else "--gateway-port"
    outcome = run_cli("up", flag, str(taken_port), other, str(free_port()))
    assert outcome.status == 2
    assert outcome.lines == [f"tokenrelay up: error: {flag}: cannot listen on 127.0.0.1:{taken_port}: {IN_USE}"]


def test_a_port_that_is_only_bound_counts_as_in_use_too() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with pytest.raises(ListenError, match=f"127.0.0.1:{port}: {IN_USE}"):
            check_listen("127.0.0.1", port)


def test_a_free_port_and_port_0_pass_the_check() -> None:
    check_listen("127.0.0.1", free_port())
    check_listen("127.0.0.1", 0)


async def test_serve_reports_a_port_taken_after_the_check_by_naming_it(taken_port: int) -> None:
    with pytest.raises(ListenError) as raised:
        await serve(web.Application(), "127.0.0.1", taken_port, name="gateway")
    assert str(raised.value) == f"cannot listen on 127.0.0.1:{taken_port}: {IN_USE}"
    assert raised.value.port == taken_port


needs_proc = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="/proc says who listens only on Linux")


@needs_proc
def test_listens_on_tells_the_process_that_holds_a_port_from_any_other(taken_port: int) -> None:
    assert listens_on(os.getpid(), taken_port) is True
    assert listens_on(os.getppid(), taken_port) is False
    assert listens_on(os.getpid(), free_port()) is False


class _Running:
    """A stand-in for a child's process: only its pid is read."""

    def __init__(self, pid: int) -> None:
        self.pid = pid


@needs_proc
def test_up_does_not_take_a_foreign_server_answering_on_a_childs_port_for_the_child(
    monkeypatch: pytest.MonkeyPatch, taken_port: int
) -> None:
    monkeypatch.setattr(supervisor, "http_ok", lambda url: True)  # something answers the health check...
    url = f"http://127.0.0.1:{taken_port}"
    foreign = Child("gateway", [], url, f"{url}/readyz", taken_port, process=_Running(os.getppid()))  # type: ignore[arg-type]
    own = Child("gateway", [], url, f"{url}/readyz", taken_port, process=_Running(os.getpid()))  # type: ignore[arg-type]
    assert not supervisor.is_ready(foreign)  # ... but the child is not the one listening there
    assert supervisor.is_ready(own)
