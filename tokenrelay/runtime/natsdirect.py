"""A nats-py client that hands chosen subscriptions' messages to a plain function, straight from its read loop.

For every message nats-py builds a ``Msg``, awaits a header-parsing coroutine (also when there are no headers),
puts the message in the subscription's queue, and the subscription's own task takes it out again and awaits
the callback.  For a streamer's live events that was about half of its CPU per token (py-spy, 1,000 streams x
20 tokens/s).  :meth:`DirectClient.subscribe_direct` skips all of it: as the read loop parses a message of such
a subscription, it calls ``handler(subject, data)`` and goes on parsing.

What that asks of a handler: it runs inside the read loop, so it must return quickly and never block; what it
raises is logged and dropped (the connection goes on).  Headers are not passed.  There is no queue, so there is no
pending limit either: a handler slower than the messages leaves them in the socket, and the server's own limits
for a slow consumer apply.

This overrides a private method of nats-py (``Client._process_msg``, the same since nats-py 2.0).  Should a
release change it, :data:`SUPPORTED` is false at import: connect with :data:`LIVE_CLIENT` (nats-py's own client
then) and :func:`subscribe_raw` takes the ordinary path.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeGuard

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

log = logging.getLogger(__name__)

RawHandler = Callable[[str, bytes], None]
"""``handler(subject, data)`` for one message."""

_EXPECTED_PARAMETERS = ["self", "sid", "subject", "reply", "data", "headers"]
SUPPORTED = list(inspect.signature(NATS._process_msg).parameters) == _EXPECTED_PARAMETERS
"""Whether this nats-py parses messages through the method :class:`DirectClient` overrides."""


class DirectClient(NATS):
    """A nats-py ``Client`` with :meth:`subscribe_direct`; everything else is nats-py's."""

    def __init__(self) -> None:
        super().__init__()
        self._direct: dict[int, RawHandler] = {}

    async def subscribe_direct(self, subject: str, handler: RawHandler) -> Subscription:
        """Subscribe to ``subject`` and call ``handler(subject, data)`` from the read loop for each message.

        Unsubscribe with the returned subscription as usual.
        """
        sub = await self.subscribe(subject)  # no callback: nats-py queues what it gets until the handler is set
        sid: int = sub._id
        self._direct[sid] = handler
        while not sub._pending_queue.empty():  # what arrived before the line above, in order
            msg = sub._pending_queue.get_nowait()
            _call(handler, msg.subject, msg.data)
        return sub

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        handler = self._direct.get(sid)
        if handler is None:
            await super()._process_msg(sid, subject, reply, data, headers)
            return
        if sid not in self._subs:  # unsubscribed: forget it (a message may still be on its way)
            del self._direct[sid]
            return
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        _call(handler, subject.decode(), data)


LIVE_CLIENT: type[NATS] = DirectClient if SUPPORTED else NATS
"""The client class to connect with where :func:`subscribe_raw` is used: the override only where it fits."""


def delivers_inline(nc: NATS) -> TypeGuard[DirectClient]:
    """Whether :func:`subscribe_raw` on ``nc`` hands every message over from the read loop, in order.

    Then only an outage loses messages; an ordinary subscription also drops what exceeds its pending limits.
    """
    return SUPPORTED and isinstance(nc, DirectClient)


def _call(handler: RawHandler, subject: str, data: bytes) -> None:
    try:
        handler(subject, data)
    except Exception:
        log.exception("a direct subscription's handler failed on a message of %s (dropped)", subject)


async def subscribe_raw(nc: NATS, subject: str, handler: RawHandler, **options: Any) -> Subscription:
    """Deliver ``subject``'s messages to ``handler(subject, data)``: straight from the read loop when ``nc`` is a
    :class:`DirectClient` (and nats-py is one it supports), else through an ordinary subscription with
    ``options`` (e.g. its pending limits)."""
    if delivers_inline(nc):
        return await nc.subscribe_direct(subject, handler)

    async def callback(msg: Msg) -> None:
        _call(handler, msg.subject, msg.data)

    return await nc.subscribe(subject, cb=callback, **options)
