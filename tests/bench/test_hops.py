"""``bench.hops`` at tiny scale: every hop is measured against a real peer process through a real nats-server, and a
real tokenrelay system's native steps too; each API's floor is the sum of its critical path's hop medians (no timing
is asserted; the figures come from ``python -m bench.hops``)."""

from __future__ import annotations

import pytest

from bench.hops import HOPS, NATIVE_STEPS, floors, main, summarize


def test_every_hop_is_measured_and_each_floor_is_its_paths_hops_summed() -> None:
    result = main(["--samples", "20"])
    assert result is not None
    assert set(result["hops_ms"]) == set(HOPS)
    for figures in result["hops_ms"].values():
        assert 0 < figures["p10"] <= figures["p50"] <= figures["p90"]
    medians = {hop: figures["p50"] for hop, figures in result["hops_ms"].items()}
    assert result["floor_ms"] == pytest.approx(floors(medians))
    assert set(result["native_ms"]) == set(NATIVE_STEPS)
    for figures in result["native_ms"].values():
        assert 0 < figures["p10"] <= figures["p50"] <= figures["p90"]
    assert result["native_hops_ms"]["post"] == pytest.approx(medians["http_round_trip"] + medians["kv_write"])


def test_a_floor_counts_each_hop_as_often_as_its_path_crosses_it() -> None:
    hops = {"nats_request_reply": [9.0], "nats_one_way": [1.0], "kv_write": [10.0], "http_round_trip": [100.0]}
    summary = summarize(hops, samples=1, native={step: [1.0] for step in NATIVE_STEPS})
    assert summary["floor_ms"] == {"native API": 110.0, "OpenAI API": 103.0}
    assert summary["native_hops_ms"] == {"post": 110.0, "get_headers": 100.0}
