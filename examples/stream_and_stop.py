"""Start a stream, print its text as it arrives, stop it after N characters or on Ctrl-C, then rate it.

tokenrelay up &
python examples/stream_and_stop.py --prompt "Tell me a story" --stop-after-chars 200
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from tokenrelay.client import Client, Stopped


async def main(args: argparse.Namespace) -> None:
    async with Client(args.gateway_url) as client:
        stream = await client.start(prompt=args.prompt, max_tokens=args.max_tokens)
        print(f"[stream {stream.stream_id}]", file=sys.stderr)
        stopping: asyncio.Task[Stopped] | None = None

        def request_stop() -> None:
            nonlocal stopping
            if stopping is None:
                stopping = asyncio.create_task(stream.stop())

        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, request_stop)
        async for delta in stream:  # ends with finish_reason "cancelled" once the stop took effect
            print(delta, end="", flush=True)
            if len(stream.text) >= args.stop_after_chars:
                request_stop()
        print()
        if stopping is not None:
            stopped = await stopping
            print(f"[stopped after {stopped.tokens} tokens]", file=sys.stderr)
        print(f"[{stream.finish_reason}: {stream.tokens} tokens, ttft {stream.ttft_ms} ms]", file=sys.stderr)
        await stream.feedback(args.rating, comment=args.comment)
        print(f"[feedback {args.rating!r} stored]", file=sys.stderr)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateway-url", default="http://127.0.0.1:8080")
    parser.add_argument("--prompt", default="Tell me a story about a lighthouse")
    parser.add_argument("--max-tokens", type=int, default=400)
    parser.add_argument("--stop-after-chars", type=int, default=300, help="stop the generation after this much text")
    parser.add_argument("--rating", choices=["up", "down"], default="up")
    parser.add_argument("--comment", default=None)
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
