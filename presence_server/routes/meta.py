"""Time, and the health check a load balancer asks (``/health`` and ``/ready``)."""

from __future__ import annotations

from aiohttp import web

from presence_server.context import CLOCK, REDIS_OUTAGE, SETTINGS, STORE
from presence_server.http import json_response
from presence_server.logs import REDIS_DOWN
from presence_server.routes.admin import MAX_OFFSET
from presence_server.store import timetoken_at
from presence_server.store.core import ClockOutOfRange


async def time(request: web.Request) -> web.Response:
    # A one-element array holding a number (docs/protocol.md 2.1).
    return json_response([int(timetoken_at(request.app[CLOCK]()))])


async def health(request: web.Request) -> web.Response:
    """``{"status": "ok"}``; 503 ``unavailable`` with the reason when the store cannot serve (Redis, or
    on a cluster a master, with the configured keysets it held); 200 ``degraded`` with the reason when a
    cluster replica or a sentinel is lost but every keyset is served."""
    app = request.app
    settings = app[SETTINGS]
    try:
        fatal, degraded = await app[STORE].health(sub_key for _, sub_key in settings.keyset_pairs())
        if fatal is not None:
            return _unavailable(fatal)
        # Read only where it is used: the admin API's clock moves.
        offset = await app[STORE].clock_offset() if settings.admin else 0.0
    except REDIS_DOWN as exc:
        return _unavailable(f"store unreachable: {exc}")
    if REDIS_OUTAGE in app:
        app[REDIS_OUTAGE].answered()
    if offset > MAX_OFFSET:
        return _unavailable(
            f"the admin clock offset in Redis ({offset:.0f} s) is beyond its bound ({MAX_OFFSET:.0f} s)"
        )
    try:
        timetoken_at(app[CLOCK]())
    except ClockOutOfRange as exc:
        return _unavailable(str(exc))
    if degraded:
        return json_response({"status": "degraded", "reason": "; ".join(degraded)})
    return json_response({"status": "ok"})


def _unavailable(reason: str) -> web.Response:
    return json_response({"status": "unavailable", "reason": reason}, 503)
