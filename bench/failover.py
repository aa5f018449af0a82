"""Failover window: what users feel when one node of a three-node NATS cluster dies.

For each node in turn, each round on a fresh cluster (every JetStream object with three copies) with a gateway, two
streamers and a runner: ``--streams`` streams are read over SSE while a prober asks the gateway for a new stream every
``--probe-interval-ms``; ``--kill-after-s`` in, the node is SIGKILLed. Measured:

* **admission window**: from the kill to the first new stream admitted again after a refusal (0 when none was
  refused) — the goal is at most 10 s;
* **longest token gap** a reader saw (the delivery stall the loss caused), against the same in a round where no node
  is killed (the baseline, measured in the same run);
* **streams whole**: streams that ended ``stop`` with exactly the uninterrupted text (no token lost or repeated).

    python -m bench.failover --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import nats

from bench.stats import write_json
from tokenrelay.testing.cluster import NatsCluster, nats_cluster
from tokenrelay.testing.http import create_stream, post
from tokenrelay.testing.procs import system
from tokenrelay.testing.sse import Stream, read_stream
from tokenrelay.testing.synthetic import expected_text

LENGTH_TOKENS = 100_000
"""The synthetic text's natural length: every stream runs to its max_tokens."""


ASSETS = (
    "TOKENRELAY_EVENTS", "TOKENRELAY_FEEDBACK", "KV_tokenrelay_streams", "OBJ_tokenrelay_payloads",
)  # fmt: skip
"""The JetStream streams every deployment declares (a bucket's and a store's included)."""


@dataclass
class Round:
    """One round's measurements."""

    node: str
    led: list[str]
    """What the killed node led: JetStream's meta layer (``meta``) and the streams named."""
    window_s: float
    refused: int
    slowest_admission_s: float
    """The longest a new stream's POST took after the kill (admitted or not)."""
    max_gap_s: float
    whole: int
    streams: int
    errors: list[str] = field(default_factory=list)


async def _probe(gateway_url: str, interval_s: float, stop: asyncio.Event) -> list[tuple[float, bool, float]]:
    """(time answered, admitted, seconds it took) for a new two-token stream asked for every ``interval_s``, until
    ``stop``."""
    seen: list[tuple[float, bool, float]] = []
    while not stop.is_set():
        asked = time.monotonic()
        status, _ = await post(f"{gateway_url}/v1/streams", {"prompt": "probe", "max_tokens": 2})
        seen.append((time.monotonic(), status == 201, time.monotonic() - asked))
        await asyncio.sleep(interval_s)
    return seen


def _window(seen: list[tuple[float, bool, float]], killed_at: float) -> tuple[float, int]:
    """Seconds from the kill to the first admission after the last refusal, and the refusals after the kill."""
    after = [(at, ok) for at, ok, _ in seen if at >= killed_at]
    refusals = [at for at, ok in after if not ok]
    if not refusals:
        return 0.0, 0
    back = next((at for at, ok in after if ok and at > refusals[-1]), after[-1][0])
    return back - killed_at, len(refusals)


def _max_gap(stream: Stream) -> float:
    """The longest time between two deltas' arrivals at the reader."""
    arrivals = [event.at for event in stream.of("delta")]
    return max((b - a for a, b in itertools.pairwise(arrivals)), default=0.0)


async def _round(cluster: NatsCluster, victim: int | None, args: argparse.Namespace) -> Round:
    runner = ["--synthetic-tokens-per-s", str(args.tokens_per_s), "--synthetic-ttft-ms", "0"]
    runner += ["--synthetic-length-tokens", str(LENGTH_TOKENS)]
    with system(cluster.url, runner_args=runner, streamers=2) as sut:
        await create_stream(sut.gateway_url, "warm up", max_tokens=2)
        created = [
            await create_stream(sut.gateway_url, f"failover {i}", max_tokens=args.max_tokens)
            for i in range(args.streams)
        ]
        readers = [asyncio.create_task(read_stream(c["events_url"], timeout_s=300)) for c in created]
        stop = asyncio.Event()
        prober = asyncio.create_task(_probe(sut.gateway_url, args.probe_interval_ms / 1000, stop))
        await asyncio.sleep(args.kill_after_s)
        led = await _led_by(cluster, victim) if victim is not None else []
        killed_at = time.monotonic()
        if victim is not None:
            cluster.nodes[victim].kill()
        streams = await asyncio.gather(*readers)
        await asyncio.sleep(args.settle_s)
        stop.set()
        seen = await prober
    window_s, refused = _window(seen, killed_at)
    slowest_s = max((took for at, _, took in seen if at >= killed_at), default=0.0)
    expected = {c["id"]: expected_text(f"failover {i}", args.max_tokens, LENGTH_TOKENS) for i, c in enumerate(created)}
    whole = sum(
        1 for c, s in zip(created, streams, strict=True) if s.terminal.event == "stop" and s.text == expected[c["id"]]
    )
    errors = [s.terminal.json().get("code", "") for s in streams if s.terminal.event == "error"]
    name = cluster.nodes[victim].name if victim is not None else "none (baseline)"
    gap_s = max(_max_gap(s) for s in streams)
    return Round(name, led, window_s, refused, slowest_s, gap_s, whole, len(streams), errors)


async def _led_by(cluster: NatsCluster, victim: int) -> list[str]:
    name = cluster.nodes[victim].name
    led = ["meta"] if cluster.meta_leader() == name else []
    nc = await nats.connect(cluster.url.split(","))
    try:
        js = nc.jetstream()
        for asset in ASSETS:
            info = await js.stream_info(asset)
            if info.cluster is not None and info.cluster.leader == name:
                led.append(asset)
    finally:
        await nc.close()
    return led


async def _all(args: argparse.Namespace) -> list[Round]:
    rounds = []
    for _ in range(args.rounds):
        for victim in (None, *args.nodes):
            with nats_cluster(3) as cluster:
                rounds.append(await _round(cluster, victim, args))
    return rounds


def _kind(r: Round) -> str:
    """What losing this node was: nothing (the baseline), the records' leader, or a node that did not lead them."""
    if not r.led and r.node.startswith("none"):
        return "no node lost (baseline)"
    return "records' leader lost" if "KV_tokenrelay_streams" in r.led else "another node lost"


def report(rounds: list[Round]) -> dict[str, Any]:
    """Every round, then the median over rounds by what the lost node led; printed as tables."""
    print("each round: node killed, what it led, admission window s, refusals, slowest POST s, longest token gap s")
    for r in rounds:
        led = ",".join(r.led) or "-"
        print(
            f"  {r.node:<16} {led:<60} {r.window_s:6.2f} {r.refused:4d} {r.slowest_admission_s:6.2f} {r.max_gap_s:6.2f}"
        )
    by_kind: dict[str, list[Round]] = {}
    for r in rounds:
        by_kind.setdefault(_kind(r), []).append(r)
    out: dict[str, Any] = {"rounds": [vars(r) for r in rounds], "by_kind": {}}
    print(
        f"{'':<26} {'admission window s':>19} {'refused':>8} {'slowest POST s':>15} {'longest token gap s':>20} "
        f"{'whole':>11} {'n':>3}"
    )
    for kind, rs in by_kind.items():
        row = {
            "admission_window_s": statistics.median(r.window_s for r in rs),
            "admission_window_max_s": max(r.window_s for r in rs),
            "refused": statistics.median(r.refused for r in rs),
            "slowest_admission_s": statistics.median(r.slowest_admission_s for r in rs),
            "max_token_gap_s": statistics.median(r.max_gap_s for r in rs),
            "whole": sum(r.whole for r in rs),
            "streams": sum(r.streams for r in rs),
            "errors": [e for r in rs for e in r.errors],
            "rounds": len(rs),
        }
        out["by_kind"][kind] = row
        print(
            f"{kind:<26} {row['admission_window_s']:>19.2f} {row['refused']:>8.0f} "
            f"{row['slowest_admission_s']:>15.2f} {row['max_token_gap_s']:>20.2f} "
            f"{row['whole']:>5}/{row['streams']:<5} {len(rs):>3}"
        )
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per node (a fresh cluster each)")
    parser.add_argument("--nodes", type=int, nargs="+", default=[0, 1, 2], help="which nodes to kill (0-2)")
    parser.add_argument("--streams", type=int, default=20, help="streams read while the node dies")
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--tokens-per-s", type=float, default=50.0)
    parser.add_argument("--kill-after-s", type=float, default=2.0)
    parser.add_argument("--probe-interval-ms", type=float, default=100.0)
    parser.add_argument("--settle-s", type=float, default=1.0, help="probing goes on this long after the streams end")
    args = parser.parse_args(argv)
    rounds = asyncio.run(_all(args))
    summary = report(rounds)
    result = {"config": vars(args), **summary}
    print(f"wrote {write_json('failover', result)}")
    return result


if __name__ == "__main__":
    main()
