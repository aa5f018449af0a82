"""CPU per event of the streamer's in-process token path, piece by piece (no sockets, no NATS).

For each live delta the streamer decodes the NATS message, frames it once, hands it to each
reader (replay order, buffer, merge), takes the reader's pending bytes for the write, and
updates its metrics.  This times each step over many events, and the same steps done the way
the code did them before (the generic codec, the general SSE encoder, prometheus_client's
locked counters) in the same run, so the ratio is what the change bought.

    python -m bench.hot_path --events 50000 --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable
from typing import TypeVar

import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram

from bench.stats import write_json
from tokenrelay.streamer.frames import frame
from tokenrelay.streamer.metrics import LAG_BUCKETS_S, StreamerMetrics
from tokenrelay.streamer.reader import Reader
from tokenrelay.streamer.sse import encode_event
from tokenrelay.wire import codec
from tokenrelay.wire.messages import StreamDelta, StreamEvent, StreamStart

EPOCH = "0a1b2c3d"
T = TypeVar("T")


def _timed(events: int, step: Callable[[], None]) -> float:
    """Microseconds per event of ``step`` (which handles all ``events``, keeping no results)."""
    started = time.perf_counter()
    step()
    return (time.perf_counter() - started) / events * 1e6


def _each(step: Callable[[T], object], items: list[T]) -> Callable[[], None]:
    def run() -> None:
        for item in items:
            step(item)

    return run


def _generic_decode(data: bytes) -> StreamEvent:
    message = codec._message(codec._loads(data))  # the schema walk every message took before
    assert isinstance(message, StreamDelta)
    return message


def _general_frame(event: StreamDelta) -> bytes:
    data = orjson.dumps({"text": event.text, "index": event.index, "ts": event.ts}).decode()
    return encode_event(data, event="delta", id=f"{EPOCH}:{event.index}")


def one_run(events: int) -> dict[str, float]:
    """Microseconds per event of each step, now and before."""
    messages = [
        codec.encode(StreamDelta(seq=i + 1, text=" word", index=i + 1, count=1, ts=time.time())) for i in range(events)
    ]
    decoded = [codec.decode_event(m) for m in messages]
    deltas = [d for d in decoded if isinstance(d, StreamDelta)]
    frames = [frame(d, EPOCH) for d in deltas]
    out: dict[str, float] = {
        "decode": _timed(events, _each(codec.decode_event, messages)),
        "decode_generic": _timed(events, _each(_generic_decode, messages)),
        "frame": _timed(events, _each(lambda d: frame(d, EPOCH), deltas)),
        "frame_general": _timed(events, _each(_general_frame, deltas)),
    }
    out["deliver_take"] = asyncio.run(_deliver(deltas, frames))
    hot = StreamerMetrics()
    out["metrics"] = _timed(events, lambda: _metrics(events, hot.writes.inc, hot.tokens_delivered.inc,
                                                      hot.bytes_sent.inc, hot.token_lag_seconds.observe))  # fmt: skip
    registry = CollectorRegistry()
    locked = (
        Counter("w", "w", registry=registry).inc,
        Counter("t", "t", registry=registry).inc,
        Counter("b", "b", registry=registry).inc,
        Histogram("l", "l", buckets=LAG_BUCKETS_S, registry=registry).observe,
    )
    out["metrics_locked"] = _timed(events, lambda: _metrics(events, *locked))
    return out


def _metrics(events: int, *updates: Callable[[float], None]) -> None:
    writes, tokens, sent, lag = updates
    for _ in range(events):
        writes(1)
        tokens(1)
        sent(120)
        lag(0.003)


async def _deliver(deltas: list[StreamDelta], frames: list[bytes]) -> float:
    reader = Reader("s", epoch=EPOCH, resume=None, max_buffered_bytes=1 << 20, now=0.0)
    start = StreamStart(stream_id="s", epoch=EPOCH, model="m", created=0, runner_id="r", ts=0.0)
    reader.deliver(start, 0.0, frame(start, EPOCH))
    reader.buffer.take()
    started = time.perf_counter()
    for delta, framed in zip(deltas, frames, strict=True):
        reader.deliver(delta, 1.0, framed)
        reader.buffer.take()
        reader.wake.clear()
    return (time.perf_counter() - started) / len(deltas) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000, help="deltas per step and run (default: 50000)")
    parser.add_argument("--runs", type=int, default=5, help="runs; the table shows the median (default: 5)")
    args = parser.parse_args()
    runs = [one_run(args.events) for _ in range(args.runs)]
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    print(f"{'step (µs per event, median of runs)':<40} {'now':>8} {'before':>8} {'ratio':>7}")
    for now, before in (("decode", "decode_generic"), ("frame", "frame_general"), ("metrics", "metrics_locked")):
        print(f"{now:<40} {median[now]:>8.2f} {median[before]:>8.2f} {median[before] / median[now]:>6.1f}x")
    print(f"{'deliver + take (replay, buffer)':<40} {median['deliver_take']:>8.2f}")
    path = write_json("hot_path", {"events": args.events, "runs": runs, "median": median})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
