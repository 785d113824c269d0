"""Open a Redis client from a URL: ``memory://`` runs the same store in-process on fakeredis."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis


def open_redis(url: str, **options: Any) -> aioredis.Redis:
    """A client for ``redis://``, ``rediss://``, ``unix://`` or ``memory://`` (fakeredis, with Lua)."""
    options.setdefault("decode_responses", True)
    if url.startswith("memory://"):
        import fakeredis

        # One FakeServer per client: two `memory://` servers in one process never share data.
        return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), **options)
    options.setdefault("health_check_interval", 15)
    options.setdefault("socket_connect_timeout", 5)
    options.setdefault("socket_timeout", 10)
    options.setdefault("retry_on_timeout", False)
    return aioredis.Redis.from_url(url, **options)
