"""Access Manager through the real JavaScript client, ``pubnub@7.3.3`` (the last MIT release), under
Node against a live server that has two Access Manager keysets and one open keyset, on both engines:
server-side grants (v3 tokens and v2 auth keys), clients holding a token, revocation, expiry on the
server's clock, signed requests with awkward names, and the answers the SDK sees when it is refused.

Each test runs one ``tests/e2e/js/listen.mjs`` process (unchanged: its client config passes
``subscribeKey``, ``publishKey``, ``secretKey`` and ``authKey`` through) and drives it through
``tests/e2e/jsdriver.py``; every wait is bounded, and token expiry is reached with ``server.advance``,
never by sleeping.

What 7.3.3 does (read in ``node_modules/pubnub/lib``, checked here through the request log):

* It has ``grantToken``, ``parseToken``, ``setToken``/``getToken``, ``revokeToken``, and the v2
  ``grant`` and ``audit``. ``grantToken`` takes ``authorized_uuid`` (newer releases:
  ``authorizedUuid``) and sends all five ``resources``/``patterns`` maps, ``users`` and ``spaces``
  empty. ``revokeToken`` takes the token itself and resolves to ``{status, data}``; ``grant`` resolves
  to ``{}`` whatever the answer holds, ``audit`` to the answer's ``payload``. ``parseToken`` needs
  ``res.chan``, ``res.grp``, ``pat.chan``, ``pat.grp`` and ``meta`` in the token.
* With ``secretKey`` set it signs every request, ``/time`` included (newer releases skip ``/time``):
  ``timestamp`` = whole seconds of the machine clock, then ``signature=v2.<unpadded url-safe
  HMAC-SHA256>`` over ``METHOD\\npublish_key\\npath as sent\\nsorted query\\n`` plus the body of a POST.
  A POST publish (``sendByPost``) is signed as a ``GET`` without body (and its JSON body is sent as
  ``application/x-www-form-urlencoded``). Every query parameter present is
  signed, including the ``l_<operation>`` latencies it adds once an operation has been answered.
* ``auth`` (the token, else ``authKey``) is sent on every request except time, grant, audit,
  grantToken and revokeToken; ``uuid`` is sent on all of them.
* A 403 rejects the call with ``PubNubError("PubNub call failed, check status for details")`` whose
  ``status`` is ``{error: true, category: "PNAccessDeniedCategory", operation, statusCode: 403,
  errorData: <the whole JSON body>}``; a 400 is the same with ``PNBadRequestCategory``.
* ``subscribe`` runs the legacy subscription manager: a 403 on a poll is announced once as that status
  and the loop stops (no retry). A ``/heartbeat`` loop, when configured, goes on at its interval and
  announces each 403 as a status with ``operation: "PNHeartbeatOperation"``.
* ``getState`` writes its uuid into the path unencoded (every other call encodes it), so a uuid with
  ``/`` or letters outside ASCII cannot get state through 7.3.3 at all: the odd-name test leaves it out.
"""

from __future__ import annotations

import base64
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import unquote

import pytest

from tests.e2e.jsdriver import Event, JsDriver, running
from tests.e2e.live import LiveServer
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.e2e

AM_PUB, AM_SUB, AM_SECRET = "pub-c-am", "sub-c-am", "sec-c-am"
OTHER_PUB, OTHER_SUB, OTHER_SECRET = "pub-c-am2", "sub-c-am2", "sec-c-am2"
OPEN_PUB, OPEN_SUB = "pub-c-open", "sub-c-open"
KEYSETS = f"{AM_PUB}:{AM_SUB}:{AM_SECRET},{OTHER_PUB}:{OTHER_SUB}:{OTHER_SECRET},{OPEN_PUB}:{OPEN_SUB}"

AM: dict[str, Any] = {"subscribeKey": AM_SUB, "publishKey": AM_PUB}
ADMIN: dict[str, Any] = {**AM, "secretKey": AM_SECRET}
OPEN: dict[str, Any] = {"subscribeKey": OPEN_SUB, "publishKey": OPEN_PUB}

PERMISSIONS = ("read", "write", "manage", "delete", "get", "update", "join")
R: dict[str, bool] = {"read": True}
RW: dict[str, bool] = {"read": True, "write": True}

# Space, plus, tilde, star, slash and letters outside ASCII, in channels, a group and uuids (no comma:
# 7.3.3 writes a channel list as one encoded string, so a comma would split the name).
ODD_CHANNEL = "r 1+~*/é"
ODD_GROUP = "g 1+~*/ü"
ODD_ADMIN = "ädmin +~*/1"
ODD_USER = "ñ user+~*/2"

Request = tuple[str, str, dict[str, str]]


class JsClients(JsDriver):
    """``listen.mjs`` as these tests drive it: refusals, messages as heard, requests by raw path."""

    async def refused(self, who: str, method: str, *args: Any) -> dict[str, Any]:
        """The ``status`` of a call that must fail (the PubNubError the SDK rejects it with)."""
        answer = await self.attempt(who, method, *args)
        assert "error" in answer, f"{who}.{method}{args} was not refused: {answer}"
        error: dict[str, Any] = answer["error"]
        assert error["message"] == "PubNub call failed, check status for details", error
        status: dict[str, Any] = error["status"]
        return status

    async def message(self, who: str, text: Any) -> Event:
        """The message ``text`` as ``who`` hears it (messages before it are passed over)."""
        while True:
            event = await self.next(who, "message")
            if event["message"] == text:
                return event

    def requests(self, who: str, path_part: str = "") -> list[Request]:
        """(method, raw path, decoded query) of every request ``who`` sent whose path holds ``path_part``."""
        sent = []
        for line in self.lines:
            if line.get("kind") != "request":
                continue
            path, _, query_text = line["path"].partition("?")
            pairs = (item.partition("=") for item in query_text.split("&") if item)
            query = {unquote(key): unquote(value) for key, _, value in pairs}
            if path_part in path and query.get("uuid") == self.uuid(who):
                sent.append((line["method"], path, query))
        return sent


Js = Callable[[LiveServer], contextlib.AbstractAsyncContextManager[JsClients]]
ServerFactory = Callable[..., contextlib.AbstractAsyncContextManager[LiveServer]]


@pytest.fixture
def js(node: str) -> Js:
    """``async with js(server) as clients:`` runs ``listen.mjs`` against ``server``, killed at the end."""

    def start(server: LiveServer) -> contextlib.AbstractAsyncContextManager[JsClients]:
        return running(JsClients, node, server.origin, AM_SUB)

    return start


@pytest.fixture
async def server(live_server_factory: ServerFactory) -> AsyncIterator[LiveServer]:
    async with live_server_factory(keysets=KEYSETS) as live:
        yield live


def flags(*names: str) -> dict[str, bool]:
    """The permission object ``parseToken`` gives for a bitmask holding ``names``."""
    return {name: name in names for name in PERMISSIONS}


def assert_denied(status: Event, operation: str, message: str = "Forbidden", **payload: list[str]) -> None:
    """A 403 as PubNub's SDK shows it: the category, the code, and the whole body as ``errorData``.
    ``payload`` maps a key (``channels``, ``channel_groups`` for ``channel-groups``, ``uuids``) to
    every denied name, in any order; without it the body must have no payload."""
    assert (status["category"], status["statusCode"], status["operation"]) == (
        "PNAccessDeniedCategory",
        403,
        operation,
    ), status
    body = dict(status["errorData"])
    denied = body.pop("payload", None)
    assert body == {"message": message, "error": True, "service": "Access Manager", "status": 403}, status
    expected = {key.replace("_", "-"): sorted(names) for key, names in payload.items()}
    assert (denied and {key: sorted(names) for key, names in denied.items()}) == (expected or None), status


def forged(token: str) -> str:
    """``token`` with the last byte of its signature changed: still a well-formed token."""
    raw = bytearray(base64.urlsafe_b64decode(token))
    raw[-1] ^= 1
    return base64.urlsafe_b64encode(bytes(raw)).decode()


async def grant_token(clients: JsClients, **request: Any) -> str:
    token = await clients.call("admin", "grantToken", {"ttl": 60, **request})
    assert isinstance(token, str), token
    return token


async def holder(clients: JsClients, name: str, token: str, *, user_id: str | None = None, **config: Any) -> None:
    """A client ``name`` on the Access Manager keyset holding ``token``."""
    await clients.client(name, {**AM, **config}, user_id=user_id)
    await clients.call(name, "setToken", token)


# -- grant and parse ---------------------------------------------------------------------------------


async def test_server_grants_a_token_that_parse_token_reads_back(js: Js, server: LiveServer) -> None:
    async with js(server) as clients:
        await clients.client("admin", ADMIN)
        token = await grant_token(
            clients,
            ttl=15,
            authorized_uuid="alice",
            resources={
                "channels": {"room-1": RW, "room-1-pnpres": R},
                "groups": {"team": {"read": True, "manage": True}},
                "uuids": {"alice": {"get": True, "update": True}},
            },
            patterns={"channels": {"^lobby-[0-9]+$": R}},
            meta={"app": "chat", "tier": 2},
        )
        assert re.fullmatch(r"[A-Za-z0-9_-]+={0,2}", token), token
        assert len(token) % 4 == 0  # padded
        parsed = await clients.call("admin", "parseToken", token)
        signature = parsed.pop("signature")  # a Node Buffer, as JSON
        assert signature["type"] == "Buffer" and len(signature["data"]) == 32
        assert parsed == {
            "version": 2,
            "timestamp": int(server.clock()),
            "ttl": 15,
            "authorized_uuid": "alice",
            "resources": {
                "channels": {"room-1": flags("read", "write"), "room-1-pnpres": flags("read")},
                "groups": {"team": flags("read", "manage")},
                "uuids": {"alice": flags("get", "update")},
            },
            "patterns": {"channels": {"^lobby-[0-9]+$": flags("read")}},
            "meta": {"app": "chat", "tier": 2},
        }
        [(method, path, query)] = clients.requests("admin", "/v3/pam/")
        assert (method, path) == ("POST", f"/v3/pam/{AM_SUB}/grant")
        assert query["signature"].startswith("v2.") and "timestamp" in query and "auth" not in query

        # Issue time is the server's clock; a token without authorized uuid, meta or resources
        # parses without those sections.
        await server.advance(120)
        bare = await grant_token(clients, ttl=1, patterns={"groups": {"^team-": R}})
        parsed = await clients.call("admin", "parseToken", bare)
        del parsed["signature"]
        assert parsed == {
            "version": 2,
            "timestamp": int(server.clock()),
            "ttl": 1,
            "authorized_uuid": None,  # undefined, which listen.mjs writes as null
            "patterns": {"groups": {"^team-": flags("read")}},
        }

        # ttl outside 1..43200 minutes: 400 in the v3 error shape, as the SDK shows it.
        for ttl in (0, 43201):
            refused = await clients.refused("admin", "grantToken", {"ttl": ttl, "resources": {"channels": {"a": R}}})
            assert (refused["category"], refused["statusCode"]) == ("PNBadRequestCategory", 400), refused
            error = refused["errorData"]["error"]
            assert (error["message"], error["source"]) == ("Invalid ttl", "grant"), refused
            assert error["details"][0]["location"] == "ttl", refused

        # A wrong secret is refused, and so is the right secret on a keyset it does not belong to.
        await clients.client("forger", {**AM, "secretKey": "not-the-secret"})
        await clients.client("crossed", {"subscribeKey": OTHER_SUB, "publishKey": OTHER_PUB, "secretKey": AM_SECRET})
        for who in ("forger", "crossed"):
            refused = await clients.refused(who, "grantToken", {"ttl": 5, "resources": {"channels": {"a": R}}})
            assert_denied(refused, "PNAccessManagerGrantToken", "Signature does not match")
        # An open keyset mints no tokens, whatever secret its caller signs with.
        await clients.client("open-admin", {**OPEN, "secretKey": AM_SECRET})
        refused = await clients.refused("open-admin", "grantToken", {"ttl": 5, "resources": {"channels": {"a": R}}})
        assert (refused["category"], refused["statusCode"]) == ("PNBadRequestCategory", 400), refused
        assert refused["errorData"]["error"]["message"] == "Invalid subscribe key", refused


# -- a client holding a token ------------------------------------------------------------------------


async def test_token_holder_subscribes_heartbeats_sets_state_and_publishes_where_granted(
    js: Js, server: LiveServer
) -> None:
    async with js(server) as clients:
        await clients.client("admin", ADMIN)
        await clients.call("admin", "channelGroups.addChannels", {"channelGroup": "team", "channels": ["lobby-1"]})
        token = await grant_token(
            clients,
            authorized_uuid="alice",
            resources={
                "channels": {"room-1": RW, "room-1-pnpres": R, "news.*": R},
                "groups": {"team": R, "team-pnpres": R},
            },
            patterns={"channels": {"^lobby-[0-9]+$": RW}},
        )
        await holder(clients, "alice", token)
        assert await clients.call("alice", "getToken") == token

        await clients.call(
            "alice", "subscribe", {"channels": ["room-1"], "channelGroups": ["team"], "withPresence": True}
        )
        connected = await clients.status("alice", "PNConnectedCategory")
        assert (connected["subscribedChannels"], connected["affectedChannelGroups"]) == (["room-1"], ["team"])
        joins = [await clients.next("alice", "presence") for _ in range(2)]
        assert sorted((event["action"], event["uuid"], event["channel"]) for event in joins) == [
            ("join", "alice", "lobby-1"),
            ("join", "alice", "room-1"),
        ]
        heartbeat = {"channels": ["room-1"], "channelGroups": ["team"]}
        assert await clients.call("alice", "iAmHere", heartbeat) == {}
        state = {"mood": "ok"}
        assert await clients.call("alice", "setState", {"channels": ["room-1"], "state": state}) == {"state": state}
        change = await clients.next("alice", "presence")
        assert (change["action"], change["uuid"], change["state"]) == ("state-change", "alice", state)
        assert await clients.call("alice", "getState", {"channels": ["room-1"]}) == {"channels": {"room-1": state}}
        await clients.call("alice", "publish", {"channel": "room-1", "message": "hello", "sendByPost": True})
        await clients.call("alice", "publish", {"channel": "lobby-1", "message": "by the pattern"})
        assert (await clients.message("alice", "hello"))["publisher"] == "alice"
        assert (await clients.message("alice", "by the pattern"))["subscription"] == "team"
        refused = await clients.refused("alice", "publish", {"channel": "lobby-x", "message": "no"})
        assert_denied(refused, "PNPublishOperation", channels=["lobby-x"])
        here = await clients.call("alice", "hereNow", {"channels": ["room-1"], "includeState": True})
        assert here["channels"]["room-1"]["occupants"] == [{"uuid": "alice", "state": state}]
        here = await clients.call("alice", "hereNow", {"channelGroups": ["team"]})
        assert [item["uuid"] for item in here["channels"]["lobby-1"]["occupants"]] == ["alice"]
        assert sorted((await clients.call("alice", "whereNow", {}))["channels"]) == ["lobby-1", "room-1"]

        # A wildcard subscription is read by its literal name.
        await clients.subscribe("alice", channels=["news.*"])
        await clients.call("admin", "publish", {"channel": "news.sport", "message": "goal"})
        assert (await clients.message("alice", "goal"))["subscription"] == "news.*"

        # Leaving needs no permission beyond the valid token.
        await clients.call("alice", "unsubscribeAll")
        left = await clients.status("alice", None, "PNUnsubscribeOperation")
        assert (left["error"], left["statusCode"]) == (False, 200), left
        assert (await clients.call("admin", "hereNow", {"channels": ["room-1", "lobby-1"]}))["totalOccupancy"] == 0
        await clients.call("alice", "subscribe", {"channels": ["news.*", "room-1"], "withPresence": True})
        status = await clients.status("alice", "PNAccessDeniedCategory")  # no read on news.*-pnpres
        assert_denied(status, "PNSubscribeOperation", channels=["news.*-pnpres"])

        # Every request carried the token (percent-encoded on the wire) and no signature.
        sent = clients.requests("alice")
        assert {path.split("/")[1] for _, path, _ in sent} >= {"v2", "publish"}
        assert all(query.get("auth") == token and "signature" not in query for _, _, query in sent), sent


async def test_token_holder_is_denied_elsewhere_as_pubnub_denies_it(js: Js, server: LiveServer) -> None:
    async with js(server) as clients:
        await clients.client("admin", ADMIN)
        token = await grant_token(
            clients,
            authorized_uuid="alice",
            resources={"channels": {"room-1": RW, "room-2": R}, "groups": {"team": R}},
        )
        await holder(clients, "alice", token)
        publish = "PNPublishOperation"
        for channel in ("room-2", "room-3"):  # read without write; nothing at all
            refused = await clients.refused("alice", "publish", {"channel": channel, "message": "no"})
            assert_denied(refused, publish, channels=[channel])
        refused = await clients.refused("alice", "publish", {"channel": "room-3", "message": "no", "sendByPost": True})
        assert_denied(refused, publish, channels=["room-3"])
        # Only what is denied is named, every denied name is.
        refused = await clients.refused("alice", "hereNow", {"channels": ["room-1", "room-3", "room-4"]})
        assert_denied(refused, "PNHereNowOperation", channels=["room-3", "room-4"])
        refused = await clients.refused("alice", "setState", {"channels": ["room-3"], "state": {"a": 1}})
        assert_denied(refused, "PNSetStateOperation", channels=["room-3"])
        refused = await clients.refused("alice", "getState", {"channels": ["room-3"]})
        assert_denied(refused, "PNGetStateOperation", channels=["room-3"])
        refused = await clients.refused("alice", "iAmHere", {"channels": ["room-1", "room-3"]})
        assert_denied(refused, "PNHeartbeatOperation", channels=["room-3"])
        refused = await clients.refused("alice", "hereNow", {"channelGroups": ["crew"]})
        assert_denied(refused, "PNHereNowOperation", channel_groups=["crew"])
        # Read on a group is not manage.
        refused = await clients.refused(
            "alice", "channelGroups.addChannels", {"channelGroup": "team", "channels": ["room-1"]}
        )
        assert_denied(refused, "PNAddChannelsToGroupOperation", channel_groups=["team"])

        # The token is bound to alice: anyone else holding it is refused, naming their uuid.
        await holder(clients, "mallory", token)
        refused = await clients.refused("mallory", "publish", {"channel": "room-1", "message": "no"})
        assert_denied(refused, publish, "Token is not authorized for this uuid", uuids=["mallory"])
        refused = await clients.refused("mallory", "iAmAway", {"channels": ["room-1"]})
        assert_denied(refused, "PNUnsubscribeOperation", "Token is not authorized for this uuid", uuids=["mallory"])

        # Subscribing with presence needs read on room-1-pnpres too: one status, no connection.
        await clients.call("alice", "subscribe", {"channels": ["room-1"], "withPresence": True})
        status = await clients.status("alice", "PNAccessDeniedCategory")
        assert_denied(status, "PNSubscribeOperation", channels=["room-1-pnpres"])
        # Adding a group to the subscription: both kinds of denied names in one answer.
        await clients.call("alice", "subscribe", {"channelGroups": ["team"], "withPresence": True})
        status = await clients.status("alice", "PNAccessDeniedCategory")
        assert_denied(status, "PNSubscribeOperation", channels=["room-1-pnpres"], channel_groups=["team-pnpres"])
        # Server-side calls only: every group, and here now over the whole keyset.
        refused = await clients.refused("alice", "channelGroups.listGroups")
        assert_denied(refused, "PNChannelGroupsOperation")
        refused = await clients.refused("alice", "hereNow", {})
        assert_denied(refused, "PNHereNowOperation")
        assert (await clients.call("admin", "hereNow", {}))["totalOccupancy"] == 0
        # A /heartbeat loop meets the same refusal, announced as a heartbeat status.
        await holder(
            clients, "bob", await grant_token(clients, resources={"channels": {"room-1": R}}), presenceTimeout=20
        )
        await clients.call("bob", "subscribe", {"channels": ["room-1", "room-5"]})
        # The poll and the first heartbeat go out together; their answers may come in either order.
        status = await clients.heard_status("bob", "PNAccessDeniedCategory", "PNSubscribeOperation")
        assert_denied(status, "PNSubscribeOperation", channels=["room-5"])
        status = await clients.heard_status("bob", "PNAccessDeniedCategory", "PNHeartbeatOperation")
        assert_denied(status, "PNHeartbeatOperation", channels=["room-5"])
        assert [
            event for who in ("alice", "bob") for event in clients.heard(who, "status") if not event.get("error")
        ] == []
        here = await clients.call("admin", "hereNow", {"channels": ["room-1", "room-5"]})
        assert here["totalOccupancy"] == 0


# -- revoke and expiry ---------------------------------------------------------------------------------


async def test_revoked_token_cuts_the_client_off(js: Js, server: LiveServer) -> None:
    async with js(server) as clients:
        await clients.client("admin", ADMIN)
        room = {"channels": {"room-1": RW, "room-1-pnpres": R}}
        token = await grant_token(clients, authorized_uuid="alice", resources=room)
        await holder(clients, "alice", token)
        await holder(clients, "bob", await grant_token(clients, authorized_uuid="bob", resources=room))
        await clients.subscribe("alice", channels=["room-1"], withPresence=True)
        await clients.call("alice", "publish", {"channel": "room-1", "message": "before"})
        await clients.message("alice", "before")

        assert await clients.call("admin", "revokeToken", token) == {"status": 200, "data": {"message": "Success"}}
        [(method, path, query)] = [sent for sent in clients.requests("admin", "/v3/pam/") if sent[0] != "POST"]
        assert (method, unquote(path)) == ("DELETE", f"/v3/pam/{AM_SUB}/grant/{token}")
        assert query["signature"].startswith("v2.")
        refused = await clients.refused("alice", "publish", {"channel": "room-1", "message": "after"})
        assert_denied(refused, "PNPublishOperation", "Token is revoked")
        refused = await clients.refused("alice", "hereNow", {"channels": ["room-1"]})
        assert_denied(refused, "PNHereNowOperation", "Token is revoked")
        # Bob's token is untouched; his message ends alice's held poll and her next poll is refused.
        await clients.call("bob", "publish", {"channel": "room-1", "message": "bob's"})
        status = await clients.status("alice", "PNAccessDeniedCategory", "PNSubscribeOperation")
        assert_denied(status, "PNSubscribeOperation", "Token is revoked")

        # A new token lets alice back in. (The same grant in the same second would be the same token,
        # revoked already: this one lasts longer.)
        renewed = await grant_token(clients, ttl=61, authorized_uuid="alice", resources=room)
        await clients.call("alice", "setToken", renewed)
        await clients.call("alice", "publish", {"channel": "room-1", "message": "back"})
        await clients.call("alice", "reconnect")
        await clients.call("bob", "publish", {"channel": "room-1", "message": "welcome"})
        await clients.message("alice", "welcome")


async def test_revocation_reaches_another_server_on_the_same_redis(
    js: Js, server: LiveServer, live_server_factory: ServerFactory
) -> None:
    # The second server takes longer names, so a publish on this channel succeeds only there.
    long_channel = "x" * 100
    async with live_server_factory(keysets=KEYSETS, max_name_length=100) as second, js(server) as clients:
        await clients.client("admin", ADMIN)
        token = await grant_token(clients, authorized_uuid="alice", patterns={"channels": {"^x+$": RW}})
        await holder(clients, "alice", token, origin=second.origin)
        publish = {"channel": long_channel, "message": "granted"}
        # Granted through one server, good on the other (and now known to its token cache).
        await clients.call("alice", "publish", publish)
        refused = await clients.refused("admin", "publish", publish)
        assert (refused["category"], refused["statusCode"]) == ("PNBadRequestCategory", 400), refused
        await clients.call("admin", "revokeToken", token)
        last: dict[str, Any] = {}

        async def revoked() -> bool:
            last.update(await clients.attempt("alice", "publish", publish))
            return "error" in last

        # Real time, for the revocation to reach the other process (within a second, docs/protocol.md).
        await wait_until(revoked, 2.0, what=lambda: f"alice still publishing on the second server: {last}")
        assert_denied(last["error"]["status"], "PNPublishOperation", "Token is revoked")


async def test_token_expires_on_the_server_clock(js: Js, server: LiveServer) -> None:
    async with js(server) as clients:
        await clients.client("admin", ADMIN)
        token = await grant_token(clients, ttl=1, resources={"channels": {"room-1": RW, "room-1-pnpres": R}})
        await holder(clients, "alice", token)
        await clients.subscribe("alice", channels=["room-1"], withPresence=True)
        await clients.call("alice", "publish", {"channel": "room-1", "message": "fresh"})
        await clients.message("alice", "fresh")
        await server.advance(59)
        await clients.call("alice", "publish", {"channel": "room-1", "message": "still fresh"})
        await clients.message("alice", "still fresh")

        await server.advance(2)
        refused = await clients.refused("alice", "publish", {"channel": "room-1", "message": "stale"})
        assert_denied(refused, "PNPublishOperation", "Token is expired")
        await clients.call("admin", "publish", {"channel": "room-1", "message": "wake up"})
        status = await clients.status("alice", "PNAccessDeniedCategory", "PNSubscribeOperation")
        assert_denied(status, "PNSubscribeOperation", "Token is expired")
        # An expired token cannot be revoked: 400 in the v3 error shape.
        refused = await clients.refused("admin", "revokeToken", token)
        assert (refused["category"], refused["statusCode"]) == ("PNBadRequestCategory", 400), refused
        assert refused["errorData"]["error"] == {
            "message": "Invalid token",
            "source": "revoke",
            "details": [{"message": "Token is expired.", "location": "token", "locationType": "path"}],
        }


# -- no token, bad tokens, the open keyset -------------------------------------------------------------


async def test_client_without_a_valid_token_is_denied_and_the_open_keyset_is_not(js: Js, server: LiveServer) -> None:
    async with js(server) as clients:
        await clients.client("admin", ADMIN)
        token = await grant_token(clients, resources={"channels": {"room-1": RW}})
        await clients.client(
            "other-admin", {"subscribeKey": OTHER_SUB, "publishKey": OTHER_PUB, "secretKey": OTHER_SECRET}
        )
        foreign = await clients.call(
            "other-admin", "grantToken", {"ttl": 60, "resources": {"channels": {"room-1": RW}}}
        )

        await clients.client("nobody", AM)
        refused = await clients.refused("nobody", "publish", {"channel": "room-1", "message": "no"})
        assert_denied(refused, "PNPublishOperation", channels=["room-1"])
        refused = await clients.refused("nobody", "hereNow", {"channels": ["room-1"]})
        assert_denied(refused, "PNHereNowOperation", channels=["room-1"])
        await clients.call("nobody", "subscribe", {"channels": ["room-1"]})
        status = await clients.status("nobody", "PNAccessDeniedCategory")
        assert_denied(status, "PNSubscribeOperation", channels=["room-1"])
        for name, bad in (("forger", forged(token)), ("foreigner", foreign)):
            await holder(clients, name, bad)
            refused = await clients.refused(name, "publish", {"channel": "room-1", "message": "no"})
            assert_denied(refused, "PNPublishOperation", "Invalid token")
        await holder(clients, "holder", token)
        await clients.call("holder", "publish", {"channel": "room-1", "message": "yes"})

        # The open keyset on the same server: no token needed, and a bad one is ignored.
        await clients.client("carol", OPEN)
        await clients.client("dave", OPEN)
        await clients.call("dave", "setToken", forged(token))
        await clients.subscribe("carol", channels=["room-1"], withPresence=True)
        join = await clients.next("carol", "presence")
        assert (join["action"], join["uuid"]) == ("join", "carol")
        await clients.call("dave", "publish", {"channel": "room-1", "message": "open"})
        assert (await clients.message("carol", "open"))["publisher"] == "dave"
        assert await clients.call("carol", "setState", {"channels": ["room-1"], "state": {"x": 1}}) == {
            "state": {"x": 1}
        }
        here = await clients.call("dave", "hereNow", {"channels": ["room-1"], "includeState": True})
        assert here["channels"]["room-1"]["occupants"] == [{"uuid": "carol", "state": {"x": 1}}]
        assert all("signature" not in query for _, _, query in clients.requests("carol"))


# -- signed requests ---------------------------------------------------------------------------------


async def test_signed_publish_by_get_and_by_post_is_accepted(js: Js, server: LiveServer) -> None:
    async with js(server) as clients:
        await clients.client("admin", ADMIN)
        assert isinstance((await clients.call("admin", "time"))["timetoken"], int)
        await clients.subscribe("admin", channels=["room-1"])
        await clients.call("admin", "publish", {"channel": "room-1", "message": {"by": "get"}, "meta": {"n": 1}})
        await clients.call(
            "admin", "publish", {"channel": "room-1", "message": {"by": "post"}, "meta": {"n": 2}, "sendByPost": True}
        )
        assert (await clients.message("admin", {"by": "get"}))["userMetadata"] == {"n": 1}
        assert (await clients.message("admin", {"by": "post"}))["userMetadata"] == {"n": 2}
        [by_get, by_post] = clients.requests("admin", "/publish/")
        assert (by_get[0], by_post[0]) == ("GET", "POST")
        for _, _, query in (by_get, by_post):
            assert query["signature"].startswith("v2.") and "timestamp" in query and "auth" not in query
        # The second publish also carries the latency of the first, a parameter signed like any other.
        assert "l_pub" in by_post[2]
        assert all(query["signature"].startswith("v2.") for _, _, query in clients.requests("admin"))

        # A wrong secret is refused on both methods, and so is a signed publish on another keyset.
        await clients.client("forger", {**AM, "secretKey": "not-the-secret"})
        for post in (False, True):
            refused = await clients.refused(
                "forger", "publish", {"channel": "room-1", "message": "forged", "sendByPost": post}
            )
            assert_denied(refused, "PNPublishOperation", "Signature does not match")


async def test_odd_names_sign_and_verify(js: Js, server: LiveServer) -> None:
    presence = f"{ODD_CHANNEL}-pnpres"
    async with js(server) as clients:
        await clients.client("admin", ADMIN, user_id=ODD_ADMIN)
        await clients.subscribe("admin", channels=[ODD_CHANNEL], withPresence=True)
        join = await clients.next("admin", "presence")
        assert (join["action"], join["uuid"], join["channel"]) == ("join", ODD_ADMIN, ODD_CHANNEL)
        await clients.call("admin", "publish", {"channel": ODD_CHANNEL, "message": "by get"})
        await clients.call("admin", "publish", {"channel": ODD_CHANNEL, "message": "by post", "sendByPost": True})
        assert (await clients.message("admin", "by get"))["publisher"] == ODD_ADMIN
        await clients.message("admin", "by post")
        state = {"name": ODD_USER}
        assert await clients.call("admin", "setState", {"channels": [ODD_CHANNEL], "state": state}) == {"state": state}
        here = await clients.call("admin", "hereNow", {"channels": [ODD_CHANNEL], "includeState": True})
        assert here["channels"][ODD_CHANNEL]["occupants"] == [{"uuid": ODD_ADMIN, "state": state}]
        assert await clients.call("admin", "whereNow", {"uuid": ODD_ADMIN}) == {"channels": [ODD_CHANNEL]}
        group = {"channelGroup": ODD_GROUP}
        assert await clients.call("admin", "channelGroups.addChannels", {**group, "channels": [ODD_CHANNEL]}) == {}
        assert await clients.call("admin", "channelGroups.listChannels", group) == {"channels": [ODD_CHANNEL]}
        here = await clients.call("admin", "hereNow", {"channelGroups": [ODD_GROUP]})
        assert [item["uuid"] for item in here["channels"][ODD_CHANNEL]["occupants"]] == [ODD_ADMIN]

        token = await grant_token(
            clients,
            authorized_uuid=ODD_USER,
            resources={
                "channels": {ODD_CHANNEL: RW, presence: R},
                "groups": {ODD_GROUP: R},
                "uuids": {ODD_USER: {"get": True}},
            },
            patterns={"channels": {"^r 1\\+~\\*/": R}},
        )
        parsed = await clients.call("admin", "parseToken", token)
        assert parsed["authorized_uuid"] == ODD_USER
        assert parsed["resources"]["channels"] == {ODD_CHANNEL: flags("read", "write"), presence: flags("read")}
        assert parsed["resources"]["groups"] == {ODD_GROUP: flags("read")}
        assert parsed["resources"]["uuids"] == {ODD_USER: flags("get")}
        assert parsed["patterns"]["channels"] == {"^r 1\\+~\\*/": flags("read")}

        await holder(clients, "user", token, user_id=ODD_USER)
        await clients.call("user", "publish", {"channel": ODD_CHANNEL, "message": "from the user"})
        assert (await clients.message("admin", "from the user"))["publisher"] == ODD_USER
        assert await clients.call("user", "iAmHere", {"channels": [ODD_CHANNEL]}) == {}
        await clients.call("user", "setState", {"channels": [ODD_CHANNEL], "state": {"x": 1}})
        here = await clients.call("user", "hereNow", {"channelGroups": [ODD_GROUP], "includeState": True})
        assert {item["uuid"]: item["state"] for item in here["channels"][ODD_CHANNEL]["occupants"]} == {
            ODD_ADMIN: state,
            ODD_USER: {"x": 1},
        }
        # Read through the pattern, not write; denied names come back as they were sent.
        assert (await clients.call("user", "hereNow", {"channels": [f"{ODD_CHANNEL}é"]}))["totalOccupancy"] == 0
        refused = await clients.refused("user", "publish", {"channel": f"{ODD_CHANNEL}é", "message": "no"})
        assert_denied(refused, "PNPublishOperation", channels=[f"{ODD_CHANNEL}é"])

        assert await clients.call("admin", "channelGroups.removeChannels", {**group, "channels": [ODD_CHANNEL]}) == {}
        assert await clients.call("admin", "channelGroups.deleteGroup", group) == {}
        assert await clients.call("admin", "channelGroups.listChannels", group) == {"channels": []}
        # The same names under a wrong secret are refused: the names verified, they were not waved through.
        await clients.client("forger", {**AM, "secretKey": "not-the-secret"}, user_id=f"{ODD_ADMIN}-forger")
        refused = await clients.refused("forger", "publish", {"channel": ODD_CHANNEL, "message": "forged"})
        assert_denied(refused, "PNPublishOperation", "Signature does not match")
        refused = await clients.refused("forger", "setState", {"channels": [ODD_CHANNEL], "state": {}})
        assert_denied(refused, "PNSetStateOperation", "Signature does not match")
        # Both clients were heard under their odd uuids: the admin signing, the user sending its token.
        signed = clients.requests("admin")
        assert len(signed) > 10 and all(query["signature"].startswith("v2.") for _, _, query in signed)
        sent = clients.requests("user")
        assert len(sent) == 6 and all(query["auth"] == token for _, _, query in sent)


# -- PAM v2: auth keys ---------------------------------------------------------------------------------


async def test_v2_grant_and_audit_with_auth_keys(js: Js, server: LiveServer) -> None:
    async with js(server) as clients:
        await clients.client("admin", ADMIN)
        key_grant = {"channels": ["room-v2", "room-v2-pnpres"], "authKeys": ["key-1"], "ttl": 5}
        assert await clients.call("admin", "grant", {**key_grant, "read": True, "write": True}) == {}
        [(method, path, query)] = clients.requests("admin", "/v2/auth/")
        assert (method, path) == ("GET", f"/v2/auth/grant/sub-key/{AM_SUB}")
        assert (query["r"], query["w"], query["m"], query["auth"]) == ("1", "1", "0", "key-1")
        audit = await clients.call("admin", "audit", {"channel": "room-v2", "authKeys": ["key-1"]})
        assert (audit["level"], audit["subscribe_key"], audit["channel"]) == ("user", AM_SUB, "room-v2"), audit
        assert {flag: audit["auths"]["key-1"][flag] for flag in "rwmd"} == {"r": 1, "w": 1, "m": 0, "d": 0}, audit

        await clients.client("keeper", {**AM, "authKey": "key-1"})
        await clients.subscribe("keeper", channels=["room-v2"], withPresence=True)
        join = await clients.next("keeper", "presence")
        assert (join["action"], join["uuid"]) == ("join", "keeper")
        await clients.call("keeper", "publish", {"channel": "room-v2", "message": "keyed"})
        await clients.message("keeper", "keyed")
        assert all(query["auth"] == "key-1" for _, _, query in clients.requests("keeper"))
        refused = await clients.refused("keeper", "publish", {"channel": "room-x", "message": "no"})
        assert_denied(refused, "PNPublishOperation", channels=["room-x"])
        await clients.client("stranger", {**AM, "authKey": "key-2"})
        refused = await clients.refused("stranger", "publish", {"channel": "room-v2", "message": "no"})
        assert_denied(refused, "PNPublishOperation", channels=["room-v2"])

        # A channel-level grant (no auth key) opens the channel to every client, keyed or not.
        assert await clients.call("admin", "grant", {"channels": ["public"], "read": True, "ttl": 5}) == {}
        await clients.client("anyone", AM)
        here = await clients.call("anyone", "hereNow", {"channels": ["public"]})
        assert here["totalOccupancy"] == 0
        refused = await clients.refused("anyone", "publish", {"channel": "public", "message": "no"})
        assert_denied(refused, "PNPublishOperation", channels=["public"])

        # A grant with every flag off revokes.
        assert await clients.call("admin", "grant", key_grant) == {}
        refused = await clients.refused("keeper", "publish", {"channel": "room-v2", "message": "gone"})
        assert_denied(refused, "PNPublishOperation", channels=["room-v2"])
        audit = await clients.call("admin", "audit", {"channel": "room-v2", "authKeys": ["key-1"]})
        assert audit.get("auths", {}).get("key-1", {}).get("r", 0) == 0, audit

        # The grant's ttl runs on the server's clock.
        await clients.call("admin", "grant", {"channels": ["room-t"], "authKeys": ["key-t"], "write": True, "ttl": 1})
        await clients.client("timed", {**AM, "authKey": "key-t"})
        await clients.call("timed", "publish", {"channel": "room-t", "message": "in time"})
        await server.advance(61)
        refused = await clients.refused("timed", "publish", {"channel": "room-t", "message": "too late"})
        assert_denied(refused, "PNPublishOperation", channels=["room-t"])

        # Auth keys alone: a grant on the whole keyset for them; ttl 0: a grant with no end.
        assert await clients.call("admin", "grant", {"authKeys": ["key-all"], "read": True, "ttl": 0}) == {}
        await clients.client("reader", {**AM, "authKey": "key-all"})
        await server.advance(30 * 24 * 3600)
        here = await clients.call("reader", "hereNow", {"channels": ["anywhere"]})
        assert (here["totalChannels"], here["totalOccupancy"]) == (1, 0)
        refused = await clients.refused("reader", "publish", {"channel": "anywhere", "message": "no"})
        assert_denied(refused, "PNPublishOperation", channels=["anywhere"])
