"""Fault rules (docs/protocol.md 9.1) as an app's test suite uses them, with the real Python client,
``pubnub==7.2.0`` (asyncio), against a live server on loopback with the admin API on, on both engines.

What 7.2.0 does with each fault, read in its source and held here:

* a subscribe answered with a 403 is announced once, as ``PNAccessDeniedCategory`` with operation
  ``PNUnsubscribeOperation``, the code and the parsed body, and the subscribe loop ends: with the default
  reconnection policy (``NONE``) nothing polls again until the app subscribes again. With a policy, the
  reconnection manager probes ``/time/0`` (which answers), announces ``PNReconnectedCategory`` before any
  poll has succeeded and polls again, so a lasting 403 is announced again at every probe;
* its heartbeat loop is a fixed timer (``heartbeat_interval``): a failed heartbeat (a 503 is
  ``PNUnknownCategory`` with the code and body) is announced (the default ``FAILURES`` notifications)
  and the next one goes out at the next tick, neither sooner nor later; presence is not touched;
* a dropped connection is first resent by aiohttp itself (it sends an idempotent request once more on a
  new connection when the server closes one without answering), so the SDK sees nothing of one drop.
  When the resend is dropped too, the poll fails as ``PNUnknownCategory`` (no code: aiohttp's
  ``ServerDisconnectedError``); with the default policy the client then stops for good. With
  ``PNReconnectionPolicy.EXPONENTIAL`` (first probe after 1 s; ``LINEAR`` waits 3 s) it probes
  ``/time/0``, announces ``PNReconnectedCategory`` and polls again with the cursor of its last answer,
  so messages published meanwhile arrive, each once and in order.

Server time is the injected clock; the SDK's own timers (heartbeat ticks, reconnection probes) are real,
so those tests configure them short and wait on what the client announces, every wait bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from pubnub.callbacks import SubscribeCallback
from pubnub.enums import PNHeartbeatNotificationOptions, PNOperationType, PNReconnectionPolicy, PNStatusCategory

from presence_server.context import LONGPOLLS, METRICS
from tests.e2e.live import LiveServer
from tests.e2e.pysdk import SUB_KEY, WAIT, Clients, describe, ok, wind_down
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.e2e

ServerFactory = Callable[..., AbstractAsyncContextManager[LiveServer]]

# Above the live server's 2 s hold, so that an idle poll is answered by the server, never timed out.
SUBSCRIBE_TIMEOUT = 10
HEARTBEAT_INTERVAL = 0.3


@pytest.fixture
async def server(live_server_factory: ServerFactory) -> AsyncIterator[LiveServer]:
    async with live_server_factory(admin=True) as live:
        yield live


class Watcher(SubscribeCallback):  # type: ignore[misc]
    """Every status and message one client announces, in order, the cursor each of its polls sent and
    how many answers it handled."""

    def __init__(self, client: Any) -> None:
        self.statuses: asyncio.Queue[Any] = asyncio.Queue()
        self.announced: list[Any] = []  # every status, whether or not ``next_status`` passed over it
        self.messages: asyncio.Queue[Any] = asyncio.Queue()
        self.polled: list[int] = []
        self.answers = 0
        manager = client._subscription_manager
        start_loop, handle = manager._start_subscribe_loop, manager._handle_endpoint_call

        async def polling() -> None:
            # The loop sends the manager's cursor as ``tt`` (0: a handshake); it is looked up on the
            # manager for every poll, so this records each one.
            self.polled.append(int(manager._timetoken))
            await start_loop()

        def answered(raw: dict[str, Any], status: Any) -> None:
            self.answers += 1
            handle(raw, status)

        manager._start_subscribe_loop = polling
        manager._handle_endpoint_call = answered
        client.add_listener(self)

    def status(self, pubnub: Any, status: Any) -> None:
        self.announced.append(status)
        self.statuses.put_nowait(status)

    def message(self, pubnub: Any, message: Any) -> None:
        self.messages.put_nowait(message)

    async def next_status(self, operation: PNOperationType | None = None) -> Any:
        """The next status announced (of ``operation``, if given: others are passed over)."""
        while True:
            status = await _within(self.statuses.get(), "a status")
            if operation is None or status.operation == operation:
                return status

    async def next_message(self) -> Any:
        return await _within(self.messages.get(), "a message")


async def _within(waiting: Any, what: str) -> Any:
    try:
        return await asyncio.wait_for(waiting, timeout=WAIT)
    except TimeoutError:
        raise AssertionError(f"no {what} within {WAIT} s") from None


class Subscribers(Clients):
    """Clients whose subscribe loops are wound down before they stop."""

    def __init__(self, origin: str) -> None:
        super().__init__(origin)
        self.subscribed: list[Any] = []

    def watched(self, uuid: str, **config: Any) -> tuple[Any, Watcher]:
        """A client of ``uuid`` (``config`` set on its PNConfiguration) and what it announces."""
        client = self(uuid)
        client.config.subscribe_request_timeout = SUBSCRIBE_TIMEOUT
        for name, value in config.items():
            setattr(client.config, name, value)
        self.subscribed.append(client)
        return client, Watcher(client)

    async def stop_all(self) -> None:
        await wind_down(self.subscribed)
        await super().stop_all()


@pytest.fixture
async def sdk(server: LiveServer) -> AsyncIterator[Subscribers]:
    clients = Subscribers(server.origin)
    try:
        yield clients
    finally:
        await clients.stop_all()


async def add_fault(server: LiveServer, route: str, **rule: Any) -> str:
    answer = await server.admin("POST", "faults", {"route": route, "sub_key": SUB_KEY, **rule})
    fault_id: str = answer["id"]
    return fault_id


async def publish(client: Any, channel: str, message: Any) -> int:
    envelope = await ok(client.publish().channel(channel).message(message))
    return int(envelope.result.timetoken)


def category(status: Any) -> Any:
    return status.category, status.status_code, status.is_error()


# -- a 403 on subscribe -------------------------------------------------------------------------


async def test_403_on_subscribe_is_access_denied_and_ends_the_loop(server: LiveServer, sdk: Subscribers) -> None:
    await add_fault(server, "subscribe", channel="vault", status=403, times=1)
    alice, watcher = sdk.watched("alice")
    alice.subscribe().channels(["vault"]).execute()

    denied = await watcher.next_status()
    assert category(denied) == (PNStatusCategory.PNAccessDeniedCategory, 403, True), describe(denied)
    assert denied.operation == PNOperationType.PNUnsubscribeOperation
    assert denied.affected_channels == ["vault"]
    assert denied.original_response == {"status": 403, "error": True, "message": "Forbidden", "service": "Presence"}
    assert await server.fault_rules() == []  # the one use was this handshake
    # The loop has ended and, with the default policy, nothing will poll again: no probe is scheduled.
    manager = alice._subscription_manager
    assert alice.config.reconnect_policy == PNReconnectionPolicy.NONE
    assert manager._should_stop and manager._reconnection_manager._task is None
    assert watcher.polled == [0]

    # What an app does once access is back: subscribe again. A fresh handshake, then messages.
    alice.subscribe().channels(["vault"]).execute()
    connected = await watcher.next_status()
    assert connected.category == PNStatusCategory.PNConnectedCategory, describe(connected)
    await publish(sdk("bob"), "vault", "open")
    assert (await watcher.next_message()).message == "open"
    assert watcher.statuses.empty()


async def test_403_with_a_reconnection_policy_is_announced_at_every_probe(server: LiveServer, sdk: Subscribers) -> None:
    await add_fault(server, "subscribe", channel="vault", status=403, times=2)
    alice, watcher = sdk.watched("alice", reconnect_policy=PNReconnectionPolicy.EXPONENTIAL)
    alice.subscribe().channels(["vault"]).execute()

    heard = [await watcher.next_status() for _ in range(4)]
    assert [category(s) for s in heard] == [
        (PNStatusCategory.PNAccessDeniedCategory, 403, True),
        (PNStatusCategory.PNReconnectedCategory, None, False),
        (PNStatusCategory.PNAccessDeniedCategory, 403, True),
        (PNStatusCategory.PNReconnectedCategory, None, False),
    ], [describe(s) for s in heard]
    # "Reconnected" follows the /time/0 probe, before the poll it starts is answered: the third
    # handshake is the one that succeeds, and the SDK announces nothing for it (no "connected"). Once
    # the poll after it is sent, the cursor is set and a message reaches alice.
    await wait_until(lambda: len(watcher.polled) >= 4, what=lambda: f"polls sent: {watcher.polled}")
    assert watcher.polled[:3] == [0, 0, 0] and watcher.polled[3] > 0
    await publish(sdk("bob"), "vault", "open")
    assert (await watcher.next_message()).message == "open"
    assert await server.fault_rules() == []
    assert watcher.statuses.empty()


# -- a 503 burst on heartbeat -------------------------------------------------------------------


async def test_503_burst_on_heartbeat_is_retried_at_the_next_tick(server: LiveServer, sdk: Subscribers) -> None:
    burst = 3
    await add_fault(server, "heartbeat", status=503, times=burst)
    alice, watcher = sdk.watched("alice", heartbeat_notification_options=PNHeartbeatNotificationOptions.ALL)
    alice.config.set_presence_timeout_with_custom_interval(60, HEARTBEAT_INTERVAL)
    loop = asyncio.get_running_loop()
    started = loop.time()
    alice.subscribe().channels(["lobby"]).execute()

    heartbeats = [await watcher.next_status(PNOperationType.PNHeartbeatOperation) for _ in range(burst + 1)]
    done = loop.time()
    assert [category(s) for s in heartbeats] == [(PNStatusCategory.PNUnknownCategory, 503, True)] * burst + [
        (PNStatusCategory.PNAcknowledgmentCategory, 200, False)
    ], [describe(s) for s in heartbeats]
    unavailable = {"status": 503, "error": True, "message": "Service Unavailable", "service": "Presence"}
    assert all(s.original_response == unavailable for s in heartbeats[:burst])
    # One heartbeat a tick, the first a whole tick after subscribing: no immediate retry, no backoff.
    assert done - started >= (burst + 1) * HEARTBEAT_INTERVAL
    assert await server.fault_rules() == []
    # The subscription itself never noticed, and alice stayed present all along.
    envelope = await ok(alice.here_now().channels(["lobby"]))
    assert [o.uuid for o in envelope.result.channels[0].occupants] == ["alice"]
    subscribing = [s for s in watcher.announced if s.operation == PNOperationType.PNSubscribeOperation]
    assert [s.category for s in subscribing] == [PNStatusCategory.PNConnectedCategory]


# -- a dropped long-poll ------------------------------------------------------------------------


async def held_poll(server: LiveServer) -> None:
    """Wait until the server holds the subscriber's poll (its next one is then the next request)."""
    await wait_until(lambda: server.app[LONGPOLLS].waiting == 1, what="a held poll")


async def test_one_dropped_poll_is_resent_by_aiohttp_unseen(server: LiveServer, sdk: Subscribers) -> None:
    alice, watcher = sdk.watched("alice")
    alice.subscribe().channels(["feed"]).execute()
    assert (await watcher.next_status()).category == PNStatusCategory.PNConnectedCategory
    await held_poll(server)
    await add_fault(server, "subscribe", channel="feed", drop=True, times=1)
    bob = sdk("bob")
    await publish(bob, "feed", 0)  # answers the held poll; the next one is dropped, and resent
    await publish(bob, "feed", 1)
    assert [(await watcher.next_message()).message for _ in range(2)] == [0, 1]
    assert await server.fault_rules() == []
    assert watcher.statuses.empty()
    # The server ended one poll more than the SDK saw answered: the one it dropped. (It counts a poll
    # as it ends, before the answer goes out; the poll sent after the last answer is held for 2 s.)
    assert ended_polls(server) == watcher.answers + 1, (ended_polls(server), watcher.answers)


def ended_polls(server: LiveServer) -> int:
    """How many subscribe requests the server has ended, answered or not (its request metrics)."""
    counts = server.app[METRICS].requests.counts
    return sum(count for (route, _, _), count in counts.items() if route.startswith("/v2/subscribe/"))


async def test_dropped_poll_reconnects_and_catches_up(server: LiveServer, sdk: Subscribers) -> None:
    alice, watcher = sdk.watched("alice", reconnect_policy=PNReconnectionPolicy.EXPONENTIAL)
    alice.subscribe().channels(["feed"]).execute()
    assert (await watcher.next_status()).category == PNStatusCategory.PNConnectedCategory
    await held_poll(server)
    # Two drops: aiohttp resends the first itself, the second reaches the SDK.
    await add_fault(server, "subscribe", channel="feed", drop=True, times=2)
    bob = sdk("bob")
    first = await publish(bob, "feed", 0)
    assert (await watcher.next_message()).message == 0
    lost = await watcher.next_status()
    loop = asyncio.get_running_loop()
    lost_at = loop.time()
    assert category(lost) == (PNStatusCategory.PNUnknownCategory, None, True), describe(lost)
    assert lost.operation == PNOperationType.PNSubscribeOperation
    assert type(lost.error_data.exception).__name__ == "ServerDisconnectedError"
    polls_before = len(watcher.polled)
    cursor = watcher.polled[-1]  # the dropped poll's: the answer that brought message 0
    assert cursor >= first

    # Published while alice is away (her probe comes a second later): none may be lost.
    sent = list(range(1, 6))
    for number in sent:
        await publish(bob, "feed", number)
    back = await watcher.next_status()
    assert back.category == PNStatusCategory.PNReconnectedCategory, describe(back)
    assert loop.time() - lost_at >= 0.9  # EXPONENTIAL's first probe, 2 ** 1 - 1 s after the loss
    assert [(await watcher.next_message()).message for _ in sent] == sent
    # She polled again with the cursor of her last answer, not a new handshake.
    assert watcher.polled[polls_before] == cursor, (watcher.polled, polls_before)
    await publish(bob, "feed", "marker")
    assert (await watcher.next_message()).message == "marker"  # nothing twice
    assert await server.fault_rules() == []
    assert watcher.statuses.empty()


async def test_dropped_poll_without_a_policy_waits_for_the_app_to_reconnect(
    server: LiveServer, sdk: Subscribers
) -> None:
    alice, watcher = sdk.watched("alice")
    alice.subscribe().channels(["feed"]).execute()
    assert (await watcher.next_status()).category == PNStatusCategory.PNConnectedCategory
    await held_poll(server)
    await add_fault(server, "subscribe", channel="feed", drop=True, times=2)
    bob = sdk("bob")
    await publish(bob, "feed", 0)
    assert (await watcher.next_message()).message == 0
    lost = await watcher.next_status()
    assert category(lost) == (PNStatusCategory.PNUnknownCategory, None, True), describe(lost)
    # The default policy (NONE): the loop has ended and no probe is scheduled.
    manager = alice._subscription_manager
    assert manager._should_stop and manager._reconnection_manager._task is None
    polls_before, cursor = len(watcher.polled), watcher.polled[-1]

    sent = list(range(1, 4))
    for number in sent:
        await publish(bob, "feed", number)
    alice.reconnect()  # what the app's status listener does: 7.2.0 resumes from its cursor
    assert [(await watcher.next_message()).message for _ in sent] == sent
    assert watcher.polled[polls_before] == cursor
    assert await server.fault_rules() == []
    assert watcher.statuses.empty()  # reconnect() itself announces nothing
