"""The application factory: nothing is created at import time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.typedefs import Handler

from server.clock import Clock
from server.config import Settings
from server.context import BUS, CLOCK, SETTINGS, STORE
from server.http import ON_REDIS_ERROR, PubNubError, json_response
from server.metrics import METRICS, Metrics, instrumented
from server.routes import Router, setup_admin_routes, setup_routes
from server.routes.subscribe import REFRESH_MEMO, RefreshMemo
from server.store import PresenceStore, WakeBus, open_redis, timetoken_at
from server.sweeper import Sweeper

log = logging.getLogger("server")

SWEEPER = web.AppKey("sweeper", Sweeper)

# Server options every way of running the app uses: held long-polls are cancelled when their client
# goes away, and publish bodies reach the handler undecoded (Python labels zlib as gzip, protocol 8).
# A GET publish carries its message in the path: 32 KiB of JSON, percent-encoded, exceeds aiohttp's
# 8 KiB request line; a longer line would get aiohttp's plain-text 400 instead of our JSON 413.
RUNNER_OPTIONS: dict[str, object] = {
    "handler_cancellation": True, "auto_decompress": False, "max_line_size": 128 * 1024,
}


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


def keyset_checked(handler: Handler, pairs: list[tuple[str, str]]) -> Handler:
    """With PRESENCE_KEYSETS (``pairs``), only the listed keysets are served, each isolated from
    the others."""
    listed, subs = set(pairs), {sub for _, sub in pairs}

    async def checked(request: web.Request) -> web.StreamResponse:
        info = request.match_info
        sub_key, pub_key = info.get("sub_key"), info.get("pub_key")
        if sub_key is not None and sub_key not in subs:
            if pub_key is not None:
                return json_response([0, "Invalid Key", timetoken_at(request.app[CLOCK]())], 400)
            raise PubNubError(400, "Invalid Subscribe Key", "Access Manager")
        if pub_key is not None and (pub_key, sub_key) not in listed:
            return json_response([0, "Invalid Key", timetoken_at(request.app[CLOCK]())], 400)
        return await handler(request)

    return checked
