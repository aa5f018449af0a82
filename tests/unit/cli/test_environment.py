"""Every flag may come from ``TOKENRELAY_<COMMAND>_<FLAG>``: the flag wins, then the variable, then the default."""

from __future__ import annotations

import argparse

import pytest

from tokenrelay.cli.commands import COMMANDS, build_parser, command_parsers
from tokenrelay.cli.main import gateway_config, streamer_config
from tokenrelay.runtime import config as c


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_a_flag_wins_over_its_variable_and_the_variable_over_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse("gateway").port == c.DEFAULT_GATEWAY_PORT
    monkeypatch.setenv("TOKENRELAY_GATEWAY_PORT", "9000")
    assert parse("gateway").port == 9000
    assert parse("gateway", "--port", "9001").port == 9001


def test_a_flag_given_with_the_default_value_still_wins_over_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENRELAY_STREAMER_FLUSH_INTERVAL_MS", "50")
    assert parse("streamer", "--flush-interval-ms", str(c.DEFAULT_FLUSH_INTERVAL_MS)).flush_interval_ms == 10.0


def test_a_variable_configures_only_its_own_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENRELAY_GATEWAY_PORT", "9000")
    monkeypatch.setenv("TOKENRELAY_PORT", "9002")  # no such variable: nothing shared by every role
    assert parse("streamer").port == c.DEFAULT_STREAMER_PORT
    assert parse("runner").port == c.DEFAULT_RUNNER_PORT
    assert parse("up").gateway_port == c.DEFAULT_GATEWAY_PORT


def test_an_empty_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENRELAY_RUNNER_MAX_CONCURRENCY", "")
    assert parse("runner").max_concurrency == c.DEFAULT_MAX_CONCURRENCY


def test_a_variable_goes_through_the_same_check_and_conversion_as_its_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENRELAY_GATEWAY_LOG_LEVEL", "debug")
    monkeypatch.setenv("TOKENRELAY_GATEWAY_HISTORY_TTL_S", "2.5")
    args = parse("gateway")
    assert (args.log_level, args.history_ttl_s) == ("DEBUG", 2.5)


def test_a_repeatable_flags_variable_holds_its_values_separated_by_commas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENRELAY_STREAMER_CORS_ALLOW_ORIGIN", "HTTPS://A.example, https://b.example:8443")
    config = streamer_config(parse("streamer"))
    assert config.cors_allow_origins == ("https://a.example", "https://b.example:8443")


def test_a_repeatable_flag_given_replaces_its_default_instead_of_adding_to_it() -> None:
    args = parse("streamer", "--cors-allow-origin", "https://c.example")
    assert streamer_config(args).cors_allow_origins == ("https://c.example",)
    assert gateway_config(parse("gateway")).control_allow_origins == ()


def test_the_load_tests_prompt_variable_holds_one_prompt_commas_and_all(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENRELAY_LOADTEST_PROMPT", "Hello, world")
    assert parse("loadtest").prompt == ["Hello, world"]


def test_the_load_tests_api_key_keeps_the_variable_it_always_had(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENRELAY_API_KEY", "tr-load-key-0123456789")
    assert parse("loadtest").api_key == "tr-load-key-0123456789"


@pytest.mark.parametrize(("value", "on"), [("1", True), ("yes", True), ("ON", True), ("0", False), ("off", False)])
def test_a_switchs_variable_turns_it_on_or_off(monkeypatch: pytest.MonkeyPatch, value: str, on: bool) -> None:
    monkeypatch.setenv("TOKENRELAY_UP_INSECURE", value)
    assert parse("up").insecure is on


def test_feedback_export_reads_its_own_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENRELAY_FEEDBACK_EXPORT_OUTPUT", "feedback.jsonl")
    assert parse("feedback", "export").output == "feedback.jsonl"


@pytest.mark.parametrize("command", [("up",), ("gateway",), ("streamer",), ("runner",), ("feedback", "export")])
def test_every_command_takes_its_nats_servers_from_one_shared_variable(
    monkeypatch: pytest.MonkeyPatch, command: tuple[str, ...]
) -> None:
    cluster = "nats://a.example:4222,tls://b.example:4222,nats://10.0.0.3:4222"
    monkeypatch.setenv("TOKENRELAY_NATS_URL", cluster)
    assert parse(*command).nats_url == cluster


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_each_flags_default_and_its_variable(command: str) -> None:
    parser = command_parsers(build_parser())[command]
    text = parser.format_help()
    flags = list(parser.flags())
    assert flags, command
    for action, name in flags:
        assert action.help is not None and f"env: {name})" in action.help, action.option_strings
        assert "(default: " in action.help, action.option_strings
        assert name in text


def test_help_shows_the_default_of_a_flag_as_its_command_has_it() -> None:
    parsers = command_parsers(build_parser())
    up, runner = parsers["up"], parsers["runner"]
    up.format_help()
    runner.format_help()
    (up_length,) = [a for a, _ in up.flags() if a.dest == "synthetic_length_tokens"]
    (runner_length,) = [a for a, _ in runner.flags() if a.dest == "synthetic_length_tokens"]
    assert "(default: 240; env: TOKENRELAY_UP_SYNTHETIC_LENGTH_TOKENS)" in str(up_length.help)
    assert "(default: 0; env: TOKENRELAY_RUNNER_SYNTHETIC_LENGTH_TOKENS)" in str(runner_length.help)
