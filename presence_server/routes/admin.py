"""The admin API for use as a test double (PRESENCE_ADMIN=1): move the clock, reset or inspect a keyset,
add and remove fault rules, and the inspector page with what it reads and does."""

from __future__ import annotations

import hmac
import ipaddress

from aiohttp import web

from presence_server.context import BUS, CLOCK, FAULTS, LONGPOLLS, SETTINGS, STORE
from presence_server.faults import MAX_RULES, parse_rule
from presence_server.http import PubNubError, json_response
from presence_server.inspector.feed import feed_item, keyset_feed, message_item
from presence_server.inspector.page import PAGE, file_response
from presence_server.params import (
    check_counts,
    check_name,
    int_or_none,
    path_name,
    query_names,
    query_seconds,
    query_value,
    timetoken_or_none,
)
from presence_server.store import SubscribeCall

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


def _check_peer(request: web.Request) -> None:
    if not request.app[SETTINGS].admin_remote and not _is_loopback(request.remote):
        raise PubNubError(403, "The admin API answers loopback clients only", ADMIN)


def _check(request: web.Request) -> None:
    _check_peer(request)
    settings = request.app[SETTINGS]
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


# -- the inspector page and what it reads and does (docs/protocol.md 9.2) ---------------------------

MAX_MESSAGES = 100  # per channel, in one answer of last messages


def _sub_key(request: web.Request) -> str:
    return path_name(request, "sub_key", "subscribe key", request.app[SETTINGS].max_name_length, ADMIN)


async def inspector_page(request: web.Request) -> web.Response:
    """The page: without the token check, since a browser opening it cannot send one; the page asks
    for the token and sends it with every call it makes, and holds no data of its own."""
    _check_peer(request)
    sub_key = query_value(request, "sub_key", ADMIN)
    if sub_key:
        check_name(sub_key, "subscribe key", request.app[SETTINGS].max_name_length, ADMIN)
    return file_response(PAGE, ADMIN)


async def inspector_file(request: web.Request) -> web.Response:
    _check_peer(request)
    return file_response(request.match_info["name"], ADMIN)


async def last_messages(request: web.Request) -> web.Response:
    _check(request)
    sub_key = _sub_key(request)
    count = _count(request)
    channels = _channels(request) or None
    found = await request.app[STORE].last_messages(sub_key, channels, count)
    body = {ch: [message_item(tt, ch, fields) for tt, fields in entries] for ch, entries in found.items()}
    return json_response({"status": 200, "sub_key": sub_key, "channels": body})


async def events(request: web.Request) -> web.Response:
    """The live feed: a long-poll over every presence log of the keyset (with ``messages=1``, every
    message log too), held and woken as a subscribe poll is; without ``tt`` it answers at once with
    the cursor to poll from."""
    _check(request)
    sub_key = _sub_key(request)
    raw = query_value(request, "tt", ADMIN) or "0"
    if timetoken_or_none(raw) is None:
        raise PubNubError(400, "Invalid tt: not a timetoken", ADMIN)
    feed = keyset_feed(messages=_flag(request, "messages"))
    call = SubscribeCall(sub_key, "", feed, str(int(raw)), None, {})
    answer = await request.app[LONGPOLLS].subscribe(call)
    items = [feed_item(delivery) for delivery in answer.deliveries]
    return json_response({"status": 200, "sub_key": sub_key, "tt": answer.cursor, "events": items})


async def leave(request: web.Request) -> web.Response:
    """Make a user leave channels (all it is on when none are named), with the usual leave events."""
    _check(request)
    store, now = request.app[STORE], request.app[CLOCK]()
    sub_key, uuid = _sub_key(request), _uuid(request)
    channels = _channels(request) or await store.where_now(sub_key, uuid, now=now)
    left = await store.leave(sub_key, uuid, channels, now=now)
    return json_response({"status": 200, "sub_key": sub_key, "uuid": uuid, "channels": channels, "left": left})


async def time_out(request: web.Request) -> web.Response:
    """Make a user time out now on channels (all it is on when none are named): its deadline goes to
    the server's present, and a sweep then removes it with the usual timeout events."""
    _check(request)
    store, now = request.app[STORE], request.app[CLOCK]()
    sub_key, uuid = _sub_key(request), _uuid(request)
    channels = _channels(request) or await store.where_now(sub_key, uuid, now=now)
    present = await store.expire_now(sub_key, uuid, channels, now=now)
    timeouts = await store.sweep(now=now) if present else 0
    return json_response(
        {"status": 200, "sub_key": sub_key, "uuid": uuid, "channels": present, "now": now, "timeouts": timeouts}
    )


def _uuid(request: web.Request) -> str:
    uuid = query_value(request, "uuid", ADMIN)
    if not uuid:
        raise PubNubError(400, "Missing uuid", ADMIN)
    return check_name(uuid, "uuid", request.app[SETTINGS].max_name_length, ADMIN)


def _channels(request: web.Request) -> list[str]:
    channels = query_names(request, "channel", "channel", request.app[SETTINGS].max_name_length, ADMIN)
    check_counts(channels, (), ADMIN)
    return channels


def _count(request: web.Request) -> int:
    raw = query_value(request, "count", ADMIN)
    if not raw:
        return 10
    count = int_or_none(raw)
    if count is None or not 1 <= count <= MAX_MESSAGES:
        raise PubNubError(400, f"Invalid count: an integer from 1 to {MAX_MESSAGES}", ADMIN)
    return count


def _flag(request: web.Request, key: str) -> bool:
    raw = query_value(request, key, ADMIN) or "0"
    if raw not in ("0", "1", "true", "false"):
        raise PubNubError(400, f"Invalid {key}: 1 or 0", ADMIN)
    return raw in ("1", "true")
