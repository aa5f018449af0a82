"""Spec of the streamer hub's live subscriptions, in both modes, against a real nats-server.

What the server holds is read from its monitoring endpoint (``/connz?subs=1``) while nothing else
runs on the event loop, so "subscribed once ``attach`` returns" is checked as the server sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.request
from collections.abc import AsyncIterator, Callable

import nats
import orjson
import pytest
from nats.aio.client import Client as NATS

from tokenrelay.cli import main as cli
from tokenrelay.runtime.config import LiveSubscription
from tokenrelay.runtime.natsdirect import DirectClient
from tokenrelay.streamer.flush import FlushClock
from tokenrelay.streamer.hub import Hub
from tokenrelay.streamer.metrics import StreamerMetrics
from tokenrelay.streamer.reader import Reader
from tokenrelay.testing.procs import NatsServer
from tokenrelay.wire import codec, subjects
from tokenrelay.wire.messages import StreamDelta, StreamStart

MODES = list(LiveSubscription)
EPOCH = "e1"
WAIT_S = 10.0


def stream_ids(count: int) -> list[str]:
    return [subjects.new_stream_id() for _ in range(count)]


def start_event(stream_id: str) -> bytes:
    return codec.encode(StreamStart(stream_id=stream_id, epoch=EPOCH, model="m", created=0, runner_id="r", ts=0.0))


def new_reader(stream_id: str) -> Reader:
    return Reader(stream_id, epoch=EPOCH, resume=None, max_buffered_bytes=1 << 20, now=0.0)


def server_subjects(server: NatsServer, connection_name: str) -> list[str]:
    """The event subjects one named client connection is subscribed to, as the server has them now.

    (The hub's connection also carries the abandoned-stream watcher's ``tokenrelay.readers.*``.)
    """
    with urllib.request.urlopen(f"{server.monitor_url}/connz?subs=1&limit=100000", timeout=WAIT_S) as response:
        connz = orjson.loads(response.read())
    for connection in connz["connections"]:
        if connection.get("name") == connection_name:
            held = connection.get("subscriptions_list", [])
            return sorted(subject for subject in held if routes(subjects.EVENTS_WILDCARD, subject))
    raise AssertionError(f"no connection named {connection_name!r} on the server")


def connz_of(server: NatsServer, connection_name: str) -> list[dict[str, object]]:
    """Everything the server reports of the connections with this name (for a failure message)."""
    with urllib.request.urlopen(f"{server.monitor_url}/connz?subs=1&limit=100000", timeout=WAIT_S) as response:
        connz = orjson.loads(response.read())
    return [connection for connection in connz["connections"] if connection.get("name") == connection_name]


def routes(subscription: str, subject: str) -> bool:
    """Whether a NATS subscription subject (``*`` and ``>`` wildcards) matches a published subject."""
    pattern, tokens = subscription.split("."), subject.split(".")
    for i, part in enumerate(pattern):
        if part == ">":
            return len(tokens) > i
        if i >= len(tokens) or (part != "*" and part != tokens[i]):
            return False
    return len(pattern) == len(tokens)


async def until(condition: Callable[[], bool], what: str, *, poll_s: float = 0.01) -> None:
    for _ in range(int(WAIT_S / poll_s)):
        if condition():
            return
        await asyncio.sleep(poll_s)
    assert condition(), what


CLIENTS: dict[str, type[NATS]] = {"nats-py": NATS, "direct": DirectClient}
"""The live connection's client: nats-py's own, or the streamer's (messages straight from the read loop)."""


@contextlib.asynccontextmanager
async def running_hub(
    server: NatsServer, mode: LiveSubscription, name: str, client: str = "direct", flush: FlushClock | None = None
) -> AsyncIterator[tuple[Hub, NATS]]:
    """A started hub on a live connection named ``name``, and a second connection to publish from."""
    live = CLIENTS[client]()
    await live.connect(server.url, name=name)
    publisher = await nats.connect(server.url, name=f"{name}-publisher")
    hub = Hub(live, heartbeat_s=15.0, metrics=StreamerMetrics(), live_subscription=mode, flush=flush)
    await hub.start()
    try:
        yield hub, publisher
    finally:
        await hub.shutdown("shutting_down", "test over")
        await publisher.close()
        await live.close()


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("mode", MODES)
async def test_once_attach_returns_the_server_already_routes_the_streams_events_to_the_hub(
    nats: NatsServer, mode: LiveSubscription, client: str
) -> None:
    name = f"hub-routes-{mode}-{client}"
    async with running_hub(nats, mode, name, client) as (hub, _):
        (stream_id,) = stream_ids(1)
        await hub.attach(new_reader(stream_id))
        # Blocking on purpose: the event loop does not run, so the client sends nothing more before the check.
        # (With a single flush instead of natsio.barrier this failed once in a full run: see barrier.)
        held = server_subjects(nats, name)
        assert any(routes(subject, subjects.events(stream_id)) for subject in held), connz_of(nats, name)


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("mode", MODES)
async def test_an_event_published_from_another_connection_right_after_attach_reaches_the_reader(
    nats: NatsServer, mode: LiveSubscription, client: str
) -> None:
    async with running_hub(nats, mode, f"hub-delivers-{mode}-{client}", client) as (hub, publisher):
        (stream_id,) = stream_ids(1)
        reader = new_reader(stream_id)
        await hub.attach(reader)
        await publisher.publish(subjects.events(stream_id), start_event(stream_id))
        await until(lambda: reader.live_events == 1, "the event reached the reader")
        assert b"event: start" in reader.buffer.take()


async def test_shared_mode_holds_one_wildcard_subscription_whatever_the_number_of_streams(nats: NatsServer) -> None:
    name = "hub-shared-count"
    async with running_hub(nats, LiveSubscription.SHARED, name) as (hub, _):
        assert server_subjects(nats, name) == [subjects.EVENTS_WILDCARD]
        readers = [new_reader(stream_id) for stream_id in stream_ids(3)]
        for reader in readers:
            await hub.attach(reader)
        assert server_subjects(nats, name) == [subjects.EVENTS_WILDCARD]
        for reader in readers:
            hub.detach(reader)
        await asyncio.sleep(0.05)  # an unsubscribe would have been spawned by now
        assert server_subjects(nats, name) == [subjects.EVENTS_WILDCARD]


async def test_per_stream_mode_subscribes_each_stream_read_here_and_unsubscribes_after_its_last_reader(
    nats: NatsServer,
) -> None:
    name = "hub-per-stream-count"
    async with running_hub(nats, LiveSubscription.PER_STREAM, name) as (hub, _):
        assert server_subjects(nats, name) == []
        ids = stream_ids(3)
        readers = [new_reader(stream_id) for stream_id in ids]
        for reader in readers:
            await hub.attach(reader)
        second = new_reader(ids[0])
        await hub.attach(second)  # a second reader of a stream shares its subscription
        assert server_subjects(nats, name) == sorted(subjects.events(stream_id) for stream_id in ids)
        for reader in readers:
            hub.detach(reader)
        await until(lambda: server_subjects(nats, name) == [subjects.events(ids[0])], "two streams unsubscribed")
        hub.detach(second)
        await until(lambda: server_subjects(nats, name) == [], "the last stream unsubscribed")


async def test_shared_mode_drops_events_of_streams_nobody_reads_here_and_delivers_the_others(
    nats: NatsServer,
) -> None:
    async with running_hub(nats, LiveSubscription.SHARED, "hub-shared-drop") as (hub, publisher):
        read, unread = stream_ids(2)
        reader = new_reader(read)
        await hub.attach(reader)
        await publisher.publish(subjects.events(unread), start_event(unread))
        await publisher.publish(subjects.events(read), start_event(read))
        await until(lambda: reader.live_events == 1, "the read stream's event arrived")
        assert not hub.has_readers(unread)
        assert reader.live_events == 1


async def test_live_deltas_that_arrive_late_lengthen_the_flush_interval_and_timely_ones_do_not(
    nats: NatsServer,
) -> None:
    flush = FlushClock(0.010, max_interval_s=0.100)
    async with running_hub(nats, LiveSubscription.SHARED, "hub-flush-lag", flush=flush) as (hub, publisher):
        (stream_id,) = stream_ids(1)
        reader = new_reader(stream_id)
        await hub.attach(reader)
        await publisher.publish(subjects.events(stream_id), start_event(stream_id))
        for seq in range(1, 201):
            # Published "a second ago" by the runner's clock: the streamer is a second behind.
            late = StreamDelta(seq=seq, text="x", index=seq, count=1, ts=time.time() - 1.0)
            await publisher.publish(subjects.events(stream_id), codec.encode(late))
        await until(lambda: reader.live_events == 201, "every delta arrived")
        assert flush.interval_s == 0.100
        for seq in range(201, 1201):
            # Stamped a little ahead, so they are on time however slowly a loaded machine passes them on.
            timely = StreamDelta(seq=seq, text="x", index=seq, count=1, ts=time.time() + 60)
            await publisher.publish(subjects.events(stream_id), codec.encode(timely))
        await until(lambda: reader.live_events == 1201, "every delta arrived")
        assert flush.interval_s == 0.010


@pytest.mark.parametrize(("argv", "max_s"), [([], 0.100), (["--max-flush-interval-ms", "10"], 0.010)])
def test_the_flush_interval_grows_up_to_100_ms_by_default_and_a_maximum_equal_to_it_fixes_it(
    argv: list[str], max_s: float
) -> None:
    config = cli.streamer_config(cli.build_parser().parse_args(["streamer", *argv]))
    flush = FlushClock(config.flush_interval_ms / 1000, max_interval_s=config.max_flush_interval_ms / 1000)
    assert (flush.interval_s, flush.max_interval_s) == (0.010, max_s)


@pytest.mark.parametrize(("argv", "mode"), [([], "shared"), (["--live-subscription", "per-stream"], "per-stream")])
def test_the_live_subscription_option_chooses_the_mode_and_is_shared_by_default(argv: list[str], mode: str) -> None:
    args = cli.build_parser().parse_args(["streamer", *argv])
    assert cli.streamer_config(args).live_subscription == LiveSubscription(mode)


def test_the_live_subscription_option_rejects_an_unknown_mode() -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["streamer", "--live-subscription", "broadcast"])
