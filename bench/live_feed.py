"""Subscriber CPU per live event: nats-py's callback path against :class:`tokenrelay.runtime.natsdirect.DirectClient`.

A publisher process sends ``--messages`` events (~200 bytes each, spread over ``--streams`` stream subjects) as fast
as it can; this process takes them on one wildcard subscription, as the streamer's hub does in ``shared`` mode,
and does what the hub does first with each one (find the stream id in the subject, look it up).  Measured: this
process's CPU time per message, for each client in turn, ``--runs`` times; the table shows medians and the ratio.

    python -m bench.live_feed --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bench.stats import write_json
from tokenrelay.runtime.natsdirect import DirectClient
from tokenrelay.runtime.natsio import barrier
from tokenrelay.runtime.service import run_on_loop
from tokenrelay.testing.procs import nats_server
from tokenrelay.wire import subjects

PAYLOAD = b'{"type":"delta","seq":7,"text":" token","index":7,"count":1,"ts":1795000000.123456}' * 2
CLIENTS = ("nats-py", "direct")
WAIT_S = 120.0


async def publish(url: str, messages: int, streams: int) -> None:
    """The publisher process: ``messages`` events over ``streams`` subjects, then a flush."""
    nc = await nats.connect(url, name="live-feed-publisher")
    names = [subjects.events(subjects.new_stream_id()) for _ in range(streams)]
    for i in range(messages):
        await nc.publish(names[i % streams], PAYLOAD)
    await nc.flush()
    await nc.close()


async def consume(url: str, client: str, messages: int, streams: int) -> float:
    """CPU seconds of this process per message taken on one wildcard subscription."""
    nc: NATS = DirectClient() if client == "direct" else NATS()
    await nc.connect(url, name=f"live-feed-{client}")
    known: dict[str, int] = {}
    received = 0
    done = asyncio.get_running_loop().create_future()

    def handle(subject: str, _: bytes) -> None:
        nonlocal received
        known.get(subject.split(".")[2])
        received += 1
        if received == messages and not done.done():
            done.set_result(None)

    if isinstance(nc, DirectClient):
        await nc.subscribe_direct(subjects.EVENTS_WILDCARD, handle)
    else:

        async def callback(msg: Msg) -> None:
            handle(msg.subject, msg.data)

        await nc.subscribe(subjects.EVENTS_WILDCARD, cb=callback, pending_msgs_limit=-1, pending_bytes_limit=-1)
    await barrier(nc)  # the server has the SUB before the first event is published
    argv = ["-m", "bench.live_feed", "--publish", url, "--messages", str(messages), "--streams", str(streams)]
    publisher = await asyncio.create_subprocess_exec(sys.executable, *argv)
    cpu = time.process_time()
    try:
        await asyncio.wait_for(done, WAIT_S)
        return (time.process_time() - cpu) / messages
    finally:
        await asyncio.wait_for(publisher.wait(), WAIT_S)
        await nc.close()


def table(per_message_us: dict[str, list[float]]) -> str:
    """Medians in µs per message and the ratio direct / nats-py."""
    med = {client: statistics.median(values) for client, values in per_message_us.items()}
    lines = [f"{'client':<10}{'µs/message (median)':>22}   runs"]
    for client, values in per_message_us.items():
        lines.append(f"{client:<10}{med[client]:>22.2f}   {'  '.join(f'{v:.2f}' for v in values)}")
    lines.append(f"direct / nats-py: {med['direct'] / med['nats-py']:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200_000, help="events per run (default: %(default)s)")
    parser.add_argument("--streams", type=int, default=1_000, help="stream subjects (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=5, help="runs of each client (default: %(default)s)")
    parser.add_argument("--event-loop", default="auto", help="this process's loop (default: %(default)s)")
    parser.add_argument("--publish", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.publish:
        run_on_loop(publish(args.publish, args.messages, args.streams), event_loop=args.event_loop)
        return {}
    per_message_us: dict[str, list[float]] = {client: [] for client in CLIENTS}
    with nats_server() as server:
        for _ in range(args.runs):
            for client in CLIENTS:  # alternate, so drift on a shared machine hits both
                run = consume(server.url, client, args.messages, args.streams)
                per_message_us[client].append(run_on_loop(run, event_loop=args.event_loop) * 1e6)
    print(table(per_message_us))
    result = {"args": vars(args), "us_per_message": per_message_us}
    print(f"wrote {write_json('live_feed', result)}")
    return result


if __name__ == "__main__":
    main()
