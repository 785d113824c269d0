"""Grant requests, checked (docs/protocol.md 11.3, 11.4): the v3 grant body and the v2 grant and audit
query. Every refusal is a 400 that names what was wrong, and nothing is granted."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from presence_server.access.tokens import ALL_BITS, CHANNELS, GET, GROUPS, JOIN, MANAGE, READ, UPDATE, UUIDS, WRITE
from presence_server.access.tokens import DELETE as DELETE_BIT
from presence_server.context import SETTINGS
from presence_server.http import ACCESS_MANAGER, PubNubError, json_response
from presence_server.params import int_or_none, load_json, query_names, query_value
from presence_server.store.access import GrantKey

MAX_TTL = 43_200  # minutes: 30 days (docs/protocol.md 11.3)
# v2: no ttl means a day, as PubNub; 0 means no end; at most a year (docs/protocol.md 11.4).
V2_DEFAULT_TTL, V2_MAX_TTL = 1440, 525_600
# A token travels in every request's query, whose line is at most 128 KiB (http.RUNNER_OPTIONS).
MAX_TOKEN = 32 * 1024
MAX_PATTERN = 256
# The grant body's resource kinds, with the legacy Objects names folded into the current ones.
_KINDS = {"channels": CHANNELS, "spaces": CHANNELS, "groups": GROUPS, "uuids": UUIDS, "users": UUIDS}


class GrantError(PubNubError):
    """A 400 in Access Manager v3's shape: ``error`` is an object with details (docs/protocol.md 11.3)."""

    def __init__(self, message: str, detail: str, location: str, location_type: str = "body", source: str = "grant"):
        super().__init__(400, message, ACCESS_MANAGER)
        self.detail = {"message": detail, "location": location, "locationType": location_type}
        self.source = source

    def response(self) -> web.Response:
        error = {"message": self.message, "source": self.source, "details": [self.detail]}
        return json_response({"error": error, "service": ACCESS_MANAGER, "status": 400}, 400)


@dataclasses.dataclass
class Grant:
    ttl: int
    resources: dict[str, dict[str, int]]
    patterns: dict[str, dict[str, int]]
    meta: dict[str, Any]
    uuid: str | None

    @staticmethod
    def check_size(token: str) -> None:
        if len(token) > MAX_TOKEN:
            raise GrantError(
                "Invalid permissions", f"The token would be longer than {MAX_TOKEN} characters.", "permissions"
            )


def grant_body(raw: bytes, max_name: int) -> Grant:
    """The v3 grant body, checked: ttl, resources and patterns, meta, the authorized uuid."""
    try:
        body = load_json(raw, "body", ACCESS_MANAGER)
    except PubNubError:
        raise GrantError("Invalid JSON", "The body must be a JSON object.", "body") from None
    if not isinstance(body, dict):
        raise GrantError("Invalid JSON", "The body must be a JSON object.", "body")
    permissions = body.get("permissions", {})
    if not isinstance(permissions, dict):
        raise GrantError("Invalid permissions", "permissions must be an object.", "permissions")
    resources = _section(permissions.get("resources"), "resources", max_name)
    patterns = _section(permissions.get("patterns"), "patterns", MAX_PATTERN)
    for kind, names in patterns.items():
        for pattern in names:
            try:
                re.compile(pattern)
            except (re.error, RecursionError, OverflowError):
                raise GrantError("Invalid RegEx", f"Invalid pattern {pattern[:40]!r}.", f"patterns.{kind}") from None
    if not any(resources.values()) and not any(patterns.values()):
        raise GrantError("Invalid permissions", "Grant at least one resource or pattern.", "permissions")
    meta = permissions.get("meta", {})
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise GrantError("Invalid meta", "meta must be an object.", "permissions.meta")
    uuid = permissions.get("uuid")
    if uuid is not None and not (isinstance(uuid, str) and 0 < len(uuid) <= max_name):
        raise GrantError("Invalid uuid", f"uuid must be a string of 1 to {max_name} characters.", "permissions.uuid")
    return Grant(_ttl(body.get("ttl")), resources, patterns, meta, uuid)


def _ttl(value: Any) -> int:
    # Python 5 sent the ttl as a digit string (docs/protocol.md 11.3).
    ttl = int_or_none(value) if isinstance(value, str) else value
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_TTL:
        raise GrantError("Invalid ttl", f"Range should be 1 to {MAX_TTL} minute(s).", "ttl")
    return ttl


def _section(value: Any, where: str, max_name: int) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {CHANNELS: {}, GROUPS: {}, UUIDS: {}}
    if value is None:
        return out
    if not isinstance(value, dict):
        raise GrantError("Invalid permissions", f"{where} must be an object.", f"permissions.{where}")
    for key, names in value.items():
        kind = _KINDS.get(key)
        if kind is None:
            continue  # "categories" and kinds of later APIs: granted nowhere here
        if not isinstance(names, dict):
            raise GrantError("Invalid permissions", f"{where}.{key} must be an object.", f"permissions.{where}.{key}")
        for name, bits in names.items():
            if not 0 < len(name) <= max_name:
                raise GrantError(
                    "Invalid permissions", f"Names are 1 to {max_name} characters.", f"permissions.{where}.{key}"
                )
            if isinstance(bits, bool) or not isinstance(bits, int) or not 0 <= bits <= ALL_BITS:
                raise GrantError(
                    "Invalid permissions", f"Permissions are integers 0 to {ALL_BITS}.", f"permissions.{where}.{key}"
                )
            if bits:
                out[kind][name] = out[kind].get(name, 0) | bits
    return out


# -- v2: grant and audit by query -----------------------------------------------------------------------

# The v2 flags and their bits, in the order PubNub's answers list them.
FLAGS = {"r": READ, "w": WRITE, "m": MANAGE, "d": DELETE_BIT, "g": GET, "u": UPDATE, "j": JOIN}


def flags_of(bits: int) -> dict[str, int]:
    return {flag: int(bool(bits & bit)) for flag, bit in FLAGS.items()}


def v2_error(message: str) -> PubNubError:
    return PubNubError(400, message, ACCESS_MANAGER)


@dataclasses.dataclass
class V2Call:
    """One v2 grant or audit: who (keyset, channels, groups or uuids; maybe auth keys), which bits, how long."""

    channels: list[str]
    groups: list[str]
    uuids: list[str]
    auths: list[str]
    bits: int
    ttl: int

    def entries(self) -> list[tuple[GrantKey, int]]:
        auths = self.auths or [""]
        named = [("c", self.channels), ("g", self.groups), ("u", self.uuids)]
        if not any(names for _, names in named):
            return [(GrantKey("s", "", auth), self.bits) for auth in auths]
        return [(GrantKey(level, name, auth), self.bits) for level, names in named for name in names for auth in auths]

    def payload(self, sub_key: str, bits: int) -> dict[str, Any]:
        return self.audit_payload(sub_key, {key: bits for key, _ in self.entries()})

    def audit_payload(self, sub_key: str, held: Mapping[GrantKey, int]) -> dict[str, Any]:
        """PubNub's v2 answer shapes (docs/protocol.md 11.4), from the bits each entry holds."""
        head: dict[str, Any] = {"subscribe_key": sub_key, "ttl": self.ttl}
        if self.uuids:
            uuids = {u: {"auths": {a: flags_of(held[GrantKey("u", u, a)]) for a in self.auths}} for u in self.uuids}
            return {"level": "uuid", **head, "uuids": uuids}
        if not self.channels and not self.groups:
            if self.auths:
                auths = {a: flags_of(held[GrantKey("s", "", a)]) for a in self.auths}
                return {"level": "subkey", **head, **flags_of(0), "auths": auths}
            return {"level": "subkey", **head, **flags_of(held[GrantKey("s")])}
        body: dict[str, Any] = {}
        if self.channels:
            body["level"] = "user" if self.auths else "channel"
            body.update(self._named("c", "channel", "channels", self.channels, held))
        if self.groups:
            body.setdefault("level", "channel-group+auth" if self.auths else "channel-group")
            body.update(self._named("g", "channel-groups", "channel-groups", self.groups, held))
        return {"level": body.pop("level"), **head, **body}

    def _named(self, level: str, one: str, many: str, names: list[str], held: Mapping[GrantKey, int]) -> dict[str, Any]:
        if not self.auths:
            return {many: {name: flags_of(held[GrantKey(level, name)]) for name in names}}
        if len(names) == 1:
            name = names[0]
            return {one: name, "auths": {a: flags_of(held[GrantKey(level, name, a)]) for a in self.auths}}
        return {many: {n: {"auths": {a: flags_of(held[GrantKey(level, n, a)]) for a in self.auths}} for n in names}}


def v2_grant_request(request: web.Request, *, audit: bool = False) -> V2Call:
    limit = request.app[SETTINGS].max_name_length
    names = {
        key: query_names(request, key, what, limit, ACCESS_MANAGER)
        for key, what in (("channel", "channel"), ("channel-group", "channel group"), ("target-uuid", "uuid"))
    }
    auths = query_names(request, "auth", "auth key", 4096, ACCESS_MANAGER)
    listed = {**names, "auth": auths}
    for key, found in listed.items():
        # Sent but naming nothing (`channel=,`): refused, never read as a grant on the whole keyset.
        if not found and query_value(request, key, ACCESS_MANAGER) is not None:
            raise v2_error(f"Invalid {key}: names nothing")
    if names["target-uuid"] and not auths:
        raise v2_error("Invalid request: target-uuid needs auth")
    if names["target-uuid"] and (names["channel"] or names["channel-group"]):
        raise v2_error("Invalid request: target-uuid cannot be combined with channel or channel-group")
    bits = 0 if audit else _v2_bits(request)
    ttl = _v2_ttl(request)
    return V2Call(names["channel"], names["channel-group"], names["target-uuid"], auths, bits, ttl)


def _v2_bits(request: web.Request) -> int:
    bits = 0
    for flag, bit in FLAGS.items():
        value = query_value(request, flag, ACCESS_MANAGER)
        if value not in (None, "", "0", "1", "true", "false"):
            raise v2_error(f"Invalid {flag}: must be 0 or 1")
        if value in ("1", "true"):
            bits |= bit
    return bits


def _v2_ttl(request: web.Request) -> int:
    raw = query_value(request, "ttl", ACCESS_MANAGER)
    if raw is None or raw == "":
        return V2_DEFAULT_TTL
    ttl = int_or_none(raw)
    if ttl is None or not 0 <= ttl <= V2_MAX_TTL:
        raise v2_error(f"Invalid ttl: 0 (no end) to {V2_MAX_TTL} minutes")
    return ttl
