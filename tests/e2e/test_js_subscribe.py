"""Live presence through the real JavaScript client, ``pubnub@7.3.3`` (the last MIT release), under
Node against the live server, on both engines: presence events (join, state-change, leave, timeout,
interval), messages with publisher and meta, signals, channel groups, wildcards, and an error answer.

``tests/e2e/js/listen.mjs`` keeps the clients alive in one Node process, driven over its stdin and
stdout through ``tests/e2e/jsdriver.py``, so that ``live_server.advance`` can run between any two
steps. Every wait is bounded; nothing sleeps presence time away.

What 7.3.3 does on the wire (read in ``node_modules/pubnub/lib``, checked here through the request
log): ``subscribe`` runs the legacy subscription manager, not an event engine. The handshake sends no
``tt`` at all; each later poll sends ``tt`` = the last ``t.t`` and ``tr`` = the last ``t.r``; every
subscribe request carries ``heartbeat=<presenceTimeout>`` (300 unless configured) and, once
``setState`` has run, ``state={"<channel>": {...}}``. The channel list is percent-encoded as one
string (``lobby%2Clobby-pnpres``). A ``/heartbeat`` loop runs only when ``presenceTimeout`` or
``heartbeatInterval`` is configured. ``unsubscribe`` sends ``/leave``, naming a channel subscribed
with presence twice (``lobby%2Clobby``). A 400 on subscribe is announced as a status and ends the
subscribe loop (no retry); a subscription change restarts it. ``disconnect()`` stops polling and
heartbeating without a leave, which is how a client vanishes here; ``reconnect()`` resumes with the
cursor it had, without a handshake.

Two races of 7.3.3 these tests keep out of the way, as they are not what is tested:

* with ``presenceTimeout`` set, the first ``/heartbeat`` goes out together with the handshake; when
  it lands first, the subscriber's own join is logged before the handshake cursor and it never hears
  it. A listener that must hear its own join therefore has no ``/heartbeat`` loop
  (``heartbeatInterval: 0``, which 7.3.3 honours after ``presenceTimeout``);
* ``unsubscribe`` aborts the running poll and sends ``/leave`` at once; a poll sent just before and
  handled after the leave makes the client present again. Tests where clients leave or vanish run on
  ``quiet_server``, whose polls are held longer than a test, so an idle client has no poll in flight.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from presence_server.context import LONGPOLLS, SETTINGS
from tests.e2e.jsdriver import WAIT, Event, JsDriver, running
from tests.e2e.live import LiveServer
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.e2e

SUB_KEY = "sub-c-e2e-js-live"


class JsClients(JsDriver):
    """``listen.mjs`` as these tests drive it: messages heard up to one, and requests by decoded path."""

    async def message(self, who: str, text: Any) -> list[Event]:
        """Wait until ``who`` hears the message ``text``; returns the messages heard before it."""
        before: list[Event] = []
        while True:
            event = await self.next(who, "message")
            if event["message"] == text:
                return before
            before.append(event)

    async def publish(self, who: str, channel: str, message: Any, **args: Any) -> str:
        result = await self.call(who, "publish", {"channel": channel, "message": message, **args})
        timetoken: str = result["timetoken"]
        return timetoken

    def requests(self, who: str, path_part: str) -> list[tuple[str, dict[str, str]]]:
        """The (decoded path, query) of every request ``who`` sent whose path holds ``path_part``."""
        sent = []
        for line in self.lines:
            if line.get("kind") != "request" or path_part not in line["path"]:
                continue
            url = urlsplit(line["path"])
            query = {name: values[0] for name, values in parse_qs(url.query).items()}
            if query.get("uuid") == who:
                sent.append((unquote(url.path), query))
        return sent


@pytest.fixture
def js(node: str) -> Callable[[LiveServer], contextlib.AbstractAsyncContextManager[JsClients]]:
    """``async with js(server) as clients:`` runs ``listen.mjs`` against ``server``, killed at the end."""

    def start(server: LiveServer) -> contextlib.AbstractAsyncContextManager[JsClients]:
        return running(JsClients, node, server.origin, SUB_KEY)

    return start


Js = Callable[[LiveServer], contextlib.AbstractAsyncContextManager[JsClients]]
ServerFactory = Callable[..., contextlib.AbstractAsyncContextManager[LiveServer]]

# Polls of quiet_server are held longer than any test lasts (see the module notes).
QUIET_HOLD = 60.0


@pytest.fixture
async def quiet_server(live_server_factory: ServerFactory) -> AsyncIterator[LiveServer]:
    async with live_server_factory(longpoll_hold=QUIET_HOLD) as server:
        yield server


async def held_polls(server: LiveServer, count: int) -> None:
    """Wait until ``count`` polls are waiting at the server (registered with its wake-up bus)."""
    # Real time, for the server to get there: no presence time passes.
    await wait_until(lambda: server.app[LONGPOLLS].waiting >= count, WAIT, what=f"{count} polls held")


def fields(event: Event) -> tuple[Any, ...]:
    """The parts of a presence event most tests check: action, uuid, occupancy, channel, subscription."""
    return event["action"], event.get("uuid"), event["occupancy"], event["channel"], event["subscription"]


async def listening(clients: JsClients, who: str, channel: str = "lobby", **config: Any) -> Event:
    """``who`` subscribes to ``channel`` with presence and hears its own join; returns that join."""
    await clients.client(who, config)
    await clients.subscribe(who, channels=[channel], withPresence=True)
    return await clients.next(who, "presence")


# -- presence events -------------------------------------------------------------------------------


async def test_listener_hears_its_own_join(js: Js, live_server: LiveServer) -> None:
    async with js(live_server) as clients:
        await clients.client("alice")
        connected = await clients.subscribe("alice", channels=["lobby"], withPresence=True)
        assert connected["affectedChannels"] == ["lobby"]
        assert connected["subscribedChannels"] == ["lobby"]
        join = await clients.next("alice", "presence")
        assert fields(join) == ("join", "alice", 1, "lobby", None)
        assert join["timestamp"] == int(live_server.clock())
        assert join["state"] is None
        # The join comes after the handshake cursor, which the first poll sent back as tt.
        assert isinstance(join["timetoken"], str)
        assert int(join["timetoken"]) > int(connected["currentTimetoken"])
        here = await clients.call("alice", "hereNow", {"channels": ["lobby"]})
        assert [item["uuid"] for item in here["channels"]["lobby"]["occupants"]] == ["alice"]


async def test_listener_hears_another_client_join(js: Js, live_server: LiveServer) -> None:
    async with js(live_server) as clients:
        await listening(clients, "alice")
        await clients.client("bob")
        # Subscribing without presence: bob is present but hears no presence events himself.
        await clients.subscribe("bob", channels=["lobby"])
        join = await clients.next("alice", "presence")
        assert fields(join) == ("join", "bob", 2, "lobby", None)
        assert join["state"] is None
        await clients.publish("alice", "lobby", "marker")
        await clients.message("bob", "marker")
        assert clients.heard("bob", "presence") == []


async def test_listener_hears_a_state_change_once(js: Js, live_server: LiveServer) -> None:
    async with js(live_server) as clients:
        await listening(clients, "alice")
        await clients.client("bob")
        await clients.subscribe("bob", channels=["lobby"])
        await clients.next("alice", "presence")
        assert await clients.call("bob", "setState", {"channels": ["lobby"], "state": {"mood": "busy"}}) == {
            "state": {"mood": "busy"},
        }
        change = await clients.next("alice", "presence")
        assert fields(change) == ("state-change", "bob", 2, "lobby", None)
        assert change["state"] == {"mood": "busy"}

        # From now on each of bob's polls carries state={"lobby":{"mood":"busy"}}, so each one
        # refreshes his presence with that state: the same state must not be announced again.
        await clients.publish("alice", "lobby", "one")
        await clients.message("bob", "one")
        await clients.publish("alice", "lobby", "two")
        await clients.message("bob", "two")  # answered to a poll that carried the state
        polls = [query for _, query in clients.requests("bob", "/v2/subscribe/")]
        assert any(json.loads(query.get("state", "{}")) == {"lobby": {"mood": "busy"}} for query in polls)
        await clients.publish("alice", "lobby", "three")
        await clients.message("alice", "three")
        assert clients.unread("alice", "presence") == []

        await clients.call("bob", "setState", {"channels": ["lobby"], "state": {"mood": "calm"}})
        change = await clients.next("alice", "presence")
        assert fields(change) == ("state-change", "bob", 2, "lobby", None)
        assert change["state"] == {"mood": "calm"}


async def test_listener_hears_a_leave_when_another_client_unsubscribes(js: Js, quiet_server: LiveServer) -> None:
    async with js(quiet_server) as clients:
        await listening(clients, "alice")
        await clients.client("bob")
        await clients.subscribe("bob", channels=["lobby"])
        await clients.next("alice", "presence")
        await clients.call("bob", "unsubscribe", {"channels": ["lobby"]})
        ack = await clients.status("bob", None, "PNUnsubscribeOperation")
        assert (ack["error"], ack["statusCode"]) == (False, 200)
        assert ack["affectedChannels"] == ["lobby"]
        leave = await clients.next("alice", "presence")
        assert fields(leave) == ("leave", "bob", 1, "lobby", None)
        assert leave["timestamp"] == int(quiet_server.clock())
        [(path, _)] = clients.requests("bob", "/leave")
        assert path == f"/v2/presence/sub-key/{SUB_KEY}/channel/lobby/leave"


async def test_unsubscribing_with_presence_sends_one_channel_twice_and_is_one_leave(
    js: Js,
    quiet_server: LiveServer,
) -> None:
    async with js(quiet_server) as clients:
        await listening(clients, "alice")
        await listening(clients, "bob")
        assert fields(await clients.next("alice", "presence")) == ("join", "bob", 2, "lobby", None)
        await clients.call("bob", "unsubscribe", {"channels": ["lobby"]})
        await clients.status("bob", None, "PNUnsubscribeOperation")
        [(path, _)] = clients.requests("bob", "/leave")
        assert path == f"/v2/presence/sub-key/{SUB_KEY}/channel/lobby,lobby/leave"
        assert fields(await clients.next("alice", "presence")) == ("leave", "bob", 1, "lobby", None)
        await clients.publish("alice", "lobby", "marker")
        await clients.message("alice", "marker")
        assert clients.unread("alice", "presence") == []


async def test_listener_hears_a_timeout_after_the_clock_moves(js: Js, quiet_server: LiveServer) -> None:
    async with js(quiet_server) as clients:
        await listening(clients, "alice")
        # presenceTimeout 20: heartbeat=20 on every subscribe request, and a /heartbeat loop.
        await clients.client("bob", {"presenceTimeout": 20})
        await clients.subscribe("bob", channels=["lobby"])
        assert fields(await clients.next("alice", "presence")) == ("join", "bob", 2, "lobby", None)
        assert {query["heartbeat"] for _, query in clients.requests("bob", "/v2/subscribe/")} == {"20"}
        # bob vanishes: no more polls, no heartbeats, no leave. Anything bob sent before (his held
        # poll, his first /heartbeat) must reach the server before the clock moves, or it would
        # refresh him after it: a call he makes after disconnecting reaches it after them.
        await clients.call("bob", "disconnect")
        await clients.call("bob", "time")

        assert await quiet_server.advance(19) == 0
        assert await quiet_server.advance(2) == 1
        timeout = await clients.next("alice", "presence")
        assert fields(timeout) == ("timeout", "bob", 1, "lobby", None)
        assert timeout["timestamp"] == int(quiet_server.clock())
        assert clients.requests("bob", "/leave") == []
        here = await clients.call("alice", "hereNow", {"channels": ["lobby"]})
        assert [item["uuid"] for item in here["channels"]["lobby"]["occupants"]] == ["alice"]


async def test_client_that_timed_out_joins_again_when_it_polls_again(js: Js, quiet_server: LiveServer) -> None:
    # reconnect() resumes polling with the cursor it had, without a new handshake; without
    # presenceTimeout 7.3.3 sends no /heartbeat either, so it is bob's first poll after the timeout
    # that makes him present again, and that is announced as a join.
    async with js(quiet_server) as clients:
        await listening(clients, "alice", presenceTimeout=600, heartbeatInterval=0)
        await clients.client("bob")
        await clients.subscribe("bob", channels=["lobby"])
        await clients.next("alice", "presence")
        await clients.call("bob", "disconnect")
        await clients.call("bob", "time")
        assert await quiet_server.advance(301) == 1
        assert fields(await clients.next("alice", "presence")) == ("timeout", "bob", 1, "lobby", None)
        handshakes = [query for _, query in clients.requests("bob", "/v2/subscribe/") if "tt" not in query]

        await clients.call("bob", "reconnect")
        rejoin = await clients.next("alice", "presence")
        assert fields(rejoin) == ("join", "bob", 2, "lobby", None)
        assert rejoin["timestamp"] == int(quiet_server.clock())
        assert [query for _, query in clients.requests("bob", "/v2/subscribe/") if "tt" not in query] == handshakes
        await clients.publish("alice", "lobby", "welcome back")
        assert await clients.message("bob", "welcome back") == []
        assert clients.requests("bob", "/heartbeat") == []


async def test_listener_stays_present_while_it_polls(js: Js, live_server: LiveServer) -> None:
    # Each poll refreshes the subscriber's presence; after the clock moves, the next poll does.
    # heartbeatInterval 0 turns off the /heartbeat loop that presenceTimeout would start: only the
    # polls (heartbeat=20) keep alice present.
    async with js(live_server) as clients:
        await clients.client("alice", {"presenceTimeout": 20, "heartbeatInterval": 0})
        await clients.subscribe("alice", channels=["lobby"], withPresence=True)
        await clients.next("alice", "presence")
        for _ in range(3):
            assert await live_server.advance(15) == 0
            marker = f"after {live_server.clock()}"
            await clients.publish("alice", "lobby", marker)  # answers the held poll: a new one follows
            await clients.message("alice", marker)
            await clients.publish("alice", "lobby", marker + " again")
            await clients.message("alice", marker + " again")
        assert await live_server.advance(15) == 0
        assert clients.unread("alice", "presence") == []
        assert clients.requests("alice", "/heartbeat") == []
        assert {query["heartbeat"] for _, query in clients.requests("alice", "/v2/subscribe/")} == {"20"}


# -- messages and signals --------------------------------------------------------------------------


async def test_messages_arrive_in_publish_order_with_publisher_and_meta(js: Js, live_server: LiveServer) -> None:
    async with js(live_server) as clients:
        await clients.client("alice")
        await clients.subscribe("alice", channels=["lobby"])
        await clients.client("bob")
        sent = [
            await clients.publish("bob", "lobby", {"n": 1, "text": "héllo"}, meta={"lang": "fr"}),
            await clients.publish("bob", "lobby", "two"),
            await clients.publish("bob", "lobby", [3, None, True], meta={"n": 3}, sendByPost=True),
            await clients.publish("bob", "lobby", 4, meta={"last": True}),
        ]
        heard = [await clients.next("alice", "message") for _ in sent]
        assert [event["message"] for event in heard] == [{"n": 1, "text": "héllo"}, "two", [3, None, True], 4]
        assert [event["timetoken"] for event in heard] == sent
        assert [int(t) for t in sent] == sorted({int(t) for t in sent})
        assert [event.get("userMetadata") for event in heard] == [{"lang": "fr"}, None, {"n": 3}, {"last": True}]
        assert {event["publisher"] for event in heard} == {"bob"}
        assert {(event["channel"], event["subscription"]) for event in heard} == {("lobby", None)}
        assert clients.heard("alice", "file") == []


async def test_a_signal_reaches_the_signal_listener(js: Js, live_server: LiveServer) -> None:
    async with js(live_server) as clients:
        await clients.client("alice")
        await clients.subscribe("alice", channels=["lobby"])
        await clients.client("bob")
        result = await clients.call("bob", "signal", {"channel": "lobby", "message": {"typing": True}})
        signal = await clients.next("alice", "signal")
        assert signal["message"] == {"typing": True}
        assert signal["publisher"] == "bob"
        assert signal["timetoken"] == result["timetoken"]
        assert (signal["channel"], signal["subscription"]) == ("lobby", None)
        await clients.publish("bob", "lobby", "marker")
        assert await clients.message("alice", "marker") == []
        assert clients.heard("alice", "file") == []


async def test_a_fire_is_accepted_but_not_delivered(js: Js, live_server: LiveServer) -> None:
    async with js(live_server) as clients:
        await clients.client("alice")
        await clients.subscribe("alice", channels=["lobby"])
        await clients.client("bob")
        fired = await clients.call("bob", "fire", {"channel": "lobby", "message": "fired"})
        assert len(fired["timetoken"]) == 17
        [(_, query)] = clients.requests("bob", "/publish/")
        assert (query["norep"], query["store"]) == ("true", "0")
        await clients.publish("bob", "lobby", "marker")
        assert await clients.message("alice", "marker") == []


# -- channel groups and wildcards ------------------------------------------------------------------


async def test_channel_group_subscription_with_presence(js: Js, quiet_server: LiveServer) -> None:
    async with js(quiet_server) as clients:
        await clients.client("alice")
        await clients.call("alice", "channelGroups.addChannels", {"channelGroup": "team", "channels": ["dev", "ops"]})
        await clients.subscribe("alice", channelGroups=["team"], withPresence=True)
        [(path, query)] = clients.requests("alice", "/v2/subscribe/")[:1]
        assert path == f"/v2/subscribe/{SUB_KEY}/,/0"
        assert query["channel-group"] == "team,team-pnpres"
        # Subscribing to the group makes alice present on each of its channels.
        own = [await clients.next("alice", "presence") for _ in range(2)]
        assert sorted(fields(event) for event in own) == [
            ("join", "alice", 1, "dev", "team"),
            ("join", "alice", 1, "ops", "team"),
        ]

        await clients.client("bob")
        await clients.subscribe("bob", channels=["dev"])
        assert fields(await clients.next("alice", "presence")) == ("join", "bob", 2, "dev", "team")
        await clients.publish("bob", "dev", "hi", meta={"via": "group"})
        message = await clients.next("alice", "message")
        assert (message["message"], message["channel"], message["subscription"]) == ("hi", "dev", "team")
        assert (message["publisher"], message["userMetadata"]) == ("bob", {"via": "group"})
        await clients.call("bob", "unsubscribe", {"channels": ["dev"]})
        assert fields(await clients.next("alice", "presence")) == ("leave", "bob", 1, "dev", "team")


async def test_channel_added_to_a_group_is_heard_by_a_waiting_listener(js: Js, quiet_server: LiveServer) -> None:
    async with js(quiet_server) as clients:
        await clients.client("alice")
        await clients.call("alice", "channelGroups.addChannels", {"channelGroup": "team", "channels": ["dev"]})
        await clients.subscribe("alice", channelGroups=["team"], withPresence=True)
        assert fields(await clients.next("alice", "presence")) == ("join", "alice", 1, "dev", "team")
        # alice's poll now waits (for a minute) on what the group held when it started.
        await held_polls(quiet_server, 1)
        await clients.call("alice", "channelGroups.addChannels", {"channelGroup": "team", "channels": ["qa"]})
        await clients.client("bob")
        await clients.subscribe("bob", channels=["qa"])
        assert fields(await clients.next("alice", "presence")) == ("join", "bob", 1, "qa", "team")
        await clients.publish("bob", "qa", "hello qa")
        message = await clients.next("alice", "message")
        assert (message["message"], message["channel"], message["subscription"]) == ("hello qa", "qa", "team")


async def test_wildcard_subscription_with_presence(js: Js, quiet_server: LiveServer) -> None:
    async with js(quiet_server) as clients:
        await clients.client("alice")
        await clients.subscribe("alice", channels=["a.*"], withPresence=True)
        [(path, _)] = clients.requests("alice", "/v2/subscribe/")[:1]
        assert path == f"/v2/subscribe/{SUB_KEY}/a.*,a.*-pnpres/0"
        await clients.client("bob")
        await clients.subscribe("bob", channels=["a.b"])
        # A wildcard makes nobody present: the first event is bob's join, with occupancy 1.
        assert fields(await clients.next("alice", "presence")) == ("join", "bob", 1, "a.b", "a.*")
        await clients.client("carol")
        await clients.subscribe("carol", channels=["b.c"])  # outside the pattern: not heard
        await clients.subscribe("carol", channels=["a.c"])
        assert fields(await clients.next("alice", "presence")) == ("join", "carol", 1, "a.c", "a.*")
        await clients.publish("bob", "a.b", "to b")
        await clients.publish("bob", "b.c", "elsewhere")
        await clients.publish("carol", "a.c", "to c")
        heard = [await clients.next("alice", "message") for _ in range(2)]
        assert [(event["message"], event["channel"], event["subscription"], event["publisher"]) for event in heard] == [
            ("to b", "a.b", "a.*", "bob"),
            ("to c", "a.c", "a.*", "carol"),
        ]
        await clients.call("carol", "setState", {"channels": ["a.c"], "state": {"k": 1}})
        change = await clients.next("alice", "presence")
        assert (fields(change), change["state"]) == (("state-change", "carol", 1, "a.c", "a.*"), {"k": 1})
        await clients.call("bob", "unsubscribe", {"channels": ["a.b"]})
        assert fields(await clients.next("alice", "presence")) == ("leave", "bob", 0, "a.b", "a.*")


# -- interval mode ---------------------------------------------------------------------------------


async def test_interval_events_above_announce_max(js: Js, live_server_factory: ServerFactory) -> None:
    async with live_server_factory(announce_max=2, longpoll_hold=QUIET_HOLD) as server, js(server) as clients:
        interval = server.app[SETTINGS].interval
        await listening(clients, "alice")
        for who in ("bob", "carol", "dave"):
            await clients.client(who)
            await clients.subscribe(who, channels=["lobby"])
        # Up to announce_max occupants each join is announced; above it, none is.
        assert fields(await clients.next("alice", "presence")) == ("join", "bob", 2, "lobby", None)
        await clients.publish("bob", "lobby", "all joined")
        await clients.message("alice", "all joined")
        assert clients.unread("alice", "presence") == []

        assert await server.advance(interval) == 0
        event = await clients.next("alice", "presence")
        assert (event["action"], event["occupancy"], event["channel"]) == ("interval", 4, "lobby")
        assert sorted(event["join"]) == ["carol", "dave"]
        assert "leave" not in event and "timeout" not in event
        assert event["timestamp"] == int(server.clock())

        # Deltas are net: carol leaving and coming back within one interval is no change at all.
        await clients.call("carol", "unsubscribe", {"channels": ["lobby"]})
        await clients.status("carol", None, "PNUnsubscribeOperation")
        await clients.subscribe("carol", channels=["lobby"])
        await clients.call("dave", "unsubscribe", {"channels": ["lobby"]})
        await clients.status("dave", None, "PNUnsubscribeOperation")
        await clients.publish("bob", "lobby", "dave left")
        await clients.message("alice", "dave left")
        assert clients.unread("alice", "presence") == []
        assert await server.advance(interval) == 0
        event = await clients.next("alice", "presence")
        assert (event["action"], event["occupancy"], event.get("leave")) == ("interval", 3, ["dave"])
        assert "join" not in event

        # Interval mode lasts until the pending interval event, even if occupancy is back at
        # announce_max before it: that event reports the change, and then single events resume.
        await clients.call("carol", "unsubscribe", {"channels": ["lobby"]})
        await clients.status("carol", None, "PNUnsubscribeOperation")
        await clients.publish("bob", "lobby", "carol left")
        await clients.message("alice", "carol left")
        assert clients.unread("alice", "presence") == []
        assert await server.advance(interval) == 0
        event = await clients.next("alice", "presence")
        assert (event["action"], event["occupancy"], event.get("leave"), event.get("join")) == (
            "interval",
            2,
            ["carol"],
            None,
        )
        await clients.call("bob", "unsubscribe", {"channels": ["lobby"]})
        assert fields(await clients.next("alice", "presence")) == ("leave", "bob", 1, "lobby", None)
        assert await server.advance(interval) == 0
        await clients.publish("alice", "lobby", "the end")
        await clients.message("alice", "the end")
        assert clients.unread("alice", "presence") == []


# -- errors ----------------------------------------------------------------------------------------


async def test_subscribe_error_is_a_status_and_the_client_goes_on(js: Js, live_server: LiveServer) -> None:
    too_long = "c" * 93
    async with js(live_server) as clients:
        await clients.client("alice")
        await clients.call("alice", "subscribe", {"channels": [too_long]})
        refused = await clients.status("alice", "PNBadRequestCategory")
        assert refused["error"] is True
        assert refused["operation"] == "PNSubscribeOperation"
        assert refused["statusCode"] == 400
        assert "92" in refused["errorData"]["message"]

        # 7.3.3 does not retry a 400; dropping the bad channel (whose /leave is refused the same
        # way) and subscribing to a good one works with the same client.
        await clients.call("alice", "unsubscribe", {"channels": [too_long]})
        refused_leave = await clients.status("alice", "PNBadRequestCategory")
        assert (refused_leave["operation"], refused_leave["statusCode"]) == ("PNUnsubscribeOperation", 400)
        await clients.subscribe("alice", channels=["lobby"], withPresence=True)
        assert fields(await clients.next("alice", "presence")) == ("join", "alice", 1, "lobby", None)
        await clients.publish("alice", "lobby", "still here")
        assert await clients.message("alice", "still here") == []
        polls = clients.requests("alice", "/v2/subscribe/")
        assert [path for path, _ in polls].count(f"/v2/subscribe/{SUB_KEY}/{too_long}/0") == 1


async def test_too_deep_wildcard_is_refused_with_a_status(js: Js, live_server: LiveServer) -> None:
    async with js(live_server) as clients:
        await clients.client("alice")
        await clients.call("alice", "subscribe", {"channels": ["a.b.c.*"]})
        refused = await clients.status("alice", "PNBadRequestCategory")
        assert (refused["operation"], refused["statusCode"]) == ("PNSubscribeOperation", 400)
        assert refused["errorData"]["message"] == "Wildcard maximum depth exceeded"


# -- what 7.3.3 sends ------------------------------------------------------------------------------


async def test_polls_echo_the_cursor_and_region_the_server_handed_out(js: Js, live_server: LiveServer) -> None:
    async with js(live_server) as clients:
        await clients.client("alice")
        connected = await clients.subscribe("alice", channels=["lobby"], withPresence=True)
        await clients.next("alice", "presence")
        polls = clients.requests("alice", "/v2/subscribe/")
        handshake, first = polls[0][1], polls[1][1]
        assert "tt" not in handshake and "tr" not in handshake
        assert handshake["heartbeat"] == "300"
        assert "state" not in handshake
        assert first["tt"] == connected["currentTimetoken"]
        assert first["tr"] == "1"
        # The handshake cursor is the last timetoken handed out before now, not later than now.
        assert int(live_server.clock()) - 1 <= int(first["tt"]) // 10_000_000 <= int(live_server.clock())
        assert all(query["heartbeat"] == "300" for _, query in polls)
        # Without presenceTimeout or heartbeatInterval 7.3.3 sends no /heartbeat at all.
        assert clients.requests("alice", "/heartbeat") == []
