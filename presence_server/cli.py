"""``presence-server``: run the server from the command line."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys

from aiohttp import web

from presence_server.app import RUNNER_OPTIONS, create_app
from presence_server.config import Settings, SettingsError
from presence_server.http import AppRunner
from presence_server.logs import RouteAccessLogger, setup_logging

log = logging.getLogger("presence_server")

# Allocations between two collections of the youngest generation (Python's default is 700).
GC_YOUNG_THRESHOLD = 20_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="presence-server",
        description="Self-hosted, PubNub-compatible presence server. Every flag also reads PRESENCE_*.",
    )
    parser.add_argument("--host", help="address to listen on (PRESENCE_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (PRESENCE_PORT, default 8090)")
    parser.add_argument(
        "--redis-url",
        help="memory:// (in-process, default) or redis://host:6379/0 (PRESENCE_REDIS_URL)",
    )
    return parser.parse_args(argv)


def tune_gc() -> None:
    """Every request leaves short-lived objects behind, and thousands of held polls stay alive
    between wake-ups. With the default thresholds (700, 10, 10) the cyclic collector runs every
    few requests and its older generations rescan every held poll; objects made at startup never
    become garbage at all. Freeze those, and collect the young generation less often."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 50, 100)


async def serve(app: web.Application, host: str, port: int, access_log: logging.Logger | None) -> None:
    """Run ``app`` until SIGINT or SIGTERM, as ``web.run_app`` does (same keep-alive and shutdown
    timeouts), but through http.AppRunner: even requests aiohttp refuses before any handler runs get a
    JSON answer."""
    runner = AppRunner(
        app,
        access_log=access_log,
        access_log_class=RouteAccessLogger,
        keepalive_timeout=75.0,
        shutdown_timeout=60.0,
        **RUNNER_OPTIONS,  # type: ignore[arg-type]
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        await stop.wait()
    finally:
        # With every request still under way: held long-polls are answered before connections close.
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        settings = Settings.from_env(host=args.host, port=args.port, redis_url=args.redis_url)
    except SettingsError as exc:
        print(f"presence-server: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    setup_logging(settings.log_format)
    logging.getLogger("aiohttp.access").setLevel(logging.INFO if settings.access_log else logging.WARNING)
    log.info("starting on %s:%s with %s", settings.host, settings.port, settings.summary())
    if settings.redis_url.startswith("memory://"):
        log.info("embedded store (memory://): presence lives in this process and a restart forgets everyone")
    tune_gc()
    access_log = logging.getLogger("aiohttp.access") if settings.access_log else None
    asyncio.run(serve(create_app(settings), settings.host, settings.port, access_log))
    log.info("stopped")
