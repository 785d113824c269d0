"""The URL forms of PRESENCE_REDIS_URL (store/connect.py): what each opens, and bad ones refused at start
with a reason that never repeats the password."""

from __future__ import annotations

import re

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from presence_server.config import Settings, SettingsError
from presence_server.store.connect import BadRedisUrl, SentinelRedis, check_url, is_cluster, open_redis


async def test_a_cluster_url_names_seed_nodes_with_credentials_and_default_ports() -> None:
    client = open_redis("redis+cluster://user:s%40cret@10.0.0.1:7000,10.0.0.2,[::1]:7002")
    try:
        assert isinstance(client, RedisCluster) and is_cluster(client)
        seeds = [(node.host, node.port) for node in client.nodes_manager.startup_nodes.values()]
        assert sorted(seeds) == sorted([("10.0.0.1", 7000), ("10.0.0.2", 6379), ("::1", 7002)])
        node = next(iter(client.nodes_manager.startup_nodes.values()))
        assert node.connection_kwargs["username"] == "user"
        assert node.connection_kwargs["password"] == "s@cret"
        assert node.connection_kwargs["socket_connect_timeout"] == 2  # a dead host costs at most 2 s a try
    finally:
        await client.aclose()


async def test_a_tls_cluster_url_connects_with_tls() -> None:
    client = open_redis("rediss+cluster://10.0.0.1:7000")
    try:
        node = next(iter(client.nodes_manager.startup_nodes.values()))  # type: ignore[attr-defined]
        assert node.connection_class.__name__ == "SSLConnection"
    finally:
        await client.aclose()


async def test_a_sentinel_url_names_sentinels_master_and_db() -> None:
    client = open_redis("redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2/presence/3")
    try:
        assert isinstance(client, SentinelRedis) and not is_cluster(client)
        pool = client.connection_pool
        assert pool.service_name == "presence"  # type: ignore[attr-defined]
        assert pool.connection_kwargs["db"] == 3 and pool.connection_kwargs["password"] == "pw"
        sentinels = [s.connection_pool.connection_kwargs for s in pool.sentinel_manager.sentinels]  # type: ignore[attr-defined]
        assert [(s["host"], s["port"]) for s in sentinels] == [("10.0.0.1", 26379), ("10.0.0.2", 26379)]
        assert all(s.get("password") is None for s in sentinels)  # the password is the master's
        assert isinstance(pool, aioredis.BlockingConnectionPool)  # waits at its limit, as for one Redis
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis+cluster://:pw@h1:1,h2:port", "a port of the Redis URL is not a number: 'h2:port'"),
        ("redis+cluster://:pw@h1:1,,h2:2", "a host of the Redis URL is empty"),
        ("redis+sentinel://:pw@h1:26379", "names the master after the sentinels"),
        ("redis+sentinel://:pw@h1:26379/", "names the master after the sentinels"),
        ("redis+sentinel://:pw@h1:26379/m/0/extra", "names the master after the sentinels"),
        ("redis+sentinel://:pw@h1:26379/m/zero", "the database of the redis+sentinel URL is not a number"),
    ],
)
def test_a_bad_url_is_refused_at_start_without_its_password(url: str, reason: str) -> None:
    with pytest.raises(BadRedisUrl, match=re.escape(reason)):
        check_url(url)
    with pytest.raises(SettingsError) as refused:
        Settings(redis_url=url)
    assert reason.split(":")[0] in str(refused.value) and "pw" not in str(refused.value)


def test_the_other_forms_pass_the_check() -> None:
    for url in ("memory://", "redis://h:6379/0", "rediss://:pw@h/1", "unix:///run/redis.sock", "redis+cluster://h"):
        check_url(url)
        Settings(redis_url=url)
