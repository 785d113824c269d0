"""Subscribe v2 long-poll (protocol 2.2): handshake, cursor reads, held polls, presence refresh."""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from typing import Any

import orjson
from aiohttp import web

from presence_server.context import BUS, CLOCK, SETTINGS, STORE
from presence_server.http import bad_request, raw_json_response
from presence_server.params import (
    path_name,
    path_names,
    query_json_object,
    query_names,
    query_seconds,
    query_uuid,
    query_value,
)
from presence_server.routes.presence import heartbeat_states
from presence_server.store import Delivery, timetoken_at
from presence_server.store.bus import GROUP_CHANGED
from presence_server.store.subscription import is_wildcard, split_presence, subscription_of

REGION = 1  # t.r must be a non-zero integer: JS stops subscribing on 0 (protocol 2.2.2).
MAX_NAMES = 500
MAX_WILDCARD_DOTS = 2
PAGE = 100
TIMETOKEN = re.compile(r"\d{1,19}")
OWN_JOIN_WINDOW = 5.0  # seconds: how recent a subscriber's own join may be to be handed to it


class RefreshMemo:
    """When this process last refreshed a subscriber's presence, so that a poll after every message
    does not run a heartbeat script every time. The window is half the smallest presence timeout,
    so a skipped refresh can never let anyone time out."""

    def __init__(self, window: float, size: int = 100_000) -> None:
        self.window = window
        self.size = size
        self._seen: OrderedDict[tuple[Any, ...], float] = OrderedDict()

    def forget(self, sub_key: str) -> None:
        """Forget one keyset's subscribers (after an admin reset, they must join again)."""
        for key in [key for key in self._seen if key[0] == sub_key]:
            del self._seen[key]

    def due(self, key: tuple[Any, ...], now: float) -> bool:
        last = self._seen.get(key)
        if last is not None and 0 <= now - last < self.window:
            return False
        self._seen[key] = now
        self._seen.move_to_end(key)
        if len(self._seen) > self.size:
            self._seen.popitem(last=False)
        return True


REFRESH_MEMO = web.AppKey("refresh_memo", RefreshMemo)


async def subscribe(request: web.Request) -> web.Response:  # noqa: C901 (to be split)
    app = request.app
    settings, store, clock = app[SETTINGS], app[STORE], app[CLOCK]
    limit = settings.max_name_length
    sub_key = path_name(request, "sub_key", "subscribe key", limit)
    channels = path_names(request, "channels", "channel", limit)
    groups = query_names(request, "channel-group", "channel group", limit)
    uuid = query_uuid(request, limit)
    _check_names(channels, groups)
    cursor = _cursor(request)
    timeout = query_seconds(request, "heartbeat")
    subscription = subscription_of(tuple(channels), tuple(groups))
    # Presence rides on subscribe: the subscriber is present on each non-presence channel and group.
    present_on = subscription.presence_channels, subscription.presence_groups
    states = heartbeat_states(query_json_object(request, "state"), *present_on)
    timeout = None if timeout is None else settings.clamp_timeout(timeout)
    # A poll that says what the last one said (JS repeats its state on every poll) need not run
    # the heartbeat script again within the memo's window.
    memo_key = (sub_key, uuid, *present_on, timeout, tuple(sorted(states.items())))

    if cursor == "0":
        # Handshake: the cursor is taken before the join, so the subscriber's own join comes after it.
        handshake = await store.cursor(sub_key, now=clock())
        if present_on[0] or present_on[1]:
            await store.heartbeat(sub_key, uuid, *present_on, now=clock(), timeout=timeout, states=states)
            app[REFRESH_MEMO].due(memo_key, clock())
            # JS sends its join heartbeat in parallel with the handshake (protocol 3): when the
            # heartbeat won, the join is already logged before our cursor. Start just before a join
            # of this uuid from the last few seconds, so the subscriber still sees its own join.
            watched = [t.base for t in subscription.direct if t.presence and t.base in present_on[0]]
            if watched:
                own_join = await store.recent_join(sub_key, uuid, watched, since=clock() - OWN_JOIN_WINDOW)
                if own_join is not None and int(own_join) <= int(handshake):
                    handshake = str(int(own_join) - 1)
        return _reply(handshake, [], sub_key)

    if (present_on[0] or present_on[1]) and app[REFRESH_MEMO].due(memo_key, clock()):
        await store.heartbeat(sub_key, uuid, *present_on, now=clock(), timeout=timeout, states=states)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.longpoll_hold
    change_names = [GROUP_CHANGED + t.base for t in subscription.groups]
    prefixes = [t.prefix for t in subscription.wildcards]
    with app[BUS].waiter(sub_key) as waiter:
        # Watch before reading, so a wake-up between the read and the wait is never lost; when the
        # read finds logs not yet watched (group members), watch them too and read once more.
        watched = sorted({t.name for t in subscription.direct} | set(change_names))
        waiter.watch(watched, prefixes)
        waiter.read_ahead(
            store.read_key(sub_key, subscription, cursor, PAGE),
            lambda marker: store.read(sub_key, subscription, cursor, limit=PAGE, fresh_after=marker),
        )
        while True:
            # After a wake-up, any read that started after it was dispatched sees the new entry:
            # the bus made that read for every poll woken by one publish, or the poll makes it.
            marker = store.read_marker() if waiter.marker is None else waiter.marker
            waiter.marker = None
            waiter.clear()
            result = waiter.take_result()
            if result is None:
                result = await store.read(sub_key, subscription, cursor, limit=PAGE, fresh_after=marker)
            if result.deliveries:
                if result.body is None:  # a publish to a busy channel: render once, answer everyone
                    result.body = _render(result.cursor, result.deliveries, sub_key)
                return raw_json_response(result.body)
            present = max(int(result.latest), int(timetoken_at(clock())) - 1)
            if int(cursor) > present:
                # A cursor from the future (another clock, a restarted in-memory server): nothing
                # can be missed between the present and it, so hand out the present and go on.
                return _reply(str(present), [], sub_key)
            wanted = sorted({s.delivered_as for s in result.sources} | set(change_names))
            if wanted != watched:
                watched = wanted
                waiter.watch(watched, prefixes)
                continue
            remaining = deadline - loop.time()
            if app[BUS].closing or remaining <= 0 or not await waiter.wait(remaining) or app[BUS].closing:
                # Held long enough, or the server is shutting down: an empty answer with the same
                # cursor, always safe; the client polls again at once, elsewhere if need be (2.2.7).
                return _reply(cursor, [], sub_key)


def _check_names(channels: list[str], groups: list[str]) -> None:
    if not channels and not groups:
        raise bad_request("Missing channels and channel groups: name at least one")
    if len(channels) + len(groups) > MAX_NAMES:
        raise bad_request(f"Too many channels and channel groups: at most {MAX_NAMES}")
    for name in channels:
        if is_wildcard(name) and split_presence(name)[0].count(".") > MAX_WILDCARD_DOTS:
            raise bad_request("Wildcard maximum depth exceeded")


def _cursor(request: web.Request) -> str:
    raw = query_value(request, "tt") or "0"
    if not TIMETOKEN.fullmatch(raw):
        raise bad_request(f"Invalid timetoken: {raw!r}")
    return str(int(raw))


def _reply(cursor: str, found: list[Delivery], sub_key: str) -> web.Response:
    return raw_json_response(_render(cursor, found, sub_key))


def _render(cursor: str, found: list[Delivery], sub_key: str) -> bytes:
    return orjson.dumps({"t": {"t": cursor, "r": REGION}, "m": [envelope(d, sub_key) for d in found]})


def envelope(delivery: Delivery, sub_key: str) -> dict[str, Any]:
    """The envelope of protocol 2.2.3: no ``e`` on messages and presence (JS would take them for
    files), ``p.t`` a string, ``b`` naming the group or wildcard it matched through."""
    source, fields = delivery.source, delivery.fields
    env: dict[str, Any] = {
        "a": "1",
        "f": 0,
        "p": {"t": delivery.timetoken, "r": REGION},
        "k": sub_key,
        "c": source.delivered_as,
    }
    if source.presence:
        env["d"] = _presence_payload(fields)
    else:
        env["d"] = orjson.Fragment(fields["m"])
        if "i" in fields:
            env["i"] = fields["i"]
        if "u" in fields:
            env["u"] = orjson.Fragment(fields["u"])
        if "e" in fields:
            env["e"] = int(fields["e"])
        if "cmt" in fields:
            env["cmt"] = fields["cmt"]
    if source.via is not None:
        env["b"] = source.via
    return env


def _presence_payload(fields: dict[str, str]) -> dict[str, Any]:
    # Integer occupancy and timestamp, string action: Python's subscribe loop dies otherwise (2.2.5).
    payload: dict[str, Any] = {"action": fields["a"], "timestamp": int(fields["s"]), "occupancy": int(fields["o"])}
    if "u" in fields:
        payload["uuid"] = fields["u"]
    if "d" in fields:
        payload["data"] = orjson.Fragment(fields["d"])
    if fields.get("r") == "1":
        payload["here_now_refresh"] = True
    for short, name in (("j", "join"), ("l", "leave"), ("t", "timeout")):
        if short in fields:
            payload[name] = orjson.Fragment(fields[short])
    return payload
