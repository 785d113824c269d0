"""Access Manager's own calls (docs/protocol.md 11.3, 11.4): v3 grant and revoke of tokens, v2 grant and
audit of auth keys. Only signed requests reach them on an Access Manager keyset (access/control.py)."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from aiohttp import web

from presence_server.access.control import Keyset
from presence_server.access.grants import GrantError, grant_body, v2_grant_request
from presence_server.access.tokens import InvalidToken, mint, verify
from presence_server.context import ACCESS, CLOCK, SETTINGS, STORE
from presence_server.http import ACCESS_MANAGER, json_response
from presence_server.params import path_name, raw_path_value


def _keyset(request: web.Request, source: str) -> Keyset:
    sub_key = path_name(request, "sub_key", "subscribe key", request.app[SETTINGS].max_name_length, ACCESS_MANAGER)
    keyset = request.app[ACCESS].keysets.get(sub_key)
    if keyset is None:
        raise GrantError(
            "Invalid subscribe key", "Access Manager is not enabled for this subscribe key", "sub-key", "path", source
        )
    return keyset


def _success(**data: Any) -> web.Response:
    return json_response({"data": {"message": "Success", **data}, "service": ACCESS_MANAGER, "status": 200})


async def grant_token(request: web.Request) -> web.Response:
    keyset = _keyset(request, "grant")
    grant = grant_body(await request.read(), request.app[SETTINGS].max_name_length)
    token = mint(
        keyset.secret,
        keyset.sub_key,
        issued=int(request.app[CLOCK]()),
        ttl=grant.ttl,
        resources=grant.resources,
        patterns=grant.patterns,
        meta=grant.meta,
        uuid=grant.uuid,
    )
    grant.check_size(token)
    return _success(token=token)


async def revoke_token(request: web.Request) -> web.Response:
    keyset = _keyset(request, "revoke")
    access, now = request.app[ACCESS], request.app[CLOCK]()
    text = unquote(raw_path_value(request, "token"))
    try:
        token = verify(keyset.secret, keyset.sub_key, text)
    except InvalidToken:
        raise GrantError("Invalid token", "Token is not a token of this keyset.", "token", "path", "revoke") from None
    if now > token.expires:
        raise GrantError("Invalid token", "Token is expired.", "token", "path", "revoke")
    access.tokens.revoke(keyset.sub_key, token.id)
    await request.app[STORE].revoke_token(keyset.sub_key, token.id, seconds_left=token.expires - now)
    return _success()


async def grant_or_audit_v2(request: web.Request) -> web.Response:
    if request.match_info["call"] == "audit":
        return await _audit_v2(request)
    keyset = _keyset(request, "grant")
    call = v2_grant_request(request)
    await request.app[STORE].set_grants(keyset.sub_key, call.entries(), now=request.app[CLOCK](), ttl=call.ttl)
    return _v2_answer(call.payload(keyset.sub_key, call.bits))


async def _audit_v2(request: web.Request) -> web.Response:
    keyset = _keyset(request, "audit")
    call = v2_grant_request(request, audit=True)
    keys = [key for key, _ in call.entries()]
    held = await request.app[STORE].held_grants(keyset.sub_key, keys, now=request.app[CLOCK]())
    # The answer's one ttl: that of the first entry that has a grant (PubNub's shapes have one).
    call.ttl = next((ttl for bits, ttl in held if bits), 0)
    payload = call.audit_payload(keyset.sub_key, {key: bits for key, (bits, _) in zip(keys, held, strict=True)})
    return _v2_answer(payload)


def _v2_answer(payload: dict[str, Any]) -> web.Response:
    return json_response({"message": "Success", "payload": payload, "service": ACCESS_MANAGER, "status": 200})
