"""Access Manager enforcement (docs/protocol.md 11.5): the check every route of an Access Manager keyset
passes before its handler, and the per-process cache of verified tokens.

The decision, in order: a signed request is a server-side one and may do anything (a bad signature or
timestamp is refused); a call only server-side requests may make is refused unsigned; an ``auth`` that
is a token must be this keyset's, unrevoked, unexpired, and for the request's uuid, and must grant what
the call needs; any other ``auth`` (or none) is looked up in the v2 grants.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable, Sequence

from aiohttp import web
from aiohttp.typedefs import Handler

from presence_server.access import needs as route_needs
from presence_server.access.needs import Demand, Needs, Want
from presence_server.access.signing import signature_matches
from presence_server.access.tokens import CHANNELS, GROUPS, UUIDS, InvalidToken, Token, looks_like_token, verify
from presence_server.clock import Clock
from presence_server.context import ACCESS
from presence_server.http import ACCESS_MANAGER, PubNubError
from presence_server.params import (
    CACHED_TEXT,
    int_or_none,
    path_value,
    query_value,
    raw_query,
    raw_target_path,
    whole_list_encoded,
)
from presence_server.store import PresenceStore
from presence_server.store.access import GrantKey

# The 403 payload's key for each kind of resource denied (docs/protocol.md 11.5).
PAYLOAD_KEYS = {CHANNELS: "channels", GROUPS: "channel-groups", UUIDS: "uuids"}
# The v2 grant level of each kind of resource (store.access.GrantKey).
V2_LEVELS = {CHANNELS: "c", GROUPS: "g", UUIDS: "u"}


@dataclasses.dataclass(frozen=True)
class Keyset:
    sub_key: str
    pub_key: str
    secret: str = dataclasses.field(repr=False)  # never in a repr, a log line or an error


# The needs that read only the path and the `channel-group` parameter: a call with the same token,
# path and groups needs the same, so the decision can be remembered (AccessControl.allowed).
_DECIDED_BY_PATH = frozenset({route_needs.read_channels, route_needs.write_channel})
Decision = tuple[Needs, str, str, str, str | None, bool]


def _decision(request: web.Request, keyset: Keyset, needs: Needs) -> Decision | None:
    """What decides a hot call, when it is one (its needs read the path and groups only), signed by no
    one, with a token as sent and a path both short."""
    if needs not in _DECIDED_BY_PATH:
        return None
    query = raw_query(request)
    auth = query.get("auth")
    if not auth or "signature" in query or len(auth) > CACHED_TEXT:
        return None
    path = raw_target_path(request)
    if len(path) > CACHED_TEXT:
        return None
    # How the path's names split depends on the client too (an encoded comma, docs/protocol.md 1.2).
    whole = ("%2C" in path or "%2c" in path) and whole_list_encoded(request)
    return (needs, keyset.sub_key, auth, path, query.get("channel-group"), whole)


def denied(message: str, payload: dict[str, list[str]] | None = None) -> PubNubError:
    return PubNubError(403, message, ACCESS_MANAGER, payload=payload)


def forbidden(wants: Sequence[Want] = ()) -> PubNubError:
    payload: dict[str, list[str]] = {}
    for kind, name, _ in wants:
        payload.setdefault(PAYLOAD_KEYS[kind], []).append(name)
    return denied("Forbidden", payload or None)


class TokenCache:
    """Tokens this process verified and found unrevoked, by (subscribe key, text); and the ids of
    tokens it heard were revoked. Both bounded; revocations arrive on the wake bus."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._tokens: collections.OrderedDict[tuple[str, str], Token] = collections.OrderedDict()
        self._revoked: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict()

    def get(self, sub_key: str, auth: str) -> Token | None:
        return self._tokens.get((sub_key, auth))

    def put(self, sub_key: str, auth: str, token: Token) -> None:
        # A revocation heard while this token was being checked against Redis wins.
        if len(auth) > CACHED_TEXT or (sub_key, token.id) in self._revoked:
            return
        self._tokens[(sub_key, auth)] = token
        if len(self._tokens) > self.size:
            self._tokens.popitem(last=False)

    def is_revoked(self, sub_key: str, token_id: str) -> bool:
        return (sub_key, token_id) in self._revoked

    def revoke(self, sub_key: str, token_id: str | None) -> None:
        """Forget one token of a keyset (``token_id``), or all of them (None: the keyset was reset)."""
        if token_id is None:
            self._revoked = collections.OrderedDict((key, None) for key in self._revoked if key[0] != sub_key)
        else:
            self._revoked[(sub_key, token_id)] = None
            if len(self._revoked) > self.size:
                self._revoked.popitem(last=False)
        gone = [key for key, token in self._tokens.items() if key[0] == sub_key and token_id in (None, token.id)]
        for key in gone:
            del self._tokens[key]

    def clear(self) -> None:
        """Forget every verified token (the wake bus reconnected: revocations may have been missed)."""
        self._tokens.clear()

    def __len__(self) -> int:
        return len(self._tokens)


class AccessControl:
    """The Access Manager keysets of one app, and the check of each request to them."""

    def __init__(
        self,
        keysets: dict[str, Keyset],
        store: PresenceStore,
        clock: Clock,
        *,
        window: float = 60.0,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """``clock`` is the server's (admin-moved) time that tokens expire by; ``wall`` the machine's
        clock that signed timestamps are compared with, since the SDKs sign with theirs."""
        self.keysets = keysets
        self.store = store
        self.clock = clock
        self.window = window
        self.wall = wall
        self.tokens = TokenCache()
        # Calls a token was found to allow, by what decided it: the hot paths (heartbeat, subscribe,
        # here now, publish) ask the same of the same token over and over.
        self.allowed: collections.OrderedDict[Decision, tuple[Token, str]] = collections.OrderedDict()

    async def check(self, request: web.Request, keyset: Keyset, needs: Needs) -> None:
        """Return when ``request`` may go on; raise its PubNub error otherwise."""
        signature = query_value(request, "signature", ACCESS_MANAGER)
        if signature is not None:
            await self._check_signature(request, keyset, signature)
            return
        auth = query_value(request, "auth", ACCESS_MANAGER) or ""
        demand = needs(request)
        if demand.signed_only:
            raise forbidden()
        token = self.tokens.get(keyset.sub_key, auth)  # a known token, most requests: no more parsing
        if token is not None or (auth and looks_like_token(auth)):
            token = await self.token(keyset, auth, token)
            self._check_uuid(request, token, demand)
            refused = [want for want in demand.wants if not token.allows(*want)]
        else:
            refused = await self._v2_refused(keyset.sub_key, auth, demand.wants)
        if refused:
            raise forbidden(refused)
        decision = _decision(request, keyset, needs) if token is not None else None
        if decision is not None and token is not None:
            self.allowed[decision] = (token, auth)
            if len(self.allowed) > self.tokens.size:
                self.allowed.popitem(last=False)

    def allowed_before(self, request: web.Request, keyset: Keyset, needs: Needs) -> bool:
        """Whether the same call (needs, token as sent, path, groups) was allowed before, its token is
        still known (a revocation takes it out of the token cache, and so out of here), has not expired
        and, when bound to a uuid, is used by it. No parsing beyond the request's one parse, no Redis:
        the hot calls' usual way through. False sends the request through ``check``."""
        decision = _decision(request, keyset, needs)
        remembered = None if decision is None else self.allowed.get(decision)
        if remembered is None:
            return False
        token, auth = remembered
        if self.tokens.get(keyset.sub_key, auth) is not token or self.clock() > token.expires:
            return False
        return token.uuid is None or query_value(request, "uuid", ACCESS_MANAGER) == token.uuid

    async def _check_signature(self, request: web.Request, keyset: Keyset, signature: str) -> None:
        body = b""
        if request.method in ("POST", "PATCH") and request.body_exists:
            try:
                body = await request.read()  # aiohttp keeps it: the handler reads the same bytes
            except web.HTTPRequestEntityTooLarge:
                raise PubNubError(413, "Request Entity Too Large", ACCESS_MANAGER) from None
        matches = signature_matches(
            keyset.secret,
            signature,
            method=request.method,
            sub_key=keyset.sub_key,
            pub_key=keyset.pub_key,
            raw_path=raw_target_path(request),
            raw_query=request.rel_url.raw_query_string,
            body=body,
        )
        if not matches:
            raise denied("Signature does not match")
        stamp = int_or_none(query_value(request, "timestamp", ACCESS_MANAGER) or "")
        if stamp is None or abs(self.wall() - stamp) > self.window:
            raise PubNubError(400, "Invalid Timestamp", ACCESS_MANAGER)

    async def token(self, keyset: Keyset, auth: str, token: Token | None = None) -> Token:
        """The verified, unrevoked, unexpired token ``auth`` (``token``, when the cache had it); a 403
        otherwise."""
        if token is None:
            try:
                token = verify(keyset.secret, keyset.sub_key, auth)
            except InvalidToken:
                raise denied("Invalid token") from None
            if self.tokens.is_revoked(keyset.sub_key, token.id):
                raise denied("Token is revoked")
            if await self.store.token_revoked(keyset.sub_key, token.id):
                self.tokens.revoke(keyset.sub_key, token.id)
                raise denied("Token is revoked")
            self.tokens.put(keyset.sub_key, auth, token)
        if self.clock() > token.expires:  # expired past t + ttl * 60
            raise denied("Token is expired")
        return token

    @staticmethod
    def _check_uuid(request: web.Request, token: Token, demand: Demand) -> None:
        """A token granted to one uuid serves that uuid only (docs/protocol.md 11.5)."""
        if token.uuid is None:
            return
        uuid = query_value(request, "uuid", ACCESS_MANAGER) or ""
        for acting in (uuid, demand.acting_uuid):
            if acting is not None and acting != token.uuid:
                raise denied("Token is not authorized for this uuid", {"uuids": [acting]})

    async def _v2_refused(self, sub_key: str, auth: str, wants: Sequence[Want]) -> list[Want]:
        """The wants no v2 grant allows: of the keyset, of the resource, or of the resource for ``auth``."""
        if not wants:
            return []
        keys = [GrantKey("s")] + ([GrantKey("s", "", auth)] if auth else [])
        for kind, name, _ in wants:
            keys.append(GrantKey(V2_LEVELS[kind], name))
            if auth:
                keys.append(GrantKey(V2_LEVELS[kind], name, auth))
        keys = list(dict.fromkeys(keys))
        bits = dict(zip(keys, await self.store.grants(sub_key, keys, now=self.clock()), strict=True))
        keyset_bits = bits[GrantKey("s")] | bits.get(GrantKey("s", "", auth), 0)
        refused = []
        for kind, name, mask in wants:
            level = V2_LEVELS[kind]
            held = keyset_bits | bits[GrantKey(level, name)] | bits.get(GrantKey(level, name, auth), 0)
            if not held & mask:
                refused.append((kind, name, mask))
        return refused


def access_checked(handler: Handler, needs: Needs, keysets: dict[str, Keyset]) -> Handler:
    """``handler`` behind the Access Manager check when its keyset (one of ``keysets``) has it on."""

    async def checked(request: web.Request) -> web.StreamResponse:
        sub_key = path_value(request, "sub_key")
        keyset = None if sub_key is None else keysets.get(sub_key)
        if keyset is not None:
            access = request.app[ACCESS]
            if not access.allowed_before(request, keyset, needs):
                await access.check(request, keyset, needs)
        return await handler(request)

    return checked
