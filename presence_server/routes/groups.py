"""Channel groups (docs/protocol.md 2.10)."""

from __future__ import annotations

from aiohttp import web

from presence_server.context import SETTINGS, STORE
from presence_server.http import CHANNEL_REGISTRY, PubNubError, bad_request, json_response
from presence_server.params import path_name, query_names
from presence_server.store import GroupCapExceeded

# PubNub's documented limits: 200 channels per add call, 2,000 channels per group.
MAX_CHANNELS_PER_CALL = 200


def _ok(**fields: object) -> web.Response:
    return json_response({"status": 200, "message": "OK", **fields, "service": CHANNEL_REGISTRY, "error": False})


def _keyset_and_group(request: web.Request) -> tuple[str, str]:
    limit = request.app[SETTINGS].max_name_length
    sub_key = path_name(request, "sub_key", "subscribe key", limit, CHANNEL_REGISTRY)
    group = path_name(request, "group", "channel group", limit, CHANNEL_REGISTRY)
    return sub_key, group


async def modify_or_list(request: web.Request) -> web.Response:
    sub_key, group = _keyset_and_group(request)
    store, limit = request.app[STORE], request.app[SETTINGS].max_name_length
    adding, removing = "add" in request.query, "remove" in request.query
    if adding and removing:
        raise bad_request("Use either add or remove, not both", CHANNEL_REGISTRY)
    if not adding and not removing:
        channels = await store.group_channels(sub_key, group)
        return _ok(payload={"channels": channels, "group": group})
    channels = query_names(request, "add" if adding else "remove", "channel", limit, CHANNEL_REGISTRY)
    if not channels:
        raise bad_request("Missing channels", CHANNEL_REGISTRY)
    if len(channels) > MAX_CHANNELS_PER_CALL:
        raise bad_request(f"Too many channels: at most {MAX_CHANNELS_PER_CALL} per call", CHANNEL_REGISTRY)
    if adding:
        try:
            await store.group_add(sub_key, group, channels)
        except GroupCapExceeded:
            raise PubNubError(
                400,
                f"Channel group would exceed {store.group_cap} channels",
                CHANNEL_REGISTRY,
            ) from None
    else:
        await store.group_remove(sub_key, group, channels)
    return _ok()


async def delete(request: web.Request) -> web.Response:
    sub_key, group = _keyset_and_group(request)
    await request.app[STORE].group_delete(sub_key, group)
    return _ok()


async def list_groups(request: web.Request) -> web.Response:
    limit = request.app[SETTINGS].max_name_length
    sub_key = path_name(request, "sub_key", "subscribe key", limit, CHANNEL_REGISTRY)
    groups = await request.app[STORE].group_list(sub_key)
    return _ok(payload={"groups": groups, "sub_key": sub_key})
