"""In-memory stand-ins for the broker pieces a runner's node uses: a key-value bucket with revisions, a connection
that records what is published and subscribed, and a request message that records its answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from tokenrelay.wire import codec
from tokenrelay.wire.messages import StreamRecord


class FakeKV:
    """A bucket's latest values and revisions, with nats-py's compare-and-set errors; ``interfere`` writes before
    each compare-and-set (a concurrent writer)."""

    def __init__(self) -> None:
        self.values: dict[str, tuple[bytes, int]] = {}
        self.revision = 0
        self.interfere: Callable[[], None] | None = None

    def record(self, key: str) -> StreamRecord:
        return codec.decode_as(self.values[key][0], StreamRecord)

    def store(self, key: str, data: bytes) -> int:
        self.revision += 1
        self.values[key] = (data, self.revision)
        return self.revision

    async def get(self, key: str) -> KeyValue.Entry:
        if key not in self.values:
            raise KeyNotFoundError
        data, revision = self.values[key]
        return KeyValue.Entry("b", key, data, revision, None, None, None)

    async def create(self, key: str, value: bytes) -> int:
        return await self.update(key, value, last=0)

    async def update(self, key: str, value: bytes, last: int | None = None) -> int:
        if self.interfere is not None:
            self.interfere()
        current = self.values[key][1] if key in self.values else 0
        if last != current:
            raise KeyWrongLastSequenceError
        return self.store(key, value)


@dataclass
class FakeSubscription:
    subject: str

    async def unsubscribe(self) -> None:
        """Nothing to drop."""


Callback = Callable[["FakeMsg"], Awaitable[None]]


@dataclass
class FakeNats:
    """Records publishes and subscriptions (by subject: the last callback)."""

    published: list[tuple[str, bytes]] = field(default_factory=list)
    subscriptions: dict[str, Callback] = field(default_factory=dict)

    def jetstream(self) -> object:
        return object()

    async def subscribe(self, subject: str, *, queue: str = "", cb: Callback) -> FakeSubscription:
        self.subscriptions[subject] = cb
        return FakeSubscription(subject)

    async def publish(self, subject: str, data: bytes) -> None:
        self.published.append((subject, data))

    async def flush(self) -> None:
        """Nothing is buffered."""


@dataclass
class FakeMsg:
    """A request: ``answers`` collects what was responded."""

    data: bytes
    subject: str = ""
    reply: str = "_INBOX.1"
    answers: list[bytes] = field(default_factory=list)

    async def respond(self, data: bytes) -> None:
        self.answers.append(data)
