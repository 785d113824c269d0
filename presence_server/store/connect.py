"""Open a Redis client from a URL: ``memory://`` runs the same store in-process on fakeredis."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError


def open_redis(url: str, max_connections: int = 100, **options: Any) -> aioredis.Redis:
    """A client for ``redis://``, ``rediss://``, ``unix://`` or ``memory://`` (fakeredis, with Lua).

    Past ``max_connections`` busy connections, a command waits (up to 10 s) for one instead of failing:
    redis-py's default pool raises at its limit, which under load would turn into 503s.
    """
    options.setdefault("decode_responses", True)
    if url.startswith("memory://"):
        import fakeredis

        # One FakeServer per client: two `memory://` servers in one process never share data. The
        # same waiting pool as for a real Redis: fakeredis's own raises "Too many connections" once
        # a burst of polls has more commands in flight than it has connections.
        fake_pool = aioredis.BlockingConnectionPool(
            connection_class=fakeredis.FakeAsyncRedisConnection,
            server=fakeredis.FakeServer(),
            max_connections=max_connections,
            timeout=10,
            **options,
        )
        return fakeredis.FakeAsyncRedis(connection_pool=fake_pool)
    options.setdefault("health_check_interval", 15)
    options.setdefault("socket_connect_timeout", 5)
    options.setdefault("socket_timeout", 10)
    options.setdefault("retry_on_timeout", False)
    # Once, at once, on a new connection: after Redis restarts, each pooled connection fails its next
    # command ("Connection closed by server") though Redis answers again; while it is down, one more
    # refused connect costs nothing.
    options.setdefault("retry", Retry(NoBackoff(), 1, supported_errors=(ConnectionError,)))
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=10, **options)
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes it
