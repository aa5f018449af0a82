"""``bench.starts`` at tiny scale: every stream of each burst completes, each process has a CPU cost per start, and a
profiled run writes a profile of each role with its top functions (no timing is asserted; the figures come from
``python -m bench.starts``)."""

from __future__ import annotations

from pathlib import Path

from bench.starts import PROCESSES, ROLES, main, top_functions


def test_each_burst_completes_and_reports_cpu_per_start_of_each_process_and_ttft() -> None:
    result = main(["--burst", "3", "--bursts", "2", "--tokens", "5", "--tokens-per-s", "200"])
    assert len(result["bursts"]) == 2
    for b in result["bursts"]:
        assert (b["completed"], b["errors"]) == (3, {})
        assert set(b["us_per_start"]) == {*PROCESSES, "loadgen"}
        assert b["ttft_ms"]["p50"] > 0
    assert set(result["median"]["us_per_start"]) == set(result["all"]["us_per_start"]) == {*PROCESSES, "loadgen"}
    assert result["profiles"] == {}


def test_a_profiled_run_over_the_openai_api_writes_each_roles_profile(tmp_path: Path) -> None:
    argv = ["--burst", "3", "--bursts", "1", "--tokens", "5", "--tokens-per-s", "200", "--api", "openai"]
    result = main([*argv, "--profile", str(tmp_path)])
    assert (result["bursts"][0]["completed"], result["bursts"][0]["errors"]) == (3, {})
    assert set(result["profiles"]) == set(ROLES)
    for path in result["profiles"].values():
        assert Path(path).exists()
        assert "ncalls" in top_functions(Path(path), "cumulative")


def test_on_a_three_node_cluster_the_nats_column_sums_its_three_servers() -> None:
    result = main(["--burst", "3", "--bursts", "1", "--tokens", "5", "--tokens-per-s", "200", "--nats-nodes", "3"])
    assert result["options"]["nats_nodes"] == 3
    (only,) = result["bursts"]
    assert (only["completed"], only["errors"]) == (3, {})
    # /proc counts CPU in 10 ms ticks: three starts may cost none of them, so the count of servers summed is asserted
    assert result["processes"] == {"gateway": 1, "streamer": 1, "runner": 1, "nats-server": 3}
