from __future__ import annotations

from aiohttp import web

from presence_server.context import CLOCK, STORE
from presence_server.http import REDIS_DOWN, json_response
from presence_server.store import timetoken_at


async def time(request: web.Request) -> web.Response:
    # A one-element array holding a number (docs/protocol.md 2.1).
    return json_response([int(timetoken_at(request.app[CLOCK]()))])


async def health(request: web.Request) -> web.Response:
    try:
        await request.app[STORE].ping()
    except REDIS_DOWN as exc:
        return json_response({"status": "unavailable", "reason": f"store unreachable: {exc}"}, 503)
    return json_response({"status": "ok"})
