"""``presence-server``: run the server from the command line."""

from __future__ import annotations

import argparse
import gc
import logging
import sys

from aiohttp import web

from presence_server.app import RUNNER_OPTIONS, create_app
from presence_server.config import Settings, SettingsError
from presence_server.logs import setup_logging

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
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        print=None,
        access_log=logging.getLogger("aiohttp.access") if settings.access_log else None,
        **RUNNER_OPTIONS,  # type: ignore[arg-type]
    )
    log.info("stopped")
