"""What nginx (deploy/nginx.conf) adds to token delivery: the same stream read through the proxy and directly.

For every stream one reader goes through nginx and one straight to the streamer, at the same time, in the same
event loop. Each delta's arrival through nginx is compared with the same delta's (same SSE ``id``) arrival on the
direct reader: the first delta (what time to first token gains), and every delta (token lag). Streams run
``--concurrency`` at a time, so the proxy also carries that many open streams.

    python -m bench.proxy --streams 200 --concurrency 20 --runs 3

Needs nginx (Debian: nginx-light) on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
from pathlib import Path
from urllib.parse import urlsplit

from bench.stats import median_of_runs, summary, table, write_json
from tokenrelay.cli.supervisor import free_port
from tokenrelay.testing.http import create_stream
from tokenrelay.testing.nginx import nginx_proxy
from tokenrelay.testing.procs import nats_server, system
from tokenrelay.testing.sse import Stream, read_stream

TOKENS = 20
# The first token comes well after both readers have connected, so both wait for it live.
RUNNER_ARGS = ["--synthetic-tokens-per-s", "100", "--synthetic-ttft-ms", "200", "--synthetic-length-tokens", "100000"]


def lags_ms(proxied: Stream, direct: Stream) -> list[float]:
    """Per delta present on both readers (matched by id): arrival through nginx minus direct arrival, in ms."""
    direct_at = {e.id: e.at for e in direct.of("delta")}
    return [(e.at - direct_at[e.id]) * 1000 for e in proxied.of("delta") if e.id in direct_at]


def first_ms(later: Stream, direct: Stream) -> float:
    return (later.of("delta")[0].at - direct.of("delta")[0].at) * 1000


async def one_stream(gateway_url: str, streamer_url: str, i: int) -> dict[str, list[float]]:
    created = await create_stream(gateway_url, f"proxy {i}", max_tokens=TOKENS)
    direct_url = streamer_url + urlsplit(created["events_url"]).path
    proxied, direct, again = await asyncio.gather(
        read_stream(created["events_url"]), read_stream(direct_url), read_stream(direct_url)
    )
    return {
        "first_delta_ms": [first_ms(proxied, direct)],
        "delta_lag_ms": lags_ms(proxied, direct),
        "floor_first_delta_ms": [first_ms(again, direct)],
        "floor_delta_lag_ms": lags_ms(again, direct),
    }


DEPLOY_CONF = Path(__file__).resolve().parent.parent / "deploy" / "nginx.conf"


async def run_once(args: argparse.Namespace, nginx: str) -> dict[str, dict[str, float]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    gateway_args = ["--streamer-url", url, "--public-url", url]
    with (
        nats_server() as broker,
        system(broker.url, runner_args=RUNNER_ARGS, gateway_args=gateway_args) as sut,
        nginx_proxy(
            nginx,
            DEPLOY_CONF,
            gateway=urlsplit(sut.gateway_url).netloc,
            streamer=urlsplit(sut.streamer_url).netloc,
            port=port,
        ),
    ):
        samples: dict[str, list[float]] = {}
        for start in range(0, args.streams, args.concurrency):
            batch = range(start, min(start + args.concurrency, args.streams))
            for result in await asyncio.gather(*(one_stream(url, sut.streamer_url, i) for i in batch)):
                for name, values in result.items():
                    samples.setdefault(name, []).extend(values)
    return {name: summary(values) for name, values in samples.items()}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=200, help="streams per run, each read three times")
    parser.add_argument("--concurrency", type=int, default=20, help="streams at once")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    nginx = shutil.which("nginx") or shutil.which("/usr/sbin/nginx")
    if nginx is None:
        raise SystemExit("nginx is not installed (apt-get install nginx-light)")
    runs = [await run_once(args, nginx) for _ in range(args.runs)]
    medians = {k: median_of_runs([r[k] for r in runs]) for k in runs[0]}
    print(
        table(
            f"through nginx minus direct, {args.streams} streams ({args.concurrency} at once) "
            f"of {TOKENS} tokens, median of {args.runs} runs' percentiles",
            [
                ("first delta: nginx - direct", medians["first_delta_ms"]),
                ("first delta: direct - direct (floor)", medians["floor_first_delta_ms"]),
                ("every delta: nginx - direct", medians["delta_lag_ms"]),
                ("every delta: direct - direct (floor)", medians["floor_delta_lag_ms"]),
            ],
        )
    )
    print(f"wrote {write_json('proxy', {'args': vars(args), 'tokens': TOKENS, 'runs': runs, 'medians': medians})}")


if __name__ == "__main__":
    asyncio.run(main())
