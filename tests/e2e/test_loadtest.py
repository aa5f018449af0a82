"""``tokenrelay loadtest`` run as a real command against a real system (and against a fake gateway), over tokenrelay's
own API and over the OpenAI and Anthropic ones (against a streamer's compatible APIs and a fake OpenAI upstream)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from tokenrelay.cli.supervisor import free_port
from tokenrelay.loadtest.metrics import READERS_OPEN
from tokenrelay.loadtest.report import PLOT_FILES
from tokenrelay.testing.fake_openai import FakeUpstream, served_in_thread
from tokenrelay.testing.http import metric, wait_for_metric
from tokenrelay.testing.procs import NatsServer, System, system

RUN_TIMEOUT_S = 90
READERS_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.05
MAX_TOKENS_LIMIT = 1000
EVERY_OPTION = (
    "--api", "--model", "--gateway-url", "--api-key", "--streams", "--concurrency", "--ramp-per-s", "--duration-s",
    "--drain-s",
    "--max-tokens", "--prompt", "--stop-fraction", "--never-read-fraction", "--seed", "--request-timeout-s",
    "--read-timeout-s", "--metrics-url", "--sample-interval-s", "--json", "--report-dir", "--source-addresses",
    "--quiet", "--log-level",
)  # fmt: skip


@pytest.fixture(scope="module")
def sut(nats: NatsServer) -> Iterator[System]:
    runner_args = ["--synthetic-tokens-per-s", "20", "--synthetic-ttft-ms", "0", "--synthetic-length-tokens", "1000"]
    gateway_args = ["--max-tokens-limit", str(MAX_TOKENS_LIMIT)]
    with system(nats.url, runner_args=runner_args, gateway_args=gateway_args) as running:
        yield running


def loadtest(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "tokenrelay", "loadtest", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)


def read_json(path: Path) -> dict[str, Any]:
    data = orjson.loads(path.read_bytes())
    assert isinstance(data, dict)
    return data


def test_loadtest_help_mentions_every_option() -> None:
    done = loadtest("--help")
    assert done.returncode == 0, done.stderr
    for option in EVERY_OPTION:
        assert option in done.stdout, option


def test_loadtest_accounts_for_every_stream_with_stops_and_never_read_readers(sut: System, tmp_path: Path) -> None:
    json_path, report_dir = tmp_path / "result.json", tmp_path / "report"
    metrics_urls = [sut.gateway_url, sut.streamer_url, sut.runners[0].url]
    done = loadtest(
        "--gateway-url", sut.gateway_url, "--api-key", "test-key", "--streams", "50", "--ramp-per-s", "20",
        "--duration-s", "10", "--drain-s", "30", "--max-tokens", "30,40", "--stop-fraction", "0.2",
        "--never-read-fraction", "0.1", "--sample-interval-s", "0.5", "--json", str(json_path),
        "--report-dir", str(report_dir), "--quiet",
        *(part for url in metrics_urls for part in ("--metrics-url", url)),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result = read_json(json_path)

    streams = result["streams"]
    assert streams["started"] == 50
    assert streams["started"] == sum(streams[k] for k in ("completed", "stopped", "rejected", "failed", "never_read"))
    assert streams["never_read"] == 5
    assert streams["stopped"] >= 1
    assert streams["failed"] == streams["rejected"] == 0, result["errors"]
    assert result["errors"] == {}

    tokens = result["tokens"]
    assert tokens["delivered"] > 0
    assert tokens["lost"] == tokens["duplicated"] == 0
    assert tokens["per_s"] > 0
    for key in ("ttft_ms", "token_lag_ms", "inter_token_ms", "start_ms"):
        summary = result[key]
        assert summary["n"] > 0, key
        assert all(summary[p] > 0 for p in ("p50", "p95", "p99", "max")), (key, summary)
    assert result["ttft_ms"]["n"] == 45  # every stream that was read
    assert result["rejected_ms"] == {"p50": None, "p95": None, "p99": None, "max": None, "n": 0}

    assert set(result["instances"]) == set(metrics_urls)
    for url, instance in result["instances"].items():
        assert instance["rss_bytes_max"] >= instance["rss_bytes_start"] > 0, url
        assert instance["cpu_s"] > 0, url
        samples = [s for s in result["samples"] if s["url"] == url]
        assert samples and all(s["rss_bytes"] > 0 for s in samples), url
    assert result["instances"][sut.streamer_url]["readers_open_max"] >= 1
    assert result["config"]["api_key"] == "<set>"

    for name in PLOT_FILES:
        root = ET.fromstring((report_dir / name).read_text())
        assert root.tag == "{http://www.w3.org/2000/svg}svg", name
    assert (report_dir / "report.html").read_text().count("<svg ") == len(PLOT_FILES)
    assert "started 50 = completed" in done.stdout


def test_loadtest_counts_rejected_starts_under_their_error_code(sut: System, tmp_path: Path) -> None:
    json_path = tmp_path / "not-yet" / "result.json"  # the folder is created
    too_many = str(MAX_TOKENS_LIMIT + 1)
    done = loadtest(
        "--gateway-url", sut.gateway_url, "--streams", "6", "--max-tokens", f"5,{too_many}", "--json", str(json_path),
        "--quiet",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result = read_json(json_path)
    assert result["streams"]["rejected"] == 3
    assert result["streams"]["completed"] == 3
    assert result["errors"] == {"bad_request": 3}
    assert result["rejected_ms"]["n"] == 3
    assert result["rejected_ms"]["p50"] > 0
    assert result["config"]["max_tokens"] == [{"value": 5, "weight": 1}, {"value": MAX_TOKENS_LIMIT + 1, "weight": 1}]


def test_loadtest_never_read_readers_from_several_source_addresses_end_with_their_streams(
    sut: System, tmp_path: Path
) -> None:
    json_path = tmp_path / "result.json"
    done = loadtest(
        "--gateway-url", sut.gateway_url, "--streams", "8", "--max-tokens", "10", "--never-read-fraction", "0.5",
        "--source-addresses", "3", "--api-key", "k", "--json", str(json_path), "--quiet",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result = read_json(json_path)
    assert result["streams"]["never_read"] == 4
    assert result["streams"]["completed"] == 4
    assert result["errors"] == {}


async def wait_for_no_readers(streamer_url: str) -> None:
    """Wait until the streamer holds no SSE reader (those of an earlier run are gone)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READERS_TIMEOUT_S
    while (open_now := await metric(streamer_url, READERS_OPEN)) > 0:
        assert loop.time() < deadline, f"the streamer still holds {open_now} readers"
        await asyncio.sleep(POLL_INTERVAL_S)


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
async def test_loadtest_never_read_readers_send_their_request_and_hold_the_connection_open_on_each_event_loop(
    sut: System, tmp_path: Path, event_loop: str
) -> None:
    readers = 4
    await wait_for_no_readers(sut.streamer_url)
    json_path = tmp_path / "result.json"
    # 60 tokens at the runner's 20 per second: each reader is open for seconds, long enough to be seen.
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tokenrelay", "loadtest", "--gateway-url", sut.gateway_url, "--streams", str(readers),
        "--max-tokens", "60", "--never-read-fraction", "1", "--event-loop", event_loop, "--json", str(json_path),
        "--quiet", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        await wait_for_metric(sut.streamer_url, READERS_OPEN, readers, timeout_s=READERS_TIMEOUT_S)
        output, _ = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT_S)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, output.decode()
    result = read_json(json_path)
    assert result["streams"]["never_read"] == readers
    assert result["errors"] == {}
    await wait_for_no_readers(sut.streamer_url)  # the load test closed every connection it held


def test_loadtest_counts_an_unreachable_gateway_as_connection_errors(tmp_path: Path) -> None:
    json_path = tmp_path / "result.json"
    unused = f"http://127.0.0.1:{free_port()}"
    done = loadtest("--gateway-url", unused, "--streams", "3", "--json", str(json_path), "--quiet")
    assert done.returncode == 0, done.stdout + done.stderr
    result = read_json(json_path)
    assert result["streams"] == {
        "started": 3,
        "completed": 0,
        "stopped": 0,
        "rejected": 0,
        "failed": 3,
        "never_read": 0,
    }
    assert result["errors"] == {"connection_error": 3}


class FakeGateway:
    """Admits the first ``admit`` streams (each sends one delta, then waits for a WebSocket stop); answers
    ``overloaded`` after that; records the path, ``Authorization`` header and client address of every request."""

    def __init__(self, *, admit: int) -> None:
        self.admit = admit
        self.seen: list[tuple[str, str | None]] = []
        self.remotes: set[str] = set()
        self.stops: dict[str, asyncio.Event] = {}
        self.app = web.Application()
        self.app.router.add_post("/v1/streams", self.start)
        self.app.router.add_get("/events/{id}", self.events)
        self.app.router.add_get("/v1/control", self.control)
        self.app.router.add_get("/metrics", self.metrics)
        self.url = ""

    def note(self, request: web.Request) -> None:
        self.seen.append((request.path, request.headers.get("Authorization")))
        self.remotes.add(request.remote or "")

    async def start(self, request: web.Request) -> web.Response:
        self.note(request)
        if len(self.stops) >= self.admit:
            body = {"error": {"code": "overloaded", "message": "too many streams are waiting"}}
            return web.json_response(body, status=503, headers={"Retry-After": "1"})
        stream_id = f"s{len(self.stops)}"
        self.stops[stream_id] = asyncio.Event()
        return web.json_response({"id": stream_id, "events_url": f"{self.url}/events/{stream_id}"}, status=201)

    async def events(self, request: web.Request) -> web.StreamResponse:
        self.note(request)
        stream_id = request.match_info["id"]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        delta = orjson.dumps({"text": "a", "index": 1, "ts": time.time()})
        await response.write(b"event: start\ndata: {}\n\nevent: delta\nid: e:1\ndata: " + delta + b"\n\n")
        await asyncio.wait_for(self.stops[stream_id].wait(), 10)
        stop = orjson.dumps({"finish_reason": "cancelled", "tokens": 1, "ttft_ms": 1.0})
        await response.write(b"event: stop\nid: e:1\ndata: " + stop + b"\n\n")
        return response

    async def control(self, request: web.Request) -> web.WebSocketResponse:
        self.note(request)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for frame in ws:
            command = orjson.loads(frame.data)
            self.stops[command["stream_id"]].set()
            reply = {"type": "stopped", "stream_id": command["stream_id"], "tokens": 1, "finish_reason": "cancelled"}
            await ws.send_str(orjson.dumps({**reply, "halted_ts": time.time(), "ref": command["ref"]}).decode())
        return ws

    async def metrics(self, request: web.Request) -> web.Response:
        self.note(request)
        return web.Response(text="process_resident_memory_bytes 1e6\nprocess_cpu_seconds_total 0.5\n")


async def test_loadtest_sends_the_api_key_everywhere_stops_over_the_websocket_and_counts_overloaded_starts(
    tmp_path: Path,
) -> None:
    fake = FakeGateway(admit=2)
    runner = web.AppRunner(fake.app)
    await runner.setup()
    port = free_port()
    fake.url = f"http://127.0.0.1:{port}"
    await web.TCPSite(runner, "127.0.0.1", port).start()
    json_path = tmp_path / "result.json"
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tokenrelay", "loadtest", "--gateway-url", fake.url, "--streams", "4",
            "--concurrency", "2", "--max-tokens", "2", "--stop-fraction", "1", "--metrics-url", fake.url,
            "--json", str(json_path), "--quiet", "--api-key", "k-123", "--source-addresses", "2",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT_S)
    finally:
        await runner.cleanup()
    assert process.returncode == 0, output.decode()
    result = read_json(json_path)
    assert result["streams"]["stopped"] == 2
    assert result["streams"]["rejected"] == 2
    assert result["errors"] == {"overloaded": 2}
    assert {path for path, _ in fake.seen} == {"/v1/streams", "/events/s0", "/events/s1", "/v1/control", "/metrics"}
    assert {auth for _, auth in fake.seen} == {"Bearer k-123"}
    assert fake.remotes == {"127.0.0.1", "127.0.0.2"}


NO_LATENCY = {"p50": None, "p95": None, "p99": None, "max": None, "n": 0}


def assert_every_stream_completed(result: dict[str, Any], *, streams: int, tokens: int) -> None:
    """Every stream ended as asked with ``tokens`` in all; TTFT for each, gaps between tokens, and no token lag."""
    assert result["streams"]["started"] == result["streams"]["completed"] == streams, result["errors"]
    assert result["errors"] == {}
    assert result["tokens"]["delivered"] == tokens
    assert result["ttft_ms"]["n"] == streams
    assert result["ttft_ms"]["p50"] > 0
    assert result["inter_token_ms"]["n"] > 0
    assert result["start_ms"]["n"] == streams
    for key in ("token_lag_ms", "history_lag_ms", "token_lag_after_ramp_ms"):
        assert result[key] == NO_LATENCY, key


def test_loadtest_over_openai_reads_a_fake_upstreams_chunks_one_token_each(tmp_path: Path) -> None:
    words = ["one ", "two ", "three ", "four ", "five"]
    json_path = tmp_path / "result.json"
    with served_in_thread(FakeUpstream(words, interval_s=0.005, finish_reason="stop")) as fake:
        done = loadtest(
            "--api", "openai", "--gateway-url", fake.url.removesuffix("/v1"), "--model", "fake-model",
            "--api-key", "k-9", "--streams", "6", "--concurrency", "3", "--max-tokens", "5", "--prompt", "q {i}",
            "--json", str(json_path), "--quiet",
        )  # fmt: skip
        calls = list(fake.calls)
    assert done.returncode == 0, done.stdout + done.stderr
    result = read_json(json_path)
    assert_every_stream_completed(result, streams=6, tokens=6 * len(words))
    assert result["inter_token_ms"]["n"] == 6 * (len(words) - 1)
    assert sorted(str(call.body["messages"]) for call in calls) == sorted(
        str([{"role": "user", "content": f"q {i}"}]) for i in range(6)
    )
    body = calls[0].body
    assert (body["model"], body["max_tokens"], body["stream"]) == ("fake-model", 5, True)
    assert body["stream_options"] == {"include_usage": True}
    assert {call.headers["Authorization"] for call in calls} == {"Bearer k-9"}
    assert result["config"]["api"] == "openai"
    assert "openai API, model fake-model" in done.stdout


@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_loadtest_over_a_compatible_api_of_the_streamer_counts_every_token(
    sut: System, tmp_path: Path, api: str
) -> None:
    json_path = tmp_path / "result.json"
    done = loadtest(
        "--api", api, "--gateway-url", sut.streamer_url, "--streams", "8", "--max-tokens", "6,10",
        "--api-key", "test-key", "--json", str(json_path), "--quiet",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert_every_stream_completed(read_json(json_path), streams=8, tokens=4 * 6 + 4 * 10)


@pytest.mark.parametrize("flag", ["--stop-fraction", "--never-read-fraction"])
def test_loadtest_refuses_stops_and_never_read_readers_with_another_api(flag: str) -> None:
    done = loadtest("--api", "anthropic", flag, "0.5", "--streams", "1")
    assert done.returncode == 2
    assert f"{flag} works with --api native only" in done.stderr
