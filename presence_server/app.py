"""The application factory: nothing is created at import time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.typedefs import Handler

from presence_server.clock import Clock
from presence_server.config import Settings
from presence_server.context import BUS, CLOCK, SETTINGS, STORE
from presence_server.http import ON_REDIS_ERROR, RUNNER_OPTIONS
from presence_server.keysets import keyset_checked
from presence_server.metrics import METRICS, Metrics, instrumented
from presence_server.routes import Router, setup_admin_routes, setup_routes
from presence_server.routes.subscribe import REFRESH_MEMO, RefreshMemo
from presence_server.store import PresenceStore, WakeBus, open_redis
from presence_server.sweeper import Sweeper

log = logging.getLogger("presence_server")

__all__ = ["RUNNER_OPTIONS", "SWEEPER", "create_app"]

SWEEPER = web.AppKey("sweeper", Sweeper)


def create_app(
    settings: Settings | None = None,
    *,
    redis: aioredis.Redis | None = None,
    clock: Callable[[], float] | None = None,
    sweeper: bool = True,
) -> web.Application:
    """Build the server. ``redis`` injects a client the caller keeps ownership of; ``clock`` injects
    time; ``sweeper=False`` leaves expiry to explicit ``Sweeper.run_once`` calls (tests)."""
    settings = settings or Settings.from_env()
    app = web.Application()
    app[SETTINGS] = settings
    app[CLOCK] = clock if clock is not None else Clock()
    app.cleanup_ctx.append(_store_ctx(redis))
    if sweeper:
        app.cleanup_ctx.append(_sweeper_ctx)
    app.on_shutdown.append(_answer_held_polls)
    pairs = settings.keyset_pairs()

    def wrap(handler: Handler, route: str) -> Handler:
        return instrumented(keyset_checked(handler, pairs) if pairs else handler, route)

    router = Router(app, wrap)
    setup_routes(router)
    if settings.admin:
        setup_admin_routes(router)
    router.finish()
    return app


def _store_ctx(injected: aioredis.Redis | None) -> Callable[[web.Application], AsyncIterator[None]]:
    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        client = injected if injected is not None else open_redis(settings.redis_url)
        store = app[STORE] = PresenceStore(
            client,
            prefix=settings.key_prefix,
            default_timeout=settings.clamp_timeout(settings.default_timeout),
            log_size=settings.log_size,
            backstop_seconds=int(max(86_400, 2 * settings.max_timeout)),
            announce_max=settings.announce_max,
            interval=settings.interval,
            # The embedded store runs its Lua in this process's event loop: smaller sweep steps keep
            # a mass expiry from stalling requests for long.
            sweep_budget=100 if settings.redis_url.startswith("memory://") else 1000,
        )
        bus = app[BUS] = WakeBus(client, store.wake_channel, store.read_marker)
        app[REFRESH_MEMO] = RefreshMemo(min(10.0, settings.min_timeout / 2))
        app[SWEEPER] = Sweeper(store, app[CLOCK], settings.sweep_interval)
        app[METRICS] = Metrics(store, bus)
        app[ON_REDIS_ERROR] = app[METRICS].redis_errors.inc
        set_offset = getattr(app[CLOCK], "set_offset", None)
        if settings.admin and set_offset is not None:
            bus.on_clock = set_offset

            async def resync_clock() -> None:
                set_offset(await store.clock_offset())

            # At start and after every reconnection of the wake listener: advances announced while
            # this process was away from Redis are not missed.
            bus.on_connect = resync_clock
            with contextlib.suppress(Exception):  # Redis may not be up yet; the listener retries.
                await resync_clock()
        listener = asyncio.create_task(bus.run(), name="wake-listener")
        try:
            yield
        finally:
            bus.stopped = True
            listener.cancel()
            await asyncio.wait({listener}, timeout=2.0)
            await bus.aclose()
            await store.aclose()
            if injected is None:
                await client.aclose()

    return store_ctx


async def _sweeper_ctx(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(app[SWEEPER].run(), name="sweeper")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _answer_held_polls(app: web.Application) -> None:
    # Runs after the listening sockets closed and before in-flight requests are awaited: held
    # long-polls answer now with their cursor, so clients reconnect elsewhere without a gap.
    if BUS in app:
        app[BUS].close()
