"""A live server on loopback for the real client libraries: in-process, on a free port, with the injected
clock and a run-once sweeper. The fixtures in conftest.py build it; test modules import these names from
here, never from conftest or from one another."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web

from presence_server.app import SWEEPER, create_app
from presence_server.config import Settings
from presence_server.context import STORE
from presence_server.store import PresenceStore
from tests.helpers.app import FakeClock, listening

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

    async def admin(self, method: str, path: str, rule: dict[str, Any] | None = None) -> Any:
        """Call the server's admin API (a server made with ``admin=True``), e.g. ``admin("POST", "faults",
        {...})`` adds a fault rule (docs/protocol.md 9.1); returns the parsed answer, which must be a 200."""
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, f"http://{self.origin}/admin/{path}", json=rule) as response,
        ):
            answer = await response.json(content_type=None)  # PubNub's text/javascript
            assert response.status == 200, answer
            return answer

    async def fault_rules(self) -> list[dict[str, Any]]:
        """The live fault rules (GET /admin/faults): a used-up ``times`` rule is gone, the others show ``left``."""
        rules: list[dict[str, Any]] = (await self.admin("GET", "faults"))["faults"]
        return rules


@contextlib.asynccontextmanager
async def serve(
    redis_client: aioredis.Redis, settings: Settings, clock: FakeClock, **overrides: Any
) -> AsyncIterator[LiveServer]:
    """Run the app on a free loopback port; ``overrides`` replace settings (e.g. announce_max=2)."""
    current = dataclasses.replace(settings, **{"longpoll_hold": LIVE_HOLD, **overrides})
    app = create_app(current, redis=redis_client, clock=clock, sweeper=False)
    async with listening(app) as port:
        yield LiveServer(f"127.0.0.1:{port}", clock, app)
