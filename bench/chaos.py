"""Chaos: streams under load for minutes while NATS nodes, runners and streamers die and come back at random.

A three-node NATS cluster (every JetStream object in three copies), one gateway, two streamers sharing one port and
two runners. ``--users`` users start streams one after another with the Python client (which resumes a stream on
the other streamer when its streamer goes away). Every ``--min-interval-s`` to ``--max-interval-s`` one victim is
picked at random: a NATS node (SIGKILL, started again with its store after ``--down-s``), a runner or a streamer
(SIGKILL or SIGTERM, a replacement started at once). Measured:

* streams that **ended whole**: ``length`` with exactly the text an uninterrupted run gives (none lost or repeated);
* streams that **ended with a clear error**, by code (a SIGKILLed or drained runner's streams move to the other
  runner: ``runner_lost`` only when none could take one);
* streams **broken**: any other ending (a wrong text, a client error other than a typed one) — the target is 0.

    python -m bench.chaos --duration-s 180
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import signal
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from bench.stats import write_json
from tokenrelay.cli.supervisor import free_port, http_ok
from tokenrelay.client import Client
from tokenrelay.testing.cluster import NatsCluster, nats_cluster
from tokenrelay.testing.http import metric
from tokenrelay.testing.procs import Role, start_role, stop_process, wait_until
from tokenrelay.testing.synthetic import expected_text
from tokenrelay.wire.errors import TokenRelayError

LENGTH_TOKENS = 100_000


@dataclass
class Tally:
    whole: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    broken: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    """What the chaos did, in order."""


class Deployment:
    """The roles, each of which can be killed and replaced."""

    def __init__(self, cluster: NatsCluster, logs: str, args: argparse.Namespace) -> None:
        self.cluster, self.logs, self.args = cluster, logs, args
        self.shared_port = free_port()
        self.runner_args = [
            "--synthetic-tokens-per-s", str(args.tokens_per_s), "--synthetic-ttft-ms", "0",
            "--synthetic-length-tokens", str(LENGTH_TOKENS),
        ]  # fmt: skip
        self.runners = [self._runner(i) for i in range(2)]
        self.streamers = [self._streamer(i) for i in range(2)]
        streamer_url = f"http://127.0.0.1:{self.shared_port}"
        self.gateway = start_role("gateway", cluster.url, logs, "gateway", ["--streamer-url", streamer_url])
        for role in [*self.runners, *self.streamers, self.gateway]:
            wait_until(lambda r=role: http_ok(f"{r.url}/healthz"), what=f"{role.name}")
        wait_until(lambda: http_ok(f"{self.gateway.url}/readyz"), what="gateway ready")
        self.generation = 0

    def _runner(self, i: int) -> Role:
        return start_role("runner", self.cluster.url, self.logs, f"runner-{i}", self.runner_args)

    def _streamer(self, i: int, own: int | None = None) -> Role:
        own = own or free_port()
        extra = ["--reuse-port", "on", "--process-port", str(own)]
        role = start_role("streamer", self.cluster.url, self.logs, f"streamer-{i}", extra, port=self.shared_port)
        return Role(role.name, f"http://127.0.0.1:{own}", role.process)

    async def strike(self, rng: random.Random, tally: Tally) -> None:
        """Kill one thing at random and bring it (or its replacement) back."""
        kind = rng.choice(["nats", "runner", "streamer"])
        sig = rng.choice([signal.SIGKILL, signal.SIGTERM])
        if kind == "nats":
            node = rng.choice(self.cluster.live())
            tally.events.append(f"{time.strftime('%H:%M:%S')} SIGKILL nats {node.name}")
            node.kill()
            await asyncio.sleep(self.args.down_s)
            await asyncio.to_thread(node.start)
            return
        roles = self.runners if kind == "runner" else self.streamers
        i = rng.randrange(len(roles))
        old = roles[i]
        tally.events.append(f"{time.strftime('%H:%M:%S')} {sig.name} {old.name}")
        old.process.send_signal(sig)
        own = int(old.url.rsplit(":", 1)[1]) if kind == "streamer" else None
        if kind == "streamer":
            await asyncio.to_thread(old.process.wait, 60)  # its process port must be free again
            new = self._streamer(i, own)
        else:
            new = self._runner(i)
        roles[i] = new
        await asyncio.to_thread(wait_until, lambda: http_ok(f"{new.url}/healthz"), what=new.name)
        await asyncio.to_thread(old.process.wait, 60)

    def stop(self) -> None:
        for role in [self.gateway, *self.streamers, *self.runners]:
            stop_process(role.process, sig=signal.SIGINT)


async def user(client: Client, i: int, args: argparse.Namespace, stop: asyncio.Event, tally: Tally) -> None:
    n = 0
    while not stop.is_set():
        prompt, n = f"chaos user {i} stream {n}", n + 1
        try:
            stream = await client.start(prompt=prompt, max_tokens=args.max_tokens)
        except TokenRelayError as exc:
            tally.errors[f"refused {exc.code}"] += 1
            await asyncio.sleep(0.5)
            continue
        try:
            text = "".join([piece async for piece in stream])
        except TokenRelayError as exc:
            tally.errors[str(exc.code)] += 1
            continue
        if stream.finish_reason == "length" and text == expected_text(prompt, args.max_tokens, LENGTH_TOKENS):
            tally.whole += 1
        else:
            tally.broken.append(f"{prompt}: {stream.finish_reason}, {len(text)} characters")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng, tally = random.Random(args.seed), Tally()
    with nats_cluster(3) as cluster, tempfile.TemporaryDirectory(prefix="tokenrelay-chaos-") as logs:
        deployment = Deployment(cluster, logs, args)
        try:
            stop = asyncio.Event()
            async with Client(deployment.gateway.url) as client:
                users = [asyncio.create_task(user(client, i, args, stop, tally)) for i in range(args.users)]
                deadline = time.monotonic() + args.duration_s
                while time.monotonic() < deadline:
                    await asyncio.sleep(rng.uniform(args.min_interval_s, args.max_interval_s))
                    await deployment.strike(rng, tally)
                stop.set()
                await asyncio.gather(*users)
            moves = {
                outcome: await metric(deployment.gateway.url, "tokenrelay_gateway_stream_moves_total", outcome=outcome)
                for outcome in ("moved", "ended", "lost", "taken")
            }
        finally:
            deployment.stop()
    result = {
        "config": vars(args), "whole": tally.whole, "errors": dict(tally.errors), "broken": tally.broken,
        "strikes": tally.events, "moves": moves,
    }  # fmt: skip
    print(f"{len(tally.events)} strikes in {args.duration_s:.0f} s:")
    for line in tally.events:
        print(f"  {line}")
    print(f"streams ended whole (no token lost or repeated): {tally.whole}")
    print(f"streams ended with a clear error:                 {sum(tally.errors.values())} {dict(tally.errors)}")
    print(f"streams broken:                                   {len(tally.broken)}")
    print(f"lost runners' streams, by what became of them:   {moves}")
    for line in tally.broken[:20]:
        print(f"  {line}")
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration-s", type=float, default=180.0)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=100)
    parser.add_argument("--tokens-per-s", type=float, default=50.0)
    parser.add_argument("--min-interval-s", type=float, default=3.0)
    parser.add_argument("--max-interval-s", type=float, default=8.0)
    parser.add_argument("--down-s", type=float, default=3.0, help="how long a killed NATS node stays down")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    print(f"wrote {write_json('chaos', result)}")
    return result


if __name__ == "__main__":
    main()
