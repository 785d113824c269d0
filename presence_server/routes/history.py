"""Message history (docs/protocol.md 12): v2 history, v3 fetch (with and without actions), message counts
and delete. Errors have history's shape: ``{"status", "error": true, "error_message", "channels": {}}``."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web

from presence_server.context import CLOCK, SETTINGS, STORE
from presence_server.http import PubNubError, json_response
from presence_server.params import (
    int_or_none,
    path_name,
    path_names,
    query_flag,
    query_value,
    timetoken_or_none,
)
from presence_server.store.fields import MESSAGE_BODY, MESSAGE_CUSTOM_TYPE, MESSAGE_META, MESSAGE_PUBLISHER
from presence_server.store.history import Entry, Walk

HISTORY = "history"
MAX_FETCH_CHANNELS = 500
MAX_COUNT_CHANNELS = 100
DISABLED = (
    "Use of the history API requires the Storage & Playback which is not enabled for this subscribe key. "
    "Set PRESENCE_HISTORY_RETENTION above 0 to turn it on."
)
DELETE_DISABLED = (
    "Use of the history Delete API requires both Storage & Playback and Storage Delete enabled. "
    "Set PRESENCE_HISTORY_RETENTION above 0 to turn them on."
)


class HistoryError(PubNubError):
    """History's error shape (docs/protocol.md 12.6)."""

    def response(self) -> web.Response:
        body = {"status": self.status, "error": True, "error_message": self.message, "channels": {}}
        return json_response(body, self.status)


Handler = Callable[[web.Request], Awaitable[web.Response]]


def history_errors(handler: Handler) -> Handler:
    """Refuse every call while history is off; answer the handler's 400s in history's shape."""

    @functools.wraps(handler)
    async def handle(request: web.Request) -> web.Response:
        if request.app[SETTINGS].history_retention <= 0:
            raise HistoryError(403, DELETE_DISABLED if request.method == "DELETE" else DISABLED)
        try:
            return await handler(request)
        except HistoryError:
            raise
        except PubNubError as exc:
            if exc.status != 400:
                raise
            raise HistoryError(400, exc.message) from None

    return handle


def _timetoken(request: web.Request, key: str) -> int | None:
    raw = query_value(request, key)
    if raw is None or raw == "":
        return None
    value = timetoken_or_none(raw)
    if value is None:
        raise HistoryError(400, f"Invalid {key}: a timetoken is a non-negative integer")
    return value


def _count(request: web.Request, key: str, default: int, cap: int) -> int:
    """A page size: absent or 0 is the default, above the cap is the cap, negative or not a number a 400."""
    raw = query_value(request, key)
    if raw is None or raw == "":
        return default
    value = int_or_none(raw) if raw.isdigit() else None
    if value is None:
        raise HistoryError(400, f"Invalid {key}: must be a non-negative integer")
    return min(value, cap) if value else default


def _walk(request: web.Request) -> Walk:
    return Walk(_timetoken(request, "start"), _timetoken(request, "end"), query_flag(request, "reverse"))


def _limit(request: web.Request) -> int:
    return request.app[SETTINGS].max_name_length


@history_errors
async def history_v2(request: web.Request) -> web.Response:
    """``[[items], first, last]`` (docs/protocol.md 12.2)."""
    sub_key = path_name(request, "sub_key", "subscribe key", _limit(request))
    channel = path_name(request, "channel", "channel", _limit(request))
    count = _count(request, "count", 100, 100)
    entries = await request.app[STORE].history(sub_key, channel, _walk(request), count, now=request.app[CLOCK]())
    with_token, with_meta = query_flag(request, "include_token"), query_flag(request, "include_meta")
    strings = query_flag(request, "string_message_token") or query_flag(request, "stringtoken")
    items: list[Any] = []
    for entry_id, fields in entries:
        message = orjson.Fragment(fields[MESSAGE_BODY])
        if not with_token and not with_meta:
            items.append(message)
            continue
        item: dict[str, Any] = {"message": message}
        if with_token:
            tt = entry_id.partition("-")[0]
            item["timetoken"] = tt if strings else int(tt)
        if with_meta:
            item["meta"] = _meta(fields)
        items.append(item)
    if not entries:
        return json_response([[], 0, 0])
    first, last = (entries[i][0].partition("-")[0] for i in (0, -1))
    return json_response([items, first if strings else int(first), last if strings else int(last)])


def _meta(fields: dict[str, str]) -> Any:
    # "" when none was published, as PubNub answers (docs/protocol.md 12.3).
    return orjson.Fragment(fields[MESSAGE_META]) if MESSAGE_META in fields else ""


def _channel_key(name: str, encode: bool) -> str:
    # PubNub percent-encodes the channel keys unless encode_channels=false (docs/protocol.md 12.3).
    return quote(name, safe="-_.~") if encode else name


@history_errors
async def fetch_or_delete(request: web.Request) -> web.Response:
    if request.method == "DELETE":
        return await _delete(request)
    return await _fetch(request, with_actions=False)


@history_errors
async def fetch_with_actions(request: web.Request) -> web.Response:
    return await _fetch(request, with_actions=True, placeholder="channel")


async def _fetch(request: web.Request, *, with_actions: bool, placeholder: str = "channels") -> web.Response:
    limit = _limit(request)
    sub_key = path_name(request, "sub_key", "subscribe key", limit)
    if placeholder == "channel":  # one channel, whatever its name holds
        channels = [path_name(request, "channel", "channel", limit)]
    else:
        channels = path_names(request, "channels", "channel", limit)
    if not channels:
        raise HistoryError(400, "Missing channels")
    if len(channels) > (1 if with_actions else MAX_FETCH_CHANNELS):
        raise HistoryError(400, f"Too many channels: at most {1 if with_actions else MAX_FETCH_CHANNELS}")
    single = len(channels) == 1 and not with_actions
    count = _count(request, "max", 100 if single else 25, 100 if single else 25)
    walk, now = _walk(request), request.app[CLOCK]()
    flags = {
        name: query_flag(request, f"include_{name}") for name in ("uuid", "meta", "message_type", "custom_message_type")
    }
    encode = (query_value(request, "encode_channels") or "true").lower() != "false"
    store = request.app[STORE]
    out: dict[str, list[dict[str, Any]]] = {}
    for channel in channels:
        entries = await store.history(sub_key, channel, walk, count, now=now)
        if entries:  # a channel with no messages is left out (docs/protocol.md 12.3)
            out[_channel_key(channel, encode)] = [_item(entry, flags, with_actions) for entry in entries]
    return json_response({"status": 200, "error": False, "error_message": "", "channels": out})


def _item(entry: Entry, flags: dict[str, bool], with_actions: bool) -> dict[str, Any]:
    entry_id, fields = entry
    item: dict[str, Any] = {"message": orjson.Fragment(fields[MESSAGE_BODY]), "timetoken": entry_id.partition("-")[0]}
    if flags["uuid"] and MESSAGE_PUBLISHER in fields:
        item["uuid"] = fields[MESSAGE_PUBLISHER]
    if flags["message_type"]:
        item["message_type"] = None  # a published message; signals and files are never stored here
    if flags["custom_message_type"] and MESSAGE_CUSTOM_TYPE in fields:
        item["custom_message_type"] = fields[MESSAGE_CUSTOM_TYPE]
    if flags["meta"]:
        item["meta"] = _meta(fields)
    if with_actions:
        item["actions"] = {}  # message actions are not served yet
    return item


async def _delete(request: web.Request) -> web.Response:
    limit = _limit(request)
    sub_key = path_name(request, "sub_key", "subscribe key", limit)
    channels = path_names(request, "channels", "channel", limit)
    if len(channels) != 1:
        raise HistoryError(400, "Delete takes exactly one channel")
    # A delete takes no reverse (docs/protocol.md 12.5): only the bounds say what goes.
    walk = Walk(_timetoken(request, "start"), _timetoken(request, "end"))
    await request.app[STORE].delete_history(sub_key, channels[0], walk)
    return json_response({"status": 200, "error": False, "error_message": ""})


@history_errors
async def message_counts(request: web.Request) -> web.Response:
    limit = _limit(request)
    sub_key = path_name(request, "sub_key", "subscribe key", limit)
    channels = path_names(request, "channels", "channel", limit)
    if not channels or len(channels) > MAX_COUNT_CHANNELS:
        raise HistoryError(400, f"Invalid Arguments: 1 to {MAX_COUNT_CHANNELS} channels")
    one, each = query_value(request, "timetoken"), query_value(request, "channelsTimetoken")
    if (one is None) == (each is None):
        raise HistoryError(400, "Invalid Arguments: give either timetoken or channelsTimetoken")
    raw = [one] * len(channels) if one is not None else (each or "").split(",")
    if len(raw) != len(channels):
        raise HistoryError(400, "Invalid Arguments: channelsTimetoken must list one timetoken per channel")
    after = []
    for channel, text in zip(channels, raw, strict=True):
        value = timetoken_or_none(text)
        if value is None:
            raise HistoryError(400, "Invalid Arguments: a timetoken is a non-negative integer")
        after.append((channel, value))
    counts = await request.app[STORE].history_counts(sub_key, after, now=request.app[CLOCK]())
    return json_response({"status": 200, "error": False, "error_message": "", "channels": counts})
