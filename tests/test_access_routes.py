"""Access Manager over raw HTTP (docs/protocol.md 11), on both engines: grants, enforcement, refusals that
change nothing, revocation seen by a second process, expiry by the admin-moved clock, and an open keyset
beside an Access Manager one unaffected."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import quote

import pytest
import redis.asyncio as aioredis

from presence_server.access.signing import canonical_query, sign_v2
from tests.helpers.app import Client, FakeClock, NewClient
from tests.helpers.http import OK, assert_error, send, stored
from tests.helpers.wait import wait_until

PUB, SUB, SECRET = "pub-c-am", "sub-c-am", "sec-c-am-secret"
KEYSETS = f"{PUB}:{SUB}:{SECRET},pub-c-open:sub-c-open"
HB = f"/v2/presence/sub-key/{SUB}/channel/{{}}/heartbeat"
AM = "Access Manager"


def query(params: dict[str, str]) -> str:
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params.items())


def signed(method: str, path: str, params: dict[str, str] | None = None, body: bytes = b"", **change: Any) -> str:
    """``path`` with its query, signed as a server-side SDK signs it (``timestamp`` now)."""
    params = {"uuid": "server", **(params or {}), "timestamp": str(change.get("timestamp", int(time.time())))}
    raw = query(params)
    signature = sign_v2(change.get("secret", SECRET), method, PUB, path, canonical_query(raw), body)
    return f"{path}?{raw}&signature={signature}"


def grant_body(ttl: object = 15, **permissions: Any) -> bytes:
    return json.dumps({"ttl": ttl, "permissions": permissions}).encode()


async def grant(client: Client, **permissions: Any) -> str:
    body = grant_body(**permissions)
    status, answer = await send(client, signed("POST", f"/v3/pam/{SUB}/grant", body=body), "POST", body)
    assert status == 200, answer
    assert answer["status"] == 200 and answer["service"] == AM and answer["data"]["message"] == "Success"
    token: str = answer["data"]["token"]
    return token


def as_client(path: str, uuid: str = "alice", **params: str) -> str:
    return f"{path}?{query({'uuid': uuid, **params})}"


def refused(status: int, body: Any, message: str, payload: dict[str, list[str]] | None = None) -> None:
    assert status == 403 and body["message"] == message, body
    assert body == {
        "status": 403,
        "error": True,
        "message": message,
        "service": AM,
        **({"payload": payload} if payload else {}),
    }


ROOM = {"channels": {"room-1": 3, "room-1-pnpres": 1}}


@pytest.fixture
async def am(new_client: NewClient) -> Client:
    return await new_client(keysets=KEYSETS)


async def test_a_token_allows_what_it_grants_and_the_403_lists_everything_else(am: Client) -> None:
    token = await grant(am, resources={**ROOM, "groups": {"cg-1": 1}})
    assert await send(am, as_client(HB.format("room-1"), auth=token, **{"channel-group": "cg-1"})) == (200, OK)
    status, body = await send(am, as_client(HB.format("room-1,room-2,room-3"), auth=token, **{"channel-group": "cg-2"}))
    refused(status, body, "Forbidden", {"channels": ["room-2", "room-3"], "channel-groups": ["cg-2"]})
    path = f"/publish/{PUB}/{SUB}/0/room-1/0/%22hi%22"
    status, body = await send(am, as_client(path, auth=token))
    assert status == 200 and body[:2] == [1, "Sent"], body
    status, body = await send(am, as_client(f"/publish/{PUB}/{SUB}/0/room-2/0/%22hi%22", auth=token))
    refused(status, body, "Forbidden", {"channels": ["room-2"]})


async def test_subscribe_with_presence_needs_read_on_the_pnpres_name(am: Client) -> None:
    token = await grant(am, resources={"channels": {"room-1": 1}})
    path = f"/v2/subscribe/{SUB}/room-1,room-1-pnpres/0"
    status, body = await send(am, as_client(path, auth=token, tt="0"))
    refused(status, body, "Forbidden", {"channels": ["room-1-pnpres"]})
    token = await grant(am, resources=ROOM)
    status, body = await send(am, as_client(path, auth=token, tt="0"))
    assert status == 200 and "t" in body, body


async def test_patterns_match_by_search_and_groups_need_manage_to_change(am: Client) -> None:
    token = await grant(am, patterns={"channels": {"^lobby-[0-9]+$": 1}, "groups": {"^team-": 4}})
    assert (await send(am, as_client(HB.format("lobby-7"), auth=token)))[0] == 200
    refused(*await send(am, as_client(HB.format("lobby-x"), auth=token)), "Forbidden", {"channels": ["lobby-x"]})
    registry = f"/v1/channel-registration/sub-key/{SUB}/channel-group"
    assert (await send(am, as_client(f"{registry}/team-a", auth=token, add="lobby-1")))[0] == 200
    assert (await send(am, as_client(f"{registry}/team-a", auth=token)))[0] == 200  # list: read or manage
    refused(
        *await send(am, as_client(f"{registry}/other", auth=token, add="x")), "Forbidden", {"channel-groups": ["other"]}
    )
    # Listing every group, and here now of the whole keyset, are for server-side requests only.
    refused(*await send(am, as_client(registry, auth=token)), "Forbidden")
    refused(*await send(am, as_client(f"/v2/presence/sub-key/{SUB}", auth=token)), "Forbidden")
    assert (await send(am, signed("GET", registry)))[0] == 200


async def test_an_authorized_uuid_binds_the_token(am: Client) -> None:
    token = await grant(am, resources=ROOM, uuid="alice")
    assert (await send(am, as_client(HB.format("room-1"), auth=token)))[0] == 200
    status, body = await send(am, as_client(HB.format("room-1"), "mallory", auth=token))
    refused(status, body, "Token is not authorized for this uuid", {"uuids": ["mallory"]})
    # Set state acts for the uuid in the path: alice's token cannot set bob's state.
    state = quote('{"mood":"ok"}', safe="")
    path = f"/v2/presence/sub-key/{SUB}/channel/room-1/uuid/bob/data"
    status, body = await send(am, as_client(path, auth=token) + f"&state={state}")
    refused(status, body, "Token is not authorized for this uuid", {"uuids": ["bob"]})
    path = f"/v2/presence/sub-key/{SUB}/channel/room-1/uuid/alice/data"
    assert (await send(am, as_client(path, auth=token) + f"&state={state}"))[0] == 200


async def test_no_auth_and_unknown_tokens_are_refused(am: Client) -> None:
    token = await grant(am, resources=ROOM)
    refused(*await send(am, as_client(HB.format("room-1"))), "Forbidden", {"channels": ["room-1"]})
    refused(
        *await send(am, as_client(HB.format("room-1"), auth="some-auth-key")), "Forbidden", {"channels": ["room-1"]}
    )
    # One character changed inside the token: it no longer verifies.
    middle = len(token) // 2
    forged = token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1 :]
    refused(*await send(am, as_client(HB.format("room-1"), auth=forged)), "Invalid token")
    refused(*await send(am, as_client(HB.format("room-1"), auth=token[:40])), "Invalid token")
    # The same token, unpadded and percent-encoded as JavaScript sends it, is the same token.
    assert (await send(am, as_client(HB.format("room-1"), auth=token.rstrip("="))))[0] == 200


async def test_a_token_of_another_keyset_is_refused(new_client: NewClient) -> None:
    other = await new_client(keysets=f"{KEYSETS},pub-c-2:sub-c-2:{SECRET}")
    body = grant_body(resources=ROOM)
    path = "/v3/pam/sub-c-2/grant"
    params = {"uuid": "server", "timestamp": str(int(time.time()))}
    raw = query(params)
    url = f"{path}?{raw}&signature={sign_v2(SECRET, 'POST', 'pub-c-2', path, canonical_query(raw), body)}"
    status, answer = await send(other, url, "POST", body)
    assert status == 200, answer
    refused(*await send(other, as_client(HB.format("room-1"), auth=answer["data"]["token"])), "Invalid token")


async def test_bad_signatures_and_stale_timestamps_change_nothing(
    am: Client, redis_client: aioredis.Redis, prefix: str
) -> None:
    before = await stored(redis_client, prefix)
    body = grant_body(resources=ROOM)
    url = signed("POST", f"/v3/pam/{SUB}/grant", body=body)
    tampered = url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB")
    refused(*await send(am, tampered, "POST", body), "Signature does not match")
    refused(*await send(am, url, "POST", body.replace(b"15", b"16")), "Signature does not match")
    refused(
        *await send(am, signed("POST", f"/v3/pam/{SUB}/grant", body=body, secret="wrong"), "POST", body),
        "Signature does not match",
    )
    status, answer = await send(
        am, signed("POST", f"/v3/pam/{SUB}/grant", body=body, timestamp=int(time.time()) - 120), "POST", body
    )
    assert_error(status, answer, 400, AM)
    assert answer["message"] == "Invalid Timestamp"
    # Unsigned, the admin calls are refused; a signed heartbeat is a server-side one and needs no token.
    refused(*await send(am, f"/v3/pam/{SUB}/grant?uuid=x", "POST", body), "Forbidden")
    refused(*await send(am, as_client(f"/v2/auth/grant/sub-key/{SUB}", r="1")), "Forbidden")
    hb = HB.format("room-1")
    refused(*await send(am, signed("GET", hb, {"uuid": "x"}).replace("uuid=x", "uuid=y")), "Signature does not match")
    assert await stored(redis_client, prefix) == before
    assert await send(am, signed("GET", hb)) == (200, OK)


@pytest.mark.parametrize(
    ("body", "message", "location"),
    [
        (b"{not json", "Invalid JSON", "body"),
        (b"[1, 2]", "Invalid JSON", "body"),
        (grant_body(0, resources=ROOM), "Invalid ttl", "ttl"),
        (grant_body(43_201, resources=ROOM), "Invalid ttl", "ttl"),
        (grant_body("ten", resources=ROOM), "Invalid ttl", "ttl"),
        (grant_body(None, resources=ROOM), "Invalid ttl", "ttl"),
        (grant_body(True, resources=ROOM), "Invalid ttl", "ttl"),
        (grant_body(15), "Invalid permissions", "permissions"),
        (grant_body(15, resources={"channels": {"a": 256}}), "Invalid permissions", "permissions.resources.channels"),
        (grant_body(15, resources={"channels": ["a"]}), "Invalid permissions", "permissions.resources.channels"),
        (grant_body(15, patterns={"channels": {"(": 1}}), "Invalid RegEx", "patterns.channels"),
        (grant_body(15, resources=ROOM, meta=[1]), "Invalid meta", "permissions.meta"),
        (grant_body(15, resources=ROOM, uuid=7), "Invalid uuid", "permissions.uuid"),
    ],
)
async def test_bad_grant_bodies_get_v3_errors_and_grant_nothing(
    am: Client, redis_client: aioredis.Redis, prefix: str, body: bytes, message: str, location: str
) -> None:
    before = await stored(redis_client, prefix)
    status, answer = await send(am, signed("POST", f"/v3/pam/{SUB}/grant", body=body), "POST", body)
    assert status == 400, answer
    assert answer["status"] == 400 and answer["service"] == AM and answer["error"]["source"] == "grant", answer
    assert answer["error"]["message"] == message and answer["error"]["details"][0]["location"] == location, answer
    assert await stored(redis_client, prefix) == before


async def test_revocation_reaches_a_second_process_and_expiry_follows_the_clock(
    am: Client, new_client: NewClient, clock: FakeClock
) -> None:
    second = await new_client(keysets=KEYSETS)
    token = await grant(am, resources=ROOM)
    # Another grant (a token is its content: the same grant in the same second is the same token).
    kept = await grant(am, resources=ROOM, meta={"kept": True})
    for server in (am, second):  # both processes verify, and cache, the token
        assert (await send(server, as_client(HB.format("room-1"), auth=token)))[0] == 200
    status, answer = await send(am, signed("DELETE", f"/v3/pam/{SUB}/grant/{quote(token, safe='')}"), "DELETE")
    assert (status, answer) == (200, {"data": {"message": "Success"}, "service": AM, "status": 200})
    refused(*await send(am, as_client(HB.format("room-1"), auth=token)), "Token is revoked")

    async def second_refuses() -> bool:
        return (await send(second, as_client(HB.format("room-1"), auth=token)))[0] == 403

    await wait_until(second_refuses, 1.0, what="the second process refusing the revoked token")
    refused(*await send(second, as_client(HB.format("room-1"), auth=token)), "Token is revoked")
    # A third process, started after the revocation, learns it from Redis.
    third = await new_client(keysets=KEYSETS)
    refused(*await send(third, as_client(HB.format("room-1"), auth=token)), "Token is revoked")
    # The other token lives 15 minutes by the server's clock.
    clock.advance(14 * 60)
    assert (await send(second, as_client(HB.format("room-1"), auth=kept)))[0] == 200
    clock.advance(60)  # at t + ttl * 60 exactly: still valid, expired only past it
    assert (await send(second, as_client(HB.format("room-1"), auth=kept)))[0] == 200
    clock.advance(0.001)
    refused(*await send(second, as_client(HB.format("room-1"), auth=kept)), "Token is expired")
    status, answer = await send(am, signed("DELETE", f"/v3/pam/{SUB}/grant/{quote(kept, safe='')}"), "DELETE")
    assert status == 400 and answer["error"]["details"][0]["message"] == "Token is expired.", answer


async def test_v2_grants_by_auth_key_channel_and_keyset(am: Client, clock: FakeClock) -> None:
    v2 = f"/v2/auth/grant/sub-key/{SUB}"
    status, body = await send(
        am, signed("GET", v2, {"channel": "room-1", "auth": "ak-1", "r": "1", "w": "1", "ttl": "5"})
    )
    assert status == 200, body
    assert body["payload"] == {
        "level": "user",
        "subscribe_key": SUB,
        "ttl": 5,
        "channel": "room-1",
        "auths": {"ak-1": {"r": 1, "w": 1, "m": 0, "d": 0, "g": 0, "u": 0, "j": 0}},
    }
    assert (await send(am, as_client(HB.format("room-1"), auth="ak-1")))[0] == 200
    refused(*await send(am, as_client(HB.format("room-1"), auth="ak-2")), "Forbidden", {"channels": ["room-1"]})
    audit = await send(am, signed("GET", f"/v2/auth/audit/sub-key/{SUB}", {"channel": "room-1", "auth": "ak-1"}))
    assert audit[1]["payload"]["auths"] == body["payload"]["auths"] and audit[1]["payload"]["ttl"] == 5
    clock.advance(5 * 60 + 0.001)  # past the grant's 5 minutes, by the server's clock
    refused(*await send(am, as_client(HB.format("room-1"), auth="ak-1")), "Forbidden", {"channels": ["room-1"]})
    # A channel-level grant with no auth key: anyone may read; all flags 0 takes it back.
    await send(am, signed("GET", v2, {"channel": "room-2", "r": "1", "w": "0", "ttl": "0"}))
    assert (await send(am, as_client(HB.format("room-2"))))[0] == 200
    await send(am, signed("GET", v2, {"channel": "room-2", "r": "0"}))
    refused(*await send(am, as_client(HB.format("room-2"))), "Forbidden", {"channels": ["room-2"]})
    status, body = await send(am, signed("GET", v2, {"channel": "room-2", "r": "1", "ttl": "525601"}))
    assert_error(status, body, 400, AM)


async def test_a_remembered_decision_holds_only_for_the_same_split_of_names(am: Client) -> None:
    # JavaScript before 8 sends a%2Cb for the channels a and b; everyone else for one channel "a,b"
    # (docs/protocol.md 1.2): the same path, two different calls.
    token = await grant(am, resources={"channels": {"a,b": 1}})
    path = HB.format("a%2Cb")
    assert (await send(am, as_client(path, auth=token)))[0] == 200
    old_js = as_client(path, auth=token, pnsdk="PubNub-JS-Web/7.3.3")
    refused(*await send(am, old_js), "Forbidden", {"channels": ["a", "b"]})


async def test_a_v2_grant_naming_nothing_is_refused(am: Client) -> None:
    for params in ({"channel": ",", "r": "1"}, {"channel-group": "", "r": "1"}, {"auth": ",", "r": "1"}):
        status, body = await send(am, signed("GET", f"/v2/auth/grant/sub-key/{SUB}", params))
        assert_error(status, body, 400, AM)
    refused(*await send(am, as_client(HB.format("any"))), "Forbidden", {"channels": ["any"]})


async def test_an_open_keyset_beside_is_unaffected(am: Client) -> None:
    open_hb = "/v2/presence/sub-key/sub-c-open/channel/room-1/heartbeat"
    assert await send(am, as_client(open_hb)) == (200, OK)
    assert await send(am, as_client(open_hb, auth="anything")) == (200, OK)
    status, body = await send(am, as_client(open_hb, signature="v2.bogus", timestamp="1"))
    assert (status, body) == (200, OK)
    body_bytes = grant_body(resources=ROOM)
    status, answer = await send(am, "/v3/pam/sub-c-open/grant?uuid=x", "POST", body_bytes)
    assert status == 400 and answer["error"]["message"] == "Invalid subscribe key", answer


async def test_the_secret_is_in_no_answer_and_no_metric(am: Client) -> None:
    body = grant_body(resources=ROOM)
    answers = [
        await send(am, signed("POST", f"/v3/pam/{SUB}/grant", body=body, secret="wrong"), "POST", body),
        await send(am, as_client(HB.format("room-1"), auth="x")),
    ]
    metrics = await (await am.get("/metrics")).text()
    assert SECRET not in json.dumps(answers) and SECRET not in metrics
