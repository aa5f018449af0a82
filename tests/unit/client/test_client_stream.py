"""A :class:`Stream` knows its client only as a :class:`StreamOwner`: any owner will do, no socket needed."""

from __future__ import annotations

from typing import Literal

import aiohttp

from tokenrelay.client import Stopped, Stream
from tokenrelay.client.owner import StreamOwner


class RecordingOwner:
    """An owner that records the commands its streams forward (and has no HTTP pool to give)."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, ...]] = []

    async def stop(self, stream_id: str) -> Stopped:
        self.commands.append(("stop", stream_id))
        return Stopped(stream_id, tokens=3, finish_reason="cancelled", halted_ts=None)

    async def feedback(self, stream_id: str, rating: Literal["up", "down"], comment: str | None = None) -> None:
        self.commands.append(("feedback", stream_id, rating, comment or ""))

    async def http_session(self) -> aiohttp.ClientSession:
        raise AssertionError("a stream that is not read opens no connection")


async def test_a_stream_forwards_its_stop_and_its_feedback_to_the_owner_it_was_made_by() -> None:
    owner: StreamOwner = RecordingOwner()
    stream = Stream(owner, "s1", "http://127.0.0.1:1/v1/streams/s1/events")
    assert await stream.stop() == Stopped("s1", tokens=3, finish_reason="cancelled", halted_ts=None)
    await stream.feedback("down", "too long")
    assert isinstance(owner, RecordingOwner)
    assert owner.commands == [("stop", "s1"), ("feedback", "s1", "down", "too long")]
