"""The admin API for use as a test double (PRESENCE_ADMIN=1): move the clock, reset or inspect a keyset."""

from __future__ import annotations

from aiohttp import web

from server.context import BUS, CLOCK, SETTINGS, STORE
from server.http import PubNubError, json_response
from server.params import path_name, query_seconds
from server.routes.subscribe import REFRESH_MEMO

ADMIN = "Admin"
LOOPBACK = ("127.0.0.1", "::1")


def _check(request: web.Request) -> None:
    if not request.app[SETTINGS].admin_remote and request.remote not in LOOPBACK:
        raise PubNubError(403, "The admin API answers loopback clients only", ADMIN)


async def advance_clock(request: web.Request) -> web.Response:
    """Move the clock of every process on this Redis forward; due timeouts and intervals fire now."""
    _check(request)
    seconds = query_seconds(request, "seconds")
    if seconds is None:
        raise PubNubError(400, "Missing seconds", ADMIN)
    store, clock = request.app[STORE], request.app[CLOCK]
    offset = await store.advance_clock(seconds)
    set_offset = getattr(clock, "set_offset", None)
    if set_offset is not None:
        set_offset(offset)
    await request.app[BUS].announce_clock(offset)
    timeouts = await store.sweep(now=clock())
    return json_response({"status": 200, "offset": offset, "now": clock(), "timeouts": timeouts})


async def reset_keyset(request: web.Request) -> web.Response:
    _check(request)
    sub_key = path_name(request, "sub_key", "subscribe key", request.app[SETTINGS].max_name_length, ADMIN)
    removed = await request.app[STORE].reset_keyset(sub_key)
    request.app[REFRESH_MEMO].forget(sub_key)
    return json_response({"status": 200, "sub_key": sub_key, "removed_keys": removed})


async def snapshot(request: web.Request) -> web.Response:
    _check(request)
    sub_key = path_name(request, "sub_key", "subscribe key", request.app[SETTINGS].max_name_length, ADMIN)
    return json_response(await request.app[STORE].snapshot(sub_key, now=request.app[CLOCK]()))
