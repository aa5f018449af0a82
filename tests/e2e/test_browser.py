"""The chat page the gateway serves, driven in a real headless Chromium against a real system.

The page starts and stops streams over the control WebSocket, reads tokens with an
``EventSource`` from the streamer (another origin, so CORS is exercised for real), resumes
after a dropped connection, and sends feedback.  The conversation survives a reload: an answer
in flight resumes from its cursor, a finished one shows whole, and Stop works on a resumed
answer, with no API key ever stored.  Answers render as sanitized markdown, a
conversation goes back with each new message, and the model picker lists what the streamer
serves: those are driven with an ``openai``-engine runner in front of a fake upstream whose
answers hold markdown, reasoning and tool calls.  The browser is the system's Debian Chromium;
none is ever downloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.async_api import ConsoleMessage, Locator, Page, ViewportSize, async_playwright, expect

from tests.helpers import STOPPED_TOKENS, eventually
from tokenrelay.cli.supervisor import http_ok
from tokenrelay.testing.fake_openai import Answer, FakeUpstream, served_in_thread
from tokenrelay.testing.http import get_json, metric, wait_for_metric
from tokenrelay.testing.procs import (
    NatsServer,
    System,
    nats_server,
    start_role,
    stop_process,
    system,
    wait_until,
)
from tokenrelay.testing.synthetic import expected_text

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
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
SCREENSHOT = ARTIFACTS / "browser-chat.png"
"""A two-turn conversation with markdown; ``docs/browser-chat.png`` is refreshed from it."""
PHONE: ViewportSize = {"width": 390, "height": 844}
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
        await self.page.get_by_role("button", name="Send").click()

    def answer(self) -> Locator:
        """The latest assistant answer (rendered markdown)."""
        return self.page.get_by_test_id("answer").last

    async def text(self) -> str:
        # Markdown ends its last block with a newline that is not part of the answer.
        return (await self.answer().text_content() or "").rstrip("\n")

    async def snapshot(self) -> dict[str, Any]:
        return dict(await self.page.evaluate("window.tokenrelayDebug.snapshot()"))

    async def wait_state(self, state: str) -> None:
        await expect(self.page.locator("#state")).to_have_attribute("data-state", state, timeout=WAIT_MS)

    async def storage(self) -> str:
        """Everything the page's origin keeps in ``sessionStorage`` and ``localStorage``, as one JSON text."""
        return str(
            await self.page.evaluate("JSON.stringify([Object.entries(sessionStorage), Object.entries(localStorage)])")
        )

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
            page = await browser.new_page(
                viewport={"width": 900, "height": 760}, permissions=["clipboard-read", "clipboard-write"]
            )
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
    assert await chat.page.get_by_role("button", name="Send").is_enabled()


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
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await chat.page.screenshot(path=str(ARTIFACTS / "browser-chat-synthetic.png"), full_page=True)


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
            .observe(document.getElementById("conversation"), {characterData: true, childList: true, subtree: true});
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
    assert await chat.page.get_by_role("button", name="Send").is_enabled()


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


async def test_a_reload_mid_answer_resumes_from_the_cursor_and_the_answer_ends_whole_and_once(chat: Chat) -> None:
    prompt = "survive a reload"
    await chat.start(prompt, max_tokens=120)
    await chat.wait_tokens(20)
    await chat.page.reload()
    await chat.wait_state("finished")
    assert await chat.text() == expected_text(prompt, 120, NATURAL_TOKENS)
    await expect(chat.page.get_by_test_id("answer")).to_have_count(1)
    await expect(chat.page.locator(".turn.user .bubble")).to_have_text([prompt])
    snapshot = await chat.snapshot()
    assert snapshot["skipped"] == 0 and snapshot["tokens"] == 120, snapshot  # no delta came twice
    first, *after_reload = chat.events_requests
    assert "last_event_id" not in first
    assert after_reload and all("last_event_id=" in url for url in after_reload)
    assert (await chat.snapshot())["conversation"] == 2  # the resumed answer joins the next request
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await chat.page.screenshot(path=str(ARTIFACTS / "browser-chat-reloaded.png"))


async def test_a_reload_after_the_answer_finished_shows_it_whole_without_reading_it_again(chat: Chat) -> None:
    prompt = "finished before the reload"
    await chat.start(prompt, max_tokens=30)
    await chat.wait_state("finished")
    requests = len(chat.events_requests)
    await chat.page.reload()
    await chat.wait_state("finished")
    await expect(chat.page.locator("#state")).to_contain_text("length, 30 tokens")
    assert await chat.text() == expected_text(prompt, 30, NATURAL_TOKENS)
    await expect(chat.page.get_by_test_id("answer")).to_have_count(1)
    assert len(chat.events_requests) == requests
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await chat.page.screenshot(path=str(ARTIFACTS / "browser-chat-reloaded-finished.png"))


async def test_with_api_keys_stop_works_on_an_answer_resumed_after_a_reload_and_the_key_is_never_stored(
    nats: NatsServer, tmp_path: Path
) -> None:
    _require_chromium()
    key = "tr-browser-reload-0123456789"
    keys = tmp_path / "api-keys"
    keys.write_text(f"browser {key}\n")
    auth = ["--api-keys-file", str(keys)]
    with system(nats.url, runner_args=RUNNER_ARGS, streamer_args=auth, gateway_args=auth) as keyed:
        # After the reload the page holds no key: its control token request and the model list are refused (401).
        async with open_chat(keyed.gateway_url, expected_console=("401",)) as chat:
            await chat.page.get_by_label("API key").fill(key)
            prompt = "stop me after a reload"
            await chat.start(prompt, max_tokens=STOPPED_TOKENS)
            await chat.wait_tokens(10)
            stored = await chat.storage()
            assert "v1.events." in stored and "v1.stop." in stored and key not in stored  # the URLs with their tokens
            await chat.page.reload()
            await expect(chat.page.get_by_label("API key")).to_have_value("")
            resumed_from = (await chat.snapshot())["tokens"]
            await chat.wait_tokens(resumed_from + 5)
            stream_id = (await chat.snapshot())["streamId"]
            await chat.page.get_by_role("button", name="Stop").click()
            await chat.wait_state("stopped")
            await expect(chat.page.locator("#state")).to_contain_text("cancelled")
            status, record = await get_json(
                f"{keyed.gateway_url}/v1/streams/{stream_id}", headers={"Authorization": f"Bearer {key}"}
            )
            assert (status, record["state"], record["finish_reason"]) == (200, "finished", "cancelled"), record
            whole = expected_text(prompt, STOPPED_TOKENS, NATURAL_TOKENS)
            stopped = await chat.text()
            assert len(stopped) < len(whole) and whole.startswith(stopped)
            assert key not in await chat.storage()
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            await chat.page.screenshot(path=str(ARTIFACTS / "browser-chat-reloaded-stopped.png"))


# ---- markdown, conversations, the model picker: an openai-engine runner in front of a fake upstream ----

CHAT_MODEL = "fake-model"
"""The model an ``openai``-engine runner serves: the upstream's, as it asks for it."""
MARKDOWN_WORDS = [
    "Here is **bold** text",
    " and `inline` code.",
    "\n\n",
    "```python\n",
    "print('hi')\n",
    "```",
    "\n\nDone.",
]
CODE = "print('hi')\n"
UNSAFE_WORDS = [
    "Before.\n\n",
    '<img src="x" onerror="window.pwned = 1">',
    "\n\n<script>window.pwned = 2</script>\n\n",
    "[a link](javascript:window.pwned=3) ",
    '<a href="#" onclick="window.pwned = 4">click</a>',
    "\n\nAfter.",
]
REASONING = ["Let", " me", " check", " the", " weather."]
TOOL_FRAGMENTS = [
    {"index": 0, "id": "call_up", "type": "function", "function": {"name": "get_weather", "arguments": ""}},
    {"index": 0, "function": {"arguments": '{"city":'}},
    {"index": 0, "function": {"arguments": ' "Paris"}'}},
]


def _fake_answer(body: dict[str, object]) -> Answer:
    """What the fake upstream answers, by the last user message of the request."""
    messages = body["messages"]
    assert isinstance(messages, list)
    last = messages[-1]["content"]
    if "markdown" in last:
        return Answer(words=MARKDOWN_WORDS)
    if "unsafe" in last:
        return Answer(words=UNSAFE_WORDS)
    if "weather" in last:
        return Answer(
            words=["Checking."], reasoning=REASONING, tool_fragments=TOOL_FRAGMENTS, finish_reason="tool_calls"
        )
    return Answer(words=["The", " **second**", " answer."])


@dataclass
class OpenAISystem:
    """A system whose runners serve two models: ``fake-model`` (the fake upstream) and ``synthetic``."""

    running: System
    upstream: FakeUpstream


@pytest.fixture(scope="module")
def upstream_sut() -> Iterator[OpenAISystem]:
    upstream_args = ["--engine", "openai", "--upstream-url", "", "--upstream-model", CHAT_MODEL]
    with served_in_thread(FakeUpstream([], interval_s=0.005, answer=_fake_answer)) as fake:
        upstream_args[3] = fake.url
        # A broker of its own: the module's synthetic runners would otherwise take these jobs from the queue group.
        with nats_server() as own, system(own.url, runner_args=upstream_args) as running:
            synthetic = start_role("runner", own.url, running.log_dir, "runner-synthetic", [*RUNNER_ARGS])
            try:
                wait_until(lambda: _served_models(running.streamer_url) == {CHAT_MODEL, "synthetic"}, what="2 models")
                yield OpenAISystem(running, fake)
            finally:
                stop_process(synthetic.process)


def _served_models(streamer_url: str) -> set[str]:
    try:
        with urllib.request.urlopen(f"{streamer_url}/v1/models", timeout=5) as response:
            return {model["id"] for model in json.load(response)["data"]}
    except OSError:
        return set()


@contextlib.asynccontextmanager
async def open_upstream_chat(sut: OpenAISystem) -> AsyncIterator[Chat]:
    """The page with the fake upstream's model picked."""
    async with open_chat(sut.running.gateway_url) as chat:
        await expect(chat.page.get_by_label("Model").locator("option")).to_have_count(2, timeout=WAIT_MS)
        await chat.page.get_by_label("Model").select_option(CHAT_MODEL)
        yield chat


async def test_the_model_picker_lists_the_models_the_streamer_serves(upstream_sut: OpenAISystem) -> None:
    async with open_chat(upstream_sut.running.gateway_url) as chat:
        options = chat.page.get_by_label("Model").locator("option")
        await expect(options).to_have_count(2, timeout=WAIT_MS)
        assert sorted(await options.all_text_contents()) == [CHAT_MODEL, "synthetic"]
        await chat.page.get_by_label("Model").select_option("synthetic")
        prompt = "pick the synthetic model"
        await chat.start(prompt, max_tokens=12)
        await chat.wait_state("finished")
        assert await chat.text() == expected_text(prompt, 12, NATURAL_TOKENS)
        await expect(chat.page.locator(".turn.assistant .who").last).to_have_text("synthetic")


async def test_an_answer_renders_as_markdown_with_code_in_monospace_and_a_copy_button(
    upstream_sut: OpenAISystem,
) -> None:
    async with open_upstream_chat(upstream_sut) as chat:
        await chat.start("some markdown please", max_tokens=100)
        await chat.wait_state("finished")
        answer = chat.answer()
        await expect(answer.locator("strong")).to_have_text("bold")
        await expect(answer.locator("p code")).to_have_text("inline")
        code = answer.locator("pre code")
        await expect(code).to_have_text(CODE)
        assert "language-python" in (await code.get_attribute("class") or "")
        font = await code.evaluate("node => getComputedStyle(node).fontFamily")
        assert "monospace" in font, font
        assert "**" not in await chat.text()
        await answer.get_by_role("button", name="Copy code").click()
        await expect(answer.get_by_role("button", name="Copy code")).to_have_text("Copied")
        assert await chat.page.evaluate("navigator.clipboard.readText()") == CODE


async def test_the_second_message_carries_the_first_answer_and_both_turns_stay_on_screen(
    upstream_sut: OpenAISystem,
) -> None:
    upstream = upstream_sut.upstream
    async with open_upstream_chat(upstream_sut) as chat:
        await chat.start("markdown first", max_tokens=100)
        await chat.wait_state("finished")
        await chat.start("and a second turn", max_tokens=100)
        await chat.wait_state("finished")
        await expect(chat.answer().locator("strong")).to_have_text("second")
        assert upstream.calls[-1].body["messages"] == [
            {"role": "user", "content": "markdown first"},
            {"role": "assistant", "content": "".join(MARKDOWN_WORDS)},
            {"role": "user", "content": "and a second turn"},
        ]
        await expect(chat.page.locator(".turn.user .bubble")).to_have_text(["markdown first", "and a second turn"])
        await expect(chat.page.get_by_test_id("answer")).to_have_count(2)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        await chat.page.screenshot(path=str(SCREENSHOT))

        # A new chat forgets the conversation: the next message goes alone.
        await chat.page.get_by_role("button", name="New chat").click()
        await expect(chat.page.get_by_test_id("answer")).to_have_count(0)
        await chat.start("a fresh start", max_tokens=100)
        await chat.wait_state("finished")
        assert upstream.calls[-1].body["messages"] == [{"role": "user", "content": "a fresh start"}]


async def test_markup_in_an_answer_is_shown_as_text_and_never_runs(upstream_sut: OpenAISystem) -> None:
    # The page's CSP refuses inline script too, and the browser logs each refusal: open_chat fails on such a console
    # error, so this also sees that no handler of the answer ever reached the browser's parser.
    async with open_upstream_chat(upstream_sut) as chat:
        await chat.start("something unsafe", max_tokens=100)
        await chat.wait_state("finished")
        answer = chat.answer()
        await expect(answer).to_contain_text("After.")
        assert await answer.locator("script, img, [onerror], [onclick], [style]").count() == 0
        text = await chat.text()
        assert '<img src="x" onerror="window.pwned = 1">' in text
        assert "<script>window.pwned = 2</script>" in text
        # A markdown link to javascript: is a link no more: the sanitizer took its href.
        hrefs = await answer.locator("a").evaluate_all("links => links.map(link => link.getAttribute('href'))")
        assert hrefs == [None], hrefs
        await expect(answer.locator("a")).to_have_text("a link")
        assert await chat.page.evaluate("typeof window.pwned") == "undefined"


async def test_reasoning_shows_collapsed_above_the_answer_and_a_tool_call_shows_its_name_and_arguments(
    upstream_sut: OpenAISystem,
) -> None:
    async with open_upstream_chat(upstream_sut) as chat:
        await chat.start("weather in Paris?", max_tokens=100)
        await chat.wait_state("finished")
        turn = chat.page.locator(".turn.assistant").last
        reasoning = turn.locator("details.reasoning")
        await expect(reasoning).to_be_visible()
        assert await reasoning.get_attribute("open") is None  # collapsed until the reader opens it
        await reasoning.locator("summary").click()
        await expect(reasoning).to_contain_text("".join(REASONING))
        order = await turn.evaluate("node => [...node.children].map(child => child.className)")
        assert order.index("reasoning") < order.index("answer markdown") < order.index("tool-calls")
        call = turn.get_by_test_id("tool-call")
        await expect(call.locator(".tool-name")).to_have_text("get_weather")
        await expect(call.locator(".tool-id")).to_have_text("call_up")
        assert json.loads(await call.locator(".tool-arguments").text_content() or "") == {"city": "Paris"}
        assert await chat.text() == "Checking."
        await expect(chat.page.locator("#state")).to_contain_text("tool_calls")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        await chat.page.screenshot(path=str(ARTIFACTS / "browser-chat-tool-call.png"))


async def test_the_page_fits_a_phone_screen_without_sideways_scrolling(upstream_sut: OpenAISystem) -> None:
    async with open_upstream_chat(upstream_sut) as chat:
        await chat.page.set_viewport_size(PHONE)
        await chat.start("markdown on a phone", max_tokens=100)
        await chat.wait_state("finished")
        widths = await chat.page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1], widths
        for label in ("Model", "API key", "Prompt"):
            box = await chat.page.get_by_label(label).bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], (label, box)
        await expect(chat.page.get_by_role("button", name="Send")).to_be_in_viewport()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        await chat.page.screenshot(path=str(ARTIFACTS / "browser-chat-phone.png"))
