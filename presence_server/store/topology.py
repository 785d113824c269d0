"""What the health check says about the Redis behind the store: one Redis, a Redis Cluster's masters and
replicas, or a Sentinel-managed master and its sentinels.

``check`` answers (what makes the store unusable, or None; what is lost but does not stop it). A lost
cluster master is fatal for the keysets in its slots only, and the reason says which ones of those
the server was configured with; a lost replica or sentinel is only reported (nothing fails over while
it is away).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel

from presence_server.logs import REDIS_DOWN
from presence_server.store.connect import address_of, refresh_slots
from presence_server.store.keys import KeysetKeys

PING_WAIT = 2.0  # seconds each node has to answer


async def check(redis: aioredis.Redis, prefix: str, keysets: Iterable[str] = ()) -> tuple[str | None, list[str]]:
    """(the reason the store cannot serve, or None; what is degraded). ``keysets`` are named in a reason
    when the master that holds them is lost."""
    if isinstance(redis, RedisCluster):
        return await _check_cluster(redis, prefix, keysets)
    manager = getattr(redis.connection_pool, "sentinel_manager", None)
    if isinstance(manager, Sentinel):
        return await _check_sentinel(redis, manager, redis.connection_pool.service_name)  # type: ignore[attr-defined]
    try:
        await asyncio.wait_for(redis.ping(), PING_WAIT)
    except (*REDIS_DOWN, TimeoutError) as exc:
        return f"store unreachable: {_said(exc)}", []
    return None, []


async def _answers(node: ClusterNode, cluster: RedisCluster) -> BaseException | None:
    try:
        await asyncio.wait_for(cluster.execute_command("PING", target_nodes=node), PING_WAIT)
    except (*REDIS_DOWN, TimeoutError) as exc:
        return exc
    return None


async def _check_cluster(cluster: RedisCluster, prefix: str, keysets: Iterable[str]) -> tuple[str | None, list[str]]:
    if not cluster.get_primaries():  # no command yet: the client has no map of the slots
        try:
            await cluster.initialize()
        except Exception as exc:
            return f"no cluster node answers: {_said(exc)}", []
    for attempt in range(2):
        primaries = cluster.get_primaries()
        results = await asyncio.gather(*(_answers(node, cluster) for node in primaries))
        lost = [(node, error) for node, error in zip(primaries, results, strict=True) if error is not None]
        if lost and attempt == 0:
            # The map may predate a failover: read it again before calling a master lost.
            try:
                await refresh_slots(cluster)
            except Exception as exc:
                return f"no cluster node answers: {_said(exc)}", []
            continue
        break
    answering = [node for node in primaries if node not in {n for n, _ in lost}]
    degraded = await _failed_nodes(cluster, answering[0]) if answering else []
    if not lost:
        return None, degraded
    reasons = []
    for node, error in lost:
        slots = _slots_of(cluster, node)
        held = sorted(k for k in keysets if cluster.keyslot(KeysetKeys(prefix, k).timetoken) in slots)
        where = f", keysets {', '.join(held)}" if held else ""
        reasons.append(
            f"cluster master {node.name} unreachable ({len(slots)} slots{where}): {_said(error)};"
            " keysets on the other masters are served"
        )
    return " ".join(reasons), degraded


async def _failed_nodes(cluster: RedisCluster, node: ClusterNode) -> list[str]:
    """The nodes the cluster itself holds failed (a replica lost, a master replaced by its replica):
    the client's map of the slots no longer lists them."""
    try:
        text = await asyncio.wait_for(cluster.execute_command("CLUSTER NODES", target_nodes=node), PING_WAIT)
    except (*REDIS_DOWN, TimeoutError):
        return []
    # redis-py parses the reply into {address: {"flags": "master,fail", ...}}.
    failed = []
    for address, info in text.items() if isinstance(text, dict) else ():
        flags = str(info.get("flags", "")).split(",") if isinstance(info, dict) else []
        if "fail" in flags:
            role = "master" if "master" in flags else "replica"
            failed.append(f"cluster {role} {address} is failed (the cluster no longer counts on it)")
    return failed


def _slots_of(cluster: RedisCluster, node: ClusterNode) -> set[int]:
    cache: dict[int, list[ClusterNode]] = cluster.nodes_manager.slots_cache
    return {slot for slot, nodes in cache.items() if nodes and nodes[0].name == node.name}


async def _check_sentinel(redis: aioredis.Redis, manager: Sentinel, name: str) -> tuple[str | None, list[str]]:
    sentinels: list[Any] = list(manager.sentinels)
    results = await asyncio.gather(*(_ping(s) for s in sentinels))
    degraded = [
        f"sentinel {address_of(s)} unreachable ({results.count(None)} of {len(sentinels)} answer): {_said(error)}"
        for s, error in zip(sentinels, results, strict=True)
        if error is not None
    ]
    exc = await _ping(redis)
    if exc is not None:
        if results.count(None) == 0:
            return f"no sentinel answers, and the master {name!r} cannot be reached: {_said(exc)}", degraded
        return f"the master {name!r} named by the sentinels is unreachable: {_said(exc)}", degraded
    return None, degraded


async def _ping(client: aioredis.Redis) -> BaseException | None:
    try:
        await asyncio.wait_for(client.ping(), PING_WAIT)
    except (*REDIS_DOWN, TimeoutError) as exc:
        return exc
    return None


def _said(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
