"""The throughput baseline: the least an aiohttp handler can do on the heartbeat path.

It answers every heartbeat with the same pre-encoded body the real server sends, with no parsing
and no store, so the ratio of the server's throughput to this one's is what the presence code costs.
Run as ``python -m bench.baseline_app --port P``.
"""

from __future__ import annotations

import argparse

from aiohttp import web

BODY = b'{"status":200,"message":"OK","service":"Presence"}'
HEADERS = {"Content-Type": 'text/javascript; charset="UTF-8"'}


async def heartbeat(request: web.Request) -> web.Response:
    return web.Response(body=BODY, headers=HEADERS)


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/v2/presence/sub-key/{sub_key}/channel/{channels}/heartbeat", heartbeat)
    app.router.add_get("/health", heartbeat)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline_app")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(create_app(), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
