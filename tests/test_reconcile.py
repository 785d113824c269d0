"""The global due index is repaired by reconcile() when its write after a join was lost."""

from __future__ import annotations

import redis.asyncio as aioredis

from presence_server.store import PresenceStore
from presence_server.store.keys import keysets_due
from tests.helpers.app import START


async def test_reconcile_restores_a_lost_global_entry(
    store: PresenceStore, redis_client: aioredis.Redis, prefix: str
) -> None:
    await store.heartbeat("demo", "u1", ["ch"], now=START, timeout=30)
    # The write that follows the heartbeat script is lost (say Redis went away just then).
    await redis_client.zrem(keysets_due(prefix), "demo")
    assert await store.sweep(now=START + 31) == 0  # the sweeper cannot see the keyset

    await store.reconcile()
    assert await store.sweep(now=START + 31) == 1
    assert [e.action for e in await store.read_log("demo", "ch")] == ["join", "timeout"]
