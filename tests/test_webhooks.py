"""Presence webhooks (docs/protocol.md 13): every presence event POSTed to a receiver in this process.

Apps here are built with ``webhooks=False``: the test drives deliveries with ``WebhookSender.run_once``
and moves the FakeClock for retries, so no test waits for a backoff. The last tests run real server
processes with their own delivery loops on the real redis-server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from presence_server.app import create_app
from presence_server.config import Settings, SettingsError
from presence_server.context import STORE, WEBHOOKS
from presence_server.store import PresenceStore
from presence_server.store.webhooks import GROUP
from presence_server.webhooks import (
    EVENT_ID_HEADER,
    IDLE_RELEASE,
    SIGNATURE_HEADER,
    WebhookSender,
    backoff,
    body_of,
)
from tests.helpers.app import TEST_SERVER_OPTIONS, AiohttpClient, AiohttpServer, Client, FakeClock, sweeper_of
from tests.helpers.http import Scrape, get, get_url, heartbeat, parse_metrics
from tests.helpers.process import server_env, server_process, wait_answering
from tests.helpers.redis import free_port
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.engines("fakeredis", "redis", "cluster", "sentinel")

P = "/v2/presence/sub-key/demo"


@dataclasses.dataclass
class Receiver:
    """An HTTP endpoint that records every POST and answers the statuses it is told to, then 200."""

    url: str = ""
    got: list[tuple[dict[str, str], bytes]] = dataclasses.field(default_factory=list)
    statuses: list[int] = dataclasses.field(default_factory=list)
    answered: list[int] = dataclasses.field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status = self.statuses.pop(0) if self.statuses else 200
        self.answered.append(status)
        if 200 <= status < 300:
            self.got.append((dict(request.headers), body))
        return web.Response(status=status, text="ok")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        return app

    @property
    def events(self) -> list[dict[str, Any]]:
        return [orjson.loads(body) for _, body in self.got]

    def actions(self) -> list[tuple[str, str, str | None]]:
        return [(e["action"], e["channel"], e.get("uuid")) for e in self.events]


@pytest.fixture
async def receiver(aiohttp_server: AiohttpServer) -> Receiver:
    found = Receiver()
    server = await aiohttp_server(found.app())
    found.url = str(server.make_url("/hook"))
    return found


Hooked = Callable[..., Awaitable[Client]]


@pytest.fixture
def hooked(
    redis_client: aioredis.Redis,
    settings: Settings,
    clock: FakeClock,
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
) -> Hooked:
    """Apps with webhooks on, on the test's Redis, prefix and clock; deliveries only through run_once."""

    async def new(url: str, **overrides: Any) -> Client:
        current = dataclasses.replace(settings, webhook_url=url, **overrides)
        app = create_app(current, redis=redis_client, clock=clock, sweeper=False, webhooks=False)
        return await aiohttp_client(await aiohttp_server(app, **TEST_SERVER_OPTIONS))

    return new


def sender_of(client: Client) -> WebhookSender:
    assert client.app is not None
    return client.app[WEBHOOKS]


def store_of(client: Client) -> PresenceStore:
    assert client.app is not None
    return client.app[STORE]


async def deliver(*clients: Client, rounds: int = 1) -> None:
    for _ in range(rounds):
        for client in clients:
            await sender_of(client).run_once()


async def leave(client: Client, channels: str, uuid: str) -> None:
    reply = await get(client, f"{P}/channel/{channels}/leave", {"uuid": uuid})
    assert reply.status == 200, reply.body


async def set_state(client: Client, channel: str, uuid: str, state: dict[str, Any]) -> None:
    reply = await get(client, f"{P}/channel/{channel}/uuid/{uuid}/data", {"state": orjson.dumps(state).decode()})
    assert reply.status == 200, reply.body


async def scrape_of(client: Client) -> Scrape:
    reply = await client.get("/metrics")
    assert reply.status == 200
    return parse_metrics(await reply.text())


async def backlog(client: Client) -> int:
    return (await store_of(client).hook_backlogs(["demo"]))[0]


# -- what is sent ----------------------------------------------------------------------------------


async def test_each_event_goes_once_in_order_with_pubnubs_fields_and_types(
    hooked: Hooked, receiver: Receiver, clock: FakeClock
) -> None:
    client = await hooked(receiver.url)
    now = int(clock())
    await heartbeat(client, "ch1", "u1", heartbeat=60)
    await deliver(client)
    await set_state(client, "ch1", "u1", {"mood": "ok", "n": 1})
    await heartbeat(client, "ch1", "u2", heartbeat=60)
    await leave(client, "ch1", "u2")
    await deliver(client)
    clock.advance(61)
    await sweeper_of(client).run_once()
    await deliver(client, rounds=2)  # a second pass finds nothing more to send
    base = {"sub_key": "demo", "channel": "ch1", "timestamp": now}
    assert receiver.events == [
        {"action": "active", "status": "active", **base},
        {"action": "join", "uuid": "u1", "occupancy": 1, **base},
        {"action": "state-change", "uuid": "u1", "occupancy": 1, "data": {"mood": "ok", "n": 1}, **base},
        {"action": "join", "uuid": "u2", "occupancy": 2, **base},
        {"action": "leave", "uuid": "u2", "occupancy": 1, **base},
        {"action": "timeout", "uuid": "u1", "occupancy": 0, **base, "timestamp": now + 61},
        {"action": "inactive", "status": "inactive", **base, "timestamp": now + 61},
    ]
    for headers, _ in receiver.got:
        assert headers["Content-Type"] == "application/json"
        assert SIGNATURE_HEADER not in headers  # no secret set
    ids = [headers[EVENT_ID_HEADER] for headers, _ in receiver.got]
    assert len(set(ids)) == len(ids)
    assert await backlog(client) == 0  # delivered entries leave the stream


async def test_a_join_with_state_carries_it_and_state_only_changes_are_sent_too(
    hooked: Hooked, receiver: Receiver
) -> None:
    client = await hooked(receiver.url)
    state = orjson.dumps({"ch1": {"away": False}}).decode()
    await heartbeat(client, "ch1", "u1", heartbeat=60, state=state)
    # A state set for a uuid that is not present: PubNub announces it; so do the webhooks.
    await set_state(client, "ch2", "u9", {"x": [1, 2]})
    await deliver(client)
    events = {(e["action"], e["channel"]): e for e in receiver.events}
    assert events[("join", "ch1")]["data"] == {"away": False}
    assert events[("state-change", "ch2")]["data"] == {"x": [1, 2]}
    assert events[("state-change", "ch2")]["occupancy"] == 0
    assert ("active", "ch2") not in events  # a state change moves no occupancy


async def test_a_repeated_heartbeat_sends_nothing(hooked: Hooked, receiver: Receiver) -> None:
    client = await hooked(receiver.url)
    await heartbeat(client, "ch1", "u1", heartbeat=60)
    await deliver(client)
    sent = len(receiver.got)
    await heartbeat(client, "ch1", "u1", heartbeat=60)
    await heartbeat(client, "ch1", "u1", heartbeat=60)
    await deliver(client)
    assert len(receiver.got) == sent == 2


async def test_a_keyset_with_nothing_to_send_is_given_back_and_not_leased_again_by_refreshes(
    hooked: Hooked, receiver: Receiver, clock: FakeClock, redis_client: aioredis.Redis
) -> None:
    client = await hooked(receiver.url)
    lease = store_of(client).keys("demo").hooks_lease
    await heartbeat(client, "ch1", "u1", heartbeat=600)
    await deliver(client)
    assert await redis_client.exists(lease) == 1
    clock.advance(IDLE_RELEASE)
    await deliver(client)
    assert await redis_client.exists(lease) == 0  # idle: given back
    await heartbeat(client, "ch1", "u1", heartbeat=600)  # a refresh: it nudges, but wrote no event
    await deliver(client)
    assert await redis_client.exists(lease) == 0
    await leave(client, "ch1", "u1")
    await deliver(client)
    assert receiver.actions()[-2:] == [("leave", "ch1", "u1"), ("inactive", "ch1", None)]


async def test_channels_of_one_call_each_get_their_events(hooked: Hooked, receiver: Receiver) -> None:
    client = await hooked(receiver.url)
    await heartbeat(client, "a,b,c", "u1", heartbeat=60)
    await deliver(client)
    for channel in "abc":
        assert [(a, u) for a, ch, u in receiver.actions() if ch == channel] == [("active", None), ("join", "u1")]


async def test_a_lapsed_user_rejoining_sends_timeout_then_join_and_active_stays_once(
    hooked: Hooked, receiver: Receiver, clock: FakeClock
) -> None:
    client = await hooked(receiver.url)
    await heartbeat(client, "ch1", "u1", heartbeat=20)
    await heartbeat(client, "ch1", "u2", heartbeat=60)
    clock.advance(30)  # u1 lapsed, not swept
    await heartbeat(client, "ch1", "u1", heartbeat=20)
    await deliver(client)
    assert receiver.actions() == [
        ("active", "ch1", None),
        ("join", "ch1", "u1"),
        ("join", "ch1", "u2"),
        ("timeout", "ch1", "u1"),
        ("join", "ch1", "u1"),
    ]


async def test_active_and_inactive_alternate_when_the_only_user_lapses_and_comes_back(
    hooked: Hooked, receiver: Receiver, clock: FakeClock
) -> None:
    client = await hooked(receiver.url)
    await heartbeat(client, "ch1", "u1", heartbeat=20)
    clock.advance(30)
    await heartbeat(client, "ch1", "u1", heartbeat=20)  # timeout (to 0), then join (to 1)
    await deliver(client)
    assert [a for a, _, _ in receiver.actions()] == ["active", "join", "timeout", "inactive", "active", "join"]


async def test_interval_mode_sends_interval_events_with_the_deltas(
    hooked: Hooked, receiver: Receiver, clock: FakeClock
) -> None:
    client = await hooked(receiver.url, announce_max=1, interval=10.0)
    await heartbeat(client, "ch1", "u1", heartbeat=60)
    await heartbeat(client, "ch1", "u2", heartbeat=60)  # above announce_max: kept for the interval event
    await heartbeat(client, "ch1", "u3", heartbeat=60)
    await deliver(client)
    assert receiver.actions() == [("active", "ch1", None), ("join", "ch1", "u1")]
    clock.advance(10)
    await sweeper_of(client).run_once()
    await deliver(client)
    interval = receiver.events[-1]
    assert interval == {
        "action": "interval",
        "sub_key": "demo",
        "channel": "ch1",
        "timestamp": int(clock()),
        "occupancy": 3,
        "join": ["u2", "u3"],
    }


async def test_the_body_of_a_here_now_refresh_interval_event() -> None:
    fields = {"a": "interval", "c": "ch", "w": "1000", "o": "500", "s": "17", "r": "1"}
    assert orjson.loads(orjson.dumps(body_of("k", fields))) == {
        "action": "interval",
        "sub_key": "k",
        "channel": "ch",
        "timestamp": 17,
        "occupancy": 500,
        "here_now_refresh": True,
    }


async def test_with_a_secret_each_post_is_signed_over_its_exact_body(hooked: Hooked, receiver: Receiver) -> None:
    secret = "whsec-test-0123456789"
    client = await hooked(receiver.url, webhook_secret=secret)
    await heartbeat(client, "ch1", "u1", heartbeat=60)
    await deliver(client)
    assert len(receiver.got) == 2
    for headers, body in receiver.got:
        expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers[SIGNATURE_HEADER], expected)
        assert headers[SIGNATURE_HEADER] != "sha256=" + hmac.new(b"other", body, hashlib.sha256).hexdigest()


async def test_without_webhooks_the_scripts_write_no_stream(client: Client, redis_client: aioredis.Redis) -> None:
    await heartbeat(client, "ch1", "u1", heartbeat=60)
    assert client.app is not None
    ks = client.app[STORE].keys("demo")
    assert await redis_client.exists(ks.hooks, ks.hooks_active) == 0
    assert WEBHOOKS not in client.app


# -- failures and retries --------------------------------------------------------------------------


async def test_a_receiver_answering_500_twice_then_200_gets_the_event_once(
    hooked: Hooked, receiver: Receiver, clock: FakeClock
) -> None:
    client = await hooked(receiver.url)
    receiver.statuses = [500, 500]
    await heartbeat(client, "ch1", "u1", heartbeat=60)
    await deliver(client)  # the active notice fails; the join waits behind it (same channel)
    assert receiver.answered == [500]
    await deliver(client)  # not yet due again
    assert receiver.answered == [500]
    clock.advance(backoff(1))
    await deliver(client)
    assert receiver.answered == [500, 500]
    clock.advance(backoff(2))
    await deliver(client, rounds=2)
    assert receiver.answered == [500, 500, 200, 200]
    assert receiver.actions() == [("active", "ch1", None), ("join", "ch1", "u1")]
    scrape = await scrape_of(client)
    assert scrape.value("presence_webhooks_retried_total") == 2
    assert scrape.value("presence_webhooks_delivered_total") == 2
    assert scrape.count("presence_webhooks_dropped_total", reason="retries") == 0
    assert scrape.value("presence_webhooks_delivery_lag_seconds_count") == 2


async def test_a_failing_channel_does_not_hold_up_another(hooked: Hooked, receiver: Receiver) -> None:
    client = await hooked(receiver.url)
    await heartbeat(client, "ch1", "u1", heartbeat=60)
    await deliver(client)
    receiver.statuses = [503]
    await leave(client, "ch1", "u1")  # fails...
    await heartbeat(client, "ch2", "u2", heartbeat=60)  # ...while ch2's events go
    await deliver(client, rounds=3)
    assert [(a, ch) for a, ch, _ in receiver.actions()[2:]] == [("active", "ch2"), ("join", "ch2")]


async def test_a_receiver_down_for_a_while_gets_everything_it_missed_in_order(
    hooked: Hooked, aiohttp_server: AiohttpServer, clock: FakeClock
) -> None:
    port = free_port()
    client = await hooked(f"http://127.0.0.1:{port}/hook")
    for uuid in ("u1", "u2", "u3"):
        await heartbeat(client, "ch1", uuid, heartbeat=600)
    for _ in range(4):  # nothing listens: every attempt is refused
        await deliver(client)
        clock.advance(2)
    late = Receiver(url=f"http://127.0.0.1:{port}/hook")
    await aiohttp_server(late.app(), port=port)
    clock.advance(10)
    await deliver(client, rounds=3)
    assert late.actions() == [("active", "ch1", None)] + [("join", "ch1", u) for u in ("u1", "u2", "u3")]
    assert await backlog(client) == 0


async def test_an_event_failing_past_the_retry_window_is_dropped_with_a_log_line_and_a_metric(
    hooked: Hooked, receiver: Receiver, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    client = await hooked(receiver.url, webhook_retry_seconds=30.0)
    receiver.statuses = [500] * 4
    await heartbeat(client, "ch1", "u1", heartbeat=600)
    with caplog.at_level(logging.WARNING, logger="presence_server.webhooks"):
        await deliver(client)  # the first failure, at t0
        for _ in range(10):
            if "webhook dropped" in caplog.text:
                break
            clock.advance(10)  # at least each backoff: one attempt per pass
            await deliver(client)
    assert "webhook dropped" in caplog.text and "'ch1'" in caplog.text
    assert receiver.url not in caplog.text
    # The first attempt failed at t0, retries went on for 30 s (t0 + 10, 20, 30), then the drop; the
    # channel's next event went at once.
    assert receiver.answered == [500] * 4 + [200]
    assert receiver.actions() == [("join", "ch1", "u1")]
    scrape = await scrape_of(client)
    assert scrape.value("presence_webhooks_dropped_total", reason="retries") == 1


async def test_a_receiver_that_hangs_counts_as_a_failure(
    hooked: Hooked, aiohttp_server: AiohttpServer, receiver: Receiver
) -> None:
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="late")

    app = web.Application()
    app.router.add_post("/hook", hang)
    slow = await aiohttp_server(app)
    client = await hooked(str(slow.make_url("/hook")))
    sender = sender_of(client)
    sender.attempt_timeout = 0.2  # the real one is 5 s
    await heartbeat(client, "ch1", "u1", heartbeat=600)
    await deliver(client)
    release.set()
    scrape = await scrape_of(client)
    assert scrape.value("presence_webhooks_retried_total") == 1
    assert scrape.value("presence_webhooks_delivered_total") == 0


async def test_a_full_stream_counts_what_it_could_not_keep_as_dropped(hooked: Hooked, receiver: Receiver) -> None:
    client = await hooked(f"http://127.0.0.1:{free_port()}/hook")
    store_of(client).webhook_backlog = 3
    await heartbeat(client, "ch1,ch2,ch3", "u1", heartbeat=600)  # 6 events, 3 kept
    await deliver(client)
    assert await backlog(client) == 3
    await deliver(client)
    scrape = await scrape_of(client)
    assert scrape.value("presence_webhooks_dropped_total", reason="backlog") == 3
    assert scrape.value("presence_webhooks_pending") == 3


async def test_a_keyset_reset_with_events_pending_drops_them_and_later_ones_still_go(
    hooked: Hooked, receiver: Receiver
) -> None:
    client = await hooked(receiver.url, admin=True)
    receiver.statuses = [500]
    await heartbeat(client, "ch1", "u1", heartbeat=600)
    await deliver(client)
    reply = await client.post("/admin/keysets/demo/reset")
    assert reply.status == 200
    await heartbeat(client, "ch2", "u2", heartbeat=600)
    await deliver(client, rounds=3)
    assert ("join", "ch2", "u2") in receiver.actions()


# -- several processes, restarts -------------------------------------------------------------------


async def test_two_processes_on_one_redis_deliver_each_event_once(
    hooked: Hooked, receiver: Receiver, clock: FakeClock
) -> None:
    a, b = await hooked(receiver.url), await hooked(receiver.url)
    for i in range(10):
        await heartbeat(a if i % 2 else b, "ch1", f"u{i}", heartbeat=600)
        await deliver(a, b)
    await asyncio.gather(sender_of(a).run_once(), sender_of(b).run_once())
    await deliver(b, a, rounds=2)
    assert receiver.actions() == [("active", "ch1", None)] + [("join", "ch1", f"u{i}") for i in range(10)]
    ids = [headers[EVENT_ID_HEADER] for headers, _ in receiver.got]
    assert len(set(ids)) == 11


async def test_events_pending_at_a_restart_are_delivered_by_the_next_process(
    hooked: Hooked, receiver: Receiver, clock: FakeClock
) -> None:
    first = await hooked(receiver.url)
    receiver.statuses = [500]
    await heartbeat(first, "ch1", "u1", heartbeat=600)
    await deliver(first)  # ch1's active notice failed, its join was read but waits behind it
    await heartbeat(first, "ch2", "u1", heartbeat=600)
    await deliver(first)  # ch2 goes, ch1 waits for its retry
    assert receiver.actions() == [("active", "ch2", None), ("join", "ch2", "u1")]
    await first.close()  # a clean stop gives the lease back
    second = await hooked(receiver.url)
    await deliver(second)
    assert receiver.actions()[2:] == [("active", "ch1", None), ("join", "ch1", "u1")]


async def test_a_process_that_died_holding_events_loses_them_to_the_next_once_its_lease_runs_out(
    hooked: Hooked, receiver: Receiver, clock: FakeClock, redis_client: aioredis.Redis
) -> None:
    first = await hooked(receiver.url)
    # A sender that reads the events, fails to deliver them, and is never closed: a process that died.
    dead = WebhookSender(store_of(first), clock, f"http://127.0.0.1:{free_port()}/hook")
    await heartbeat(first, "ch1", "u1", heartbeat=600)
    await dead.run_once()
    ks = store_of(first).keys("demo")
    assert (await redis_client.xpending(ks.hooks, GROUP))["pending"] == 2
    await first.close()
    second = await hooked(receiver.url)
    await deliver(second)
    assert receiver.got == []  # the lease is still the dead process's
    clock.advance(dead.lease)
    await deliver(second, rounds=2)
    assert receiver.actions() == [("active", "ch1", None), ("join", "ch1", "u1")]
    assert (await redis_client.xpending(ks.hooks, GROUP))["pending"] == 0
    await dead.aclose()  # its HTTP session; the lease is no longer its own to give back


async def test_events_written_before_any_process_sent_webhooks_still_go(
    hooked: Hooked, receiver: Receiver, settings: Settings, redis_client: aioredis.Redis, clock: FakeClock
) -> None:
    # A process with webhooks on but its sender not started yet (the group does not exist).
    first = await hooked(receiver.url)
    await heartbeat(first, "ch1", "u1", heartbeat=600)
    assert await backlog(first) == 2
    await deliver(first)
    assert len(receiver.got) == 2


async def test_a_stream_the_sender_made_for_a_keyset_without_events_expires(
    hooked: Hooked, receiver: Receiver, redis_client: aioredis.Redis
) -> None:
    client = await hooked(receiver.url)
    await heartbeat(client, "ch1", "u1", heartbeat=60)
    await deliver(client)
    hooks = store_of(client).keys("demo").hooks
    await redis_client.delete(hooks)  # as if it had expired
    sender_of(client).nudge("demo")
    await heartbeat(client, "ch1", "u1", heartbeat=60)  # nothing new: the sender's read makes the group again
    await deliver(client)
    assert await redis_client.exists(hooks) == 1
    assert 0 < await redis_client.ttl(hooks) <= store_of(client).backstop_seconds


# -- settings --------------------------------------------------------------------------------------


@pytest.mark.engines("fakeredis")
@pytest.mark.parametrize("url", ["ftp://host/x", "http://", "localhost:9000/hook", "http:// space/x", "https:///p"])
def test_a_bad_webhook_url_is_refused_at_start(url: str) -> None:
    with pytest.raises(SettingsError, match="PRESENCE_WEBHOOK_URL"):
        Settings(webhook_url=url)


@pytest.mark.engines("fakeredis")
@pytest.mark.parametrize("seconds", [0.0, 29.0, 3601.0, float("nan")])
def test_the_retry_window_is_bounded(seconds: float) -> None:
    with pytest.raises(SettingsError, match="PRESENCE_WEBHOOK_RETRY_SECONDS"):
        Settings(webhook_retry_seconds=seconds)


@pytest.mark.engines("fakeredis")
def test_the_summary_shows_neither_the_secret_nor_the_receivers_credentials() -> None:
    settings = Settings(webhook_url="https://user:pw-9@hooks.example/in?token=tk-9", webhook_secret="whsec-42")
    text = repr(settings.summary())
    for secret in ("pw-9", "tk-9", "whsec-42"):
        assert secret not in text
    assert settings.summary()["webhook_secret"] == "set"
    assert "hooks.example/in" in settings.summary()["webhook_url"]


# -- real server processes -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def hooked_process(redis_url: str, prefix: str, hook_url: str, log: Path) -> AsyncIterator[str]:
    port = free_port()
    env = server_env(
        PRESENCE_PORT=str(port),
        PRESENCE_REDIS_URL=redis_url,
        PRESENCE_KEY_PREFIX=prefix,
        PRESENCE_WEBHOOK_URL=hook_url,
    )
    async with server_process(env, stderr=log) as proc:
        base = f"http://127.0.0.1:{port}"
        assert await wait_answering(base, "/health", 200, proc, log=log) == {"status": "ok"}
        yield base


async def joins(session: aiohttp.ClientSession, base: str, channel: str, uuids: list[str]) -> None:
    for uuid in uuids:
        reply = await get_url(session, base, f"{P}/channel/{channel}/heartbeat", {"uuid": uuid, "heartbeat": 600})
        assert reply.status == 200, reply.body


@pytest.mark.engines("redis")
async def test_two_real_processes_deliver_each_event_once_and_a_restart_loses_nothing(
    real_redis_url: str, prefix: str, tmp_path: Path, receiver: Receiver
) -> None:
    async with aiohttp.ClientSession() as session:
        async with (
            hooked_process(real_redis_url, prefix, receiver.url, tmp_path / "a.log") as a,
            hooked_process(real_redis_url, prefix, receiver.url, tmp_path / "b.log") as b,
        ):
            await asyncio.gather(joins(session, a, "ch1", [f"a{i}" for i in range(10)]))
            await asyncio.gather(joins(session, b, "ch1", [f"b{i}" for i in range(10)]))
            await wait_until(lambda: len(receiver.got) >= 21, 10, what="21 events")
        assert len(receiver.got) == 21  # both stopped: whatever either sent has arrived
        assert sorted(u for _, _, u in receiver.actions() if u) == sorted(
            [f"a{i}" for i in range(10)] + [f"b{i}" for i in range(10)]
        )
        assert receiver.actions()[0] == ("active", "ch1", None)
        # Both stopped; events made while the receiver fails stay in Redis for the next process.
        receiver.statuses = [503] * 1000
        async with hooked_process(real_redis_url, prefix, receiver.url, tmp_path / "c.log") as c:
            await joins(session, c, "ch2", ["c1", "c2"])
            await wait_until(lambda: len(receiver.answered) > 21, 10, what="an attempt that fails")
        receiver.statuses = []
        async with hooked_process(real_redis_url, prefix, receiver.url, tmp_path / "d.log"):
            await wait_until(lambda: len(receiver.got) >= 24, 15, what="the events left pending")
        assert receiver.actions()[21:] == [("active", "ch2", None), ("join", "ch2", "c1"), ("join", "ch2", "c2")]
