"""Subscribe v2 long-poll (docs/protocol.md 2.2): parse, one call to store/longpoll.py, render."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import web

from presence_server.context import LONGPOLLS, SETTINGS
from presence_server.http import bad_request, raw_json_response
from presence_server.params import (
    check_counts,
    keyset_and_channels,
    query_json_object,
    query_names,
    query_seconds,
    query_timetoken,
    query_uuid,
)
from presence_server.routes.presence import heartbeat_states
from presence_server.store import Delivery, SubscribeCall
from presence_server.store.fields import (
    MESSAGE_BODY,
    MESSAGE_CUSTOM_TYPE,
    MESSAGE_KIND,
    MESSAGE_META,
    MESSAGE_PUBLISHER,
    presence_payload,
)
from presence_server.store.subscription import is_wildcard, split_presence, subscription_of

REGION = 1  # t.r must be a non-zero integer: JS stops subscribing on 0 (docs/protocol.md 2.2.2).
MAX_NAMES = 500
MAX_WILDCARD_DOTS = 2


async def subscribe(request: web.Request) -> web.Response:
    app = request.app
    settings = app[SETTINGS]
    limit = settings.max_name_length
    sub_key, channels = keyset_and_channels(request, limit)
    groups = query_names(request, "channel-group", "channel group", limit)
    uuid = query_uuid(request, limit)
    _check_names(channels, groups)
    cursor = _cursor(request)
    timeout = query_seconds(request, "heartbeat")
    subscription = subscription_of(tuple(channels), tuple(groups))
    states = heartbeat_states(
        query_json_object(request, "state"), subscription.presence_channels, subscription.presence_groups
    )
    timeout = None if timeout is None else settings.clamp_timeout(timeout)
    call = SubscribeCall(sub_key, uuid, subscription, cursor, timeout, states)
    answer = await app[LONGPOLLS].subscribe(call)
    return raw_json_response(answer.rendered(render, sub_key))


def _check_names(channels: Sequence[str], groups: list[str]) -> None:
    if not channels and not groups:
        raise bad_request("Missing channels and channel groups: name at least one")
    if len(channels) + len(groups) > MAX_NAMES:
        raise bad_request(f"Too many channels and channel groups: at most {MAX_NAMES}")
    check_counts(channels, groups)
    for name in channels:
        if is_wildcard(name) and split_presence(name)[0].count(".") > MAX_WILDCARD_DOTS:
            raise bad_request("Wildcard maximum depth exceeded")


def _cursor(request: web.Request) -> str:
    return query_timetoken(request)


def render(cursor: str, found: Sequence[Delivery], sub_key: str) -> bytes:
    """The subscribe answer (docs/protocol.md 2.2.2): the next cursor and the envelopes."""
    return orjson.dumps({"t": {"t": cursor, "r": REGION}, "m": [envelope(d, sub_key) for d in found]})


def envelope(delivery: Delivery, sub_key: str) -> dict[str, Any]:
    """The envelope of docs/protocol.md 2.2.3: no ``e`` on messages and presence (JS would take them for
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
        env["d"] = presence_payload(fields)
    else:
        env["d"] = orjson.Fragment(fields[MESSAGE_BODY])
        if MESSAGE_PUBLISHER in fields:
            env["i"] = fields[MESSAGE_PUBLISHER]
        if MESSAGE_META in fields:
            env["u"] = orjson.Fragment(fields[MESSAGE_META])
        if MESSAGE_KIND in fields:
            env["e"] = int(fields[MESSAGE_KIND])
        if MESSAGE_CUSTOM_TYPE in fields:
            env["cmt"] = fields[MESSAGE_CUSTOM_TYPE]
    if source.via is not None:
        env["b"] = source.via
    return env
