"""The application factory: nothing is created at import time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

import redis.asyncio as aioredis
from aiohttp import web

from server.config import Settings
from server.context import BUS, CLOCK, SETTINGS, STORE
from server.http import error_middleware
from server.routes import setup_routes
from server.routes.subscribe import REFRESH_MEMO, RefreshMemo
from server.store import PresenceStore, WakeBus, open_redis
from server.sweeper import Sweeper

log = logging.getLogger("server")

SWEEPER = web.AppKey("sweeper", Sweeper)


def create_app(
    settings: Settings | None = None,
    *,
    redis: aioredis.Redis | None = None,
    clock: Callable[[], float] = time.time,
    sweeper: bool = True,
) -> web.Application:
    """Build the server. ``redis`` injects a client the caller keeps ownership of; ``clock`` injects
    time; ``sweeper=False`` leaves expiry to explicit ``Sweeper.run_once`` calls (tests)."""
    settings = settings or Settings.from_env()
    app = web.Application(middlewares=[error_middleware])
    app[SETTINGS] = settings
    app[CLOCK] = clock
    app.cleanup_ctx.append(_store_ctx(redis))
    if sweeper:
        app.cleanup_ctx.append(_sweeper_ctx)
    setup_routes(app)
    return app


# Server options every way of running the app uses: held long-polls are cancelled when their client
# goes away, and publish bodies reach the handler undecoded (Python labels zlib as gzip, protocol 8).
RUNNER_OPTIONS: dict[str, object] = {"handler_cancellation": True, "auto_decompress": False}


def _store_ctx(injected: aioredis.Redis | None) -> Callable[[web.Application], AsyncIterator[None]]:
    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        client = injected if injected is not None else open_redis(settings.redis_url)
        app[STORE] = PresenceStore(
            client,
            prefix=settings.key_prefix,
            default_timeout=settings.clamp_timeout(settings.default_timeout),
            log_size=settings.log_size,
            backstop_seconds=int(max(86_400, 2 * settings.max_timeout)),
            announce_max=settings.announce_max,
            interval=settings.interval,
        )
        app[BUS] = WakeBus(client, app[STORE].wake_channel)
        app[REFRESH_MEMO] = RefreshMemo(min(10.0, settings.min_timeout / 2))
        listener = asyncio.create_task(app[BUS].run(), name="wake-listener")
        app[SWEEPER] = Sweeper(app[STORE], app[CLOCK], settings.sweep_interval)
        try:
            yield
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            if injected is None:
                await client.aclose()

    return store_ctx


async def _sweeper_ctx(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(app[SWEEPER].run(), name="sweeper")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
