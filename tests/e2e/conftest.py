"""A live server on loopback for the real client libraries: in-process, on a free port, on both
engines, with the injected clock and a run-once sweeper so that no test sleeps time away."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
import redis.asyncio as aioredis

from presence_server.config import Settings
from tests.e2e.live import JS_DIR, PUBNUB_VERSION, LiveServer, serve
from tests.helpers.app import FakeClock


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
