"""Fault rules (docs/protocol.md 9.1) as an app's test suite uses them, with the real JavaScript client,
``pubnub@7.3.3``, under Node against a live server on loopback with the admin API on, on both engines.
The clients run in ``tests/e2e/js/listen.mjs`` (``tests/e2e/jsdriver.py``), whose request log shows every
request they send and the status of every answer.

What 7.3.3's subscription manager (the default, not the ``enableSubscribeBeta`` event engine) does with
each fault, read in ``node_modules/pubnub/lib`` and held here:

* a subscribe answered with a 403 is announced once, as ``PNAccessDeniedCategory`` with operation
  ``PNSubscribeOperation``, ``statusCode`` 403 and the parsed body as ``errorData``, and the subscribe
  loop ends (it restarts only on ``reconnect()`` or a change of subscription);
* its heartbeat loop (``presenceTimeout`` or ``heartbeatInterval`` set) is a ``setInterval``: the first
  heartbeat goes out at once, then one every interval whatever the previous answer was. A failed one is
  announced (``announceFailedHeartbeats`` cannot be turned off: ``setup.x || true``) as
  ``PNUnknownCategory`` with the code and body; with ``autoNetworkDetection`` off (the default) nothing
  else happens, and presence is not touched;
* a dropped connection ("socket hang up", ``ECONNRESET``) is ``PNNetworkIssuesCategory``: the client
  stops polling and heartbeating, announces it, probes ``/time/0`` every 3 s (always: no option turns
  this off or changes the period; ``restore`` only matters to ``networkDownDetected()``), and once a probe
  answers announces ``PNReconnectedCategory`` and polls again with the cursor it had, so messages
  published meanwhile arrive, each once and in order. Node's HTTP client does not resend a dropped
  request, so one drop is enough.

Server time is the injected clock; the client's timers are real, so heartbeats are configured short
and every wait is bounded (``jsdriver.WAIT``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from presence_server.context import LONGPOLLS
from tests.e2e.jsdriver import WAIT, Event, JsDriver, running
from tests.e2e.live import LiveServer
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.e2e

SUB_KEY = "sub-c-e2e-js-faults"
HEARTBEAT_INTERVAL = 0.3

ServerFactory = Callable[..., contextlib.AbstractAsyncContextManager[LiveServer]]


class JsClients(JsDriver):
    """``listen.mjs`` as these tests drive it: messages in order, requests with their answers' status."""

    async def operation(self, who: str, operation: str) -> Event:
        """The next status of ``operation`` ``who`` heard, whatever its category; others are passed over."""
        while True:
            event = await self.next(who, "status")
            if event.get("operation") == operation:
                return event

    async def messages(self, who: str, count: int) -> list[Any]:
        return [(await self.next(who, "message"))["message"] for _ in range(count)]

    async def publish(self, who: str, channel: str, message: Any) -> int:
        result = await self.call(who, "publish", {"channel": channel, "message": message})
        return int(result["timetoken"])

    def sent(self, who: str, path_part: str) -> list[tuple[str, dict[str, str], int | None]]:
        """(decoded path, query, answer status or None) of every request ``who`` sent whose path holds
        ``path_part``, in sending order; None: no answer (yet)."""
        statuses: dict[str, list[int]] = {}
        for line in self.lines:
            if line.get("kind") == "response":
                statuses.setdefault(line["path"], []).append(line["status"])
        found = []
        for line in self.lines:
            if line.get("kind") != "request" or path_part not in line["path"]:
                continue
            url = urlsplit(line["path"])
            query = {name: values[0] for name, values in parse_qs(url.query).items()}
            if query.get("uuid") == who:
                answered = statuses.get(line["path"], [])
                found.append((unquote(url.path), query, answered.pop(0) if answered else None))
        return found


Js = Callable[[LiveServer], contextlib.AbstractAsyncContextManager[JsClients]]


@pytest.fixture
async def server(live_server_factory: ServerFactory) -> AsyncIterator[LiveServer]:
    async with live_server_factory(admin=True) as live:
        yield live


@pytest.fixture
def js(node: str) -> Js:
    def start(server: LiveServer) -> contextlib.AbstractAsyncContextManager[JsClients]:
        return running(JsClients, node, server.origin, SUB_KEY)

    return start


async def add_fault(server: LiveServer, route: str, **rule: Any) -> str:
    answer = await server.admin("POST", "faults", {"route": route, "sub_key": SUB_KEY, **rule})
    fault_id: str = answer["id"]
    return fault_id


async def held_poll(server: LiveServer) -> None:
    """Wait until the server holds the subscriber's poll (its next one is then the next request)."""
    await wait_until(lambda: server.app[LONGPOLLS].waiting == 1, WAIT, what="a held poll")


def outcome(status: Event) -> tuple[Any, ...]:
    return status.get("category"), status.get("statusCode"), status["error"]


# -- a 403 on subscribe -------------------------------------------------------------------------


async def test_403_on_subscribe_is_access_denied_and_ends_the_loop(js: Js, server: LiveServer) -> None:
    await add_fault(server, "subscribe", channel="vault", status=403, times=1)
    async with js(server) as clients:
        await clients.client("alice")
        await clients.call("alice", "subscribe", {"channels": ["vault"]})
        denied = await clients.next("alice", "status")
        assert outcome(denied) == ("PNAccessDeniedCategory", 403, True), denied
        assert denied["operation"] == "PNSubscribeOperation"
        assert denied["errorData"] == {"status": 403, "error": True, "message": "Forbidden", "service": "Presence"}
        assert await server.fault_rules() == []
        assert [answer for _, _, answer in clients.sent("alice", "/v2/subscribe/")] == [403]

        # What an app does once access is back: reconnect(). A handshake (no tt), then messages.
        await clients.call("alice", "reconnect")
        connected = await clients.next("alice", "status")
        assert connected["category"] == "PNConnectedCategory", connected
        await clients.client("bob")
        await clients.publish("bob", "vault", "open")
        assert await clients.messages("alice", 1) == ["open"]
        polls = clients.sent("alice", "/v2/subscribe/")
        assert [("tt" in query, answer) for _, query, answer in polls[:2]] == [(False, 403), (False, 200)]
        assert clients.unread("alice", "status") == []


# -- a 503 burst on heartbeat -------------------------------------------------------------------


async def test_503_burst_on_heartbeat_is_retried_at_the_next_interval(js: Js, server: LiveServer) -> None:
    burst = 3
    await add_fault(server, "heartbeat", status=503, times=burst)
    async with js(server) as clients:
        config = {"presenceTimeout": 60, "heartbeatInterval": HEARTBEAT_INTERVAL, "announceSuccessfulHeartbeats": True}
        await clients.client("alice", config)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await clients.call("alice", "subscribe", {"channels": ["lobby"]})
        heartbeats = [await clients.operation("alice", "PNHeartbeatOperation") for _ in range(burst + 1)]
        done = loop.time()
        assert [(s["statusCode"], s["error"]) for s in heartbeats] == [(503, True)] * burst + [(200, False)]
        unavailable = {"status": 503, "error": True, "message": "Service Unavailable", "service": "Presence"}
        assert all(s["category"] == "PNUnknownCategory" for s in heartbeats[:burst]), heartbeats
        assert all(s["errorData"] == unavailable for s in heartbeats[:burst]), heartbeats
        # The first at once, then one an interval: no immediate retry, no backoff.
        assert done - started >= burst * HEARTBEAT_INTERVAL
        answered = [answer for _, _, answer in clients.sent("alice", "/heartbeat")]
        assert answered[: burst + 1] == [503] * burst + [200]
        assert await server.fault_rules() == []

        # The subscription never noticed: connected once, no other subscribe status, alice present.
        subscribing = [s for s in clients.heard("alice", "status") if s.get("operation") == "PNSubscribeOperation"]
        assert [s["category"] for s in subscribing] == ["PNConnectedCategory"]
        here = await clients.call("alice", "hereNow", {"channels": ["lobby"]})
        assert [item["uuid"] for item in here["channels"]["lobby"]["occupants"]] == ["alice"]


# -- a dropped long-poll ------------------------------------------------------------------------


async def test_dropped_poll_reconnects_and_catches_up(js: Js, server: LiveServer) -> None:
    async with js(server) as clients:
        await clients.client("alice")
        await clients.client("bob")
        await clients.subscribe("alice", channels=["feed"])
        await held_poll(server)
        await add_fault(server, "subscribe", channel="feed", drop=True, times=1)
        first = await clients.publish("bob", "feed", "m0")
        assert await clients.messages("alice", 1) == ["m0"]
        lost = await clients.next("alice", "status")
        loop = asyncio.get_running_loop()
        lost_at = loop.time()
        assert outcome(lost) == ("PNNetworkIssuesCategory", None, True), lost
        assert lost["operation"] == "PNSubscribeOperation"
        assert lost["errorData"]["message"] == "socket hang up"
        polls = clients.sent("alice", "/v2/subscribe/")
        (_, dropped, answer), dropped_at = polls[-1], len(polls) - 1
        assert answer is None and dropped["tt"] == str(first)  # the poll after message m0's answer

        # Published while alice is away (her first probe comes 3 s later): none may be lost.
        sent = [f"m{number}" for number in range(1, 6)]
        for message in sent:
            await clients.publish("bob", "feed", message)
        back = await clients.next("alice", "status")
        assert back["category"] == "PNReconnectedCategory", back
        assert loop.time() - lost_at >= 2.5
        assert await clients.messages("alice", len(sent)) == sent
        # It probed /time/0, then polled again with the cursor it had, not a new handshake.
        assert [answer for _, _, answer in clients.sent("alice", "/time/0")] == [200]
        _, resumed, answer = clients.sent("alice", "/v2/subscribe/")[dropped_at + 1]
        assert (resumed["tt"], answer) == (dropped["tt"], 200)

        await clients.publish("bob", "feed", "marker")
        assert await clients.messages("alice", 1) == ["marker"]  # nothing twice
        assert await server.fault_rules() == []
        assert clients.unread("alice", "status") == []
