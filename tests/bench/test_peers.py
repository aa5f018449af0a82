"""``bench.peers`` drives tokenrelay and what users would pick instead with the same load, and reports each against
the load straight at the upstream.

The end-to-end test runs the targets that need nothing installed at a tiny scale on the session's nats-server and
checks every stream and the summary's shape, never its timings; the others feed the summary code made-up figures.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.peers import (
    COLUMNS,
    FIGURES,
    PeersOptions,
    format_table,
    format_tables,
    options_from_args,
    paced_runner_args,
    parser,
    peers,
    summarize,
)
from bench.peers_litellm import ensure_litellm, proxy_config, proxy_env
from tokenrelay.testing.procs import NatsServer

TINY = PeersOptions(
    targets=("direct", "tokenrelay-openai", "tokenrelay-native"), concurrency=(1, 4), rounds=1, tokens=5, interval_ms=5
)
ROW_KEYS = {"target", *FIGURES, "streams", "completed", "errors", "ttft_p50_ratio", "gap_p99_ratio", "ttft_added_ms"}


def test_every_stream_of_every_target_completes_and_each_concurrency_gets_a_row_per_target(nats: NatsServer) -> None:
    summary = peers(TINY, broker=nats, progress=None)

    assert summary.keys() == {"options", "measurements", "tables"}
    assert [(m["round"], m["concurrency"], m["target"]) for m in summary["measurements"]] == [
        (1, c, t) for c in TINY.concurrency for t in TINY.targets
    ]
    for m in summary["measurements"]:
        report = m["loadtest"]
        assert report["streams"]["started"] == report["streams"]["completed"] == m["concurrency"], m["target"]
        assert report["errors"] == {}, m["target"]
        assert report["tokens"]["delivered"] == m["concurrency"] * TINY.tokens, m["target"]
        assert report["ttft_ms"]["n"] == m["concurrency"], m["target"]
    assert [table["concurrency"] for table in summary["tables"]] == list(TINY.concurrency)
    for table in summary["tables"]:
        assert [row["target"] for row in table["rows"]] == list(TINY.targets)
        for row in table["rows"]:
            assert row.keys() == ROW_KEYS
            assert all(math.isfinite(row[key]) and row[key] > 0 for key in FIGURES), row
            assert row["errors"] == 0 and row["completed"] == row["streams"] == table["concurrency"]
            if row["target"] != "direct":
                assert math.isfinite(row["ttft_p50_ratio"]) and math.isfinite(row["gap_p99_ratio"]), row
        assert len(format_table(table).splitlines()) == 1 + len(TINY.targets)
    assert orjson.loads(orjson.dumps(summary))["tables"][0]["rows"][0]["ttft_p50_ratio"] is None  # direct's own


def measurement(round_: int, concurrency: int, target: str, *, ttft_p50: float, gap_p99: float) -> dict[str, Any]:
    """One measurement as :func:`bench.peers.peers` records it, with a made-up load-test report."""
    latency = {"p50": ttft_p50, "p95": ttft_p50, "p99": ttft_p50 * 2, "max": ttft_p50 * 2, "n": concurrency}
    gaps = {"p50": 1.0, "p95": gap_p99, "p99": gap_p99, "max": gap_p99, "n": concurrency}
    report = {
        "streams": {"started": concurrency, "completed": concurrency},
        "errors": {"timeout": 1} if target == "litellm" else {},
        "ttft_ms": latency,
        "inter_token_ms": gaps,
    }
    return {"round": round_, "concurrency": concurrency, "target": target, "loadtest": report}


def test_ratios_divide_by_direct_in_the_same_round_then_take_the_median() -> None:
    options = PeersOptions(targets=("direct", "litellm"), concurrency=(1,), rounds=3)
    measurements = [
        measurement(n, 1, target, ttft_p50=ttft, gap_p99=gap)
        for n, figures in enumerate(
            (
                {"direct": (1.0, 10.0), "litellm": (2.0, 20.0)},  # 2x, +1 ms
                {"direct": (10.0, 20.0), "litellm": (40.0, 80.0)},  # 4x, +30 ms
                {"direct": (2.0, 5.0), "litellm": (6.0, 15.0)},  # 3x, +4 ms
            ),
            start=1,
        )
        for target, (ttft, gap) in figures.items()
    ]

    direct, litellm = summarize(options, measurements)["tables"][0]["rows"]

    assert litellm["ttft_p50"] == 6.0  # the median of 2, 40, 6
    assert litellm["ttft_p50_ratio"] == 3.0  # not 6 / 2
    assert litellm["gap_p99_ratio"] == 3.0
    assert litellm["ttft_added_ms"] == 4.0
    assert litellm["errors"] == 3.0 and litellm["streams"] == 3.0  # summed over rounds
    assert all(math.isnan(direct[key]) for key in ("ttft_p50_ratio", "gap_p99_ratio", "ttft_added_ms"))


def test_without_direct_a_table_has_no_ratios_and_shows_dashes() -> None:
    options = PeersOptions(targets=("tokenrelay-native",), concurrency=(1, 50), rounds=1)
    measurements = [measurement(1, c, "tokenrelay-native", ttft_p50=3.0, gap_p99=20.0) for c in (1, 50)]

    summary = summarize(options, measurements)

    [row] = summary["tables"][1]["rows"]
    assert math.isnan(row["ttft_p50_ratio"]) and math.isnan(row["ttft_added_ms"])
    lines = [line for line in format_tables(summary).splitlines() if line]
    assert lines[0].startswith("C=1: 1 stream(s) started at once, 40 tokens 20 ms apart")
    assert [line.split()[0] for line in lines] == [
        "C=1:",
        "target",
        "tokenrelay-native",
        "C=50:",
        "target",
        "tokenrelay-native",
    ]
    assert lines[-1].split()[-3:] == ["-", "-", "-"]
    assert all(name in lines[1] for name, _, _ in COLUMNS)


def test_the_synthetic_engine_is_paced_as_the_fake_upstream() -> None:
    args = paced_runner_args(PeersOptions(tokens=40, interval_ms=20))

    assert dict(zip(args[::2], args[1::2], strict=True)) == {
        "--synthetic-ttft-ms": "0",
        "--synthetic-tokens-per-s": "50",
        "--synthetic-length-tokens": "40",
    }


def test_litellm_serves_the_upstream_as_an_openai_model_with_the_key_and_prices_from_its_environment() -> None:
    config = proxy_config("http://127.0.0.1:9/v1", "m")

    [entry] = config["model_list"]
    assert entry["model_name"] == "m"
    assert entry["litellm_params"]["model"] == "openai/m"
    assert entry["litellm_params"]["api_base"] == "http://127.0.0.1:9/v1"
    assert config["general_settings"]["master_key"] == "os.environ/LITELLM_MASTER_KEY"
    env = proxy_env("sk-1")
    assert (env["LITELLM_MASTER_KEY"], env["LITELLM_LOCAL_MODEL_COST_MAP"]) == ("sk-1", "True")


def test_an_installed_litellm_is_used_as_it_is(tmp_path: Path) -> None:
    executable = tmp_path / "bin" / "litellm"
    executable.parent.mkdir()
    executable.touch()

    assert ensure_litellm(tmp_path) == executable
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin"]  # nothing created, nothing installed


def test_the_command_line_takes_targets_and_loads_as_lists() -> None:
    args = parser().parse_args(["--targets", "direct,litellm", "--concurrency", "1,50", "--rounds", "1"])

    options = options_from_args(args)

    assert (options.targets, options.concurrency, options.rounds) == (("direct", "litellm"), (1, 50), 1)
    assert options_from_args(parser().parse_args([])) == PeersOptions()


@pytest.mark.parametrize("argv", [["--targets", "direct,vllm"], ["--concurrency", "1,1"], ["--concurrency", "0"]])
def test_the_command_line_refuses_unknown_targets_repeats_and_empty_loads(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(argv)
