"""Publish, fire and signal (docs/protocol.md 2.9). Their errors are arrays: ``[0, "<message>", "<tt>"]``."""

from __future__ import annotations

import zlib
from urllib.parse import unquote

import orjson
from aiohttp import web

from presence_server.context import CLOCK, SETTINGS, STORE
from presence_server.http import PubNubError, SendError, bad_request, json_response
from presence_server.params import (
    check_depth,
    dump_json,
    path_name,
    query_flag,
    query_hours,
    query_json_object,
    query_value,
    raw_path_value,
)
from presence_server.store import timetoken_at
from presence_server.store.subscription import is_presence_name, is_wildcard

MAX_MESSAGE = 32 * 1024
SIGNAL = 1


async def publish(request: web.Request) -> web.Response:
    return await _send(request, kind=None)


async def signal(request: web.Request) -> web.Response:
    return await _send(request, kind=SIGNAL)


async def _send(request: web.Request, *, kind: int | None) -> web.Response:
    app = request.app
    now = app[CLOCK]()
    try:
        limit = app[SETTINGS].max_name_length
        sub_key = path_name(request, "sub_key", "subscribe key", limit)
        channel = path_name(request, "channel", "channel", limit)
        path_name(request, "pub_key", "publish key", limit)
        if is_wildcard(channel) or is_presence_name(channel):
            raise bad_request("Invalid channel: cannot publish to a wildcard or presence channel")
        message = await _message(request)
        meta = query_json_object(request, "meta")
        custom_type = query_value(request, "custom_message_type") or None
        if custom_type is not None and not 3 <= len(custom_type) <= 50:
            raise bad_request("Invalid custom_message_type: 3 to 50 characters")
        publisher = query_value(request, "uuid") or None
        stored = (query_value(request, "store") or "1").lower() not in ("0", "false")
        ttl_hours = query_hours(request, "ttl")
    except PubNubError as exc:
        # Publish errors are arrays, not the error object of other services (docs/protocol.md 2.9).
        return SendError(exc, now).response()
    if query_flag(request, "norep"):
        # Fire (norep=true): meant for server-side handlers only, never replicated to subscribers.
        return json_response([1, "Sent", timetoken_at(now)])
    timetoken = await app[STORE].publish(
        sub_key,
        channel,
        message,
        now=now,
        publisher=publisher,
        meta=None if meta is None else dump_json(meta),
        kind=kind,
        custom_type=custom_type,
        # Signals are never kept for history (docs/protocol.md 12).
        store=stored and kind is None,
        ttl_hours=ttl_hours,
    )
    return json_response([1, "Sent", timetoken])


async def _message(request: web.Request) -> str:
    """The message as canonical JSON text: from the path (GET) or the body (POST, maybe zlib or
    gzip whatever its label says: Python labels a zlib stream gzip, docs/protocol.md 2.9)."""
    if request.method == "POST":
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            # Over aiohttp's body limit (client_max_size, 1 MiB): publish's own 413, as an array.
            raise PubNubError(413, "Message Too Large") from None
        if raw[:1] in (b"\x78", b"\x1f"):
            inflater = zlib.decompressobj(wbits=47)  # 32 + 15: zlib or gzip header, detected
            try:
                raw = inflater.decompress(raw, MAX_MESSAGE + 1)
            except zlib.error:
                raise bad_request("Invalid compressed body") from None
        text = raw
    else:
        try:
            text = unquote(raw_path_value(request, "message"), errors="strict").encode()
        except UnicodeDecodeError:
            raise bad_request("Invalid message: not UTF-8") from None
    if len(text) > MAX_MESSAGE:
        raise PubNubError(413, "Message Too Large")
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise bad_request("Invalid JSON") from None
    check_depth(value, text, "message")
    return orjson.dumps(value).decode()
