"""The chat page the gateway serves, driven in a real headless Chromium against a real system.

The page starts and stops streams over the control WebSocket, reads tokens with an
``EventSource`` from the streamer (another origin, so CORS is exercised for real), resumes
after a dropped connection, and sends feedback.  The browser is the system's Debian Chromium;
none is ever downloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.async_api import ConsoleMessage, Page, async_playwright, expect

from tests.helpers import STOPPED_TOKENS, eventually, expected_text
from tokenrelay.cli.supervisor import http_ok
from tokenrelay.testing.http import metric, wait_for_metric
from tokenrelay.testing.procs import NatsServer, System, stop_process, system, wait_until

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SCREENSHOT = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser-chat.png"
TOKENS_PER_S = 20
NATURAL_TOKENS = 100_000  # longer than any stream here asks for, so every stream ends by length or by stop
WAIT_MS = 30_000
"""How long any condition in the page may take (generous: conditions are awaited, never timed)."""


RUNNER_ARGS = [
    "--synthetic-tokens-per-s", str(TOKENS_PER_S),
    "--synthetic-ttft-ms", "100",
    "--synthetic-length-tokens", str(NATURAL_TOKENS),
]  # fmt: skip


@pytest.fixture(scope="module")
def sut(nats: NatsServer) -> Iterator[System]:
    with system(nats.url, runner_args=RUNNER_ARGS) as running:
        yield running


def _require_chromium() -> None:
    if CHROMIUM.exists():
        return
    reason = f"{CHROMIUM} is not installed (apt-get install chromium; .ci/run does)"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@dataclass
class Chat:
    """The chat page in one browser tab, by the element ids it documents."""

    page: Page
    problems: list[str] = field(default_factory=list)
    events_requests: list[str] = field(default_factory=list)

    async def start(self, prompt: str, max_tokens: int) -> None:
        await self.page.get_by_label("Prompt").fill(prompt)
        await self.page.get_by_label("Max tokens").fill(str(max_tokens))
        await self.page.get_by_role("button", name="Start").click()

    async def text(self) -> str:
        return await self.page.locator("#output").text_content() or ""

    async def snapshot(self) -> dict[str, Any]:
        return dict(await self.page.evaluate("window.tokenrelayDebug.snapshot()"))

    async def wait_state(self, state: str) -> None:
        await expect(self.page.locator("#state")).to_have_attribute("data-state", state, timeout=WAIT_MS)

    async def wait_tokens(self, at_least: int) -> None:
        await self.page.wait_for_function(
            "n => (window.tokenrelayDebug.snapshot() || {tokens: 0}).tokens >= n", arg=at_least, timeout=WAIT_MS
        )


@contextlib.asynccontextmanager
async def open_chat(gateway_url: str, *, expected_console: tuple[str, ...] = ()) -> AsyncIterator[Chat]:
    """The page in a fresh headless Chromium; fails if the page threw or logged an unexpected console error."""
    _require_chromium()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 900, "height": 760})
            chat = Chat(page)
            page.on("pageerror", lambda error: chat.problems.append(f"page error: {error}"))
            page.on("console", lambda message: _note_console_error(chat, message, expected_console))
            page.on("request", lambda request: _note_events_request(chat, request.url))
            await page.goto(f"{gateway_url}/")
            yield chat
        finally:
            await browser.close()
    assert chat.problems == []


@pytest.fixture
async def chat(sut: System) -> AsyncIterator[Chat]:
    async with open_chat(sut.gateway_url) as opened:
        yield opened


def _note_console_error(chat: Chat, message: ConsoleMessage, expected: tuple[str, ...]) -> None:
    if message.type == "error" and not any(text in message.text for text in expected):
        chat.problems.append(f"console error: {message.text}")


def _note_events_request(chat: Chat, url: str) -> None:
    if "/events" in url:
        chat.events_requests.append(url)


async def test_text_appears_incrementally_and_stop_freezes_it_at_a_prefix_of_the_answer(
    chat: Chat, sut: System
) -> None:
    prompt = "tell me a long story"
    await chat.start(prompt, max_tokens=STOPPED_TOKENS)
    lengths: list[int] = []
    while len({n for n in lengths if n > 0}) < 4:
        lengths.append(len(await chat.text()))
        assert len(lengths) < WAIT_MS / 50, f"the text did not grow in steps: {lengths}"
        await asyncio.sleep(0.05)  # samples spread in time: seeing the text grow between them is what is tested
    assert lengths == sorted(lengths)
    await expect(chat.page.locator("#state")).to_have_attribute("data-state", "streaming")

    await chat.page.get_by_role("button", name="Stop").click()
    await chat.wait_state("stopped")
    await expect(chat.page.locator("#state")).to_contain_text("cancelled")
    stopped = await chat.text()
    # Once the page has closed its event stream and the streamer holds no reader, no text can come any more.
    snapshot = await chat.snapshot()
    assert snapshot["terminal"] and not snapshot["connected"], snapshot
    await eventually(
        lambda: metric(sut.streamer_url, "tokenrelay_streamer_readers_open"),
        lambda readers: readers == 0,
        what="the streamer to hold no reader after the stop",
    )
    assert await chat.text() == stopped
    whole = expected_text(prompt, STOPPED_TOKENS, NATURAL_TOKENS)
    assert max(lengths) <= len(stopped) < len(whole)
    assert whole.startswith(stopped)
    assert await chat.page.get_by_role("button", name="Start").is_enabled()


async def test_a_whole_stream_shows_exactly_the_answer_with_ttft_and_tokens_per_second(chat: Chat) -> None:
    prompt = "hello from the browser"
    await chat.start(prompt, max_tokens=40)
    await chat.wait_state("finished")
    assert await chat.text() == expected_text(prompt, 40, NATURAL_TOKENS)
    await expect(chat.page.locator("#state")).to_contain_text("length")
    await expect(chat.page.get_by_test_id("tokens")).to_have_text("40")
    await expect(chat.page.get_by_test_id("ttft")).to_have_text(re.compile(r"^\d+ ms$"))
    tokens_per_s = await chat.page.get_by_test_id("tokens-per-s").text_content() or ""
    assert float(tokens_per_s) > 0
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    await chat.page.screenshot(path=str(SCREENSHOT), full_page=True)


async def test_the_page_resumes_after_dropped_connections_without_gap_or_repeat(chat: Chat) -> None:
    prompt = "resume after drops"
    await chat.start(prompt, max_tokens=120)
    for drop in range(1, 4):
        await chat.wait_tokens(drop * 10)
        assert await chat.page.evaluate("window.tokenrelayDebug.dropConnection()"), f"drop {drop}: no open stream"
    await chat.wait_state("finished")
    assert await chat.text() == expected_text(prompt, 120, NATURAL_TOKENS)
    snapshot = await chat.snapshot()
    assert snapshot["resumes"] == 3
    assert snapshot["skipped"] == 0  # the page saw no repeated delta
    first, *resumed = chat.events_requests
    assert "last_event_id" not in first
    assert len(resumed) == 3
    assert all("last_event_id=" in url for url in resumed)


async def test_the_page_resumes_on_a_restarted_streamer_without_gap_or_repeat(nats: NatsServer, tmp_path: Path) -> None:
    prompt = "survive a streamer restart"
    with system(nats.url, runner_args=RUNNER_ARGS) as own:
        # While the streamer is down the browser logs each refused reconnect.
        async with open_chat(own.gateway_url, expected_console=("net::ERR_CONNECTION_REFUSED",)) as chat:
            await chat.start(prompt, max_tokens=120)
            await chat.wait_tokens(10)
            await asyncio.to_thread(restart_streamer, own, tmp_path)
            await chat.wait_state("finished")
            assert await chat.text() == expected_text(prompt, 120, NATURAL_TOKENS)
            snapshot = await chat.snapshot()
            assert snapshot["resumes"] >= 1
            assert snapshot["skipped"] == 0


def restart_streamer(running: System, log_dir: Path) -> None:
    """Stop the system's streamer (SIGTERM: it tells its readers to resume elsewhere) and start a new one on its port.

    The new process replaces the old one in the system's role, so the system stops it at the end.
    """
    role = running.streamer
    stop_process(role.process)
    port = str(urlsplit(role.url).port)
    argv = [sys.executable, "-m", "tokenrelay", "streamer", "--nats-url", running.nats_url, "--host", "127.0.0.1"]
    with open(log_dir / "streamer-restarted.log", "wb") as log:
        role.process = subprocess.Popen([*argv, "--port", port, "--log-level", "WARNING"], stdout=log, stderr=log)
    wait_until(lambda: role.process.poll() is not None or http_ok(f"{role.url}/healthz"), what="restarted streamer")
    assert role.process.poll() is None, (log_dir / "streamer-restarted.log").read_text()


async def test_feedback_thumbs_show_the_ack_and_reach_the_gateway(chat: Chat, sut: System) -> None:
    before = await metric(sut.gateway_url, "tokenrelay_gateway_feedback_total")
    await chat.start("rate this", max_tokens=5)
    await chat.wait_state("finished")
    thumb_up = chat.page.get_by_role("button", name="Good")
    await thumb_up.click()
    await expect(chat.page.get_by_test_id("feedback-status")).to_have_attribute("data-state", "ack", timeout=WAIT_MS)
    await expect(thumb_up).to_have_attribute("aria-pressed", "true")
    await wait_for_metric(sut.gateway_url, "tokenrelay_gateway_feedback_total", before + 1)


async def test_tokens_are_rendered_once_per_animation_frame_not_once_per_token(chat: Chat) -> None:
    await chat.page.clock.install(time=datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC))
    await chat.page.reload()
    prompt = "batched rendering"
    await chat.start(prompt, max_tokens=STOPPED_TOKENS)
    await chat.wait_tokens(2)
    # Freeze animation frames (the page's only render trigger) while tokens keep arriving.
    await chat.page.clock.pause_at(datetime.datetime(2024, 1, 2, tzinfo=datetime.UTC))
    await chat.page.evaluate("""() => {
        window.renders = 0;
        new MutationObserver(records => { window.renders += records.length; })
            .observe(document.getElementById("output"), {characterData: true, childList: true, subtree: true});
    }""")
    shown = await chat.text()
    received = (await chat.snapshot())["tokens"] + 8
    await chat.wait_tokens(received)
    assert await chat.text() == shown
    await chat.page.clock.run_for(20)
    await chat.page.wait_for_function("() => window.renders > 0")
    # Eight or more tokens, one DOM update (two if a delta slipped in between fake frames).
    assert await chat.page.evaluate("window.renders") <= 2
    assert (await chat.text()).startswith(expected_text(prompt, received, NATURAL_TOKENS))
    await chat.page.clock.resume()
    await chat.page.get_by_role("button", name="Stop").click()
    await chat.wait_state("stopped")


async def test_an_invalid_request_shows_error_state_with_its_code(chat: Chat) -> None:
    await chat.start("too long", max_tokens=10_000_000)
    await chat.wait_state("error")
    await expect(chat.page.locator("#state")).to_have_attribute("data-code", "bad_request")
    await expect(chat.page.get_by_role("alert")).to_contain_text("max_tokens")
    assert await chat.page.get_by_role("button", name="Start").is_enabled()


async def test_with_api_keys_the_page_trades_the_key_for_tokens_and_streams_with_no_header(
    nats: NatsServer, tmp_path: Path
) -> None:
    _require_chromium()
    key = "tr-browser-key-0123456789"
    keys = tmp_path / "api-keys"
    keys.write_text(f"browser {key}\n")
    auth = ["--api-keys-file", str(keys)]
    with system(nats.url, runner_args=RUNNER_ARGS, streamer_args=auth, gateway_args=auth) as keyed:
        # Without a key the token request is refused (401, logged by the browser) and nothing streams.
        async with open_chat(keyed.gateway_url, expected_console=("401",)) as chat:
            await chat.start("who am i", max_tokens=5)
            await chat.wait_state("error")
            await expect(chat.page.locator("#notice")).to_contain_text("API key")
            await chat.page.get_by_label("API key").fill(key)
            prompt = "keys in a browser"
            await chat.start(prompt, max_tokens=30)
            await chat.wait_state("finished")
            assert await chat.text() == expected_text(prompt, 30, NATURAL_TOKENS)
            assert chat.events_requests and all("token=" in url for url in chat.events_requests)
            assert chat.problems == []
