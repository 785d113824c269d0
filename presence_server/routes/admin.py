"""The admin API for use as a test double (PRESENCE_ADMIN=1): move the clock, reset or inspect a keyset."""

from __future__ import annotations

import ipaddress

from aiohttp import web

from presence_server.context import BUS, CLOCK, SETTINGS, STORE
from presence_server.http import PubNubError, json_response
from presence_server.params import path_name, query_seconds

ADMIN = "Admin"


def _is_loopback(remote: str | None) -> bool:
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _check(request: web.Request) -> None:
    if not request.app[SETTINGS].admin_remote and not _is_loopback(request.remote):
        raise PubNubError(403, "The admin API answers loopback clients only", ADMIN)


async def advance_clock(request: web.Request) -> web.Response:
    """Move the clock of every process on this Redis forward; due timeouts and intervals fire now."""
    _check(request)
    seconds = query_seconds(request, "seconds", ADMIN)
    if seconds is None:
        raise PubNubError(400, "Missing seconds", ADMIN)
    store, clock = request.app[STORE], request.app[CLOCK]
    offset = await store.advance_clock(seconds)
    clock.set_offset(offset)
    await request.app[BUS].announce_clock(offset)
    timeouts = await store.sweep(now=clock())
    return json_response({"status": 200, "offset": offset, "now": clock(), "timeouts": timeouts})


async def reset_keyset(request: web.Request) -> web.Response:
    _check(request)
    sub_key = path_name(request, "sub_key", "subscribe key", request.app[SETTINGS].max_name_length, ADMIN)
    removed = await request.app[STORE].reset_keyset(sub_key)
    return json_response({"status": 200, "sub_key": sub_key, "removed_keys": removed})


async def snapshot(request: web.Request) -> web.Response:
    _check(request)
    sub_key = path_name(request, "sub_key", "subscribe key", request.app[SETTINGS].max_name_length, ADMIN)
    return json_response(await request.app[STORE].snapshot(sub_key, now=request.app[CLOCK]()))
