"""Live presence through the real Python client, ``pubnub==7.2.0`` (asyncio), against a live server on
loopback, on both engines: presence events on ``-pnpres`` (join, state-change, leave, timeout,
interval), messages, signals and fires, bursts, channel groups and wildcards, compressed POST publish,
and two server processes sharing one Redis.

What 7.2.0's asyncio client does (read in its source): ``PubNubAsyncio`` subscribes with its legacy
loop (``AsyncioSubscriptionManager``): a handshake with ``tt=0`` (or the ``with_timetoken`` value),
then a new poll as soon as each answer is queued for the message worker; ``unsubscribe()`` sends
``/leave`` for the removed names (unless ``suppress_leave_events``); its periodic heartbeat waits a
whole interval (280 s by default) before the first one, so it never fires here. Its listener results
do not carry the envelope's ``u`` (``SubscribeMessage.from_json`` drops it) nor ``here_now_refresh``,
so those are checked on the answers the client received, which ``Listener`` records. Presence time
moves only through ``advance``; every wait is bounded so that a failure never hangs.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from pubnub.enums import PNStatusCategory

from tests.e2e.live import LiveServer
from tests.e2e.pysdk import SUB_KEY, WAIT, Clients, Heard, Hearing, describe, leave, ok, refused, wind_down

pytestmark = pytest.mark.e2e

# Above the live server's 2 s hold, so that an idle poll is answered by the server, never timed out.
SUBSCRIBE_TIMEOUT = 10
MARKERS = itertools.count()

ServerFactory = Callable[..., AbstractAsyncContextManager[LiveServer]]


class Listener(Hearing):
    """Everything one client hears, in the order it hears it, and the subscribe answers it received.

    ``hold_after(predicate)`` keeps the client from sending its next poll after an answer that
    matches, until ``release()``: the client is then between polls for as long as the test wants.
    """

    def __init__(self, client: Any) -> None:
        super().__init__()
        self.answers: list[dict[str, Any]] = []
        self._gate = asyncio.Event()
        self._gate.set()
        self._hold: Callable[[dict[str, Any]], bool] | None = None
        manager = client._subscription_manager
        handle, start_loop = manager._handle_endpoint_call, manager._start_subscribe_loop

        def tapped(raw: dict[str, Any], status: Any) -> None:
            self.answers.append(raw)
            if self._hold is not None and self._hold(raw):
                self._hold = None
                self._gate.clear()
            handle(raw, status)

        async def gated() -> None:
            await self._gate.wait()
            await start_loop()

        # The manager looks both up on itself for every poll, so these replace them for this client.
        manager._handle_endpoint_call = tapped
        manager._start_subscribe_loop = gated

    def hold_after(self, predicate: Callable[[dict[str, Any]], bool]) -> None:
        self._hold = predicate

    @property
    def holding(self) -> bool:
        return not self._gate.is_set()

    def release(self) -> None:
        self._gate.set()

    async def next(self) -> Heard:
        """The next thing heard, which must not be an error."""
        kind, event = await super().next()
        assert kind != "error", describe(event)
        return kind, event

    async def next_of(self, kind: str) -> Any:
        heard_kind, event = await self.next()
        assert heard_kind == kind, f"expected a {kind}, heard a {heard_kind}: {vars(event)}"
        return event

    async def presence_event(self) -> Any:
        return await self.next_of("presence")

    async def before(self, marker: Any) -> list[Heard]:
        """Everything heard before the message ``marker`` (which is consumed)."""
        heard: list[Heard] = []
        while True:
            kind, event = await self.next()
            if kind == "message" and event.message == marker:
                return heard
            heard.append((kind, event))

    def envelopes(self) -> list[dict[str, Any]]:
        return [envelope for answer in self.answers for envelope in answer["m"]]

    def envelope_of(self, timetoken: int) -> dict[str, Any]:
        [envelope] = [e for e in self.envelopes() if int(e["p"]["t"]) == timetoken]
        return envelope


class Subscribers(Clients):
    """Clients whose subscribe loops are wound down (``wind_down``) before they stop."""

    def __init__(self, origin: str) -> None:
        super().__init__(origin)
        self.subscribed: list[Any] = []

    async def stop_all(self) -> None:
        await wind_down(self.subscribed)
        await super().stop_all()


@pytest.fixture
async def sdk(live_server: LiveServer) -> AsyncIterator[Subscribers]:
    clients = Subscribers(live_server.origin)
    try:
        yield clients
    finally:
        await clients.stop_all()


def listening(sdk: Subscribers, uuid: str) -> tuple[Any, Listener]:
    client = sdk(uuid)
    sdk.subscribed.append(client)
    client.config.subscribe_request_timeout = SUBSCRIBE_TIMEOUT
    listener = Listener(client)
    client.add_listener(listener)
    return client, listener


async def subscribed(
    sdk: Subscribers,
    uuid: str,
    *,
    channels: list[str] | None = None,
    groups: list[str] | None = None,
    presence: bool = True,
    timetoken: int | None = None,
) -> tuple[Any, Listener]:
    """A client of ``uuid`` subscribed (with presence unless told) once its first answer came."""
    client, listener = listening(sdk, uuid)
    builder = client.subscribe().channels(channels or []).channel_groups(groups or [])
    if presence:
        builder = builder.with_presence()
    if timetoken is not None:
        builder = builder.with_timetoken(timetoken)
    builder.execute()
    await asyncio.wait_for(listener.connected.wait(), timeout=WAIT)
    return client, listener


async def publish(client: Any, channel: str, message: Any, **meta: Any) -> int:
    call = client.publish().channel(channel).message(message)
    if meta:
        call = call.meta(meta)
    envelope = await ok(call)
    return int(envelope.result.timetoken)


async def until_now(heard: Listener, publisher: Any, channel: str) -> list[Heard]:
    """Everything ``heard`` hears up to now: a marker published after it is heard after it."""
    marker = {"marker": next(MARKERS)}
    await publish(publisher, channel, marker)
    return await heard.before(marker)


async def occupants(client: Any, channel: str) -> list[str]:
    envelope = await ok(client.here_now().channels([channel]))
    [entry] = envelope.result.channels
    return sorted(occupant.uuid for occupant in entry.occupants)


def fields(event: Any) -> tuple[Any, ...]:
    return event.event, event.uuid, event.occupancy, event.channel, event.subscription, event.state


class View:
    """The occupants a listener knows of from presence events alone (interval lists applied
    join, then leave, then timeout)."""

    def __init__(self) -> None:
        self.occupants: set[str] = set()

    def apply(self, event: Any) -> None:
        if event.event == "join":
            self.occupants.add(event.uuid)
        elif event.event in ("leave", "timeout"):
            self.occupants.discard(event.uuid)
        elif event.event == "interval":
            self.occupants |= set(event.join or [])
            self.occupants -= set(event.leave or []) | set(event.timeout or [])

    def apply_all(self, heard: list[Heard]) -> None:
        for kind, event in heard:
            if kind == "presence":
                self.apply(event)

    @property
    def sorted(self) -> list[str]:
        return sorted(self.occupants)


# -- presence on a channel ----------------------------------------------------------------------


async def test_own_join_arrives_on_the_first_poll_after_the_handshake(
    live_server: LiveServer, sdk: Subscribers
) -> None:
    alice, heard = await subscribed(sdk, "alice", channels=["lobby"])
    join = await heard.presence_event()
    assert fields(join) == ("join", "alice", 1, "lobby", None, None)
    assert join.timestamp == int(live_server.clock())
    assert (join.join, join.leave, join.timeout) == (None, None, None)
    handshake = heard.answers[0]
    assert handshake["m"] == []
    assert join.timetoken > int(handshake["t"]["t"])
    # On the wire: a presence envelope without ``e``, matched directly (no ``b`` other than itself).
    envelope = heard.envelope_of(join.timetoken)
    assert envelope["c"] == "lobby-pnpres"
    assert "e" not in envelope and envelope.get("b", "lobby-pnpres") == "lobby-pnpres"
    assert await occupants(alice, "lobby") == ["alice"]
    envelope = await ok(alice.where_now().uuid("alice"))
    assert envelope.result.channels == ["lobby"]


async def test_another_clients_join_with_and_without_state(live_server: LiveServer, sdk: Subscribers) -> None:
    _, heard = await subscribed(sdk, "alice", channels=["lobby"])
    await heard.presence_event()

    # bob subscribes without presence: that alone makes him present.
    bob, bobs = await subscribed(sdk, "bob", channels=["lobby"], presence=False)
    join = await heard.presence_event()
    assert fields(join) == ("join", "bob", 2, "lobby", None, None)
    assert join.timestamp == int(live_server.clock())

    # carol joins by heartbeat with a state (7.2.0 keys it by channel): the join carries it.
    carol = sdk("carol")
    await ok(carol.heartbeat().channels(["lobby"]).state({"lobby": {"mood": "calm"}}))
    join = await heard.presence_event()
    assert fields(join) == ("join", "carol", 3, "lobby", None, {"mood": "calm"})
    assert await occupants(bob, "lobby") == ["alice", "bob", "carol"]

    # bob subscribed without presence: messages reach him, presence events do not.
    assert await until_now(bobs, sdk("publisher"), "lobby") == []


async def test_state_change_from_another_client(live_server: LiveServer, sdk: Subscribers) -> None:
    _, heard = await subscribed(sdk, "alice", channels=["lobby"])
    await heard.presence_event()
    bob = sdk("bob")
    await ok(bob.heartbeat().channels(["lobby"]))
    assert fields(await heard.presence_event()) == ("join", "bob", 2, "lobby", None, None)

    await ok(bob.set_state().channels(["lobby"]).state({"mood": "busy", "level": 3}))
    change = await heard.presence_event()
    assert fields(change) == ("state-change", "bob", 2, "lobby", None, {"mood": "busy", "level": 3})
    assert change.timestamp == int(live_server.clock())

    await ok(bob.set_state().channels(["lobby"]).state({"mood": "away"}))
    change = await heard.presence_event()
    assert fields(change) == ("state-change", "bob", 2, "lobby", None, {"mood": "away"})


async def test_leave_when_another_client_unsubscribes(sdk: Subscribers) -> None:
    alice, heard = await subscribed(sdk, "alice", channels=["lobby"])
    await heard.presence_event()
    bob, _ = await subscribed(sdk, "bob", channels=["lobby", "side"], presence=False)
    assert fields(await heard.presence_event()) == ("join", "bob", 2, "lobby", None, None)

    # 7.2.0 sends /leave for the names it unsubscribes from, and keeps polling the rest.
    bob.unsubscribe().channels(["lobby"]).execute()
    left = await heard.presence_event()
    assert fields(left) == ("leave", "bob", 1, "lobby", None, None)
    assert await occupants(alice, "lobby") == ["alice"]
    assert await occupants(alice, "side") == ["bob"]

    # Nothing more: bob's later polls (on "side" only) do not bring him back to the lobby.
    assert await until_now(heard, sdk("publisher"), "lobby") == []
    assert await occupants(alice, "lobby") == ["alice"]


async def test_leave_through_the_leave_endpoint(sdk: Subscribers) -> None:
    _, heard = await subscribed(sdk, "alice", channels=["lobby"])
    await heard.presence_event()
    bob = sdk("bob")
    await ok(bob.heartbeat().channels(["lobby"]))
    await heard.presence_event()
    await ok(leave(bob).channels(["lobby"]))
    assert fields(await heard.presence_event()) == ("leave", "bob", 1, "lobby", None, None)


async def test_timeout_of_a_client_that_stops_heartbeating(live_server: LiveServer, sdk: Subscribers) -> None:
    alice, heard = await subscribed(sdk, "alice", channels=["lobby"])
    await heard.presence_event()
    carol = sdk("carol", presence_timeout=5)
    await ok(carol.heartbeat().channels(["lobby"]))
    assert fields(await heard.presence_event()) == ("join", "carol", 2, "lobby", None, None)

    assert await live_server.advance(4) == 0
    assert await live_server.advance(2) == 1
    timeout = await heard.presence_event()
    assert fields(timeout) == ("timeout", "carol", 1, "lobby", None, None)
    assert timeout.timestamp == int(live_server.clock())
    assert await occupants(alice, "lobby") == ["alice"]


async def test_presence_of_other_channels_is_not_heard(sdk: Subscribers) -> None:
    _, heard = await subscribed(sdk, "alice", channels=["lobby"])
    await heard.presence_event()
    bob = sdk("bob")
    await ok(bob.heartbeat().channels(["elsewhere"]))
    await ok(bob.set_state().channels(["elsewhere"]).state({"x": 1}))
    await ok(leave(bob).channels(["elsewhere"]))
    assert await until_now(heard, sdk("publisher"), "lobby") == []


async def test_two_listeners_hear_the_same_events_in_the_same_order(sdk: Subscribers) -> None:
    _, first = await subscribed(sdk, "alice", channels=["lobby"])
    _, second = await subscribed(sdk, "zed", channels=["lobby"])
    bob = sdk("bob")
    await ok(bob.heartbeat().channels(["lobby"]))
    await publish(bob, "lobby", "hi")
    await ok(bob.set_state().channels(["lobby"]).state({"s": 1}))
    await ok(leave(bob).channels(["lobby"]))
    await publish(bob, "lobby", "marker")
    seen_first = [(kind, e.timetoken) for kind, e in await first.before("marker")]
    seen_second = [(kind, e.timetoken) for kind, e in await second.before("marker")]
    # Both heard zed's join, bob's join, bob's message, state change and leave; only alice heard
    # her own join, which came before zed subscribed.
    assert seen_first[1:] == seen_second
    assert [kind for kind, _ in seen_second] == ["presence", "presence", "message", "presence", "presence"]


async def test_odd_channel_names_round_trip(sdk: Subscribers) -> None:
    # 7.2.0 percent-encodes each name and joins them with literal commas (docs/protocol.md 1.2).
    odd = ["room a,b", "x/y", "caf\u00e9", "pct%2C"]
    alice, heard = await subscribed(sdk, "alice", channels=odd)
    joins = [await heard.presence_event() for _ in odd]
    assert sorted(j.channel for j in joins) == sorted(odd)
    assert {(j.event, j.uuid, j.occupancy) for j in joins} == {("join", "alice", 1)}
    bob = sdk("bob")
    for name in odd:
        await publish(bob, name, {"to": name})
    received = [await heard.next_of("message") for _ in odd]
    assert [(m.channel, m.message) for m in received] == [(name, {"to": name}) for name in odd]
    envelope = await ok(alice.where_now().uuid("alice"))
    assert sorted(envelope.result.channels) == sorted(odd)


# -- cursors ----------------------------------------------------------------------------------------


async def test_subscribe_from_a_past_timetoken_catches_up(sdk: Subscribers) -> None:
    bob = sdk("bob")
    timetokens = [await publish(bob, "lobby", i) for i in range(3)]
    _, heard = await subscribed(sdk, "alice", channels=["lobby"], presence=False, timetoken=timetokens[0] - 1)
    received = [await heard.next_of("message") for _ in range(3)]
    assert [(m.message, m.timetoken) for m in received] == list(zip(range(3), timetokens, strict=True))


async def test_cursor_from_the_future_is_answered_with_the_present(sdk: Subscribers) -> None:
    _, heard = await subscribed(sdk, "alice", channels=["lobby"], presence=False, timetoken=99_999_999_999_999_999)
    present = int(heard.answers[0]["t"]["t"])
    assert present < 99_999_999_999_999_999
    timetoken = await publish(sdk("bob"), "lobby", "still heard")
    message = await heard.next_of("message")
    assert (message.message, message.timetoken) == ("still heard", timetoken)


# -- messages, signals, fires ---------------------------------------------------------------------


async def test_messages_arrive_in_publish_order_with_publisher_and_meta(sdk: Subscribers) -> None:
    _, heard = await subscribed(sdk, "alice", channels=["lobby"], presence=False)
    bob = sdk("bob")
    sent = ["text", {"nested": {"list": [1, 2.5, None, True]}}, [1, "two"], 42, "caf\u00e9 \u2615 a/b?c=d&e"]
    timetokens = [await publish(bob, "lobby", message, seq=i, tag="t") for i, message in enumerate(sent)]
    assert timetokens == sorted(set(timetokens))

    received = [await heard.next_of("message") for _ in sent]
    assert [m.message for m in received] == sent
    assert [m.timetoken for m in received] == timetokens
    assert {(m.publisher, m.channel, m.subscription) for m in received} == {("bob", "lobby", None)}
    for i, timetoken in enumerate(timetokens):
        envelope = heard.envelope_of(timetoken)
        assert envelope["u"] == {"seq": i, "tag": "t"}
        assert envelope["i"] == "bob"
        assert envelope["c"] == "lobby"
        assert "e" not in envelope


async def test_message_without_meta_has_no_u(sdk: Subscribers) -> None:
    _, heard = await subscribed(sdk, "alice", channels=["lobby"], presence=False)
    timetoken = await publish(sdk("bob"), "lobby", {"plain": True})
    assert (await heard.next_of("message")).message == {"plain": True}
    assert "u" not in heard.envelope_of(timetoken)


async def test_signals_arrive_on_the_signal_listener(sdk: Subscribers) -> None:
    _, heard = await subscribed(sdk, "alice", channels=["lobby"], presence=False)
    bob = sdk("bob")
    envelope = await ok(bob.signal().channel("lobby").message({"typing": True}))
    signal_tt = int(envelope.result.timetoken)
    message_tt = await publish(bob, "lobby", "after the signal")

    signal = await heard.next_of("signal")
    assert (signal.message, signal.publisher, signal.channel, signal.subscription) == (
        {"typing": True},
        "bob",
        "lobby",
        None,
    )
    assert signal.timetoken == signal_tt
    assert heard.envelope_of(signal_tt)["e"] == 1
    message = await heard.next_of("message")
    assert (message.message, message.timetoken) == ("after the signal", message_tt)


async def test_a_fire_is_not_delivered(sdk: Subscribers) -> None:
    _, heard = await subscribed(sdk, "alice", channels=["lobby"], presence=False)
    bob = sdk("bob")
    # No meta on the fire: 7.2.0 puts Fire's meta into the query unencoded (spaces and all), which
    # is not a valid request line.
    fired = await ok(bob.fire().channel("lobby").message({"fired": 1}))
    assert fired.status.original_response[:2] == [1, "Sent"]
    after = await publish(bob, "lobby", {"published": 1})

    message = await heard.next_of("message")
    assert (message.message, message.timetoken) == ({"published": 1}, after)
    assert [e["d"] for e in heard.envelopes()] == [{"published": 1}]


async def test_post_publish_plain_and_compressed(sdk: Subscribers) -> None:
    # 7.2.0 posts the JSON body as is, or zlib-compressed labelled "Content-Encoding: gzip".
    _, heard = await subscribed(sdk, "alice", channels=["lobby"], presence=False)
    bob = sdk("bob")
    big = {"text": "x" * 5000, "n": list(range(100))}
    await ok(bob.publish().channel("lobby").message({"post": "plain"}).use_post(True))
    await ok(bob.publish().channel("lobby").message(big).use_post(True).use_compression(True).meta({"z": 1}))

    squeezer = sdk("squeezer")
    squeezer.config.should_compress = True
    await ok(squeezer.publish().channel("lobby").message("compressed by config").use_post(True))

    received = [await heard.next_of("message") for _ in range(3)]
    assert [m.message for m in received] == [{"post": "plain"}, big, "compressed by config"]
    assert [m.publisher for m in received] == ["bob", "bob", "squeezer"]
    assert heard.envelope_of(received[1].timetoken)["u"] == {"z": 1}


async def test_oversized_messages_are_refused_and_not_delivered(sdk: Subscribers) -> None:
    _, heard = await subscribed(sdk, "alice", channels=["lobby"], presence=False)
    bob = sdk("bob")
    huge = "x" * (40 * 1024)
    # Plain, and compressed to a few hundred bytes that inflate past the 32 KiB limit.
    for call in (
        bob.publish().channel("lobby").message(huge).use_post(True),
        bob.publish().channel("lobby").message(huge).use_post(True).use_compression(True),
    ):
        status = await refused(call)
        assert status.status_code == 413
        assert status.original_response[:2] == [0, "Message Too Large"]
    assert await until_now(heard, bob, "lobby") == []


# -- bursts ----------------------------------------------------------------------------------------


async def burst_between_polls(sdk: Subscribers, count: int) -> None:
    _, heard = await subscribed(sdk, "alice", channels=["burst"], presence=False)
    bob = sdk("bob")
    heard.hold_after(lambda answer: any(e["d"] == "go" for e in answer["m"]))
    await publish(bob, "burst", "go")
    assert (await heard.next_of("message")).message == "go"
    assert heard.holding  # the client has its answer and has not polled again
    polls = len(heard.answers)

    timetokens = [await publish(bob, "burst", i) for i in range(count)]
    assert len(heard.answers) == polls
    heard.release()
    received = [await heard.next_of("message") for _ in range(count)]
    assert [m.message for m in received] == list(range(count))
    assert [m.timetoken for m in received] == timetokens

    assert await until_now(heard, bob, "burst") == []
    assert all(len(answer["m"]) <= 100 for answer in heard.answers)


async def test_burst_of_50_between_polls_arrives_complete_and_in_order(sdk: Subscribers) -> None:
    await burst_between_polls(sdk, 50)


async def test_burst_larger_than_one_answer_is_paged_without_loss(sdk: Subscribers) -> None:
    await burst_between_polls(sdk, 250)


async def test_concurrent_burst_while_the_poll_is_held(sdk: Subscribers) -> None:
    _, heard = await subscribed(sdk, "alice", channels=["burst"], presence=False)
    publishers = [sdk(f"pub{i}") for i in range(5)]
    timetokens = await asyncio.gather(*(publish(publishers[i % 5], "burst", {"i": i}) for i in range(50)))
    assert len(set(timetokens)) == 50
    received = [await heard.next_of("message") for _ in range(50)]
    # Delivered in the server's order, the publish timetokens, each message once.
    by_timetoken = sorted(zip(timetokens, range(50), strict=True))
    assert [m.timetoken for m in received] == [tt for tt, _ in by_timetoken]
    assert [m.message for m in received] == [{"i": i} for _, i in by_timetoken]
    assert [m.publisher for m in received] == [f"pub{i % 5}" for _, i in by_timetoken]
    assert await until_now(heard, publishers[0], "burst") == []


# -- channel groups and wildcards ------------------------------------------------------------------


async def test_channel_group_with_presence(sdk: Subscribers) -> None:
    admin = sdk("admin")
    await ok(admin.add_channel_to_channel_group().channel_group("g").channels(["g1", "g2"]))
    alice, heard = await subscribed(sdk, "alice", groups=["g"])

    # Subscribing to the group makes alice present on its channels: her joins come through g-pnpres.
    joins = [await heard.presence_event() for _ in range(2)]
    assert sorted(fields(j) for j in joins) == [
        ("join", "alice", 1, "g1", "g", None),
        ("join", "alice", 1, "g2", "g", None),
    ]
    assert {heard.envelope_of(j.timetoken)["b"] for j in joins} == {"g-pnpres"}
    assert await occupants(alice, "g1") == ["alice"]

    bob = sdk("bob")
    await ok(bob.heartbeat().channels(["g1"]))
    join = await heard.presence_event()
    assert fields(join) == ("join", "bob", 2, "g1", "g", None)
    assert heard.envelope_of(join.timetoken)["c"] == "g1-pnpres"

    timetoken = await publish(bob, "g2", "via the group", k="v")
    message = await heard.next_of("message")
    assert (message.message, message.channel, message.subscription, message.publisher) == (
        "via the group",
        "g2",
        "g",
        "bob",
    )
    envelope = heard.envelope_of(timetoken)
    assert (envelope["b"], envelope["c"], envelope["u"]) == ("g", "g2", {"k": "v"})

    await ok(leave(bob).channels(["g1"]))
    assert fields(await heard.presence_event()) == ("leave", "bob", 1, "g1", "g", None)

    # Not a member: not heard.
    await publish(bob, "outside", "not for the group")
    await ok(bob.heartbeat().channels(["outside"]))
    assert await until_now(heard, bob, "g1") == []


async def test_channel_group_messages_without_presence(sdk: Subscribers) -> None:
    admin = sdk("admin")
    await ok(admin.add_channel_to_channel_group().channel_group("g").channels(["g1"]))
    alice, heard = await subscribed(sdk, "alice", groups=["g"], presence=False)
    assert await occupants(alice, "g1") == ["alice"]
    await publish(admin, "g1", "member")
    # A channel added while the poll is held is heard too.
    await ok(admin.add_channel_to_channel_group().channel_group("g").channels(["g3"]))
    await publish(admin, "g3", "new member")
    received = [await heard.next_of("message") for _ in range(2)]
    assert [(m.message, m.channel, m.subscription) for m in received] == [
        ("member", "g1", "g"),
        ("new member", "g3", "g"),
    ]


async def test_wildcard_with_presence(sdk: Subscribers) -> None:
    alice, heard = await subscribed(sdk, "alice", channels=["a.*"])
    # A wildcard makes nobody present: no own join, and alice is nowhere.
    envelope = await ok(alice.where_now().uuid("alice"))
    assert envelope.result.channels == []

    bob = sdk("bob")
    await ok(bob.heartbeat().channels(["a.b"]))
    join = await heard.presence_event()
    assert fields(join) == ("join", "bob", 1, "a.b", "a.*", None)
    assert heard.envelope_of(join.timetoken)["b"] == "a.*-pnpres"

    timetoken = await publish(bob, "a.b", {"on": "a.b"})
    message = await heard.next_of("message")
    assert (message.message, message.channel, message.subscription, message.publisher) == (
        {"on": "a.b"},
        "a.b",
        "a.*",
        "bob",
    )
    assert heard.envelope_of(timetoken)["b"] == "a.*"

    await ok(bob.set_state().channels(["a.b"]).state({"s": 1}))
    assert fields(await heard.presence_event()) == ("state-change", "bob", 1, "a.b", "a.*", {"s": 1})

    # Other prefixes are not heard.
    await publish(bob, "b.x", "elsewhere")
    await publish(bob, "ab", "no dot")
    await ok(bob.heartbeat().channels(["b.y"]))
    assert await until_now(heard, bob, "a.c") == []


async def test_wildcard_deeper_than_two_dots_is_refused(sdk: Subscribers) -> None:
    client, heard = listening(sdk, "alice")
    client.subscribe().channels(["a.b.c.*"]).execute()
    kind, status = await asyncio.wait_for(heard.heard.get(), timeout=WAIT)
    assert kind == "error"
    assert (status.status_code, status.category) == (400, PNStatusCategory.PNBadRequestCategory)
    assert "Wildcard maximum depth exceeded" in str(status.error_data.information)
    assert not heard.connected.is_set()


# -- interval mode ----------------------------------------------------------------------------------


async def test_interval_mode_above_announce_max(live_server_factory: ServerFactory) -> None:
    async with live_server_factory(announce_max=2, interval=10) as server:
        sdk = Subscribers(server.origin)
        try:
            await interval_mode(server, sdk)
        finally:
            await sdk.stop_all()


async def interval_mode(server: LiveServer, sdk: Subscribers) -> None:
    alice, heard = await subscribed(sdk, "alice", channels=["room"])
    assert fields(await heard.presence_event()) == ("join", "alice", 1, "room", None, None)
    others = {name: sdk(name) for name in ("bob", "carol", "dave", "erin")}
    await ok(others["bob"].heartbeat().channels(["room"]))
    assert fields(await heard.presence_event()) == ("join", "bob", 2, "room", None, None)

    # Above two occupants joins are no longer announced one by one.
    for name in ("carol", "dave", "erin"):
        await ok(others[name].heartbeat().channels(["room"]))
    publisher = sdk("publisher")
    assert await until_now(heard, publisher, "room") == []

    # A state change is still announced at once.
    await ok(others["carol"].set_state().channels(["room"]).state({"k": 1}))
    assert fields(await heard.presence_event()) == ("state-change", "carol", 5, "room", None, {"k": 1})

    await server.advance(9)
    assert await until_now(heard, publisher, "room") == []

    await server.advance(1)
    interval = await heard.presence_event()
    assert (interval.event, interval.occupancy, interval.channel, interval.uuid) == ("interval", 5, "room", None)
    assert (interval.join, interval.leave, interval.timeout) == (["carol", "dave", "erin"], None, None)
    assert interval.timestamp == int(server.clock())
    envelope = heard.envelope_of(interval.timetoken)
    assert "here_now_refresh" not in envelope["d"] and "e" not in envelope

    # Exactly one per period: sweeping again in the same period adds nothing.
    await server.advance(0)
    await server.advance(5)
    assert await until_now(heard, publisher, "room") == []

    # A leave is a delta too; the next period's event lists it.
    await ok(leave(others["erin"]).channels(["room"]))
    await server.advance(5)
    interval = await heard.presence_event()
    assert (interval.event, interval.occupancy) == ("interval", 4)
    assert (interval.join, interval.leave, interval.timeout) == (None, ["erin"], None)
    assert await until_now(heard, publisher, "room") == []

    # Still above announce_max: one event per period even without changes.
    await server.advance(10)
    interval = await heard.presence_event()
    assert (interval.event, interval.occupancy, interval.join, interval.leave, interval.timeout) == (
        "interval",
        4,
        None,
        None,
        None,
    )
    assert await until_now(heard, publisher, "room") == []
    assert await occupants(alice, "room") == ["alice", "bob", "carol", "dave"]


async def test_interval_asks_for_here_now_when_too_many_changed(live_server_factory: ServerFactory) -> None:
    async with live_server_factory(announce_max=2, interval=10) as server:
        sdk = Subscribers(server.origin)
        try:
            _, heard = await subscribed(sdk, "alice", channels=["crowd"])
            await heard.presence_event()
            for i in range(105):
                await server.store.heartbeat(SUB_KEY, f"u{i:03}", ["crowd"], now=server.clock())
            before = await until_now(heard, sdk("publisher"), "crowd")
            assert [fields(e) for _, e in before] == [("join", "u000", 2, "crowd", None, None)]

            await server.advance(10)
            interval = await heard.presence_event()
            # 7.2.0 does not expose here_now_refresh (and must not choke on it): it is on the wire.
            assert (interval.event, interval.occupancy, interval.join, interval.leave, interval.timeout) == (
                "interval",
                106,
                None,
                None,
                None,
            )
            payload = heard.envelope_of(interval.timetoken)["d"]
            assert payload["here_now_refresh"] is True
            assert not {"join", "leave", "timeout", "uuid"} & set(payload)
        finally:
            await sdk.stop_all()


async def test_leaving_interval_mode_keeps_a_listeners_view_right(live_server_factory: ServerFactory) -> None:
    # carol's join is held for the next interval event; her leave brings the room back to two.
    # Whatever is announced when, a listener that applies the events must end up with here-now.
    async with live_server_factory(announce_max=2, interval=10) as server:
        sdk = Subscribers(server.origin)
        try:
            alice, heard = await subscribed(sdk, "alice", channels=["room"])
            view = View()
            view.apply(await heard.presence_event())
            bob, carol = sdk("bob"), sdk("carol")
            await ok(bob.heartbeat().channels(["room"]))
            await ok(carol.heartbeat().channels(["room"]))
            await ok(leave(carol).channels(["room"]))
            publisher = sdk("publisher")
            view.apply_all(await until_now(heard, publisher, "room"))
            await server.advance(10)
            view.apply_all(await until_now(heard, publisher, "room"))
            assert await occupants(alice, "room") == ["alice", "bob"]
            assert view.sorted == ["alice", "bob"]

            # Back at two: no more interval events, and changes are announced one by one again.
            await server.advance(10)
            await server.advance(10)
            heard_now = await until_now(heard, publisher, "room")
            assert [e.event for _, e in heard_now if e.event == "interval"] == []
            await ok(leave(bob).channels(["room"]))
            assert fields(await heard.presence_event()) == ("leave", "bob", 1, "room", None, None)
        finally:
            await sdk.stop_all()


async def test_timeouts_in_interval_mode_keep_a_listeners_view_right(live_server_factory: ServerFactory) -> None:
    async with live_server_factory(announce_max=2, interval=10) as server:
        sdk = Subscribers(server.origin)
        try:
            alice, heard = await subscribed(sdk, "alice", channels=["room"])
            view = View()
            view.apply(await heard.presence_event())
            for name in ("bob", "carol", "dave"):
                await ok(sdk(name, presence_timeout=5).heartbeat().channels(["room"]))
            publisher = sdk("publisher")
            view.apply_all(await until_now(heard, publisher, "room"))
            assert view.sorted == ["alice", "bob"]  # carol's and dave's joins wait for the interval

            # One sweep: bob, carol and dave time out, and the interval event is due.
            assert await server.advance(10) == 3
            view.apply_all(await until_now(heard, publisher, "room"))
            assert await occupants(alice, "room") == ["alice"]
            assert view.sorted == ["alice"]
        finally:
            await sdk.stop_all()


# -- two server processes on one Redis --------------------------------------------------------------


async def test_publish_through_another_process_wakes_the_held_poll(live_server_factory: ServerFactory) -> None:
    async with live_server_factory() as first, live_server_factory() as second:
        on_first, on_second = Subscribers(first.origin), Subscribers(second.origin)
        try:
            _, heard = await subscribed(on_first, "alice", channels=["lobby"])
            await heard.presence_event()
            bob = on_second("bob")
            await ok(bob.heartbeat().channels(["lobby"]))
            assert fields(await heard.presence_event()) == ("join", "bob", 2, "lobby", None, None)
            timetoken = await publish(bob, "lobby", "across processes")
            message = await heard.next_of("message")
            assert (message.message, message.timetoken, message.publisher) == ("across processes", timetoken, "bob")
        finally:
            await on_first.stop_all()
            await on_second.stop_all()


async def test_one_interval_event_per_period_with_two_sweeping_processes(live_server_factory: ServerFactory) -> None:
    async with (
        live_server_factory(announce_max=1, interval=10) as first,
        live_server_factory(announce_max=1, interval=10) as second,
    ):
        on_first, on_second = Subscribers(first.origin), Subscribers(second.origin)
        try:
            _, heard = await subscribed(on_first, "alice", channels=["room"])
            await heard.presence_event()
            await ok(on_second("bob").heartbeat().channels(["room"]))
            publisher = on_second("publisher")
            assert await until_now(heard, publisher, "room") == []
            await first.advance(10)
            await second.advance(0)  # the other process sweeps at the same time
            interval = await heard.presence_event()
            assert (interval.event, interval.join, interval.occupancy) == ("interval", ["bob"], 2)
            assert await until_now(heard, publisher, "room") == []
            await second.advance(10)
            await first.advance(0)
            interval = await heard.presence_event()
            assert (interval.event, interval.join, interval.occupancy) == ("interval", None, 2)
            assert await until_now(heard, publisher, "room") == []
        finally:
            await on_first.stop_all()
            await on_second.stop_all()
