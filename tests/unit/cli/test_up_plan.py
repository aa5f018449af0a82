"""What ``tokenrelay up`` starts: every role flag on each child's command line, no role variable inherited, and a
synthetic engine slow enough to watch."""

from __future__ import annotations

import argparse

import pytest

from tokenrelay.cli.commands import build_parser, command_parsers
from tokenrelay.cli.options import UP_SYNTHETIC_LENGTH_TOKENS, UP_SYNTHETIC_TOKENS_PER_S
from tokenrelay.cli.plan import Child, child_environment, plan

NATS_URL = "nats://127.0.0.1:4222"


def children(*argv: str) -> dict[str, Child]:
    return {child.name: child for child in plan(build_parser().parse_args(["up", *argv]), NATS_URL)}


def as_parsed(child: Child) -> argparse.Namespace:
    """The child's own command line, parsed as the child parses it."""
    assert child.argv[1:3] == ["-m", "tokenrelay"]
    return build_parser().parse_args(child.argv[3:])


@pytest.mark.parametrize(("role", "name"), [("gateway", "gateway"), ("streamer", "streamer"), ("runner", "runner-1")])
def test_up_gives_each_child_every_flag_of_its_role_explicitly(role: str, name: str) -> None:
    argv = children()[name].argv
    for action, _ in command_parsers(build_parser())[role].flags():
        if action.default == ():  # a repeatable flag with no value: nothing to pass, and nothing inherited
            continue
        assert action.option_strings[0] in argv, f"up does not pass {action.option_strings[0]} to the {role}"


def test_up_forwards_its_own_value_of_a_role_flag() -> None:
    started = children(
        "--synthetic-length-tokens", "7", "--flush-interval-ms", "25", "--max-queued-streams", "3",
        "--log-level", "warning", "--control-allow-origin", "https://chat.example",
    )  # fmt: skip
    assert as_parsed(started["runner-1"]).synthetic_length_tokens == 7
    assert as_parsed(started["streamer"]).flush_interval_ms == 25.0
    gateway = as_parsed(started["gateway"])
    assert (gateway.max_queued_streams, gateway.log_level) == (3, "WARNING")
    assert gateway.control_allow_origin == ["https://chat.example"]


def test_up_sets_each_childs_address_and_port_and_the_urls_clients_get() -> None:
    started = children("--gateway-port", "18080", "--streamer-port", "18081")
    gateway = as_parsed(started["gateway"])
    assert (gateway.nats_url, gateway.port) == (NATS_URL, 18080)
    assert (gateway.public_url, gateway.streamer_url) == ("http://127.0.0.1:18080", "http://127.0.0.1:18081")
    assert (started["gateway"].listen_port, started["streamer"].listen_port) == (18080, 18081)
    assert as_parsed(started["streamer"]).reuse_port == "off"


def test_children_start_without_the_roles_variables_but_with_the_secrets() -> None:
    environ = {
        "LANG": "C.UTF-8",
        "TOKENRELAY_GATEWAY_PORT": "9000",
        "TOKENRELAY_STREAMER_REUSE_PORT": "on",
        "TOKENRELAY_RUNNER_SYNTHETIC_TOKENS_PER_S": "0",
        "TOKENRELAY_API_KEYS": "acme:tr-key-0123456789abcdef",
        "TOKENRELAY_TOKEN_SECRET": "s" * 32,
        "TOKENRELAY_NATS_USER": "relay",
        "TOKENRELAY_UPSTREAM_API_KEY": "sk-upstream",
    }
    assert child_environment(environ) == {
        "LANG": "C.UTF-8",
        "TOKENRELAY_API_KEYS": "acme:tr-key-0123456789abcdef",
        "TOKENRELAY_TOKEN_SECRET": "s" * 32,
        "TOKENRELAY_NATS_USER": "relay",
        "TOKENRELAY_UPSTREAM_API_KEY": "sk-upstream",
    }


def test_up_runs_a_synthetic_demo_of_a_few_hundred_tokens_at_reading_pace() -> None:
    runner = as_parsed(children()["runner-1"])
    assert (runner.synthetic_length_tokens, runner.synthetic_tokens_per_s) == (240, 30.0)
    assert UP_SYNTHETIC_LENGTH_TOKENS / UP_SYNTHETIC_TOKENS_PER_S >= 5.0  # long enough to watch and press Stop
    assert as_parsed(children()["gateway"]).default_max_tokens == 0  # no default max_tokens: it ends on its own


def test_a_runner_of_its_own_keeps_the_engines_prompt_derived_length() -> None:
    assert build_parser().parse_args(["runner"]).synthetic_length_tokens == 0


def test_up_passes_the_pace_a_test_asks_for() -> None:
    runner = as_parsed(children("--synthetic-tokens-per-s", "0", "--synthetic-length-tokens", "0")["runner-1"])
    assert (runner.synthetic_tokens_per_s, runner.synthetic_length_tokens) == (0.0, 0)
