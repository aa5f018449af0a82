"""Moves: what users feel when the runner generating their streams dies.

Each round on a fresh three-node NATS cluster (every JetStream object with three copies), a gateway, a streamer and
two runners: ``--streams`` streams are started and read over SSE; ``--kill-after-s`` in, the runner generating the
most of them is SIGKILLed (or, with ``--signal term`` and ``--drain-timeout-s``, told to stop past its drain), and
its streams move to the other runner. Measured per round, against a round where nothing is killed (the baseline):

* **streams whole**: ``stop`` with exactly the uninterrupted text, no error (no token lost or repeated);
* **move window**: the longest token gap a moved stream's reader saw (from the last token before the kill to the
  first one after the move): about twice ``--runner-stale-after-s`` for a SIGKILL (silent, then an unanswered
  ping), about one heartbeat check for a runner that leaves past its drain;
* the gateway's ``tokenrelay_gateway_stream_moves_total`` by outcome.

    python -m bench.moves --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import statistics
from dataclasses import dataclass
from typing import Any

from bench.stats import write_json
from tokenrelay.testing.cluster import nats_cluster
from tokenrelay.testing.http import create_stream, metric
from tokenrelay.testing.procs import Role, system
from tokenrelay.testing.sse import Stream, read_stream
from tokenrelay.testing.synthetic import expected_text

LENGTH_TOKENS = 100_000
"""The synthetic text's natural length: every stream runs to its max_tokens."""
OUTCOMES = ("moved", "ended", "lost", "taken")


@dataclass
class Round:
    killed: bool
    whole: int
    streams: int
    moved_gap_s: float
    """The longest token gap of the streams that moved (of every stream, in the baseline)."""
    moves: dict[str, float]
    errors: list[str]


def _max_gap(stream: Stream) -> float:
    arrivals = [event.at for event in stream.of("delta")]
    return max((b - a for a, b in itertools.pairwise(arrivals)), default=0.0)


async def _owners(runners: list[Role]) -> dict[str, float]:
    return {runner.name: await metric(runner.url, "tokenrelay_runner_active_streams") for runner in runners}


async def _round(kill: bool, args: argparse.Namespace) -> Round:
    runner = ["--synthetic-tokens-per-s", str(args.tokens_per_s), "--synthetic-ttft-ms", "0"]
    runner += ["--synthetic-length-tokens", str(LENGTH_TOKENS), "--drain-timeout-s", str(args.drain_timeout_s)]
    gateway = ["--runner-stale-after-s", str(args.runner_stale_after_s)]
    with nats_cluster(3) as cluster, system(cluster.url, runner_args=runner, runners=2, gateway_args=gateway) as sut:
        await create_stream(sut.gateway_url, "warm up", max_tokens=2)
        created = [
            await create_stream(sut.gateway_url, f"move {i}", max_tokens=args.max_tokens) for i in range(args.streams)
        ]
        readers = [asyncio.create_task(read_stream(c["events_url"], timeout_s=300)) for c in created]
        await asyncio.sleep(args.kill_after_s)
        if kill:
            owners = await _owners(sut.runners)
            victim = max(sut.runners, key=lambda r: owners[r.name])
            victim.process.send_signal(signal.SIGKILL if args.signal == "kill" else signal.SIGTERM)
        streams = await asyncio.gather(*readers)
        moves = {o: await metric(sut.gateway_url, "tokenrelay_gateway_stream_moves_total", outcome=o) for o in OUTCOMES}
    expected = [expected_text(f"move {i}", args.max_tokens, LENGTH_TOKENS) for i in range(args.streams)]
    whole = sum(
        1
        for s, text in zip(streams, expected, strict=True)
        if s.terminal.event == "stop" and s.text == text and not s.of("error")
    )
    errors = [s.terminal.json().get("code", "") for s in streams if s.terminal.event == "error"]
    gaps = sorted((_max_gap(s) for s in streams), reverse=True)
    return Round(kill, whole, len(streams), gaps[0] if gaps else 0.0, moves, errors)


async def _all(args: argparse.Namespace) -> list[Round]:
    rounds = []
    for _ in range(args.rounds):
        rounds.append(await _round(False, args))
        rounds.append(await _round(True, args))
    return rounds


def report(rounds: list[Round]) -> dict[str, Any]:
    """Every round, then medians over rounds, killed against baseline; printed as a table."""
    print("each round: killed, whole/streams, longest token gap s, moves by outcome, errors")
    for r in rounds:
        mark = "yes" if r.killed else "no"
        print(f"  {mark:<4} {r.whole:>3}/{r.streams:<3} {r.moved_gap_s:6.2f} {r.moves} {r.errors}")
    out: dict[str, Any] = {"rounds": [vars(r) for r in rounds], "summary": {}}
    print(f"{'':<18} {'longest token gap s (median)':>30} {'whole':>11} {'moved (median)':>15}")
    for killed, label in ((False, "baseline"), (True, "runner killed")):
        rs = [r for r in rounds if r.killed is killed]
        row = {
            "longest_token_gap_s": statistics.median(r.moved_gap_s for r in rs),
            "whole": sum(r.whole for r in rs),
            "streams": sum(r.streams for r in rs),
            "moved": statistics.median(r.moves["moved"] for r in rs),
            "errors": [e for r in rs for e in r.errors],
        }
        out["summary"][label] = row
        print(
            f"{label:<18} {row['longest_token_gap_s']:>30.2f} {row['whole']:>5}/{row['streams']:<5} "
            f"{row['moved']:>15.0f}"
        )
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.moves", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="pairs of rounds (baseline, then a runner killed)")
    parser.add_argument("--streams", type=int, default=20, help="streams read while their runner dies")
    parser.add_argument("--max-tokens", type=int, default=300)
    parser.add_argument("--tokens-per-s", type=float, default=50.0)
    parser.add_argument("--kill-after-s", type=float, default=2.0)
    parser.add_argument("--signal", choices=("kill", "term"), default="kill", help="SIGKILL, or SIGTERM past the drain")
    parser.add_argument("--drain-timeout-s", type=float, default=25.0)
    parser.add_argument("--runner-stale-after-s", type=float, default=3.0)
    args = parser.parse_args(argv)
    rounds = asyncio.run(_all(args))
    result = {"config": vars(args), **report(rounds)}
    print(f"wrote {write_json('moves', result)}")
    return result


if __name__ == "__main__":
    main()
