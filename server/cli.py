"""``presence-server``: run the server from the command line."""

from __future__ import annotations

import argparse
import logging
import sys

from aiohttp import web

from server.app import RUNNER_OPTIONS, create_app
from server.config import Settings, SettingsError


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


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.from_env(host=args.host, port=args.port, redis_url=args.redis_url)
    except SettingsError as exc:
        print(f"presence-server: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    logging.getLogger("server").info("starting with %s", settings.summary())
    web.run_app(
        create_app(settings), host=settings.host, port=settings.port, access_log=None, print=None,
        **RUNNER_OPTIONS,  # type: ignore[arg-type]
    )
