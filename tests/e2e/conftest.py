"""A live server on loopback for the real client libraries: in-process, on a free port, on both
engines, with the injected clock and a run-once sweeper so that no test sleeps time away."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from presence_server.app import RUNNER_OPTIONS, SWEEPER, create_app
from presence_server.config import Settings
from presence_server.context import STORE
from presence_server.store import PresenceStore
from tests.conftest import FakeClock

# Long-polls are held this long (real seconds) by live servers unless a test says otherwise, so
# that an idle subscriber re-polls quickly and a test's teardown never waits on a held poll.
LIVE_HOLD = 2.0

# The JavaScript client (pubnub on npm, exactly this version) and the runners that drive it.
JS_DIR = Path(__file__).parent / "js"
PUBNUB_VERSION = "7.3.3"


@dataclasses.dataclass
class LiveServer:
    origin: str
    clock: FakeClock
    app: web.Application

    @property
    def store(self) -> PresenceStore:
        return self.app[STORE]

    async def advance(self, seconds: float) -> int:
        """Move the server's clock and run one sweep; returns how many users timed out."""
        self.clock.advance(seconds)
        return await self.app[SWEEPER].run_once()


@contextlib.asynccontextmanager
async def serve(
    redis_client: aioredis.Redis, settings: Settings, clock: FakeClock, **overrides: Any
) -> AsyncIterator[LiveServer]:
    """Run the app on a free loopback port; ``overrides`` replace settings (e.g. announce_max=2)."""
    current = dataclasses.replace(settings, **{"longpoll_hold": LIVE_HOLD, **overrides})
    app = create_app(current, redis=redis_client, clock=clock, sweeper=False)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0, **RUNNER_OPTIONS)  # type: ignore[arg-type]
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield LiveServer(f"127.0.0.1:{port}", clock, app)
    finally:
        await runner.cleanup()


@pytest.fixture
def live_server_factory(
    redis_client: aioredis.Redis, settings: Settings, clock: FakeClock
) -> Callable[..., AbstractAsyncContextManager[LiveServer]]:
    """``async with live_server_factory(announce_max=2) as server:`` — several may share one Redis."""

    def factory(**overrides: Any) -> AbstractAsyncContextManager[LiveServer]:
        return serve(redis_client, settings, clock, **overrides)

    return factory


@pytest.fixture
async def live_server(redis_client: aioredis.Redis, settings: Settings, clock: FakeClock) -> AsyncIterator[LiveServer]:
    async with serve(redis_client, settings, clock) as server:
        yield server


@pytest.fixture(scope="session")
def node() -> str:
    """Node with ``pubnub@7.3.3`` installed next to the runner; ``npm ci`` on a fresh clone."""
    node_bin, npm_bin = shutil.which("node"), shutil.which("npm")
    if node_bin is None or npm_bin is None:
        pytest.fail("the JavaScript end-to-end tests need Node.js and npm on PATH (Node 18 or newer)")
    installed = JS_DIR / "node_modules" / "pubnub" / "package.json"
    if not installed.exists():
        done = subprocess.run(
            [npm_bin, "ci", "--no-audit", "--no-fund"],
            cwd=JS_DIR,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(f"npm ci in {JS_DIR} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    version = json.loads(installed.read_text())["version"]
    if version != PUBNUB_VERSION:
        pytest.fail(
            f"{installed} is pubnub {version}, these tests need exactly {PUBNUB_VERSION}: "
            f"remove {JS_DIR / 'node_modules'} and run the tests again"
        )
    return node_bin
