"""/health and /ready on a Redis Cluster and behind Sentinel (store/topology.py) tell what is lost: a
cluster master (503, naming the configured keysets it held, while the other masters' keysets are
served), a failed cluster node or a lost sentinel (200 "degraded"), or the master the sentinels name
(503). Each test breaks a topology of its own."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import orjson
from redis.crc import key_slot

from presence_server.app import create_app
from presence_server.config import Settings
from presence_server.store import PresenceStore, open_redis
from presence_server.store.keys import KeysetKeys
from tests.helpers.app import AiohttpClient, AiohttpServer, serve
from tests.helpers.topologies import redis_cluster, redis_sentinel
from tests.helpers.wait import wait_until

PREFIX = "pn"
KEYSETS = [f"ks{i}" for i in range(12)]


def slot(sub_key: str) -> int:
    return key_slot(KeysetKeys(PREFIX, sub_key).timetoken.encode())


@contextlib.asynccontextmanager
async def opened(url: str) -> AsyncIterator[PresenceStore]:
    client = open_redis(url)
    try:
        yield PresenceStore(client, prefix=PREFIX)
    finally:
        await client.aclose()


async def test_a_lost_cluster_master_is_named_with_its_keysets_then_reported_failed_once_replaced(
    aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient
) -> None:
    # A node timeout of 3 s leaves the master lost, not yet replaced, for as long as the first check takes.
    with redis_cluster(node_timeout_ms=3000) as cluster:
        async with opened(cluster.url) as store:
            assert await store.health(KEYSETS) == (None, [])
            victim = cluster.master_of_slot(slot(KEYSETS[0]))
            held = sorted(k for k in KEYSETS if cluster.master_of_slot(slot(k)) == victim)
            settings = Settings(key_prefix=PREFIX, keysets=",".join(f"pk:{k}" for k in KEYSETS))
            client = await serve(aiohttp_server, aiohttp_client, create_app(settings, redis=store.redis, sweeper=False))
            cluster.kill(victim)
            response = await client.get("/health")
            assert response.status == 503
            body = orjson.loads(await response.read())
            assert body["status"] == "unavailable" and f"cluster master 127.0.0.1:{victim}" in body["reason"]
            fatal, _ = await store.health(KEYSETS)
            assert fatal is not None
            assert f"cluster master 127.0.0.1:{victim} unreachable" in fatal
            assert f"keysets {', '.join(held)}" in fatal and "keysets on the other masters are served" in fatal
            # Its replica takes over: everything is served again, and the lost node is reported.
            cluster.wait_healthy()
            await wait_until(lambda: _fatal_gone(store), 10, what="the replica serving the slots")
            assert await store.health(KEYSETS) == (None, [degraded_reason(victim)])
            response = await client.get("/ready")
            assert response.status == 200
            assert orjson.loads(await response.read()) == {"status": "degraded", "reason": degraded_reason(victim)}
            await client.close()
            cluster.restart(victim)  # back, as a replica
            await wait_until(lambda: _all_well(store), 10, what="nothing reported once it rejoined")


def degraded_reason(port: int) -> str:
    return f"cluster master 127.0.0.1:{port} is failed (the cluster no longer counts on it)"


async def _fatal_gone(store: PresenceStore) -> bool:
    return (await store.health(KEYSETS))[0] is None


async def _all_well(store: PresenceStore) -> bool:
    return await store.health(KEYSETS) == (None, [])


async def test_a_lost_sentinel_is_reported_and_a_lost_master_is_a_503_until_replaced() -> None:
    with redis_sentinel(down_after_ms=3000) as sentinels:
        async with opened(sentinels.url) as store:
            assert await store.health() == (None, [])
            lost = sentinels.sentinel_ports[-1]
            sentinels.kill(lost)
            fatal, degraded = await store.health()
            assert fatal is None and len(degraded) == 1
            assert degraded[0].startswith(f"sentinel 127.0.0.1:{lost} unreachable (2 of 3 answer)")
            old = sentinels.kill_master()
            fatal, _ = await store.health()
            assert fatal is not None and "the master 'presence' named by the sentinels is unreachable" in fatal
            sentinels.wait_failed_over(old)
            await wait_until(lambda: _fatal_gone_any(store), 10, what="the new master answering")


async def _fatal_gone_any(store: PresenceStore) -> bool:
    return (await store.health())[0] is None
