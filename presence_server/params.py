"""Request parsing: names from the raw path, lists, numbers and JSON, each checked once.

Every handler and the keyset check read the request through these functions, so they all see one
parse of the request target (``raw_target_path``).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar
from urllib.parse import unquote

import orjson
from aiohttp import web

from presence_server.http import PRESENCE, bad_request

P = ParamSpec("P")
R = TypeVar("R")

# Parses are cached by the raw text they read, since clients repeat their requests; only texts up to
# this long, so that a cache of N entries holds at most N times this much, not N request lines of
# 128 KiB each.
CACHED_TEXT = 2048


def cached_when_short(maxsize: int) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """An LRU cache for a parse whose first argument is the raw text: short texts only."""

    def decorate(parse: Callable[P, R]) -> Callable[P, R]:
        cached = functools.lru_cache(maxsize=maxsize)(parse)

        @functools.wraps(parse)
        def parse_once(*args: P.args, **kwargs: P.kwargs) -> R:
            if len(args[0]) <= CACHED_TEXT:  # type: ignore[arg-type]
                return cached(*args, **kwargs)  # type: ignore[arg-type]
            return parse(*args, **kwargs)

        return parse_once

    return decorate


def raw_path_value(request: web.Request, name: str) -> str:
    """A path placeholder's value exactly as sent, still percent-encoded.

    aiohttp decodes path parameters, so ``a%2Cb`` (one channel named ``a,b``) and ``a,b`` (two
    channels) would look alike; channel lists must be split on literal commas first (docs/protocol.md 1.2).
    """
    path = request.rel_url.raw_path  # raw_target_path, inlined: every path name reads it
    if "%" not in path:
        # Nothing in the path is percent-encoded, so aiohttp's decoded values are the texts as sent:
        # most requests end here, without splitting the path.
        return request.match_info[name]
    canonical = request.match_info.route.resource.canonical  # type: ignore[union-attr]
    return _segments(path)[_position(canonical, name)]


def raw_target_path(request: web.Request) -> str:
    """The request target's path, still percent-encoded: the one parse every check and handler reads.

    Not ``request.raw_path``: that is the target exactly as sent, and HTTP/1.1 servers must accept the
    absolute form (``GET http://host:8090/v2/... HTTP/1.1``, RFC 9112 3.2.2), where it starts with
    the scheme and host, so its segments would not line up with the route. ``rel_url`` is what
    aiohttp routed on (its ``path_safe``), with the scheme and host of an absolute form dropped.
    """
    return request.rel_url.raw_path


def path_value(request: web.Request, name: str) -> str | None:
    """A placeholder's value, percent-decoded (undecodable bytes as U+FFFD), or None when the
    request's route has no such placeholder. For checks that only compare names (the keyset list)."""
    try:
        return _unquoted(raw_path_value(request, name))
    except (AttributeError, KeyError, ValueError):  # no route resource, or no such placeholder in it
        return None


@cached_when_short(maxsize=1024)
def _unquoted(raw: str) -> str:
    return unquote(raw)


@cached_when_short(maxsize=1024)
def _segments(raw_path: str) -> tuple[str, ...]:
    # Clients repeat their paths (a heartbeat names the same channels every time): split once each.
    return tuple(raw_path.split("/"))


@functools.cache
def _position(canonical: str, name: str) -> int:
    return canonical.split("/").index("{" + name + "}")


def _decode(raw: str, what: str, service: str) -> str:
    # Most names, uuids and values carry no percent sign: they are what was sent.
    return raw if "%" not in raw else _decode_encoded(raw, what, service)


@cached_when_short(maxsize=1024)
def _decode_encoded(raw: str, what: str, service: str) -> str:
    # Cached: clients repeat their names, uuids and tokens. A refused text raises, and exceptions
    # are not cached.
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
    raw = raw_path_value(request, name)
    return check_name(raw if "%" not in raw else _decode_encoded(raw, what, service), what, max_length, service)


def split_names(
    raw: str, what: str, max_length: int, service: str = PRESENCE, *, whole_list_encoded: bool = False
) -> list[str]:
    """A comma list of individually percent-encoded names; ``,`` alone is the empty list.

    With ``whole_list_encoded`` the list was percent-encoded as one string, so an encoded comma
    separates names too (and a name cannot contain one).
    """
    if "," not in raw and "%" not in raw:  # one plain name, as most calls send: nothing to split
        return [check_name(raw, what, max_length, service)] if raw else []
    return list(_split_names(raw, what, max_length, service, whole_list_encoded))


@cached_when_short(maxsize=1024)
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
# join them with literal commas (docs/protocol.md 1.2). They say who they are in `pnsdk`.
_JS_SDK = re.compile(r"PubNub-JS-[A-Za-z-]+/([0-9]+)\.")


def whole_list_encoded(request: web.Request) -> bool:
    # Through the query parsed once per request: request.query would parse all of it again.
    match = _JS_SDK.match(unquote(_raw_query(request).get("pnsdk", "")))
    if match is None:
        return False
    major = int_or_none(match.group(1))
    return major is not None and major < 8


def path_names(request: web.Request, name: str, what: str, max_length: int, service: str = PRESENCE) -> list[str]:
    raw = raw_path_value(request, name)
    # Only an encoded comma reads differently for those clients.
    whole = ("%2C" in raw or "%2c" in raw) and whole_list_encoded(request)
    return split_names(raw, what, max_length, service, whole_list_encoded=whole)


def keyset_and_channels(request: web.Request, max_length: int) -> tuple[str, Sequence[str]]:
    """The subscribe key and the channel list of the path, as ``path_name`` and ``path_names`` read
    ``sub_key`` and ``channels`` (a tuple for the list). Heartbeats, polls and here nows repeat their
    paths, so a path with nothing percent-encoded is checked once per distinct pair of texts."""
    if "%" in request.rel_url.raw_path:
        sub_key = path_name(request, "sub_key", "subscribe key", max_length)
        return sub_key, path_names(request, "channels", "channel", max_length)
    match = request.match_info
    channels = match["channels"]
    if len(channels) > CACHED_TEXT:  # read the same way, not kept
        return _plain_keyset_and_channels.__wrapped__(match["sub_key"], channels, max_length)
    return _plain_keyset_and_channels(match["sub_key"], channels, max_length)


@functools.lru_cache(maxsize=1024)
def _plain_keyset_and_channels(sub_key: str, channels: str, max_length: int) -> tuple[str, tuple[str, ...]]:
    # Texts with no percent sign, the channels at most CACHED_TEXT long and the key checked to be at
    # most max_length: a refused one raises, and exceptions are not cached.
    check_name(sub_key, "subscribe key", max_length)
    return sub_key, tuple(split_names(channels, "channel", max_length))


def query_value(request: web.Request, key: str, service: str = PRESENCE) -> str | None:
    """A query parameter's first value, percent-decoded strictly; None when absent.

    Not ``request.query``: it turns invalid UTF-8 into U+FFFD (a different name, accepted silently)
    and ``+`` into a space. No SDK sends ``+`` for a space (both write ``%20``), but Python sends
    ``uuid`` and ``channel-group`` unencoded (docs/protocol.md 1.2), so a literal ``+`` is part of the name.
    """
    raw_query = request.rel_url.raw_query_string  # _raw_query, inlined: a handler asks several times
    last_raw, parsed = _last_query[0]
    if raw_query != last_raw:
        parsed = _parse_query(raw_query)
        _last_query[0] = (raw_query, parsed)
    raw = parsed.get(key)
    if raw is None or "%" not in raw:
        return raw
    return _decode_encoded(raw, key, service)


def raw_query(request: web.Request) -> dict[str, str]:
    """The query's names (decoded) and first values exactly as sent: the parse every lookup reads."""
    return _raw_query(request)


# The last query parsed: every check and handler of one request asks it for several values in a row,
# so all but the first lookup of a request end here.
_last_query: list[tuple[str, dict[str, str]]] = [("", {})]


def _raw_query(request: web.Request) -> dict[str, str]:
    raw = request.rel_url.raw_query_string
    last_raw, parsed = _last_query[0]
    if raw != last_raw:
        parsed = _parse_query(raw)
        _last_query[0] = (raw, parsed)
    return parsed


def _parse_query(raw_query: str) -> dict[str, str]:
    """The query's names (decoded) and first raw values; a handler asks for several, parsed once.

    Not cached beyond the last query: queries carry the uuid and the cursor, so a cache of them
    misses once there are more clients than it holds, and a miss cost more than this parse."""
    parsed: dict[str, str] = {}
    for pair in raw_query.split("&"):
        name, _, value = pair.partition("=")
        # Names are rarely encoded, values often (every SDK's pnsdk): only an encoded name is decoded.
        parsed.setdefault(unquote(name) if "%" in name else name, value)
    return parsed


def query_names(request: web.Request, key: str, what: str, max_length: int, service: str = PRESENCE) -> list[str]:
    """A comma list from the query, split after decoding (JS sends the commas as ``%2C``)."""
    value = query_value(request, key, service)
    if not value:  # most calls name no groups
        return []
    names = [part for part in value.split(",") if part]
    for name in names:
        check_name(name, what, max_length, service)
    return list(dict.fromkeys(names))


# How many names one request may carry (docs/protocol.md 14). Channels: ours, as many as
# subscribe always took (a `-pnpres` name counts as one). Groups: PubNub's 10 per client; a group's
# `-pnpres` names count with it, since SDKs send `cg` and `cg-pnpres` for one group with presence.
# Each group holds up to 2,000 channels, and the store splits what a request names into script
# calls of a bounded size (store/core.py), so that no single call holds Redis or the event loop long.
MAX_CHANNELS = 500
MAX_GROUPS = 10


def check_counts(channels: Sequence[str], groups: Sequence[str], service: str = PRESENCE) -> None:
    """Refuse a request naming more than MAX_CHANNELS channels or MAX_GROUPS channel groups."""
    if len(channels) > MAX_CHANNELS:
        raise bad_request(f"Too many channels: at most {MAX_CHANNELS} per request", service)
    if len(groups) > MAX_GROUPS and len({_base(group) for group in groups}) > MAX_GROUPS:
        raise bad_request(f"Too many channel groups: at most {MAX_GROUPS} per request", service)


def _base(name: str) -> str:
    while name.endswith("-pnpres"):
        name = name[: -len("-pnpres")]
    return name


def query_uuid(request: web.Request, max_length: int) -> str:
    uuid = query_value(request, "uuid")
    if uuid is None:
        raise bad_request("Missing uuid")
    return check_name(uuid, "uuid", max_length)


# The one place request numbers are parsed. Integers: plain ASCII digits (int() would also take
# "1_000", " 5" and non-ASCII digits), at most 100 of them: far beyond any meaningful value (those
# above a parameter's bound are brought down to it), and far below the 4,300 digits past which
# int() raises (a ValueError, that was a 500).
_INTEGER = re.compile(r"-?[0-9]{1,100}")
# Any integer parameter is brought down to this, so that it fits a 64-bit integer in Redis and Lua.
MAX_INTEGER = 10**18
# Seconds: a decimal number, maybe with an exponent; float() would also take "1_0", "nan", "inf"
# and surrounding spaces.
_DECIMAL = re.compile(r"([0-9]{1,100}(\.[0-9]{0,100})?|\.[0-9]{1,100})([eE][+-]?[0-9]{1,4})?")


def int_or_none(text: str) -> int | None:
    """``text`` as an integer when it is one of at most 100 ASCII digits (maybe negative), else None."""
    return int(text) if _INTEGER.fullmatch(text) else None


def _shown(raw: str) -> str:
    # An error message repeats a short value only: a refused value may be megabytes long.
    return repr(raw) if len(raw) <= 40 else f"{raw[:40]!r}..."


def query_int(request: web.Request, key: str, default: int, minimum: int) -> int:
    """An integer of at least ``minimum``; values above MAX_INTEGER are taken as MAX_INTEGER."""
    raw = query_value(request, key)
    if raw is None or raw == "":
        return default
    value = int_or_none(raw)
    if value is None:
        raise bad_request(f"Invalid {key}: {_shown(raw)} is not an integer of at most 100 digits")
    if value < minimum:
        raise bad_request(f"Invalid {key}: must be at least {minimum}")
    return min(value, MAX_INTEGER)


# The largest stream entry id part Redis takes: a cursor above it could never be read after.
MAX_TIMETOKEN = 2**63 - 1


def timetoken_or_none(text: str) -> int | None:
    """``text`` as a timetoken: plain digits, at most MAX_TIMETOKEN; None otherwise."""
    value = int_or_none(text) if text.isdigit() else None
    return value if value is not None and value <= MAX_TIMETOKEN else None


def query_timetoken(request: web.Request, key: str = "tt") -> str:
    """A subscribe cursor: digits only, at most MAX_TIMETOKEN; missing or empty is ``"0"``."""
    raw = query_value(request, key) or "0"
    value = timetoken_or_none(raw)
    if value is None:
        raise bad_request(f"Invalid timetoken: {_shown(raw)}")
    return str(value)


def query_seconds(request: web.Request, key: str, service: str = PRESENCE) -> float | None:
    """A positive number of seconds, or None when absent."""
    raw = query_value(request, key, service)
    if raw is None or raw == "":
        return None
    if raw.isascii() and raw.isdigit() and len(raw) <= 100:
        value = float(raw)  # whole seconds, as every SDK sends them: no pattern to match
    elif _DECIMAL.fullmatch(raw):
        value = float(raw)
    else:
        raise bad_request(f"Invalid {key}: {_shown(raw)} is not a number", service)
    if not 0 < value < math.inf:
        raise bad_request(f"Invalid {key}: must be a positive number of seconds", service)
    return value


def query_hours(request: web.Request, key: str) -> float:
    """A number of hours, zero or more (a publish's ``ttl``); 0 when absent."""
    raw = query_value(request, key)
    if raw is None or raw == "":
        return 0.0
    if not _DECIMAL.fullmatch(raw) or not float(raw) < math.inf:
        raise bad_request(f"Invalid {key}: {_shown(raw)} is not a number of hours")
    return float(raw)


def query_flag(request: web.Request, key: str) -> bool:
    return (query_value(request, key) or "0").lower() in ("1", "true")


# How deeply JSON from a client (state, meta, a message) may nest: objects and arrays count one
# level each, the outermost included. orjson writes at most 254 levels, and every answer wraps
# what it echoes in a few levels of its own (here_now puts a state six deep), so without a bound a
# state accepted once could make every later read of it fail. 32 leaves room to spare either way.
MAX_JSON_DEPTH = 32


def load_json(text: str | bytes, what: str, service: str = PRESENCE) -> Any:
    """Client JSON, parsed and checked to nest at most MAX_JSON_DEPTH levels; anything else is a 400."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise bad_request(f"Invalid {what}: not valid JSON", service) from None
    check_depth(value, text, what, service)
    return value


def check_depth(value: Any, text: str | bytes, what: str, service: str = PRESENCE) -> None:
    """Refuse ``value`` (parsed from ``text``) when it nests deeper than MAX_JSON_DEPTH levels."""
    # Only a text with more brackets than the bound can nest deeper than it: most states and
    # messages are settled by counting them (in C), without walking the value.
    brackets = text.count("[") + text.count("{") if isinstance(text, str) else text.count(b"[") + text.count(b"{")
    if brackets > MAX_JSON_DEPTH and _too_deep(value):
        raise bad_request(f"Invalid {what}: nested deeper than {MAX_JSON_DEPTH} levels", service)


def _too_deep(value: Any) -> bool:
    if not isinstance(value, dict | list):
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


# The largest JSON object a query parameter (state, meta) may carry, in UTF-8 bytes once decoded;
# more is a 400 before it is parsed. PubNub documents none; 64 KiB still fits the 128 KiB request
# line (http.RUNNER_OPTIONS) once a mostly plain-text state is percent-encoded.
MAX_QUERY_JSON = 64 * 1024


def query_json_object(request: web.Request, key: str) -> dict[str, Any] | None:
    """A JSON object from the query, or None when absent; anything else is a 400."""
    raw = query_value(request, key)
    if raw is None:
        return None
    if len(raw) > MAX_QUERY_JSON // 4 and len(raw.encode()) > MAX_QUERY_JSON:
        raise bad_request(f"Invalid {key}: larger than {MAX_QUERY_JSON} bytes")
    value = load_json(raw, key)
    if not isinstance(value, dict):
        raise bad_request(f"Invalid {key}: must be a JSON object")
    return value


def dump_json(value: Any) -> str:
    """One canonical JSON text per value, so equal states compare equal in the store."""
    return orjson.dumps(value).decode()
