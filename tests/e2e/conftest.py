"""A live server on loopback for the real client libraries: in-process, on a free port, on both
engines, with the injected clock and a run-once sweeper so that no test sleeps time away."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from server.app import RUNNER_OPTIONS, SWEEPER, create_app
from server.config import Settings
from tests.conftest import FakeClock


@dataclasses.dataclass
class LiveServer:
    origin: str
    clock: FakeClock
    app: web.Application

    async def advance(self, seconds: float) -> int:
        """Move the server's clock and run one sweep; returns how many users timed out."""
        self.clock.advance(seconds)
        return await self.app[SWEEPER].run_once()


@pytest.fixture
async def live_server(redis_client: aioredis.Redis, settings: Settings, clock: FakeClock) -> AsyncIterator[LiveServer]:
    app = create_app(settings, redis=redis_client, clock=clock, sweeper=False)
    runner = web.AppRunner(app, access_log=None, **RUNNER_OPTIONS)  # type: ignore[arg-type]
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield LiveServer(f"127.0.0.1:{port}", clock, app)
    finally:
        await runner.cleanup()
