"""Request parsing: names from the raw path, lists, numbers and state, each checked once."""

from __future__ import annotations

import functools
import re
from typing import Any
from urllib.parse import unquote

import orjson
from aiohttp import web

from presence_server.http import PRESENCE, bad_request


def raw_path_value(request: web.Request, name: str) -> str:
    """A path placeholder's value exactly as sent, still percent-encoded.

    aiohttp decodes path parameters, so ``a%2Cb`` (one channel named ``a,b``) and ``a,b`` (two
    channels) would look alike; channel lists must be split on literal commas first (protocol 1.2).
    """
    canonical = request.match_info.route.resource.canonical  # type: ignore[union-attr]
    return _segments(request.raw_path.partition("?")[0])[_position(canonical, name)]


@functools.lru_cache(maxsize=1024)
def _segments(raw_path: str) -> tuple[str, ...]:
    # Clients repeat their paths (a heartbeat names the same channels every time): split once each.
    return tuple(raw_path.split("/"))


@functools.cache
def _position(canonical: str, name: str) -> int:
    return canonical.split("/").index("{" + name + "}")


def _decode(raw: str, what: str, service: str) -> str:
    try:
        return unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise bad_request(f"Invalid {what}: not UTF-8", service) from None


def check_name(name: str, what: str, max_length: int, service: str = PRESENCE) -> str:
    if not name:
        raise bad_request(f"Invalid {what}: empty", service)
    if len(name) > max_length:
        raise bad_request(f"Invalid {what}: longer than {max_length} characters", service)
    return name


def path_name(request: web.Request, name: str, what: str, max_length: int, service: str = PRESENCE) -> str:
    """One percent-encoded name from the path (a uuid, a group, a subscribe key)."""
    return check_name(_decode(raw_path_value(request, name), what, service), what, max_length, service)


def split_names(
    raw: str, what: str, max_length: int, service: str = PRESENCE, *, whole_list_encoded: bool = False
) -> list[str]:
    """A comma list of individually percent-encoded names; ``,`` alone is the empty list.

    With ``whole_list_encoded`` the list was percent-encoded as one string, so an encoded comma
    separates names too (and a name cannot contain one).
    """
    return list(_split_names(raw, what, max_length, service, whole_list_encoded))


@functools.lru_cache(maxsize=1024)
def _split_names(raw: str, what: str, max_length: int, service: str, whole_list_encoded: bool) -> tuple[str, ...]:
    # Cached: the same lists come back with every heartbeat and poll. A refused list raises, and
    # exceptions are not cached.
    names = [_decode(part, what, service) for part in raw.split(",") if part]
    if whole_list_encoded:
        names = [name for joined in names for name in joined.split(",") if name]
    for name in names:
        check_name(name, what, max_length, service)
    return tuple(dict.fromkeys(names))


# JavaScript SDKs before 8 (pubnub@7.3.3 among them) percent-encode a channel list as one string,
# `a%2Cb`, and the placeholder as `%2C`; later ones, and every Python SDK, encode each name and
# join them with literal commas (protocol 1.2). They say who they are in `pnsdk`.
_JS_SDK = re.compile(r"PubNub-JS-[A-Za-z-]+/([0-9]+)\.")


def whole_list_encoded(request: web.Request) -> bool:
    # Through the query parsed once per request: request.query would parse all of it again.
    match = _JS_SDK.match(unquote(_raw_query(request).get("pnsdk", "")))
    return match is not None and int(match.group(1)) < 8


def path_names(request: web.Request, name: str, what: str, max_length: int, service: str = PRESENCE) -> list[str]:
    raw = raw_path_value(request, name)
    # Only an encoded comma reads differently for those clients.
    whole = ("%2C" in raw or "%2c" in raw) and whole_list_encoded(request)
    return split_names(raw, what, max_length, service, whole_list_encoded=whole)


def query_value(request: web.Request, key: str, service: str = PRESENCE) -> str | None:
    """A query parameter's first value, percent-decoded strictly; None when absent.

    Not ``request.query``: it turns invalid UTF-8 into U+FFFD (a different name, accepted silently)
    and ``+`` into a space. No SDK sends ``+`` for a space (both write ``%20``), but Python sends
    ``uuid`` and ``channel-group`` unencoded (protocol 1.2), so a literal ``+`` is part of the name.
    """
    raw = _raw_query(request).get(key)
    return None if raw is None else _decode(raw, key, service)


def _raw_query(request: web.Request) -> dict[str, str]:
    return _parse_query(request.rel_url.raw_query_string)


@functools.lru_cache(maxsize=256)
def _parse_query(raw_query: str) -> dict[str, str]:
    """The query's names (decoded) and first raw values; a handler asks for several, parsed once."""
    parsed: dict[str, str] = {}
    for pair in raw_query.split("&"):
        name, _, value = pair.partition("=")
        parsed.setdefault(unquote(name), value)
    return parsed


def query_names(request: web.Request, key: str, what: str, max_length: int, service: str = PRESENCE) -> list[str]:
    """A comma list from the query, split after decoding (JS sends the commas as ``%2C``)."""
    value = query_value(request, key, service) or ""
    names = [part for part in value.split(",") if part]
    for name in names:
        check_name(name, what, max_length, service)
    return list(dict.fromkeys(names))


def query_uuid(request: web.Request, max_length: int) -> str:
    uuid = query_value(request, "uuid")
    if uuid is None:
        raise bad_request("Missing uuid")
    return check_name(uuid, "uuid", max_length)


def query_int(request: web.Request, key: str, default: int, minimum: int) -> int:
    raw = query_value(request, key)
    if raw is None or raw == "":
        return default
    # Plain ASCII digits only: int() would also take "1_000", " 5" and non-ASCII digits.
    if not re.fullmatch(r"-?[0-9]+", raw):
        raise bad_request(f"Invalid {key}: {raw!r} is not an integer")
    value = int(raw)
    if value < minimum:
        raise bad_request(f"Invalid {key}: must be at least {minimum}")
    return value


def query_seconds(request: web.Request, key: str, service: str = PRESENCE) -> float | None:
    """A positive number of seconds, or None when absent."""
    raw = query_value(request, key, service)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise bad_request(f"Invalid {key}: {raw!r} is not a number", service) from None
    if not value > 0 or value == float("inf"):
        raise bad_request(f"Invalid {key}: must be a positive number of seconds", service)
    return value


def query_flag(request: web.Request, key: str) -> bool:
    return (query_value(request, key) or "0").lower() in ("1", "true")


def query_json_object(request: web.Request, key: str) -> dict[str, Any] | None:
    """A JSON object from the query, or None when absent; anything else is a 400."""
    raw = query_value(request, key)
    if raw is None:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise bad_request(f"Invalid {key}: not valid JSON") from None
    if not isinstance(value, dict):
        raise bad_request(f"Invalid {key}: must be a JSON object")
    return value


def dump_json(value: Any) -> str:
    """One canonical JSON text per value, so equal states compare equal in the store."""
    return orjson.dumps(value).decode()
