"""Fault injection for test doubles (PRESENCE_ADMIN=1): rules that make matching requests fail, wait, lose
their connection or come back empty, so a test suite sees what its app does when the service misbehaves.

A rule names what it matches (``route``, ``sub_key``, optionally ``channel`` and ``uuid``), one action
(``status``, ``delay_ms``, ``drop``, ``empty``) and for how long (``times`` matching requests and/or
``seconds`` of the server's clock; neither: until removed). Rules live in Redis (store/faults.py), so every
process on one Redis applies them, and each process keeps a copy by route and keyset, read again whenever
a rule changes (announced on the admin clock's channel). A request no rule can match pays one dictionary
lookup (``Faults.by_route``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from aiohttp import web
from aiohttp.typedefs import Handler

from presence_server.context import CLOCK, STORE
from presence_server.http import CHANNEL_REGISTRY, PRESENCE, PubNubError, json_response
from presence_server.params import load_json, raw_path_value, raw_query
from presence_server.store import PresenceStore, timetoken_at

ADMIN = "Admin"
ROUTES = ("subscribe", "heartbeat", "leave", "here_now", "where_now", "state", "publish", "signal", "groups", "history")
ACTIONS = ("status", "delay_ms", "drop", "empty")
MAX_DELAY_MS = 300_000
MAX_TIMES = 1_000_000
MAX_SECONDS = 7 * 86_400.0
MAX_RULES = 1000
NAME_LIMIT = 2048


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    id: str
    route: str
    sub_key: str
    channel: str | None
    uuid: str | None
    action: str
    value: Any
    counted: bool  # has ``times``: each use is taken in Redis
    until: float | None  # the server clock's time it ends, or None

    def matches(self, request: web.Request) -> bool:
        if self.uuid is not None and raw_query(request).get("uuid") != self.uuid:
            return False
        return self.channel is None or self.channel in _channels(request)


def _channels(request: web.Request) -> set[str]:
    names: set[str] = set()
    for key in ("channels", "channel"):
        if key in request.match_info:
            names.update(name for name in unquote(raw_path_value(request, key)).split(",") if name)
    groups = raw_query(request).get("channel-group")
    if groups:
        names.update(groups.split(","))
    return names


def rule_of(stored: dict[str, Any]) -> Rule:
    action = next(name for name in ACTIONS if name in stored)
    return Rule(
        id=str(stored["id"]),
        route=str(stored["route"]),
        sub_key=str(stored["sub_key"]),
        channel=stored.get("channel"),
        uuid=stored.get("uuid"),
        action=action,
        value=stored[action],
        counted="times" in stored,
        until=stored.get("until"),
    )


def parse_rule(body: bytes, now: float) -> tuple[dict[str, Any], int | None]:
    """The rule to keep (with ``created`` and ``until`` on the server's clock) and its ``times``; raises
    a 400 in the admin API's shape for anything else."""
    value = load_json(body or b"null", "fault rule", ADMIN)
    if not isinstance(value, dict):
        raise _bad("a fault rule is a JSON object")
    known = {"route", "sub_key", "channel", "uuid", "times", "seconds", *ACTIONS}
    unknown = sorted(set(value) - known)
    if unknown:
        raise _bad(f"unknown fields: {', '.join(unknown)[:100]}")
    route = value.get("route")
    if route not in ROUTES:
        raise _bad(f"route must be one of {', '.join(ROUTES)}")
    rule: dict[str, Any] = {"route": route, "sub_key": _name(value, "sub_key", required=True)}
    for key in ("channel", "uuid"):
        if key in value:
            rule[key] = _name(value, key, required=True)
    actions = [name for name in ACTIONS if name in value]
    if len(actions) != 1:
        raise _bad("a fault rule has exactly one of status, delay_ms, drop, empty")
    rule.update(_action(actions[0], value[actions[0]], route))
    times = _bounded_int(value, "times", 1, MAX_TIMES)
    if times is not None:
        rule["times"] = times
    seconds = value.get("seconds")
    if seconds is not None:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= MAX_SECONDS:
            raise _bad(f"seconds must be a number above 0 and at most {MAX_SECONDS:.0f}")
        rule["seconds"] = seconds
        rule["until"] = now + float(seconds)
    rule["created"] = now
    return rule, times


def _action(action: str, given: Any, route: str) -> dict[str, Any]:
    if action == "status":
        if isinstance(given, bool) or not isinstance(given, int) or not 400 <= given <= 599:
            raise _bad("status must be an HTTP error status, 400 to 599")
        return {"status": given}
    if action == "delay_ms":
        if isinstance(given, bool) or not isinstance(given, int) or not 0 <= given <= MAX_DELAY_MS:
            raise _bad(f"delay_ms must be an integer from 0 to {MAX_DELAY_MS}")
        return {"delay_ms": given}
    if given is not True:
        raise _bad(f"{action} must be true")
    if action == "empty" and route != "subscribe":
        raise _bad("empty applies to the subscribe route only")
    return {action: True}


def _name(value: dict[str, Any], key: str, *, required: bool) -> str:
    name = value.get(key)
    if not isinstance(name, str) or not name or len(name) > NAME_LIMIT:
        raise _bad(f"{key} must be a non-empty string")
    return name


def _bounded_int(value: dict[str, Any], key: str, low: int, high: int) -> int | None:
    given = value.get(key)
    if given is None:
        return None
    if isinstance(given, bool) or not isinstance(given, int) or not low <= given <= high:
        raise _bad(f"{key} must be an integer from {low} to {high}")
    return given


def _bad(message: str) -> PubNubError:
    return PubNubError(400, f"Invalid fault rule: {message}", ADMIN)


class Faults:
    """This process's copy of the rules, by route and keyset."""

    def __init__(self, store: PresenceStore, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock
        self.by_route: dict[str, dict[str, list[Rule]]] = {}
        self.applied = 0

    async def reload(self) -> None:
        by_route: dict[str, dict[str, list[Rule]]] = {}
        for stored in await self.store.fault_rules():
            rule = rule_of(stored)
            by_route.setdefault(rule.route, {}).setdefault(rule.sub_key, []).append(rule)
        self.by_route = by_route

    async def pick(self, request: web.Request, keysets: dict[str, list[Rule]]) -> Rule | None:
        """The first live rule of the request's keyset that matches it (a counted one is taken)."""
        rules = keysets.get(request.match_info.get("sub_key", ""))
        if not rules:
            return None
        now = self.clock()
        for rule in rules:
            if rule.until is not None and now >= rule.until:
                continue
            if not rule.matches(request):
                continue
            if rule.counted and not await self.store.use_fault(rule.id):
                continue
            self.applied += 1
            return rule
        return None


def fault_checked(handler: Handler, route: str, faults: Callable[[], Faults | None]) -> Handler:
    """``handler`` behind the rules of ``route``: with none for it, one dictionary lookup."""

    async def checked(request: web.Request) -> web.StreamResponse:
        current = faults()
        keysets = current.by_route.get(route) if current is not None else None
        if keysets and current is not None:
            rule = await current.pick(request, keysets)
            if rule is not None:
                return await _apply(rule, request, handler)
        return await handler(request)

    return checked


async def _apply(rule: Rule, request: web.Request, handler: Handler) -> web.StreamResponse:
    if rule.action == "delay_ms":
        await asyncio.sleep(rule.value / 1000)
        return await handler(request)
    if rule.action == "drop":
        # No answer at all: the connection closes under the client, as a crashed server's would.
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError
    if rule.action == "empty":
        return await _empty_poll(request)
    status = int(rule.value)
    try:
        message = HTTPStatus(status).phrase
    except ValueError:  # a status HTTP names no reason for (e.g. 499)
        message = "Error"
    if rule.route in ("publish", "signal"):
        return json_response([0, message, timetoken_at(time.time())], status)
    service = CHANNEL_REGISTRY if rule.route == "groups" else PRESENCE
    return PubNubError(status, message, service).response()


async def _empty_poll(request: web.Request) -> web.Response:
    """A subscribe answered at once with no messages: the request's cursor, or a fresh one for a handshake."""
    tt = raw_query(request).get("tt", "0")
    if not tt.isdigit() or int(tt) == 0:
        tt = await request.app[STORE].cursor(request.match_info["sub_key"], now=request.app[CLOCK]())
    region = raw_query(request).get("tr", "1")
    return json_response({"t": {"t": tt, "r": int(region) if region.isdigit() else 1}, "m": []})


def route_of(canonical: str) -> str | None:
    """The fault route name of a path pattern of routes/__init__.py (None: no rules apply, as for the
    admin API, whose ``.../leave`` must never be taken for a client's leave)."""
    if canonical.startswith("/admin/") or canonical.startswith("/inspector"):
        return None
    checks: list[tuple[Callable[[str], bool], str]] = [
        (lambda p: p.startswith("/v2/subscribe/"), "subscribe"),
        (lambda p: p.endswith("/heartbeat"), "heartbeat"),
        (lambda p: p.endswith("/leave"), "leave"),
        (lambda p: p.startswith("/v2/presence/") and "/channel/" in p and "/uuid/" in p, "state"),
        (lambda p: p.startswith("/v2/presence/") and "/uuid/" in p, "where_now"),
        (lambda p: p.startswith("/v2/presence/"), "here_now"),
        (lambda p: p.startswith("/publish/"), "publish"),
        (lambda p: p.startswith("/signal/"), "signal"),
        (lambda p: p.startswith("/v1/channel-registration/"), "groups"),
        (lambda p: "/history" in p, "history"),
    ]
    return next((name for check, name in checks if check(canonical)), None)
