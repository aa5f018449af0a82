"""A bad flag or environment variable: one line on standard error naming it, exit status 2, nothing started."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.unit.cli.conftest import Outcome

BAD_FLAGS = [
    # up
    (["up", "--runners", "0"], "--runners"),
    (["up", "--streamers", "-1"], "--streamers"),
    (["up", "--nats-url", "http://127.0.0.1:4222"], "--nats-url"),
    (["up", "--nats-port", "0"], "--nats-port"),
    (["up", "--gateway-port", "70000"], "--gateway-port"),
    (["up", "--streamer-port", "http"], "--streamer-port"),
    (["up", "--host", "not a host"], "--host"),
    (["up", "--log-level", "LOUD"], "--log-level"),
    (["up", "--engine", "gpt"], "--engine"),
    (["up", "--synthetic-tokens-per-s", "-1"], "--synthetic-tokens-per-s"),
    (["up", "--engine", "openai"], "--engine"),
    (["up", "--gateway-port", "18080", "--streamer-port", "18080"], "--streamer-port"),
    # gateway
    (["gateway", "--port", "-1"], "--port"),
    (["gateway", "--log-level", "LOUD"], "--log-level"),
    (["gateway", "--public-url", "ftp://chat.example"], "--public-url"),
    (["gateway", "--streamer-url", "not a url"], "--streamer-url"),
    (["gateway", "--max-queued-streams", "-1"], "--max-queued-streams"),
    (["gateway", "--queue-timeout-s", "0"], "--queue-timeout-s"),
    (["gateway", "--max-tokens-limit", "0"], "--max-tokens-limit"),
    (["gateway", "--api-keys-file", "/nonexistent/keys"], "--api-keys-file"),
    (["gateway", "--control-allow-origin", "chat.example"], "--control-allow-origin"),
    (["gateway", "--history-storage", "disk"], "--history-storage"),
    (["gateway", "--history-ttl-s", "inf"], "--history-ttl-s"),
    # streamer
    (["streamer", "--flush-interval-ms", "-5"], "--flush-interval-ms"),
    (["streamer", "--heartbeat-s", "nan"], "--heartbeat-s"),
    (["streamer", "--reuse-port", "maybe"], "--reuse-port"),
    (["streamer", "--process-port", "65536"], "--process-port"),
    (["streamer", "--max-reader-buffer-bytes", "0"], "--max-reader-buffer-bytes"),
    (["streamer", "--cors-allow-origin", "http://chat.example/path"], "--cors-allow-origin"),
    (["streamer", "--live-subscription", "broadcast"], "--live-subscription"),
    (["streamer", "--event-loop", "trio"], "--event-loop"),
    # runner
    (["runner", "--nats-url", "not a url"], "--nats-url"),
    (["runner", "--nats-url", "nats://"], "--nats-url"),
    (["runner", "--nats-url", "nats://127.0.0.1:99999"], "--nats-url"),
    (["runner", "--nats-url", "nats://127.0.0.1:4222,nats://127.0.0.1:99999"], "--nats-url"),
    (["streamer", "--nats-url", "nats://127.0.0.1:4222,"], "--nats-url"),
    (["gateway", "--nats-url", "nats://127.0.0.1:4222, nats://127.0.0.1:4223"], "--nats-url"),
    (["up", "--nats-url", "nats://127.0.0.1:4222,http://127.0.0.1:4223"], "--nats-url"),
    (["runner", "--engine", "gpt"], "--engine"),
    (["runner", "--max-concurrency", "0"], "--max-concurrency"),
    (["runner", "--synthetic-length-tokens", "-1"], "--synthetic-length-tokens"),
    (["runner", "--worker-threads", "0"], "--worker-threads"),
    (["runner", "--upstream-url", "localhost:8000/v1"], "--upstream-url"),
    (["runner", "--engine", "openai", "--upstream-url", "http://127.0.0.1:1/v1"], "--engine"),
    (["runner", "--engine", "transformers"], "--engine"),
    # loadtest
    (["loadtest", "--log-level", "LOUD"], "--log-level"),
    (["loadtest", "--gateway-url", "http://"], "--gateway-url"),
    (["loadtest", "--metrics-url", "ftp://127.0.0.1:8080"], "--metrics-url"),
    (["loadtest", "--streams", "0"], "--streams"),
    (["loadtest", "--stop-fraction", "2"], "--stop-fraction"),
    (["loadtest", "--sample-interval-s", "0"], "--sample-interval-s"),
    # feedback export
    (["feedback", "export", "--nats-url", "nats"], "--nats-url"),
    (["feedback", "export", "--output", "/nonexistent/folder/feedback.jsonl"], "--output"),
    (["feedback", "export", "--log-level", "LOUD"], "--log-level"),
]

BAD_VARIABLES = [
    (["streamer"], "TOKENRELAY_STREAMER_FLUSH_INTERVAL_MS", "-5"),
    (["gateway"], "TOKENRELAY_GATEWAY_PORT", "http"),
    (["gateway"], "TOKENRELAY_GATEWAY_API_KEYS_FILE", "/nonexistent/keys"),
    (["runner"], "TOKENRELAY_RUNNER_ENGINE", "gpt"),
    (["runner"], "TOKENRELAY_NATS_URL", "127.0.0.1"),
    (["gateway"], "TOKENRELAY_NATS_URL", "nats://a:4222,,nats://b:4222"),
    (["up"], "TOKENRELAY_UP_INSECURE", "maybe"),
    (["up"], "TOKENRELAY_UP_GATEWAY_PORT", "0"),
    (["streamer"], "TOKENRELAY_STREAMER_CORS_ALLOW_ORIGIN", "https://chat.example,ftp://chat.example"),
    (["loadtest"], "TOKENRELAY_LOADTEST_STREAMS", "0"),
    (["loadtest"], "TOKENRELAY_LOADTEST_QUIET", "loud"),
    (["feedback", "export"], "TOKENRELAY_NATS_URL", "nats"),
    # the environment-only settings, checked before anything connects
    (["gateway"], "TOKENRELAY_TOKEN_SECRET", "too short"),
    (["streamer"], "TOKENRELAY_API_KEYS", "acme"),
]


def _command(argv: list[str]) -> str:
    return "tokenrelay " + " ".join(argv[:2] if argv[0] == "feedback" else argv[:1])


def _assert_one_line_naming(outcome: Outcome, argv: list[str], name: str) -> None:
    assert outcome.status == 2, outcome
    assert len(outcome.lines) == 1, outcome.stderr
    assert outcome.lines[0].startswith(f"{_command(argv)}: error: "), outcome.lines[0]
    assert name in outcome.lines[0], outcome.lines[0]
    assert "Traceback" not in outcome.stderr


@pytest.mark.parametrize(("argv", "flag"), BAD_FLAGS, ids=[" ".join(argv) for argv, _ in BAD_FLAGS])
def test_a_bad_flag_is_one_line_naming_it_and_exit_status_2(run_cli: Any, argv: list[str], flag: str) -> None:
    _assert_one_line_naming(run_cli(*argv), argv, flag)


@pytest.mark.parametrize(("argv", "name", "value"), BAD_VARIABLES, ids=[name for _, name, _ in BAD_VARIABLES])
def test_a_bad_environment_variable_is_one_line_naming_it_and_exit_status_2(
    run_cli: Any, monkeypatch: pytest.MonkeyPatch, argv: list[str], name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    _assert_one_line_naming(run_cli(*argv), argv, name)


NATS_REFUSALS = {
    "TOKENRELAY_NATS_CREDS_FILE": "TOKENRELAY_NATS_CREDS_FILE: no such file: /nonexistent/user.creds",
    "TOKENRELAY_NATS_PASSWORD": "TOKENRELAY_NATS_PASSWORD is set without TOKENRELAY_NATS_USER",
}
NATS_VALUES = {"TOKENRELAY_NATS_CREDS_FILE": "/nonexistent/user.creds", "TOKENRELAY_NATS_PASSWORD": "orphan"}


@pytest.mark.parametrize("command", ["up", "gateway", "streamer", "runner"])
@pytest.mark.parametrize("name", list(NATS_REFUSALS))
def test_nats_settings_that_cannot_work_are_refused_before_starting_as_nats_would_refuse_them(
    run_cli: Any, monkeypatch: pytest.MonkeyPatch, command: str, name: str
) -> None:
    monkeypatch.setenv(name, NATS_VALUES[name])
    outcome = run_cli(command)
    assert outcome.status == 2
    assert outcome.lines == [f"tokenrelay {command}: error: NATS settings: {NATS_REFUSALS[name]}"]


def test_the_message_says_what_is_wrong_with_the_value(run_cli: Any) -> None:
    outcome = run_cli("streamer", "--flush-interval-ms", "-5")
    assert outcome.lines == ["tokenrelay streamer: error: --flush-interval-ms: must be >= 0, got -5"]


def test_a_flag_beats_a_bad_variable_of_the_same_setting(run_cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # With the flag given, the variable is never read: the run gets as far as the engine check and stops there.
    monkeypatch.setenv("TOKENRELAY_RUNNER_MAX_CONCURRENCY", "none")
    outcome = run_cli("runner", "--max-concurrency", "4", "--engine", "openai")
    assert outcome.lines == ["tokenrelay runner: error: --engine openai needs --upstream-url and --upstream-model"]


def test_a_key_file_with_a_bad_line_is_one_line_naming_the_flag_and_the_line(run_cli: Any, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("acme short\n")
    outcome = run_cli("gateway", "--api-keys-file", str(keys))
    _assert_one_line_naming(outcome, ["gateway"], "--api-keys-file")
    assert "line 1" in outcome.lines[0]


def test_an_unknown_flag_is_one_line(run_cli: Any) -> None:
    outcome = run_cli("gateway", "--no-such-flag", "1")
    assert outcome.status == 2
    assert outcome.lines == ["tokenrelay: error: unrecognized arguments: --no-such-flag 1"]


def test_python_m_tokenrelay_refuses_a_bad_flag_without_a_traceback() -> None:
    argv = [sys.executable, "-m", "tokenrelay", "gateway", "--log-level", "LOUD"]
    result = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "tokenrelay gateway: error: --log-level: invalid choice: 'LOUD' "
        "(choose from 'DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL')"
    ]
