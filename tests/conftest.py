"""Shared fixtures: both engines (fakeredis and a real redis-server), an injected clock, the app.

The real engine is never skipped: with PRESENCE_TEST_REDIS_URL unset, a throw-away redis-server is
started from PATH for the session (Debian package ``redis-server``). Helpers that are not fixtures live
in ``tests/helpers/`` (raw HTTP, waiting, the redis-server launcher); test modules never import one another.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from presence_server.app import create_app
from presence_server.clock import Clock
from presence_server.config import Settings
from presence_server.store import PresenceStore, open_redis
from tests.helpers.admin import AdminServer, NewServer, remote_address
from tests.helpers.app import (
    AiohttpClient,
    AiohttpServer,
    FakeClock,
    MakeApp,
    NewClient,
    serve,
)
from tests.helpers.http import LONG_HOLD, Client
from tests.helpers.redis import redis_server
from tests.helpers.topologies import SHARED, SHARED_SENTINEL, redis_cluster, redis_sentinel


@pytest.fixture(scope="session")
def real_redis_url() -> Iterator[str]:
    url = os.environ.get("PRESENCE_TEST_REDIS_URL")
    if url:
        yield url
        return
    with redis_server() as started:
        yield started


@pytest.fixture(scope="session")
def cluster_url() -> Iterator[str]:
    """A ``redis+cluster://`` seed URL: PRESENCE_TEST_CLUSTER_URL (.ci/run starts one), or a 3-master,
    3-replica cluster started for the session on first use. Shared: break only a cluster of your own
    (``tests.helpers.topologies.redis_cluster``)."""
    url = os.environ.get("PRESENCE_TEST_CLUSTER_URL")
    if url:
        yield url
        return
    with redis_cluster(**SHARED) as cluster:
        yield cluster.url


@pytest.fixture(scope="session")
def sentinel_url() -> Iterator[str]:
    """A ``redis+sentinel://`` URL (master name ``presence``, db 0): PRESENCE_TEST_SENTINEL_URL (.ci/run
    starts one), or one master, one replica and three sentinels started for the session on first use."""
    url = os.environ.get("PRESENCE_TEST_SENTINEL_URL")
    if url:
        yield url
        return
    with redis_sentinel(**SHARED_SENTINEL) as sentinel:
        yield sentinel.url


ENGINE_URLS = {"redis": "real_redis_url", "cluster": "cluster_url", "sentinel": "sentinel_url"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # redis_client's engines: fakeredis and the real redis-server, unless the test or its module is
    # marked ``engines(...)`` (the store contract and the multi-process tests add cluster and sentinel).
    if "redis_client" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("engines")
        metafunc.parametrize("redis_client", marker.args if marker else ("fakeredis", "redis"), indirect=True)


@pytest.fixture
async def redis_client(request: pytest.FixtureRequest) -> AsyncIterator[aioredis.Redis]:
    """Each test that uses this runs on fakeredis and on the real redis-server (and, when marked
    ``engines``, on the session's Redis Cluster and Sentinel-managed Redis)."""
    engine = request.param
    url = "memory://" if engine == "fakeredis" else request.getfixturevalue(ENGINE_URLS[engine])
    client = open_redis(url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def real_redis(real_redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = open_redis(real_redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own: tests share one redis-server and never FLUSHALL."""
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def settings(prefix: str) -> Settings:
    return Settings(key_prefix=prefix, min_timeout=1.0, default_timeout=300.0, max_timeout=3600.0)


@pytest.fixture
def store(redis_client: aioredis.Redis, prefix: str) -> PresenceStore:
    return PresenceStore(redis_client, prefix=prefix, log_size=100)


@pytest.fixture
def make_app(redis_client: aioredis.Redis, settings: Settings, clock: FakeClock) -> Callable[..., web.Application]:
    def make(**overrides: Any) -> web.Application:
        current = dataclasses.replace(settings, **overrides)
        return create_app(current, redis=redis_client, clock=clock, sweeper=False)

    return make


@pytest.fixture
async def client(
    aiohttp_client: AiohttpClient, aiohttp_server: AiohttpServer, make_app: MakeApp
) -> AsyncIterator[Client]:
    """The app through the real store, on both engines, with an injected clock and no sweeper loop."""
    test_client = await serve(aiohttp_server, aiohttp_client, make_app())
    yield test_client
    # Close the app here, before redis_client (set up after aiohttp_client) closes its client.
    await test_client.close()


@pytest.fixture
async def held(make_app: MakeApp, aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient) -> Client:
    """A client whose server holds an idle long-poll for LONG_HOLD seconds."""
    return await serve(aiohttp_server, aiohttp_client, make_app(longpoll_hold=LONG_HOLD))


@pytest.fixture
async def new_client(make_app: MakeApp, aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient) -> NewClient:
    """More apps on the test's Redis and prefix, run like the ``client`` fixture's (several apps on one
    Redis behave as several server processes). ``make_app`` comes first, so its Redis client outlives them."""

    async def new(**overrides: Any) -> Client:
        return await serve(aiohttp_server, aiohttp_client, make_app(**overrides))

    return new


@pytest.fixture
def new_server(
    redis_client: aioredis.Redis,
    settings: Settings,
    clock: FakeClock,
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
) -> NewServer:
    """Apps on the test's Redis and key prefix with the admin API on, each with its own admin Clock
    over the one FakeClock: like server processes on one machine (``remote``: every request seems to
    come from that address). ``redis_client`` comes first, so that it outlives the apps."""

    async def new(remote: str | None = None, **overrides: Any) -> AdminServer:
        current = dataclasses.replace(settings, **{"admin": True, "longpoll_hold": 0.2, **overrides})
        admin_clock = Clock(base=clock)
        app = create_app(current, redis=redis_client, clock=admin_clock, sweeper=False)
        if remote is not None:
            app.middlewares.insert(0, remote_address(remote))
        return AdminServer(await serve(aiohttp_server, aiohttp_client, app), admin_clock)

    return new
