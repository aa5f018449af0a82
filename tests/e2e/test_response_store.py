"""Spec of the stored responses' record count on a real nats-server: every record stored before the count is
counted, deleted ones are not, and one tenant's prefix never counts another's."""

from __future__ import annotations

import nats as nats_client

from tokenrelay.runtime.config import StorageKind
from tokenrelay.runtime.responses import ensure_response_store
from tokenrelay.testing.procs import NatsServer

ROUNDS = 30
"""Counts taken right after a put: the race this guards against needs the count to come before the watch's
messages are processed, which a put just before makes likely."""


async def test_a_count_taken_right_after_each_put_counts_every_record_and_leaves_out_deleted_ones(
    nats: NatsServer,
) -> None:
    nc = await nats_client.connect(nats.url)
    try:
        store = await ensure_response_store(nc.jetstream(), ttl_s=60.0, storage=StorageKind.MEMORY)
        await store.put_record("other.bg.r0", b"{}")
        for n in range(1, ROUNDS + 1):
            await store.put_record(f"tenant.bg.r{n}", b"{}")
            assert await store.count("tenant.bg.") == n
        await store.delete_record("tenant.bg.r1")
        assert await store.count("tenant.bg.") == ROUNDS - 1
        assert await store.count("other.bg.") == 1
        assert await store.count("nobody.bg.") == 0
    finally:
        await nc.close()
