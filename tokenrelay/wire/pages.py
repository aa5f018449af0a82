"""Sans-I/O: how a runner lists its streams over several heartbeats, so a heartbeat stays small at any stream count.

A runner with 10,000 streams listed all their ids in every heartbeat: ~350 KB a second to every gateway, and past
~29,000 streams more than NATS's 1 MiB ``max_payload``, so the heartbeat (and the answer to a ping) could not be sent
at all and the runner would be declared lost.  Now a heartbeat lists at most about :data:`MAX_STREAMS_PER_HEARTBEAT`
ids: the streams are split into ``pages`` by a hash of their id (a stream is always on the same page while the page
count stays), and successive heartbeats list the pages in turn.  A gateway keeps each page as last heard
(``gateway/liveness.py``), so it knows every stream of a runner within one cycle of heartbeats.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable

MAX_STREAMS_PER_HEARTBEAT = 1000
"""Stream ids one heartbeat lists, on average over its pages (~36 KB); a page may hold a few more (hashing)."""


def pages_for(streams: int, *, per_page: int = MAX_STREAMS_PER_HEARTBEAT) -> int:
    """How many pages ``streams`` ids are listed over (at least 1)."""
    return max(1, math.ceil(streams / per_page))


def page_of(stream_id: str, pages: int) -> int:
    """The page ``stream_id`` is listed on when there are ``pages`` (the same on every runner and gateway)."""
    return zlib.crc32(stream_id.encode()) % pages if pages > 1 else 0


def listed_on(stream_ids: Iterable[str], page: int, pages: int) -> tuple[str, ...]:
    """The ids among ``stream_ids`` that page ``page`` of ``pages`` lists."""
    if pages <= 1:
        return tuple(stream_ids)
    return tuple(stream_id for stream_id in stream_ids if page_of(stream_id, pages) == page)
