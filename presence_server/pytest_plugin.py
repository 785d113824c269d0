"""pytest plugin (entry point ``pytest11``): a ``presence_server`` fixture for users' test suites.

The server runs in-process on a free loopback port with the embedded store, in a thread of its own,
so the fixture serves synchronous and asyncio tests alike. Its clock can be moved forward with
``presence_server.advance(seconds)``: timeouts and interval events then happen at once. Fault rules
(``presence_server.fault(...)``) make chosen requests fail, wait, drop or come back empty.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

import orjson
import pytest
from aiohttp import web

from presence_server.app import RUNNER_OPTIONS, SWEEPER, create_app
from presence_server.clock import Clock
from presence_server.config import Settings
from presence_server.context import FAULTS, STORE, WEBHOOKS
from presence_server.faults import parse_rule
from presence_server.http import AppRunner

T = TypeVar("T")


@dataclasses.dataclass
class PresenceServer:
    """A running server: point a PubNub client's ``origin`` at ``origin`` with ``ssl`` off."""

    origin: str
    settings: Settings
    clock: Clock
    _loop: asyncio.AbstractEventLoop
    _app: web.Application

    @property
    def url(self) -> str:
        return f"http://{self.origin}"

    def advance(self, seconds: float) -> int:
        """Move the server's clock forward and sweep now; returns how many users timed out."""
        self.clock.set_offset(self.clock.offset + seconds)
        return self._call(self._app[SWEEPER].run_once())

    def snapshot(self, sub_key: str) -> dict[str, Any]:
        """Everyone present in a keyset, with deadlines and state."""
        return self._call(self._app[STORE].snapshot(sub_key, now=self.clock()))

    def deliver_webhooks(self) -> None:
        """With ``webhook_url`` in the settings: send every presence webhook due now, and return once the
        receiver has answered them (the server also sends them by itself, within a second)."""
        self._call(self._app[WEBHOOKS].run_once())

    def fault(self, route: str, sub_key: str, **rule: Any) -> str:
        """Add a fault rule (docs/protocol.md 9.1), e.g. ``fault("heartbeat", "demo", status=503, times=1)``:
        the next heartbeat in keyset ``demo`` answers 503. Returns the rule's id; a bad rule raises."""
        stored, times = parse_rule(orjson.dumps({"route": route, "sub_key": sub_key, **rule}), self.clock())
        return self._call(self._add_fault(stored, times))

    def clear_faults(self) -> int:
        """Remove every fault rule; returns how many there were."""
        return self._call(self._clear_faults())

    async def _add_fault(self, stored: dict[str, Any], times: int | None) -> str:
        fault_id = await self._app[STORE].add_fault(stored, times)
        await self._app[FAULTS].reload()
        return fault_id

    async def _clear_faults(self) -> int:
        removed = await self._app[STORE].clear_faults()
        await self._app[FAULTS].reload()
        return removed

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)


@pytest.fixture
def presence_server_settings() -> dict[str, Any]:
    """Override to change the server's settings (``Settings`` field names), e.g. ``{"announce_max": 2}``."""
    return {}


@pytest.fixture
def presence_server(presence_server_settings: dict[str, Any]) -> Iterator[PresenceServer]:
    """A presence server on a free loopback port with the embedded store, fresh for each test."""
    settings = Settings(
        **{
            "host": "127.0.0.1",
            "port": 0,
            "redis_url": "memory://",
            "min_timeout": 1.0,
            "longpoll_hold": 20.0,
            "admin": True,  # the admin API (loopback only), whose fault rules ``fault`` adds
            **presence_server_settings,
        }
    )
    clock = Clock()
    loop = asyncio.new_event_loop()
    started: Future[PresenceServer] = Future()
    stop = asyncio.Event()

    async def serve() -> None:
        app = create_app(settings, clock=clock)
        runner = AppRunner(app, access_log=None, shutdown_timeout=2.0, **RUNNER_OPTIONS)  # type: ignore[arg-type]
        await runner.setup()
        try:
            site = web.TCPSite(runner, settings.host, settings.port)
            await site.start()
            port = runner.addresses[0][1]
            started.set_result(PresenceServer(f"{settings.host}:{port}", settings, clock, loop, app))
            await stop.wait()
        finally:
            await runner.cleanup()

    def run() -> None:
        try:
            loop.run_until_complete(serve())
        except BaseException as exc:  # surface start-up failures to the test instead of hanging it
            if not started.done():
                started.set_exception(exc)
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="presence-server", daemon=True)
    thread.start()
    try:
        yield started.result(timeout=30)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)
