"""Access Manager end to end with the real Python SDK, ``pubnub==7.2.0`` (asyncio), against a live server
on loopback, on both engines: one Access Manager keyset (and a second one, for foreign tokens) beside
an open keyset on the same server.

A server-side client (with the secret: every request signed) grants tokens with ``grant_token`` and
revokes them with ``revoke_token``; the SDK's own ``parse_token`` decodes them. Clients hold a token
(``set_token``, sent as ``auth=``) or a v2 auth key. Token expiry moves with the server's clock
(``server.advance``), never with real time. What 7.2.0 reports for a refusal (read in its source, held
here): every call but subscribe resolves to an error status with ``PNAccessDeniedCategory`` (403) or
``PNBadRequestCategory`` (400), the code and the parsed body; a refused subscribe poll is announced to
the listeners once (category ``PNAccessDeniedCategory``, operation ``PNUnsubscribeOperation``), and the
loop stops there (7.2.0's default reconnection policy is ``NONE``)."""

from __future__ import annotations

import base64
import string
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from pubnub.enums import PNOperationType, PNStatusCategory
from pubnub.models.consumer.v3.channel import Channel
from pubnub.models.consumer.v3.group import Group
from pubnub.models.consumer.v3.uuid import UUID

from presence_server.context import LONGPOLLS
from tests.e2e.live import LiveServer
from tests.e2e.pysdk import describe, leave, ok, refused
from tests.e2e.pysdk_access import (
    KEYSETS,
    OPEN,
    OTHER_AM,
    AccessClients,
    Listener,
    assert_denied,
    grant_token,
)
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.e2e

ServerFactory = Callable[..., AbstractAsyncContextManager[LiveServer]]
PERMISSIONS = ("read", "write", "manage", "delete", "get", "update", "join")
TOKEN_ALPHABET = set(string.ascii_letters + string.digits + "-_=")


@pytest.fixture
async def server(live_server_factory: ServerFactory) -> AsyncIterator[LiveServer]:
    async with live_server_factory(keysets=KEYSETS) as live:
        yield live


@pytest.fixture
async def sdk(server: LiveServer) -> AsyncIterator[AccessClients]:
    clients = AccessClients(server.origin)
    try:
        yield clients
    finally:
        await clients.stop_all()


def perms(*granted: str) -> dict[str, bool]:
    """A permission set as ``parse_token`` reports it."""
    assert set(granted) <= set(PERMISSIONS)
    return {name: name in granted for name in PERMISSIONS}


def lobby_token_resources() -> list[Any]:
    return [Channel.id("lobby").read().write(), Channel.id("lobby-pnpres").read()]


async def subscribed(
    sdk: AccessClients, client: Any, channels: list[str], *, groups: tuple[str, ...] = (), presence: bool = True
) -> Listener:
    heard = sdk.subscribe(client, channels, groups=groups, presence=presence)
    await heard.connection()
    return heard


async def messages_and_presence(heard: Listener, count: int) -> tuple[list[Any], list[Any]]:
    """The next ``count`` messages, and the presence events heard among them (an error fails)."""
    messages: list[Any] = []
    presence: list[Any] = []
    while len(messages) < count:
        kind, event = await heard.next()
        assert kind != "error", describe(event)
        (messages if kind == "message" else presence).append(event)
    return messages, presence


def assert_bad_request(status: Any, operation: Any, error: dict[str, str], detail: dict[str, str]) -> None:
    """``status`` is the SDK's report of a 400 from a v3 Access Manager call (``operation``), whose body
    is the v3 error shape: ``error`` (its message and source) with ``detail`` as its one detail."""
    assert status.category == PNStatusCategory.PNBadRequestCategory, describe(status)
    assert status.status_code == 400
    assert status.operation == operation
    assert status.original_response == {
        "error": {**error, "details": [detail]},
        "service": "Access Manager",
        "status": 400,
    }


def retokened(token: str, old: bytes, new: bytes) -> str:
    """``token`` with one run of its CBOR bytes replaced (the signature left as it was)."""
    raw = base64.urlsafe_b64decode(token)
    assert old in raw, raw
    return base64.urlsafe_b64encode(raw.replace(old, new)).decode()


# -- grant_token and parse_token ---------------------------------------------------------------


async def test_grant_token_parses_to_what_was_granted(server: LiveServer, sdk: AccessClients) -> None:
    backend = sdk.server()
    meta = {"role": "tester", "level": 3, "tags": ["a", "b"], "nested": {"ok": True}}
    token = await grant_token(
        backend,
        ttl=90,
        channels=[
            Channel.id("lobby").read().write(),
            Channel.id("lobby-pnpres").read(),
            Channel.id("all").read().write().manage().delete().get().update().join(),
            Channel.pattern("^room-[0-9]+$").read().write(),
        ],
        groups=[Group.id("cg").read().manage(), Group.pattern("^team-.*$").read()],
        uuids=[UUID.id("alice").get().update().delete(), UUID.pattern("^bot-.*$").get()],
        authorized_uuid="alice",
        meta=meta,
    )
    # access 3.3 and trap 5.6: base64url with its padding, which 7.2.0's parser needs.
    assert set(token) <= TOKEN_ALPHABET and len(token) % 4 == 0, token

    assert backend.parse_token(token) == {
        "version": 2,
        "timestamp": int(server.clock()),
        "ttl": 90,
        "authorized_uuid": "alice",
        "resources": {
            "channels": {
                "lobby": perms("read", "write"),
                "lobby-pnpres": perms("read"),
                "all": perms(*PERMISSIONS),
            },
            "groups": {"cg": perms("read", "manage")},
            "uuids": {"alice": perms("get", "update", "delete")},
        },
        "patterns": {
            "channels": {"^room-[0-9]+$": perms("read", "write")},
            "groups": {"^team-.*$": perms("read")},
            "uuids": {"^bot-.*$": perms("get")},
        },
        "meta": meta,
    }
    # Parsing is local: a client without the secret reads the same.
    assert sdk.client("alice").parse_token(token) == backend.parse_token(token)


async def test_a_token_without_an_authorized_uuid_or_meta(sdk: AccessClients) -> None:
    backend = sdk.server()
    token = await grant_token(backend, ttl=1, groups=[Group.id("cg").read()])
    parsed = backend.parse_token(token)
    assert (parsed["authorized_uuid"], parsed["meta"], parsed["ttl"]) == (None, {}, 1)
    assert parsed["resources"] == {"channels": {}, "groups": {"cg": perms("read")}, "uuids": {}}
    assert parsed["patterns"] == {"channels": {}, "groups": {}, "uuids": {}}


# -- a client holding a token ------------------------------------------------------------------


async def test_token_holder_subscribes_heartbeats_sets_state_and_publishes(sdk: AccessClients) -> None:
    backend = sdk.server()
    token = await grant_token(backend, channels=lobby_token_resources(), authorized_uuid="alice")
    alice = sdk.client("alice", token=token)

    heard = await subscribed(sdk, alice, ["lobby"])
    join = await heard.next_of("presence")
    assert (join.event, join.uuid, join.channel, join.occupancy) == ("join", "alice", "lobby", 1)

    envelope = await ok(alice.heartbeat().channels(["lobby"]))
    assert envelope.result is True
    await ok(alice.set_state().channels(["lobby"]).state({"mood": "busy"}))
    change = await heard.next_of("presence")
    assert (change.event, change.uuid, change.state) == ("state-change", "alice", {"mood": "busy"})
    envelope = await ok(alice.get_state().channels(["lobby"]))
    assert envelope.result.channels == {"lobby": {"mood": "busy"}}
    envelope = await ok(alice.here_now().channels(["lobby"]))
    [entry] = envelope.result.channels
    assert [occupant.uuid for occupant in entry.occupants] == ["alice"]

    await ok(alice.publish().channel("lobby").message({"via": "GET"}))
    assert (await heard.next_of("message")).message == {"via": "GET"}
    await ok(alice.publish().channel("lobby").message({"via": "POST"}).use_post(True))
    message = await heard.next_of("message")
    assert (message.message, message.channel, message.publisher) == ({"via": "POST"}, "lobby", "alice")

    # Leave and where now need nothing beyond a valid token.
    envelope = await ok(alice.where_now().uuid("alice"))
    assert envelope.result.channels == ["lobby"]
    await ok(leave(alice).channels(["lobby"]))


async def test_token_holder_is_denied_what_it_was_not_granted(sdk: AccessClients) -> None:
    backend = sdk.server()
    token = await grant_token(
        backend,
        channels=[Channel.id("lobby").read(), Channel.id("stage").write()],
        authorized_uuid="alice",
    )
    alice = sdk.client("alice", token=token)

    # Write: publish (GET and POST) needs it; read alone is not enough.
    status = await refused(alice.publish().channel("lobby").message("hi"))
    assert_denied(status, payload={"channels": ["lobby"]})
    assert status.operation == PNOperationType.PNPublishOperation
    assert_denied(
        await refused(alice.publish().channel("lobby").message("hi").use_post(True)), payload={"channels": ["lobby"]}
    )
    await ok(alice.publish().channel("stage").message("hi"))
    await ok(alice.publish().channel("stage").message("hi").use_post(True))

    # Read: heartbeat, here now and state need it on every channel; every denied one is named.
    status = await refused(alice.heartbeat().channels(["stage", "lobby", "side"]))
    assert_denied(status, payload={"channels": ["side", "stage"]})
    assert status.operation == PNOperationType.PNHeartbeatOperation
    assert_denied(await refused(alice.here_now().channels(["stage"])), payload={"channels": ["stage"]})
    assert_denied(await refused(alice.set_state().channels(["stage"]).state({"a": 1})), payload={"channels": ["stage"]})
    assert_denied(await refused(alice.get_state().channels(["side"])), payload={"channels": ["side"]})
    await ok(alice.heartbeat().channels(["lobby"]))
    await ok(alice.here_now().channels(["lobby"]))

    # Subscribe with presence: ``lobby-pnpres`` is a resource of its own (trap 5.12), not granted.
    heard = sdk.subscribe(alice, ["lobby"])
    status = await heard.next_of("error")
    assert_denied(status, payload={"channels": ["lobby-pnpres"]})
    assert status.operation == PNOperationType.PNUnsubscribeOperation
    assert not heard.connected.is_set()

    # Without presence the same token subscribes (another client of the same user).
    again = sdk.client("alice", token=token)
    await subscribed(sdk, again, ["lobby"], presence=False)


async def test_patterns_grant_the_names_they_match(sdk: AccessClients) -> None:
    backend = sdk.server()
    token = await grant_token(
        backend,
        channels=[Channel.pattern("^room-[0-9]+$").read().write(), Channel.pattern("^room-[0-9]+-pnpres$").read()],
    )
    bob = sdk.client("bob", token=token)
    heard = await subscribed(sdk, bob, ["room-1", "room-22"])
    await ok(bob.publish().channel("room-22").message("hi"))
    messages, _ = await messages_and_presence(heard, 1)
    assert (messages[0].channel, messages[0].message) == ("room-22", "hi")
    await ok(bob.heartbeat().channels(["room-7"]))
    for name in ("room-x", "xroom-1", "room-1x", "room"):
        assert_denied(await refused(bob.publish().channel(name).message("hi")), payload={"channels": [name]})


async def test_groups_need_read_to_subscribe_and_manage_to_change(sdk: AccessClients) -> None:
    backend = sdk.server()
    token = await grant_token(
        backend, groups=[Group.id("cg").read().manage(), Group.id("cg-pnpres").read(), Group.id("seen").read()]
    )
    alice = sdk.client("alice", token=token)
    await ok(alice.add_channel_to_channel_group().channel_group("cg").channels(["lobby", "side"]))
    await ok(alice.remove_channel_from_channel_group().channel_group("cg").channels(["side"]))
    envelope = await ok(alice.list_channels_in_channel_group().channel_group("cg"))
    assert envelope.result.channels == ["lobby"]

    # Subscribing through the group needs read on it (and on cg-pnpres), not on its channels.
    heard = await subscribed(sdk, alice, [], groups=("cg",))
    join = await heard.next_of("presence")
    assert (join.event, join.uuid) == ("join", "alice")
    await ok(alice.heartbeat().channel_groups(["cg"]))
    await ok(backend.publish().channel("lobby").message("through the group"))
    message = await heard.next_of("message")
    assert (message.message, message.channel, message.subscription) == ("through the group", "lobby", "cg")

    # Read lets a group be listed, not changed; neither gives nothing.
    seen, other = {"channel-groups": ["seen"]}, {"channel-groups": ["other"]}
    await ok(alice.list_channels_in_channel_group().channel_group("seen"))
    assert_denied(
        await refused(alice.add_channel_to_channel_group().channel_group("seen").channels(["x"])), payload=seen
    )
    assert_denied(
        await refused(alice.remove_channel_from_channel_group().channel_group("seen").channels(["x"])), payload=seen
    )
    assert_denied(await refused(alice.remove_channel_group().channel_group("seen")), payload=seen)
    assert_denied(await refused(alice.list_channels_in_channel_group().channel_group("other")), payload=other)
    assert_denied(await refused(alice.heartbeat().channel_groups(["other"])), payload=other)
    again = sdk.subscribe(sdk.client("alice", token=token), groups=("seen",))
    assert_denied(await again.next_of("error"), payload={"channel-groups": ["seen-pnpres"]})

    await ok(alice.remove_channel_group().channel_group("cg"))


async def test_a_token_bound_to_a_uuid_serves_that_uuid_only(sdk: AccessClients) -> None:
    backend = sdk.server()
    bound = await grant_token(backend, channels=lobby_token_resources(), authorized_uuid="alice")
    mallory = sdk.client("mallory", token=bound)
    for call in (mallory.publish().channel("lobby").message("hi"), mallory.heartbeat().channels(["lobby"])):
        assert_denied(await refused(call), "Token is not authorized for this uuid", {"uuids": ["mallory"]})
    heard = sdk.subscribe(mallory, ["lobby"])
    assert_denied(await heard.next_of("error"), "Token is not authorized for this uuid", {"uuids": ["mallory"]})

    # A token without an authorized uuid serves whoever holds it.
    shared = await grant_token(backend, channels=lobby_token_resources())
    for uuid in ("bob", "carol"):
        await ok(sdk.client(uuid, token=shared).publish().channel("lobby").message(uuid))


# -- revoke and expiry ---------------------------------------------------------------------------


async def test_revoke_token_cuts_the_holder_off(server: LiveServer, sdk: AccessClients) -> None:
    backend = sdk.server()
    token = await grant_token(backend, channels=lobby_token_resources())
    alice = sdk.client("alice", token=token)
    heard = await subscribed(sdk, alice, ["lobby"])
    assert (await heard.next_of("presence")).event == "join"
    await ok(alice.publish().channel("lobby").message("before"))
    assert (await heard.next_of("message")).message == "before"
    # The next poll is held (admitted under the valid token) before the token is revoked.
    await wait_until(lambda: server.app[LONGPOLLS].waiting == 1)

    envelope = await ok(backend.revoke_token(token))
    assert envelope.result.status == 200
    assert envelope.status.original_response == {
        "data": {"message": "Success"},
        "service": "Access Manager",
        "status": 200,
    }

    status = await refused(alice.publish().channel("lobby").message("after"))
    assert_denied(status, "Token is revoked")
    assert_denied(await refused(alice.heartbeat().channels(["lobby"])), "Token is revoked")
    assert_denied(await refused(alice.here_now().channels(["lobby"])), "Token is revoked")
    # The held poll delivers what comes; the poll after it is refused.
    await ok(backend.publish().channel("lobby").message("after"))
    assert (await heard.next_of("message")).message == "after"
    status = await heard.next_of("error")
    assert_denied(status, "Token is revoked")
    assert status.operation == PNOperationType.PNUnsubscribeOperation

    # Only that token: a new one works, and the revoked one stays revoked. (A grant of the same
    # permissions in the same second of the server's clock mints the very same token: ttl differs here.)
    fresh = await grant_token(backend, ttl=61, channels=lobby_token_resources())
    assert fresh != token
    alice.set_token(fresh)
    await ok(alice.publish().channel("lobby").message("with a new token"))
    again = sdk.client("alice", token=token)
    assert_denied(await refused(again.publish().channel("lobby").message("hi")), "Token is revoked")


async def test_a_revocation_reaches_another_process_on_the_same_redis(
    server: LiveServer, live_server_factory: ServerFactory
) -> None:
    async with live_server_factory(keysets=KEYSETS) as second:
        here, there = AccessClients(server.origin), AccessClients(second.origin)
        try:
            token = await grant_token(here.server(), channels=lobby_token_resources())
            alice = there.client("alice", token=token)
            await ok(alice.publish().channel("lobby").message("before"))  # now in the second one's cache
            await ok(here.server().revoke_token(token))

            async def refused_there() -> bool:
                envelope = await alice.publish().channel("lobby").message("after").future()
                return bool(envelope.status.is_error())

            # docs/protocol.md 11.7: through the wake channel, within a second.
            await wait_until(refused_there, within=1.0)
            assert_denied(await refused(alice.heartbeat().channels(["lobby"])), "Token is revoked")
        finally:
            await there.stop_all()
            await here.stop_all()


async def test_a_token_expires_on_the_server_clock(server: LiveServer, sdk: AccessClients) -> None:
    backend = sdk.server()
    token = await grant_token(backend, ttl=1, channels=lobby_token_resources())
    alice = sdk.client("alice", token=token)
    await ok(alice.publish().channel("lobby").message("fresh"))
    await server.advance(59)
    await ok(alice.publish().channel("lobby").message("still good"))
    await server.advance(2)
    assert_denied(await refused(alice.publish().channel("lobby").message("late")), "Token is expired")
    assert_denied(await refused(alice.heartbeat().channels(["lobby"])), "Token is expired")
    heard = sdk.subscribe(alice, ["lobby"])
    assert_denied(await heard.next_of("error"), "Token is expired")

    # Revoking an expired token is a bad request (access 3.2).
    status = await refused(backend.revoke_token(token))
    assert_bad_request(
        status,
        PNOperationType.PNAccessManagerRevokeToken,
        {"message": "Invalid token", "source": "revoke"},
        {"message": "Token is expired.", "location": "token", "locationType": "path"},
    )

    # A token granted now is issued on the moved clock.
    fresh = await grant_token(backend, ttl=1, channels=lobby_token_resources())
    assert backend.parse_token(fresh)["timestamp"] == int(server.clock())
    await ok(sdk.client("alice", token=fresh).publish().channel("lobby").message("fresh again"))


# -- no token, bad tokens, and the open keyset -------------------------------------------------


async def test_without_a_token_the_access_manager_keyset_refuses(sdk: AccessClients) -> None:
    anon = sdk.client("anon")
    lobby = {"channels": ["lobby"]}
    assert_denied(await refused(anon.publish().channel("lobby").message("hi")), payload=lobby)
    assert_denied(await refused(anon.publish().channel("lobby").message("hi").use_post(True)), payload=lobby)
    assert_denied(await refused(anon.heartbeat().channels(["lobby"])), payload=lobby)
    assert_denied(await refused(anon.here_now().channels(["lobby"])), payload=lobby)
    assert_denied(await refused(anon.set_state().channels(["lobby"]).state({"a": 1})), payload=lobby)
    heard = sdk.subscribe(anon, ["lobby"])
    assert_denied(await heard.next_of("error"), payload={"channels": ["lobby", "lobby-pnpres"]})
    # What needs no permission: time, where now, leave.
    await ok(anon.time())
    assert (await ok(anon.where_now().uuid("anon"))).result.channels == []
    await ok(leave(anon).channels(["lobby"]))


async def test_the_open_keyset_beside_it_needs_neither_signature_nor_token(sdk: AccessClients) -> None:
    anon = sdk.client("anon", OPEN)
    heard = await subscribed(sdk, anon, ["lobby"])
    assert (await heard.next_of("presence")).uuid == "anon"
    await ok(anon.heartbeat().channels(["lobby"]))
    await ok(anon.set_state().channels(["lobby"]).state({"mood": "open"}))
    assert (await heard.next_of("presence")).state == {"mood": "open"}
    await ok(anon.publish().channel("lobby").message("GET"))
    await ok(anon.publish().channel("lobby").message("POST").use_post(True))
    messages, _ = await messages_and_presence(heard, 2)
    assert [m.message for m in messages] == ["GET", "POST"]
    # A token (even a foreign one) is ignored there.
    token = await grant_token(sdk.server(), channels=[Channel.id("elsewhere").read()])
    holder = sdk.client("holder", OPEN, token=token)
    await ok(holder.publish().channel("lobby").message("ignored token"))


async def test_forged_foreign_and_malformed_tokens(sdk: AccessClients) -> None:
    backend = sdk.server()
    token = await grant_token(backend, channels=[Channel.id("lobby").read()])

    # Read made read+write (CBOR text "lobby", then the bitmask 1 -> 3): well formed, badly signed.
    forged = retokened(token, b"\x65lobby\x01", b"\x65lobby\x03")
    assert backend.parse_token(forged)["resources"]["channels"]["lobby"] == perms("read", "write")
    forger = sdk.client("forger", token=forged)
    for call in (forger.publish().channel("lobby").message("hi"), forger.heartbeat().channels(["lobby"])):
        assert_denied(await refused(call), "Invalid token")

    # A token of the other Access Manager keyset, on this one.
    foreign = await grant_token(sdk.server(keyset=OTHER_AM), channels=[Channel.id("lobby").read().write()])
    stranger = sdk.client("stranger", token=foreign)
    assert_denied(await refused(stranger.publish().channel("lobby").message("hi")), "Invalid token")
    # ... which is good on its own keyset.
    await ok(sdk.client("stranger", OTHER_AM, token=foreign).publish().channel("lobby").message("hi"))

    # Cut short: still meant as a token (it starts as one), so malformed.
    cut = sdk.client("cut", token=token[: len(token) // 2])
    assert_denied(await refused(cut.heartbeat().channels(["lobby"])), "Invalid token")
    # Not token-shaped at all: a v2 auth key, without grants.
    keyed = sdk.client("keyed", token="not-a-token")
    assert_denied(await refused(keyed.heartbeat().channels(["lobby"])), payload={"channels": ["lobby"]})


# -- signed requests -----------------------------------------------------------------------------


async def test_signed_requests_are_server_side(sdk: AccessClients) -> None:
    backend = sdk.server("backend")
    token = await grant_token(backend, channels=[Channel.id("lobby").read(), Channel.id("lobby-pnpres").read()])
    heard = await subscribed(sdk, sdk.client("alice", token=token), ["lobby"])
    assert (await heard.next_of("presence")).uuid == "alice"

    # Publish: GET signed v2, POST signed v1 (7.2.0's use_post, access 1.2); no token needed.
    await ok(backend.publish().channel("lobby").message("signed GET"))
    await ok(backend.publish().channel("lobby").message({"signed": "POST"}).use_post(True))
    messages, _ = await messages_and_presence(heard, 2)
    assert [(m.message, m.publisher) for m in messages] == [("signed GET", "backend"), ({"signed": "POST"}, "backend")]

    await ok(backend.heartbeat().channels(["lobby"]))
    join = await heard.next_of("presence")
    assert (join.event, join.uuid) == ("join", "backend")
    await ok(backend.set_state().channels(["lobby"]).state({"role": "server"}))
    assert (await heard.next_of("presence")).state == {"role": "server"}
    envelope = await ok(backend.here_now().channels(["lobby"]))
    [entry] = envelope.result.channels
    assert sorted(occupant.uuid for occupant in entry.occupants) == ["alice", "backend"]
    await ok(backend.time())


async def test_a_signed_client_subscribes_without_a_token(sdk: AccessClients) -> None:
    backend = sdk.server("backend")
    await ok(backend.add_channel_to_channel_group().channel_group("g1").channels(["lobby"]))
    heard = await subscribed(sdk, backend, ["side"], groups=("g1",))
    joins = [await heard.next_of("presence") for _ in range(2)]
    assert sorted((j.event, j.uuid, j.channel, j.subscription) for j in joins) == [
        ("join", "backend", "lobby", "g1"),
        ("join", "backend", "side", None),
    ]
    token = await grant_token(backend, channels=[Channel.id("lobby").write(), Channel.id("side").write()])
    alice = sdk.client("alice", token=token)
    await ok(alice.publish().channel("lobby").message("to the group"))
    await ok(alice.signal().channel("side").message("a signal"))
    fired = await ok(alice.fire().channel("side").message("a fire"))
    assert fired.status.original_response[:2] == [1, "Sent"]
    message = await heard.next_of("message")
    assert (message.message, message.channel, message.subscription) == ("to the group", "lobby", "g1")
    signal = await heard.next_of("signal")
    assert (signal.message, signal.channel, signal.publisher) == ("a signal", "side", "alice")
    # A fire is never delivered; a message after it arrives next.
    await ok(alice.publish().channel("side").message("after the fire"))
    assert (await heard.next_of("message")).message == "after the fire"


async def test_what_python_signs_double_encoded_is_refused(sdk: AccessClients) -> None:
    # 7.2.0 signs these values encoded twice (access 5.4; heartbeat ``state`` too): refused, as chosen
    # in docs/protocol.md 11.2, while the same calls with plain values verify.
    backend = sdk.server()
    for refused_call, accepted_call in (
        (backend.heartbeat().channels(["x"]).state({"x": {"a": 1}}), backend.heartbeat().channels(["x"])),
        (
            backend.here_now().channels(["x"]).channel_groups(["g:1"]),
            backend.here_now().channels(["x"]).channel_groups(["g1"]),
        ),
        (
            backend.set_state().channels(["x"]).channel_groups(["g 1"]).state({"a": 1}),
            backend.set_state().channels(["x"]).channel_groups(["g1"]).state({"a": 1}),
        ),
        (backend.audit().channels(["room 1"]), backend.audit().channels(["room-1"])),
    ):
        assert_denied(await refused(refused_call), "Signature does not match")
        await ok(accepted_call)


async def test_a_grant_out_of_range_is_a_bad_request(sdk: AccessClients) -> None:
    status = await refused(sdk.server().grant_token().ttl(43201).channels([Channel.id("lobby").read()]))
    assert_bad_request(
        status,
        PNOperationType.PNAccessManagerGrantToken,
        {"message": "Invalid ttl", "source": "grant"},
        {"message": "Range should be 1 to 43200 minute(s).", "location": "ttl", "locationType": "body"},
    )


async def test_a_wrong_secret_does_not_match(sdk: AccessClients) -> None:
    impostor = sdk.server("impostor", secret="sec-c-not-the-one")
    for call in (
        impostor.publish().channel("lobby").message("hi"),
        impostor.publish().channel("lobby").message("hi").use_post(True),
        impostor.heartbeat().channels(["lobby"]),
        impostor.grant_token().ttl(5).channels([Channel.id("lobby").read()]),
    ):
        assert_denied(await refused(call), "Signature does not match")
    # /time is always allowed (access 4.1), even signed with a wrong secret.
    await ok(impostor.time())
    # Nothing was done: no heartbeat joined.
    envelope = await ok(sdk.server().here_now().channels(["lobby"]))
    assert envelope.result.total_occupancy == 0


# Channel names with what must be escaped, or left alone, when signing (access 1.3, traps 5.3 and 5.14).
ODD_CHANNELS = ["room 1", "a+b", "t~x", "st*r", "sl/ash", "caf\u00e9", "\u03a9mega \u00fc+~*/"]
# User ids go raw into 7.2.0's query (trap 5.1): a space or a non-ASCII letter breaks its URL, so those
# are granted (in the token body) and parsed back, but never sent as a client's own uuid.
ODD_UUID = "svc+1~*/x._-"
UNSENDABLE_UUIDS = ["user 1", "caf\u00e9"]


async def test_odd_channel_names_and_uuids_sign_and_verify(server: LiveServer, sdk: AccessClients) -> None:
    backend = sdk.server(ODD_UUID)
    token = await grant_token(
        backend,
        channels=[Channel.id(name).read().write() for name in ODD_CHANNELS]
        + [Channel.id(f"{name}-pnpres").read() for name in ODD_CHANNELS],
        uuids=[UUID.id(uuid).get() for uuid in [ODD_UUID, *UNSENDABLE_UUIDS]],
        authorized_uuid=ODD_UUID,
    )
    parsed = backend.parse_token(token)
    assert sorted(parsed["resources"]["channels"]) == sorted([*ODD_CHANNELS, *(f"{n}-pnpres" for n in ODD_CHANNELS)])
    assert sorted(parsed["resources"]["uuids"]) == sorted([ODD_UUID, *UNSENDABLE_UUIDS])
    assert parsed["authorized_uuid"] == ODD_UUID

    holder = sdk.client(ODD_UUID, token=token)
    heard = await subscribed(sdk, holder, ODD_CHANNELS)
    for name in ODD_CHANNELS:
        await ok(backend.publish().channel(name).message(["signed GET", name]))
        await ok(backend.publish().channel(name).message(["signed POST", name]).use_post(True))
        await ok(holder.publish().channel(name).message(["token", name]))
    messages, presence = await messages_and_presence(heard, 3 * len(ODD_CHANNELS))
    assert sorted((m.channel, tuple(m.message)) for m in messages) == sorted(
        (name, (how, name)) for name in ODD_CHANNELS for how in ("signed GET", "signed POST", "token")
    )
    assert {(event.event, event.uuid, event.channel) for event in presence} == {
        ("join", ODD_UUID, name) for name in ODD_CHANNELS
    }

    # The signed presence calls, names in the path and (uuid) in the query.
    await ok(backend.heartbeat().channels(ODD_CHANNELS))
    state = {"note": "caf\u00e9 + ~*/ &="}
    await ok(backend.set_state().channels(ODD_CHANNELS).state(state))
    envelope = await ok(backend.get_state().channels(ODD_CHANNELS))
    assert envelope.result.channels == {name: state for name in ODD_CHANNELS}
    envelope = await ok(backend.here_now().channels(ODD_CHANNELS))
    assert {entry.channel_name: [o.uuid for o in entry.occupants] for entry in envelope.result.channels} == {
        name: [ODD_UUID] for name in ODD_CHANNELS
    }
    envelope = await ok(backend.where_now().uuid(ODD_UUID))
    assert sorted(envelope.result.channels) == sorted(ODD_CHANNELS)
    await ok(leave(backend).channels(ODD_CHANNELS))
    # v2 grant carries the names in its query (signed raw, sent encoded).
    envelope = await ok(backend.grant().channels(ODD_CHANNELS).auth_keys(["ak+1/="]).read(True).ttl(5))
    assert sorted(envelope.result.channels) == sorted(ODD_CHANNELS)
    # ... and 7.2.0 sends that auth key raw (trap 5.1): its ``+`` is a plus, never read as a space.
    keyed = sdk.client("keyed", auth_key="ak+1/=")
    await ok(keyed.heartbeat().channels(ODD_CHANNELS))
    await ok(backend.grant().channels(["spaced only"]).auth_keys(["ak 1/="]).read(True).ttl(5))
    assert_denied(await refused(keyed.heartbeat().channels(["spaced only"])), payload={"channels": ["spaced only"]})


# -- PAM v2: auth keys ---------------------------------------------------------------------------


async def test_v2_grant_to_an_auth_key_then_all_zero_revokes(sdk: AccessClients) -> None:
    backend = sdk.server()
    envelope = await ok(backend.grant().channels(["lobby"]).auth_keys(["ak-1"]).read(True).write(True).ttl(5))
    result = envelope.result
    assert (result.level, result.subscribe_key, result.ttl) == ("user", "sub-c-am", 5)
    granted = result.channels["lobby"].auth_keys["ak-1"]
    assert (granted.read_enabled, granted.write_enabled, granted.manage_enabled) == (True, True, False)

    holder = sdk.client("alice", auth_key="ak-1")
    await ok(holder.publish().channel("lobby").message("GET"))
    await ok(holder.publish().channel("lobby").message("POST").use_post(True))
    await ok(holder.heartbeat().channels(["lobby"]))
    await ok(holder.here_now().channels(["lobby"]))
    assert_denied(await refused(holder.publish().channel("side").message("hi")), payload={"channels": ["side"]})
    stranger = sdk.client("bob", auth_key="ak-2")
    assert_denied(await refused(stranger.publish().channel("lobby").message("hi")), payload={"channels": ["lobby"]})

    envelope = await ok(backend.audit().channels(["lobby"]).auth_keys(["ak-1"]))
    audited = envelope.result.channels["lobby"].auth_keys["ak-1"]
    assert (envelope.result.level, audited.read_enabled, audited.write_enabled) == ("user", True, True)

    # A grant with every flag at 0 revokes (access 2).
    await ok(backend.grant().channels(["lobby"]).auth_keys(["ak-1"]).read(False).write(False))
    assert_denied(await refused(holder.publish().channel("lobby").message("hi")), payload={"channels": ["lobby"]})
    assert_denied(await refused(holder.heartbeat().channels(["lobby"])), payload={"channels": ["lobby"]})


async def test_v2_channel_level_grant_serves_clients_without_auth(sdk: AccessClients) -> None:
    backend = sdk.server()
    envelope = await ok(backend.grant().channels(["public"]).read(True).ttl(5))
    assert envelope.result.level == "channel"
    assert envelope.result.channels["public"].read_enabled is True
    anon = sdk.client("anon")
    await ok(anon.heartbeat().channels(["public"]))
    await subscribed(sdk, anon, ["public"], presence=False)
    assert_denied(await refused(anon.publish().channel("public").message("hi")), payload={"channels": ["public"]})


async def test_a_token_wins_over_the_auth_key(sdk: AccessClients) -> None:
    # 7.2.0 sends the token in ``auth`` when it holds one (access 3.5): the auth key's grant is unused.
    backend = sdk.server()
    await ok(backend.grant().channels(["lobby"]).auth_keys(["ak-1"]).read(True).write(True).ttl(5))
    token = await grant_token(backend, channels=[Channel.id("lobby").read()])
    both = sdk.client("alice", token=token, auth_key="ak-1")
    await ok(both.heartbeat().channels(["lobby"]))
    assert_denied(await refused(both.publish().channel("lobby").message("hi")), payload={"channels": ["lobby"]})


async def test_v2_grants_expire_on_the_server_clock(server: LiveServer, sdk: AccessClients) -> None:
    backend = sdk.server()
    await ok(backend.grant().channels(["lobby"]).auth_keys(["ak-1"]).write(True).ttl(1))
    holder = sdk.client("alice", auth_key="ak-1")
    await ok(holder.publish().channel("lobby").message("in time"))
    await server.advance(61)
    assert_denied(await refused(holder.publish().channel("lobby").message("late")), payload={"channels": ["lobby"]})
