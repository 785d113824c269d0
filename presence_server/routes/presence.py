"""Heartbeat, leave, here now, where now, and user state (docs/protocol.md 2.3 to 2.8)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiohttp import web

from presence_server.context import CLOCK, SETTINGS, STORE
from presence_server.http import bad_request, ok
from presence_server.params import (
    check_counts,
    dump_json,
    keyset_and_channels,
    path_name,
    query_flag,
    query_int,
    query_json_object,
    query_names,
    query_seconds,
    query_uuid,
)
from presence_server.store import HereNowChannel

MAX_PAGE = 1000


class _Call:
    """What every presence call names: keyset, channels, channel groups."""

    def __init__(self, request: web.Request, *, need_targets: bool = True) -> None:
        limit = request.app[SETTINGS].max_name_length
        if need_targets:
            self.sub_key, self.channels, self.groups = _targets(request, limit)
        else:
            self.sub_key, self.channels, self.groups = path_name(request, "sub_key", "subscribe key", limit), [], []


def _targets(request: web.Request, limit: int) -> tuple[str, Sequence[str], list[str]]:
    """The keyset, channels and channel groups a call names (at least one channel or group)."""
    sub_key, channels = keyset_and_channels(request, limit)
    groups = query_names(request, "channel-group", "channel group", limit)
    if not channels and not groups:
        raise bad_request("Missing channels and channel groups: name at least one")
    check_counts(channels, groups)
    return sub_key, channels, groups


async def heartbeat(request: web.Request) -> web.Response:
    # The call clients make most: the app's parts are looked up once, and no _Call is built.
    app = request.app
    settings = app[SETTINGS]
    limit = settings.max_name_length
    sub_key, channels, groups = _targets(request, limit)
    uuid = query_uuid(request, limit)
    timeout = query_seconds(request, "heartbeat")
    state = query_json_object(request, "state")
    states = {} if state is None else heartbeat_states(state, channels, groups)
    await app[STORE].heartbeat(
        sub_key,
        uuid,
        channels,
        groups,
        now=app[CLOCK](),
        timeout=None if timeout is None else settings.clamp_timeout(timeout),
        states=states,
    )
    return ok()


def heartbeat_states(state: dict[str, Any] | None, channels: Sequence[str], groups: Sequence[str]) -> dict[str, str]:
    """Heartbeat state comes keyed by channel (presence engines) or flat (JS ``setState`` with
    ``withHeartbeat``), docs/protocol.md 2.3: a map when every key names one of the request's channels or
    groups and every value is an object, else one state for all of them. ``{}`` is an empty map:
    it changes nothing."""
    if not state:
        return {}
    names = set(channels) | set(groups)
    if all(key in names and isinstance(value, dict) for key, value in state.items()):
        return {key: dump_json(value) for key, value in state.items()}
    flat = dump_json(state)
    return dict.fromkeys(names, flat)


async def leave(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    call = _Call(request)
    uuid = query_uuid(request, settings.max_name_length)
    await request.app[STORE].leave(call.sub_key, uuid, call.channels, call.groups, now=request.app[CLOCK]())
    return ok(action="leave")


async def here_now(request: web.Request) -> web.Response:
    call = _Call(request)
    page = _Page(request)
    found = await request.app[STORE].here_now(
        call.sub_key,
        call.channels,
        call.groups,
        now=request.app[CLOCK](),
        offset=page.offset,
        limit=page.limit,
        with_uuids=page.with_uuids,
        with_state=page.with_state,
    )
    if len(call.channels) == 1 and not call.groups:
        # The single-channel shape, only for exactly one channel and no groups (docs/protocol.md 2.5).
        entry = found[0]
        body: dict[str, Any] = {"status": 200, "message": "OK", "service": "Presence"}
        if page.with_uuids:
            body["uuids"] = page.occupants(entry)
        body["occupancy"] = entry.occupancy
        return ok(**body)
    return _payload_shape(found, page)


async def here_now_global(request: web.Request) -> web.Response:
    call = _Call(request, need_targets=False)
    page = _Page(request)
    found = await request.app[STORE].here_now_global(
        call.sub_key,
        now=request.app[CLOCK](),
        offset=page.offset,
        limit=page.limit,
        with_uuids=page.with_uuids,
        with_state=page.with_state,
    )
    return _payload_shape(found, page)


class _Page:
    """``disable_uuids``, ``state``, ``limit`` (0..1000, larger is capped) and ``offset``."""

    def __init__(self, request: web.Request) -> None:
        self.with_uuids = not query_flag(request, "disable_uuids")
        self.with_state = self.with_uuids and query_flag(request, "state")
        self.limit = min(query_int(request, "limit", MAX_PAGE, 0), MAX_PAGE)
        self.offset = query_int(request, "offset", 0, 0)

    def occupants(self, entry: HereNowChannel) -> list[Any]:
        if not self.with_state:
            return entry.uuids
        out: list[dict[str, Any]] = []
        for uuid, state in zip(entry.uuids, entry.states, strict=True):
            out.append({"uuid": uuid, "state": state} if state else {"uuid": uuid})
        return out


def _payload_shape(found: list[HereNowChannel], page: _Page) -> web.Response:
    # Listed: channels with someone present. Every entry carries "uuids" unless disable_uuids,
    # since the JS SDK maps over it unconditionally (docs/protocol.md 2.5).
    channels: dict[str, Any] = {}
    for entry in found:
        if entry.occupancy == 0:
            continue
        item: dict[str, Any] = {}
        if page.with_uuids:
            item["uuids"] = page.occupants(entry)
        item["occupancy"] = entry.occupancy
        channels[entry.channel] = item
    payload = {
        "channels": channels,
        "total_channels": len(channels),
        "total_occupancy": sum(item["occupancy"] for item in channels.values()),
    }
    return ok(payload=payload)


async def where_now(request: web.Request) -> web.Response:
    limit = request.app[SETTINGS].max_name_length
    sub_key = path_name(request, "sub_key", "subscribe key", limit)
    uuid = path_name(request, "uuid", "uuid", limit)
    channels = await request.app[STORE].where_now(sub_key, uuid, now=request.app[CLOCK]())
    return ok(payload={"channels": channels})


async def get_state(request: web.Request) -> web.Response:
    call = _Call(request)
    uuid = path_name(request, "uuid", "uuid", request.app[SETTINGS].max_name_length)
    states = await request.app[STORE].get_state(call.sub_key, uuid, call.channels, call.groups)
    if len(call.channels) == 1 and not call.groups:
        channel = call.channels[0]
        return ok(uuid=uuid, payload=states[channel], channel=channel)
    # Python requires the payload.channels wrapper for several channels (docs/protocol.md 2.8).
    return ok(payload={"channels": states}, uuid=uuid)


async def set_state(request: web.Request) -> web.Response:
    call = _Call(request)
    uuid = path_name(request, "uuid", "uuid", request.app[SETTINGS].max_name_length)
    state = query_json_object(request, "state")
    if state is None:
        raise bad_request("Missing state")
    await request.app[STORE].set_state(
        call.sub_key,
        uuid,
        call.channels,
        call.groups,
        dump_json(state),
        now=request.app[CLOCK](),
    )
    return ok(payload=state)
