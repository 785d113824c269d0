"""The admin API for use as a test double (PRESENCE_ADMIN=1): move the clock, reset or inspect a keyset,
add and remove fault rules."""

from __future__ import annotations

import hmac
import ipaddress

from aiohttp import web

from presence_server.context import BUS, CLOCK, FAULTS, SETTINGS, STORE
from presence_server.faults import MAX_RULES, parse_rule
from presence_server.http import PubNubError, json_response
from presence_server.params import path_name, query_seconds

ADMIN = "Admin"

# How far the admin clock may move: a year per call and ten years in all. Timetokens then stay 17
# digits (they would reach 18 only after the year 2286) and well inside the 64-bit integers Redis
# counts them in; before, one advance of 1e13 seconds left timetokens nothing could read back.
MAX_ADVANCE = 366 * 86_400.0
MAX_OFFSET = 10 * MAX_ADVANCE


def _is_loopback(remote: str | None) -> bool:
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _check(request: web.Request) -> None:
    settings = request.app[SETTINGS]
    if not settings.admin_remote and not _is_loopback(request.remote):
        raise PubNubError(403, "The admin API answers loopback clients only", ADMIN)
    if settings.admin_token:
        # Whatever the peer: behind a reverse proxy on the same host every client looks loopback.
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        expected = settings.admin_token.encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
            message = "The admin API needs Authorization: Bearer <PRESENCE_ADMIN_TOKEN>"
            raise PubNubError(401, message, ADMIN, headers={"WWW-Authenticate": 'Bearer realm="admin"'})


async def advance_clock(request: web.Request) -> web.Response:
    """Move the clock of every process on this Redis forward; due timeouts and intervals fire now."""
    _check(request)
    seconds = query_seconds(request, "seconds", ADMIN)
    if seconds is None:
        raise PubNubError(400, "Missing seconds", ADMIN)
    if seconds > MAX_ADVANCE:
        raise PubNubError(400, f"Invalid seconds: at most {MAX_ADVANCE:.0f} (366 days) per call", ADMIN)
    store, clock = request.app[STORE], request.app[CLOCK]
    if await store.clock_offset() + seconds > MAX_OFFSET:
        # Checked before the move, so two advances racing may pass it together: the bound keeps a
        # margin of centuries before timetokens would change length.
        raise PubNubError(400, f"Invalid seconds: the clock moves at most {MAX_OFFSET:.0f} s in all", ADMIN)
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


# -- fault rules (presence_server/faults.py) --------------------------------------------------------


async def faults(request: web.Request) -> web.Response:
    """GET lists the rules, POST adds one, DELETE removes them all."""
    _check(request)
    if request.method == "POST":
        return await _add_fault(request)
    if request.method == "DELETE":
        return await _clear_faults(request)
    return await _list_faults(request)


async def _add_fault(request: web.Request) -> web.Response:
    """Keep a fault rule for every process on this Redis; answers ``{"id": "..."}``."""
    store, clock = request.app[STORE], request.app[CLOCK]
    rule, times = parse_rule(await request.read(), clock())
    if len(await store.fault_rules()) >= MAX_RULES:
        raise PubNubError(400, f"Invalid fault rule: at most {MAX_RULES} rules at once", ADMIN)
    fault_id = await store.add_fault(rule, times)
    await request.app[FAULTS].reload()  # this process applies it from its next request on
    return json_response({"status": 200, "id": fault_id})


async def _list_faults(request: web.Request) -> web.Response:
    now = request.app[CLOCK]()
    rules = [rule for rule in await request.app[STORE].fault_rules() if rule.get("until", now + 1) > now]
    return json_response({"status": 200, "faults": rules})


async def _clear_faults(request: web.Request) -> web.Response:
    removed = await request.app[STORE].clear_faults()
    await request.app[FAULTS].reload()
    return json_response({"status": 200, "removed": removed})


async def remove_fault(request: web.Request) -> web.Response:
    _check(request)
    fault_id = path_name(request, "fault_id", "fault id", 64, ADMIN)
    if not await request.app[STORE].remove_fault(fault_id):
        raise PubNubError(404, "No such fault rule", ADMIN)
    await request.app[FAULTS].reload()
    return json_response({"status": 200, "removed": 1})
