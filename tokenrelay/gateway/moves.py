"""Sans-I/O: where a lost runner's stream stands, read from its history, and how it goes on elsewhere.

A gateway that declared a runner lost reads each of its unfinished streams' events from JetStream and asks
:func:`plan_move` what to do: the stream already ended (its terminal event is stored: the runner finished it just
before it went silent), it cannot go on (its history has a gap: continuing would skip or repeat tokens), or it
continues on another runner at the cut-off the plan names (:class:`Continue`).  The cut-off is one past the last
event of the generation being replaced: whatever that owner publishes from there on, should it wake up, is void
(``wire/fencing.py``).

Which runner may take a stream is a question of what its engine can continue (:func:`can_continue`): any engine
that continues text takes a text-only stream; one whose content so far has reasoning or a tool call needs an engine
that continues typed content (a deterministic one), because a chat template cannot reopen a half-streamed block.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenrelay.wire.fencing import Fences
from tokenrelay.wire.messages import (
    Continuation,
    Continues,
    ReasoningDelta,
    ReceivedEvent,
    StreamDelta,
    StreamEnd,
    StreamError,
    StreamFence,
    StreamStart,
    ToolCallDelta,
)


@dataclass(frozen=True, slots=True)
class Ended:
    """The stream's terminal event is in its history: nothing to move; its record is finished from this event."""

    terminal: StreamEnd | StreamError


@dataclass(frozen=True, slots=True)
class Broken:
    """The history cannot be continued from (``reason`` says why): the stream ends ``runner_lost``."""

    reason: str


@dataclass(frozen=True, slots=True)
class Continue:
    """Continue the stream on another runner with this :class:`~tokenrelay.wire.messages.Continuation`."""

    continuation: Continuation


Plan = Ended | Broken | Continue


def plan_move(events: list[ReceivedEvent], *, generation: int) -> Plan:
    """What becomes of a stream whose owner of ``generation`` was lost, from every stored event of the stream.

    Events a newer generation cut off are left out (a stream may have moved before); the rest must be ``seq`` 0, 1,
    2, ... without a gap, from the ``start`` on.
    """
    fences = Fences.of(events)
    kept: dict[int, ReceivedEvent] = {}
    for event in events:
        if isinstance(event, StreamFence):
            continue
        if isinstance(event, StreamError) and event.seq < 0:
            return Ended(event)  # a gateway already ended it
        gen = 0 if isinstance(event, StreamStart) else event.gen
        if gen > generation or fences.void(gen, event.seq):
            continue
        kept.setdefault(event.seq, event)
    if 0 not in kept:
        return Broken("the stream's start is not in its history")
    last = max(kept)
    if len(kept) != last + 1:
        return Broken(f"the stream's history has a gap: {last + 1 - len(kept)} of its first {last + 1} events")
    terminal = kept[last]
    if isinstance(terminal, StreamEnd | StreamError):
        return Ended(terminal)
    tokens, text, typed = 0, [], False
    for seq in range(last + 1):
        event = kept[seq]
        if isinstance(event, StreamDelta):
            text.append(event.text)
            tokens = event.index
        elif isinstance(event, ReasoningDelta | ToolCallDelta):
            typed = True
            tokens = event.index
    continuation = Continuation(gen=generation + 1, seq=last + 1, tokens=tokens, text="".join(text), typed=typed)
    return Continue(continuation)


def can_continue(continues: Continues, continuation: Continuation) -> bool:
    """Whether an engine that continues ``continues`` can take ``continuation``."""
    if continues is Continues.ANY:
        return True
    return continues is Continues.TEXT and not continuation.typed
