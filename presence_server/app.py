"""The application factory: nothing is created at import time.

Each resource is opened in a cleanup context of its own and closed in reverse order: the Redis
client, the store, the long-poll owner, the wake listener, the sweeper, the webhook sender. The app
keys are in context.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.typedefs import Handler

from presence_server.access.control import AccessControl, Keyset, access_checked
from presence_server.access.needs import Needs
from presence_server.clock import Clock, clock_of
from presence_server.config import Settings
from presence_server.context import (
    ACCESS,
    BUS,
    CLOCK,
    FAULTS,
    LONGPOLLS,
    METRICS,
    REDIS,
    REDIS_OUTAGE,
    SETTINGS,
    STORE,
    SWEEPER,
    WEBHOOKS,
)
from presence_server.faults import Faults, fault_checked, route_of
from presence_server.http import RUNNER_OPTIONS
from presence_server.keysets import keyset_checked
from presence_server.logs import RedisOutage
from presence_server.metrics import Metrics, instrumented
from presence_server.routes import Router, setup_admin_routes, setup_routes
from presence_server.store import LongPolls, PresenceStore, WakeBus, open_redis
from presence_server.sweeper import Sweeper
from presence_server.webhooks import BACKLOG, WebhookSender

log = logging.getLogger("presence_server")

__all__ = ["RUNNER_OPTIONS", "SWEEPER", "create_app"]


def create_app(
    settings: Settings | None = None,
    *,
    redis: aioredis.Redis | None = None,
    clock: Clock | Callable[[], float] | None = None,
    sweeper: bool = True,
    webhooks: bool = True,
    wall_clock: Callable[[], float] = time.time,
) -> web.Application:
    """Build the server. ``redis`` injects a client the caller keeps ownership of; ``clock`` injects
    time (a ``Clock``, or the base time of one); ``sweeper=False`` leaves expiry to explicit
    ``Sweeper.run_once`` calls (tests), ``webhooks=False`` webhook deliveries to
    ``WebhookSender.run_once`` calls; ``wall_clock`` is what signed requests' timestamps are
    compared with (the machine's clock, which SDKs sign with, whatever ``clock`` says)."""
    settings = settings or Settings.from_env()
    app = web.Application()
    app[SETTINGS] = settings
    app[CLOCK] = clock_of(clock)
    app.cleanup_ctx.append(_redis_ctx(redis))
    app.cleanup_ctx.append(_store_ctx(wall_clock))
    app.cleanup_ctx.append(_longpolls_ctx)
    app.cleanup_ctx.append(_bus_ctx)
    app.cleanup_ctx.append(_sweeper_ctx(run=sweeper))
    if settings.webhook_url:
        app.cleanup_ctx.append(_webhooks_ctx(run=webhooks))
    app.on_shutdown.append(_answer_held_polls)
    pairs = settings.keyset_pairs()
    secured = _keysets(settings)

    def wrap(handler: Handler, route: str, needs: Needs | None) -> Handler:
        # Outermost first: metrics and errors, fault rules (admin API on), the keyset list, Access
        # Manager, the handler.
        if secured and needs is not None:
            handler = access_checked(handler, needs, secured)
        if pairs:
            handler = keyset_checked(handler, pairs)
        fault_route = route_of(route) if settings.admin else None
        if fault_route is not None:
            handler = fault_checked(handler, fault_route, lambda: app.get(FAULTS))
        return instrumented(handler, route, app)

    router = Router(app, wrap)
    setup_routes(router)
    if settings.admin:
        setup_admin_routes(router)
    router.finish()
    return app


def _redis_ctx(injected: aioredis.Redis | None) -> Callable[[web.Application], AsyncIterator[None]]:
    async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
        client = app[REDIS] = injected if injected is not None else open_redis(app[SETTINGS].redis_url)
        yield
        if injected is None:
            await client.aclose()

    return redis_ctx


def _keysets(settings: Settings) -> dict[str, Keyset]:
    return {sub: Keyset(sub, pub, secret) for sub, (pub, secret) in settings.keyset_secrets().items()}


def _store_ctx(wall_clock: Callable[[], float]) -> Callable[[web.Application], AsyncIterator[None]]:
    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        store = app[STORE] = _store(settings, app[REDIS])
        app[ACCESS] = AccessControl(
            _keysets(settings), store, app[CLOCK], window=settings.signature_window, wall=wall_clock
        )
        yield
        await store.aclose()

    return store_ctx


def _store(settings: Settings, redis: aioredis.Redis) -> PresenceStore:
    return PresenceStore(
        redis,
        prefix=settings.key_prefix,
        default_timeout=settings.clamp_timeout(settings.default_timeout),
        log_size=settings.log_size,
        backstop_seconds=int(max(86_400, 2 * settings.max_timeout)),
        announce_max=settings.announce_max,
        interval=settings.interval,
        history_retention=settings.history_retention,
        history_max=settings.history_max,
        webhook_backlog=BACKLOG if settings.webhook_url else 0,
        # The embedded store runs its Lua in this process's event loop: smaller sweep steps keep
        # a mass expiry from stalling requests for long.
        sweep_budget=100 if settings.redis_url.startswith("memory://") else 1000,
    )


async def _longpolls_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    polls = app[LONGPOLLS] = LongPolls(
        app[STORE], app[CLOCK], hold=settings.longpoll_hold, refresh_window=min(10.0, settings.min_timeout / 2)
    )
    app[METRICS] = Metrics(app[STORE], polls)
    app[REDIS_OUTAGE] = RedisOutage(app[METRICS].redis_errors.inc)
    yield
    await polls.aclose()


async def _bus_ctx(app: web.Application) -> AsyncIterator[None]:
    store, clock, tokens = app[STORE], app[CLOCK], app[ACCESS].tokens
    admin = app[SETTINGS].admin

    async def resync_clock() -> None:
        # At start and after every reconnection of the wake listener: advances announced while
        # this process was away from Redis are not missed.
        clock.set_offset(await store.clock_offset())

    async def reconnected() -> None:
        # Revocations announced while this process was away are not missed either: tokens are
        # checked against Redis again.
        tokens.clear()
        if admin:
            await resync_clock()
        if faults is not None:
            await faults.reload()  # rules changed while this process was away

    faults = None
    if admin:
        faults = app[FAULTS] = Faults(store, clock)

    def faults_changed() -> None:
        if faults is not None:
            reload = asyncio.ensure_future(faults.reload())
            reloads.add(reload)
            reload.add_done_callback(reloads.discard)

    reloads: set[asyncio.Task[None]] = set()
    bus = app[BUS] = WakeBus(
        app[REDIS],
        lambda sub_key: store.keys(sub_key).wake,
        store.clock_channel,
        app[LONGPOLLS],
        # Revocations must reach the token cache of every Access Manager keyset from the start.
        always=app[SETTINGS].keyset_secrets(),
        on_clock=clock.set_offset if admin else None,
        on_connect=reconnected,
        on_revoke=tokens.revoke,
        on_faults=faults_changed,
    )
    app[LONGPOLLS].watch = bus.watch
    if admin:
        with contextlib.suppress(Exception):  # Redis may not be up yet; the listener retries.
            await resync_clock()
    listener = asyncio.create_task(bus.run(), name="wake-listener")
    yield
    bus.stopped = True
    listener.cancel()
    await asyncio.wait({listener}, timeout=2.0)


def _sweeper_ctx(*, run: bool) -> Callable[[web.Application], AsyncIterator[None]]:
    async def sweeper_ctx(app: web.Application) -> AsyncIterator[None]:
        sweeper = app[SWEEPER] = Sweeper(app[STORE], app[CLOCK], app[SETTINGS].sweep_interval, app[REDIS_OUTAGE])
        if not run:
            yield
            return
        task = asyncio.create_task(sweeper.run(), name="sweeper")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return sweeper_ctx


def _webhooks_ctx(*, run: bool) -> Callable[[web.Application], AsyncIterator[None]]:
    async def webhooks_ctx(app: web.Application) -> AsyncIterator[None]:
        settings, store = app[SETTINGS], app[STORE]
        sender = app[WEBHOOKS] = WebhookSender(
            store,
            app[CLOCK],
            settings.webhook_url,
            secret=settings.webhook_secret,
            retry_for=settings.webhook_retry_seconds,
            registry=app[METRICS].registry,
            outage=app[REDIS_OUTAGE],
        )
        store.on_presence_events(sender.nudge)
        task = asyncio.create_task(sender.run(), name="webhooks") if run else None
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await sender.aclose()

    return webhooks_ctx


async def _answer_held_polls(app: web.Application) -> None:
    # Runs after the listening sockets closed and before in-flight requests are awaited: held
    # long-polls answer now with their cursor, so clients reconnect elsewhere without a gap.
    if LONGPOLLS in app:
        app[LONGPOLLS].close()
