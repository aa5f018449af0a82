"""Sans-I/O: which runners an offer is addressed to, when it must not go through the model's queue group.

A job is offered on the model's subject, where NATS hands it to one member of the runners' queue group, at random.
A member that is paused (a stopped process, a debugger, a machine swapping) or cut off behind a connection the
server still holds open keeps its share of the offers, and answers none: in a measured run of a move off a paused
runner, three of four offers through the group went to it.  The server drops such a member only after minutes of
unanswered pings.  So an offer that must reach a runner that answers is addressed to one
(``tokenrelay.runner.<id>.jobs``), chosen from the heartbeats: a moved stream's continuation always (its lost
runner may be exactly such a member), and a new stream whose offer through the group went unanswered.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from tokenrelay.gateway.moves import can_continue
from tokenrelay.wire.messages import Continuation, RunnerHeartbeat

DIRECT_OFFER_PROTOCOL = 4
"""The first protocol version whose runners take jobs addressed to them (``tokenrelay.runner.<id>.jobs``)."""

QUEUE_GROUP = None
"""In :func:`offer_order`: the model's queue group, for runners that predate :data:`DIRECT_OFFER_PROTOCOL`."""


def offer_order(
    runners: Iterable[RunnerHeartbeat],
    *,
    model: str,
    live: Collection[str],
    continuation: Continuation | None = None,
    leave_out: str | None = None,
) -> list[str | None]:
    """Where to offer a job of ``model``, in turn: the ids of the runners (other than ``leave_out``) that serve the
    model and can take it (its ``continuation``, if any), the ``live`` ones first (heard from within the stale
    period), each group least busy first (by share of capacity); then :data:`QUEUE_GROUP` once if any of them
    predates addressed offers."""
    takers = [
        beat
        for beat in runners
        if beat.runner_id != leave_out
        and model in beat.served_models()
        and (continuation is None or can_continue(beat.continues, continuation))
    ]
    addressed = sorted(
        (beat for beat in takers if beat.v >= DIRECT_OFFER_PROTOCOL),
        key=lambda beat: (beat.runner_id not in live, beat.active / max(beat.capacity, 1), beat.runner_id),
    )
    order: list[str | None] = [beat.runner_id for beat in addressed]
    if len(addressed) < len(takers):
        order.append(QUEUE_GROUP)
    return order
