"""Spec of listing a runner's streams over several heartbeats (``wire/pages.py``): each heartbeat stays small at any
stream count, each stream is on one page, and the pages together list every stream."""

from __future__ import annotations

from tokenrelay.wire import codec
from tokenrelay.wire.messages import RunnerHeartbeat
from tokenrelay.wire.pages import MAX_STREAMS_PER_HEARTBEAT, listed_on, page_of, pages_for
from tokenrelay.wire.subjects import new_stream_id

MAX_PAYLOAD_BYTES = 1024 * 1024
"""nats-server's default ``max_payload``."""


def test_up_to_a_page_of_streams_is_listed_in_every_heartbeat() -> None:
    assert pages_for(0) == pages_for(1) == pages_for(MAX_STREAMS_PER_HEARTBEAT) == 1
    assert pages_for(MAX_STREAMS_PER_HEARTBEAT + 1) == 2
    assert listed_on(["a", "b"], 0, 1) == ("a", "b")


def test_every_stream_is_on_exactly_one_page_and_the_pages_list_them_all() -> None:
    ids = [new_stream_id() for _ in range(10_000)]
    pages = pages_for(len(ids))
    listed = [listed_on(ids, page, pages) for page in range(pages)]
    assert sorted(stream_id for page in listed for stream_id in page) == sorted(ids)
    assert all(page_of(stream_id, pages) == page for page, ids_on in enumerate(listed) for stream_id in ids_on)


def test_a_heartbeat_of_a_runner_of_50000_streams_stays_far_below_max_payload() -> None:
    ids = [new_stream_id() for _ in range(50_000)]
    pages = pages_for(len(ids))

    def heartbeat(page: int) -> RunnerHeartbeat:
        return RunnerHeartbeat(
            runner_id="runner-1", engine="synthetic", model="m", active=len(ids), capacity=60_000, ts=0.0,
            streams=listed_on(ids, page, pages), page=page, pages=pages,
        )  # fmt: skip

    largest = max(len(codec.encode(heartbeat(page))) for page in range(pages))
    assert largest < 64 * 1024 < MAX_PAYLOAD_BYTES  # all of them in one heartbeat: ~1.8 MB, past max_payload
