"""``tokenrelay up``: embedded NATS plus three roles as separate processes, and a clean stop."""

from __future__ import annotations

import http.server
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tokenrelay.cli.supervisor import free_port
from tokenrelay.runtime.tokens import TOKEN_SECRET_ENV
from tokenrelay.testing.http import create_stream
from tokenrelay.testing.procs import pid_alive, stop_process, wait_until
from tokenrelay.testing.sse import read_stream
from tokenrelay.testing.synthetic import expected_text

BANNER = re.compile(r"^\s+(nats|gateway|streamer(?:-\d+)?|runner-\d+)\s+(\S+)\s+pid (\d+)", re.M)


@dataclass
class Up:
    process: subprocess.Popen[bytes]
    log: Path
    pids: dict[str, int]
    urls: dict[str, str]


@pytest.fixture
def start_up() -> Iterator[object]:
    started: list[subprocess.Popen[bytes]] = []

    def launch(*extra: str) -> Up:
        log = Path(tempfile.mkdtemp(prefix="tokenrelay-up-")) / "up.log"
        argv = [sys.executable, "-m", "tokenrelay", "up", "--gateway-port", str(free_port())]
        argv += ["--streamer-port", str(free_port()), "--nats-port", str(free_port()), *extra]
        with log.open("wb") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        started.append(process)
        wait_until(lambda: "Press Ctrl-C" in log.read_text() or process.poll() is not None, what="up banner")
        text = log.read_text()
        assert process.poll() is None, text
        found = BANNER.findall(text)
        return Up(process, log, {n: int(p) for n, _, p in found}, {n: u for n, u, _ in found})

    yield launch
    for process in started:
        stop_process(process)


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def _environ(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
    return dict(entry.split("=", 1) for entry in entries if "=" in entry)


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


async def test_up_runs_nats_gateway_streamer_and_runner_as_separate_processes(start_up: object) -> None:
    up: Up = start_up("--synthetic-tokens-per-s", "50")  # type: ignore[operator]
    assert set(up.pids) == {"nats", "gateway", "streamer", "runner-1"}
    assert len(set(up.pids.values()) | {up.process.pid}) == 5
    assert "nats-server" in _cmdline(up.pids["nats"])
    for role in ("gateway", "streamer", "runner"):
        name = "runner-1" if role == "runner" else role
        assert f"tokenrelay {role}" in _cmdline(up.pids[name])
    assert "--synthetic-length-tokens 240" in _cmdline(up.pids["runner-1"])  # the demo's length, at the given pace
    assert "--synthetic-tokens-per-s 50.0" in _cmdline(up.pids["runner-1"])
    created = await create_stream(up.urls["gateway"], "through up", max_tokens=20)
    stream = await read_stream(created["events_url"])
    assert stream.text == expected_text("through up", 20)
    assert stream.terminal.json()["tokens"] == 20
    assert len(stream.of("delta")) > 1 and stream.chunks > 1  # incremental (deltas that arrive together may merge)


async def test_up_with_two_streamers_runs_two_processes_behind_one_streamer_port(start_up: object) -> None:
    up: Up = start_up("--synthetic-tokens-per-s", "200", "--streamers", "2")  # type: ignore[operator]
    assert set(up.pids) == {"nats", "gateway", "streamer-1", "streamer-2", "runner-1"}
    assert up.urls["streamer-1"] == up.urls["streamer-2"]
    for name in ("streamer-1", "streamer-2"):
        assert "--reuse-port on" in _cmdline(up.pids[name])
    created = [await create_stream(up.urls["gateway"], f"two streamers {i}", max_tokens=5) for i in range(8)]
    for i, one in enumerate(created):
        assert one["events_url"].startswith(up.urls["streamer-1"])
        stream = await read_stream(one["events_url"])
        assert stream.text == expected_text(f"two streamers {i}", 5)


@pytest.mark.parametrize(("flags", "uvloop"), [((), True), (("--event-loop", "asyncio"), False)])
async def test_roles_run_on_uvloop_unless_asked_for_asyncio_and_stream_either_way(
    start_up: object, flags: tuple[str, ...], uvloop: bool
) -> None:
    up: Up = start_up("--synthetic-tokens-per-s", "200", *flags)  # type: ignore[operator]
    for name in ("gateway", "streamer", "runner-1"):
        assert ("uvloop" in _maps(up.pids[name])) is uvloop, name
    created = await create_stream(up.urls["gateway"], "on either loop", max_tokens=20)
    stream = await read_stream(created["events_url"])
    assert stream.text == expected_text("on either loop", 20)


def test_a_role_asked_for_an_unknown_event_loop_refuses_to_start() -> None:
    argv = [sys.executable, "-m", "tokenrelay", "streamer", "--event-loop", "trio", "--port", str(free_port())]
    result = subprocess.run(argv, check=False, capture_output=True, timeout=60)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert b"--event-loop: invalid choice: 'trio'" in result.stderr


class _AnswersEverything(http.server.BaseHTTPRequestHandler):
    """Someone else's server: 200 to any GET, /healthz and /readyz included."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.mark.parametrize("flag", ["--gateway-port", "--streamer-port"])
def test_up_refuses_a_port_where_another_server_answers_instead_of_reporting_it_as_its_own(flag: str) -> None:
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AnswersEverything) as foreign:
        threading.Thread(target=foreign.serve_forever, daemon=True).start()
        port = foreign.server_address[1]
        ports = {"--gateway-port": str(free_port()), "--streamer-port": str(free_port()), flag: str(port)}
        argv = [sys.executable, "-m", "tokenrelay", "up", "--nats-port", str(free_port())]
        argv += [part for item in ports.items() for part in item]
        try:
            result = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60)
        finally:
            foreign.shutdown()
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"tokenrelay up: error: {flag}: cannot listen on 127.0.0.1:{port}: address already in use"
    ]
    assert "tokenrelay is up" not in result.stdout


def test_sigint_stops_every_child_and_leaves_no_process_behind(start_up: object) -> None:
    up: Up = start_up()  # type: ignore[operator]
    up.process.send_signal(signal.SIGINT)
    assert up.process.wait(timeout=30) == 0
    for name, pid in up.pids.items():
        assert not pid_alive(pid), f"{name} (pid {pid}) survived"


def test_sigterm_stops_every_child_and_leaves_no_process_behind(start_up: object) -> None:
    up: Up = start_up("--runners", "2")  # type: ignore[operator]
    assert {"runner-1", "runner-2"} <= set(up.pids)
    up.process.send_signal(signal.SIGTERM)
    assert up.process.wait(timeout=30) == 0
    assert not any(pid_alive(pid) for pid in up.pids.values())


def test_a_child_that_dies_is_reported_and_up_exits_non_zero(start_up: object) -> None:
    up: Up = start_up()  # type: ignore[operator]
    os.kill(up.pids["runner-1"], signal.SIGKILL)
    assert up.process.wait(timeout=30) == 1
    assert "runner-1" in up.log.read_text() and "exited" in up.log.read_text()
    assert not any(pid_alive(pid) for pid in up.pids.values())


def test_embedded_nats_moves_to_a_free_port_when_the_requested_one_is_taken(start_up: object) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        up: Up = start_up("--nats-port", str(port))  # type: ignore[operator]
        assert up.urls["nats"].startswith("nats://127.0.0.1:")
        assert not up.urls["nats"].endswith(f":{port}")


async def test_up_with_api_keys_makes_one_token_secret_so_events_urls_work_without_headers(
    start_up: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_SECRET_ENV, raising=False)  # up must make one and hand it to gateway and streamer
    key = "tr-up-key-0123456789abcdef"
    keys = tmp_path / "keys"
    keys.write_text(f"acme {key}\n")
    up: Up = start_up("--api-keys-file", str(keys), "--synthetic-tokens-per-s", "200")  # type: ignore[operator]
    assert "API keys: 1 configured" in up.log.read_text()
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{up.urls['gateway']}/v1/streams",
            json={"prompt": "keyed up", "max_tokens": 8},
            headers={"Authorization": f"Bearer {key}"},
        ) as response,  # fmt: skip
    ):
        assert response.status == 201
        created = await response.json()
    stream = await read_stream(created["events_url"])  # the token in the URL, no header
    assert stream.status == 200 and stream.text == expected_text("keyed up", 8)
    secrets = {_environ(up.pids[role]).get(TOKEN_SECRET_ENV) for role in ("gateway", "streamer")}
    assert len(secrets) == 1 and len(secrets.pop() or "") >= 32  # one secret, shared
    secret = _environ(up.pids["gateway"])[TOKEN_SECRET_ENV]
    assert not any(secret in _cmdline(pid) for pid in up.pids.values())  # in the environment only, never in ps
