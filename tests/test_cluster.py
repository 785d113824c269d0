"""What a Redis Cluster adds, on the session's local cluster (3 masters, 3 replicas): keysets spread over
the masters by their hash tag, one script pipeline per master, redirects followed, wake-ups on the
keyset's master only (sharded pub/sub), and what /health says. The store contract and multi-process
suites run on the cluster too (their ``engines`` marker); failover under load is tests/test_failover.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from presence_server.app import create_app
from presence_server.config import Settings
from presence_server.context import BUS, STORE
from presence_server.store import PresenceStore, open_redis
from presence_server.store.keys import KeysetKeys
from tests.helpers.app import START, AiohttpClient, AiohttpServer, Client, FakeClock, serve, waiting
from tests.helpers.wait import wait_until

KEYSETS = [f"keyset-{i}" for i in range(12)]


@pytest.fixture
async def cluster(cluster_url: str) -> AsyncIterator[RedisCluster]:
    client = open_redis(cluster_url)
    assert isinstance(client, RedisCluster)
    await client.initialize()
    try:
        yield client
    finally:
        await client.aclose()


def slot_of(prefix: str, sub_key: str) -> int:
    return key_slot(KeysetKeys(prefix, sub_key).timetoken.encode())


def master_of(cluster: RedisCluster, prefix: str, sub_key: str) -> str:
    node = cluster.get_node_from_key(KeysetKeys(prefix, sub_key).timetoken)
    assert node is not None
    return str(node.name)


async def test_keysets_spread_over_every_master_and_each_keyset_lives_on_one(
    cluster: RedisCluster, prefix: str
) -> None:
    store = PresenceStore(cluster, prefix=prefix)  # type: ignore[arg-type]
    for sub_key in KEYSETS:
        await store.heartbeat(sub_key, "u1", ["a", "b{x}", "c"], now=START, timeout=60)
        await store.publish(sub_key, "a", '"m"', now=START)
    landed: dict[str, list[str]] = {}
    for sub_key in KEYSETS:
        # Redis's own hash of the key agrees with the tag's: all of a keyset's keys in one slot.
        ks = KeysetKeys(prefix, sub_key)
        slots = {int(await cluster.cluster_keyslot(key)) for key in (ks.timetoken, ks.occupants("b{x}"), ks.wake)}
        assert slots == {slot_of(prefix, sub_key)}
        landed.setdefault(master_of(cluster, prefix, sub_key), []).append(sub_key)
    masters = {node.name for node in cluster.get_primaries()}
    assert set(landed) == masters and len(masters) == 3, landed
    for name, sub_keys in landed.items():
        node = cluster.get_node(node_name=name)
        keys = await cluster.execute_command("KEYS", f"{prefix}:{{*", target_nodes=node)
        tags = {key.split("}")[0] + "}" for key in keys}
        assert tags == {f"{prefix}:{{{sub_key}}}" for sub_key in sub_keys}, (name, tags)
    await store.aclose()


async def test_one_script_pipeline_per_master(cluster: RedisCluster, prefix: str) -> None:
    # One keyset per master, a burst of heartbeats in each in one loop iteration: three batches.
    store = PresenceStore(cluster, prefix=prefix)  # type: ignore[arg-type]
    per_master: dict[str, str] = {}
    for sub_key in KEYSETS:
        per_master.setdefault(master_of(cluster, prefix, sub_key), sub_key)
    assert len(per_master) == 3
    await asyncio.gather(*(store.heartbeat(k, "warm", ["ch"], now=START) for k in per_master.values()))
    joins = await asyncio.gather(
        *(store.heartbeat(k, f"u{i}", ["ch"], now=START) for k in per_master.values() for i in range(5))
    )
    assert joins == [1] * 15
    # Then the same heartbeats again, refreshes: one refresh.lua call per keyset, one batch per master.
    before, calls = store._batch.batches, store._batch.calls
    refreshes = await asyncio.gather(
        *(store.heartbeat(k, f"u{i}", ["ch"], now=START + 1) for k in per_master.values() for i in range(5))
    )
    assert refreshes == [0] * 15
    assert (store._batch.batches - before, store._batch.calls - calls) == (3, 3)
    assert store._batch.fast_batches > 0  # the hiredis path serves cluster nodes too
    await store.aclose()


async def test_a_call_sent_to_the_wrong_master_is_redirected_and_runs_once(cluster: RedisCluster, prefix: str) -> None:
    store = PresenceStore(cluster, prefix=prefix)  # type: ignore[arg-type]
    sub_key = KEYSETS[0]
    await store.heartbeat(sub_key, "u1", ["ch"], now=START)
    slot = slot_of(prefix, sub_key)
    owner = cluster.nodes_manager.slots_cache[slot]
    other = next(node for node in cluster.get_primaries() if node.name != owner[0].name)
    # The client's map is wrong, as after a failover or a slot migration it has not heard of: the
    # batch goes to another master, which answers MOVED; the call runs through the cluster client.
    cluster.nodes_manager.slots_cache[slot] = [other]
    assert await store.heartbeat(sub_key, "u2", ["ch"], now=START) == 1
    here = await store.here_now(sub_key, ["ch"], now=START)
    assert here[0].occupancy == 2
    assert cluster.nodes_manager.slots_cache[slot][0].name == owner[0].name  # the map was mended
    await store.aclose()


async def shard_subscribers(cluster: RedisCluster, channel: str) -> dict[str, int]:
    counts = {}
    for node in cluster.get_primaries():
        reply = await cluster.execute_command("PUBSUB SHARDNUMSUB", channel, target_nodes=node)
        counts[node.name] = int(dict(reply)[channel])
    return counts


async def subscribe(client: Client, sub_key: str, tt: str) -> Any:
    response = await client.get(f"/v2/subscribe/{sub_key}/ch/0", params={"uuid": "u1", "tt": tt})
    assert response.status == 200
    return orjson.loads(await response.read())


async def test_wake_ups_go_to_the_keysets_master_only(
    cluster_url: str, cluster: RedisCluster, prefix: str, aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient
) -> None:
    redis = open_redis(cluster_url)
    app = create_app(Settings(key_prefix=prefix), redis=redis, clock=FakeClock(), sweeper=False)
    client = await serve(aiohttp_server, aiohttp_client, app)
    try:
        sub_keys = list({master_of(cluster, prefix, k): k for k in KEYSETS}.values())
        cursors = {k: (await subscribe(client, k, "0"))["t"]["t"] for k in sub_keys}
        for sub_key in sub_keys:
            counts = await shard_subscribers(cluster, KeysetKeys(prefix, sub_key).wake)
            owner = master_of(cluster, prefix, sub_key)
            assert counts == {name: int(name == owner) for name in counts}, (sub_key, counts)
        assert app[BUS].keysets == 3
        # A publish wakes a poll held in its keyset at once, through the keyset's master.
        sub_key = sub_keys[1]
        pending = asyncio.create_task(subscribe(client, sub_key, cursors[sub_key]))
        await wait_until(lambda: waiting(client) == 1, 5, what="the poll held")
        response = await client.get(f"/publish/pk/{sub_key}/0/ch/0/%22woken%22", params={"uuid": "p"})
        assert response.status == 200
        body = await asyncio.wait_for(pending, 5)
        assert [env["d"] for env in body["m"]] == ["woken"]
    finally:
        await client.close()
        await redis.aclose()


async def test_health_on_a_cluster_names_nothing_when_all_is_well(
    cluster_url: str, prefix: str, aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient
) -> None:
    redis: aioredis.Redis = open_redis(cluster_url)
    app = create_app(Settings(key_prefix=prefix), redis=redis, clock=FakeClock(), sweeper=False)
    client = await serve(aiohttp_server, aiohttp_client, app)
    try:
        response = await client.get("/health")
        assert response.status == 200
        assert orjson.loads(await response.read()) == {"status": "ok"}
        assert (await app[STORE].health()) == (None, [])
    finally:
        await client.close()
        await redis.aclose()
