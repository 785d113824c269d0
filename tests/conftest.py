"""Shared fixtures: both engines (fakeredis and a real redis-server), an injected clock, the app.

The real engine is never skipped: with PRESENCE_TEST_REDIS_URL unset, a throw-away redis-server is
started from PATH for the session (Debian package ``redis-server``).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from presence_server.app import RUNNER_OPTIONS, SWEEPER, create_app
from presence_server.config import Settings
from presence_server.store import PresenceStore, open_redis
from presence_server.sweeper import Sweeper

# The types of aiohttp's test fixtures, as the test modules annotate them.
Client = TestClient[web.Request, web.Application]
AiohttpClient = Callable[..., Awaitable[Client]]
AiohttpServer = Callable[..., Awaitable[TestServer]]
MakeApp = Callable[..., web.Application]
NewClient = Callable[..., Awaitable[Client]]

START = 1_800_000_000.0

# The runner options the server runs with, for aiohttp_server(app, **TEST_SERVER_OPTIONS): TestServer's
# constructor drops options it is handed, and start_server sets handler_cancellation itself.
TEST_SERVER_OPTIONS = {k: v for k, v in RUNNER_OPTIONS.items() if k != "handler_cancellation"}


class FakeClock:
    """Time that moves only when a test says so."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def real_redis_url() -> Iterator[str]:
    url = os.environ.get("PRESENCE_TEST_REDIS_URL")
    if url:
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "redis-server is not on PATH: install it (apt-get install redis-server) or set PRESENCE_TEST_REDIS_URL"
        )
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
            stdout=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("redis-server did not start") from None
                    time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@pytest.fixture(params=["fakeredis", "redis"])
async def redis_client(request: pytest.FixtureRequest) -> AsyncIterator[aioredis.Redis]:
    """Each test that uses this runs twice: on fakeredis and on the real redis-server."""
    url = "memory://" if request.param == "fakeredis" else request.getfixturevalue("real_redis_url")
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
    aiohttp_client: Callable[..., Awaitable[TestClient]],  # type: ignore[type-arg]
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    make_app: Callable[..., web.Application],
) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    """The app through the real store, on both engines, with an injected clock and no sweeper loop."""
    test_client = await aiohttp_client(await aiohttp_server(make_app(), **TEST_SERVER_OPTIONS))
    yield test_client
    # Close the app here, before redis_client (set up after aiohttp_client) closes its client.
    await test_client.close()


def sweeper_of(client: TestClient) -> Sweeper:  # type: ignore[type-arg]
    app = client.app
    assert app is not None
    sweeper: Sweeper = app[SWEEPER]
    return sweeper


@pytest.fixture
async def new_client(
    make_app: Callable[..., web.Application],
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> NewClient:
    """More apps on the test's Redis and prefix, run like the ``client`` fixture's (several apps on one
    Redis behave as several server processes). ``make_app`` comes first, so its Redis client outlives them."""

    async def new(**overrides: Any) -> Client:
        return await aiohttp_client(await aiohttp_server(make_app(**overrides), **TEST_SERVER_OPTIONS))

    return new
