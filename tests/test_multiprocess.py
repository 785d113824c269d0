"""Several server processes on one Redis behave as one server (docs/protocol.md 2.2, 3; STYLE: no leader).

First as two apps in this process sharing one Redis client, key prefix and FakeClock (so presence
time is injected and both sweepers can run at the same instant); then as two real server processes
(`python -m presence_server`) on the real redis-server, which is what a deployment runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from presence_server.app import SWEEPER
from presence_server.context import LONGPOLLS, STORE
from presence_server.store.subscription import subscription_of
from tests.helpers.app import START, AiohttpClient, AiohttpServer, Client, FakeClock, MakeApp, serve, waiting
from tests.helpers.http import (
    EARLY,
    HOLD,
    LONG_HOLD,
    get_url,
    handshake,
    heartbeat,
    held_polls,
    messages,
    occupants,
    poll,
    presence,
    publish,
    where,
)
from tests.helpers.process import server_env, server_process, wait_answering
from tests.helpers.redis import free_port
from tests.helpers.wait import wait_until

# Several processes behave as one on every engine (the apps in this process share one client).
pytestmark = pytest.mark.engines("fakeredis", "redis", "cluster", "sentinel")


async def two(
    make_app: MakeApp, aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, **settings: Any
) -> tuple[Client, Client]:
    """Two servers on the same Redis client, key prefix and clock, as two processes would be."""
    first = await serve(aiohttp_server, aiohttp_client, make_app(**settings))
    second = await serve(aiohttp_server, aiohttp_client, make_app(**settings))
    return first, second


async def sweep_both(a: Client, b: Client) -> int:
    """Run both processes' sweepers at once; returns the timeouts they reported together."""
    assert a.app is not None and b.app is not None
    done = await asyncio.gather(a.app[SWEEPER].run_once(), b.app[SWEEPER].run_once())
    return sum(done)


# -- two apps in this process ----------------------------------------------------------------------


async def test_presence_made_on_one_is_seen_and_kept_by_the_other(
    make_app: MakeApp, aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, clock: FakeClock
) -> None:
    a, b = await two(make_app, aiohttp_server, aiohttp_client, longpoll_hold=HOLD)
    cursor = await handshake(a, "ch1,ch1-pnpres", uuid="u1", heartbeat=30)
    # Its own join, read on the other process with the cursor the first one handed out.
    found, cursor = await poll(b, "ch1,ch1-pnpres", cursor, uuid="u1")
    assert presence(found) == [("join", "u1", 1)]
    assert await occupants(b, "ch1") == ["u1"]
    assert await where(b, "u1") == ["ch1"]
    # Polls on B keep u1 present with the timeout given on A.
    clock.advance(20)
    await poll(b, "ch1,ch1-pnpres", cursor, uuid="u1")
    clock.advance(29)
    assert await sweep_both(a, b) == 0
    assert await occupants(a, "ch1") == ["u1"]
    clock.advance(1)
    assert await sweep_both(a, b) == 1
    assert await occupants(a, "ch1") == []


async def test_publish_on_one_wakes_a_poll_held_on_the_other(
    make_app: MakeApp, aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient
) -> None:
    loop = asyncio.get_running_loop()
    a, b = await two(make_app, aiohttp_server, aiohttp_client, longpoll_hold=LONG_HOLD)
    cursor = await handshake(b, "ch1")
    started = loop.time()
    pending = asyncio.create_task(poll(b, "ch1", cursor))
    await wait_until(lambda: waiting(b) == 1)
    tt = await publish(a, "ch1", "across")
    found, next_tt = await pending
    # Woken through Redis pub/sub, long before B's hold ran out.
    assert loop.time() - started < EARLY
    assert messages(found) == ["across"] and next_tt == tt
    assert waiting(a) == 0


async def test_a_publish_on_one_answers_the_others_poll_at_the_last_timetoken_without_a_read(
    make_app: MakeApp, aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient
) -> None:
    a, b = await two(make_app, aiohttp_server, aiohttp_client, longpoll_hold=LONG_HOLD)
    assert b.app is not None
    cursor = await handshake(b, "ch1")
    first = await publish(a, "ch1", "first")
    found, cursor = await poll(b, "ch1", cursor)
    assert messages(found) == ["first"] and cursor == first
    pending = asyncio.create_task(poll(b, "ch1", cursor))
    await wait_until(lambda: waiting(b) == 1)
    reads = b.app[LONGPOLLS].reads_started
    tt = await publish(a, "ch1", {"n": 2})
    found, next_tt = await pending
    assert messages(found) == [{"n": 2}] and next_tt == tt
    assert b.app[LONGPOLLS].reads_started == reads  # the wake-up from A's script carried the entry


async def test_presence_event_on_one_wakes_a_presence_poll_held_on_the_other(
    make_app: MakeApp, aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient
) -> None:
    loop = asyncio.get_running_loop()
    a, b = await two(make_app, aiohttp_server, aiohttp_client, longpoll_hold=LONG_HOLD)
    cursor = await handshake(b, "ch1-pnpres", uuid="watcher")
    started = loop.time()
    pending = asyncio.create_task(poll(b, "ch1-pnpres", cursor, uuid="watcher"))
    await wait_until(lambda: waiting(b) == 1)
    await handshake(a, "ch1", uuid="u1")
    found, _ = await pending
    assert loop.time() - started < EARLY
    assert presence(found) == [("join", "u1", 1)]


async def test_polls_alternating_between_processes_lose_nothing(
    make_app: MakeApp, aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient
) -> None:
    a, b = await two(make_app, aiohttp_server, aiohttp_client, longpoll_hold=HOLD)
    servers = (a, b)
    cursor = await handshake(a, "ch1,ch2")
    received: list[Any] = []
    sent: list[Any] = []
    for round_ in range(6):
        for i in range(round_ + 1):  # 1, 2, ... 6 messages, from both processes and on both channels
            message = {"round": round_, "i": i}
            await publish(servers[i % 2], f"ch{1 + round_ % 2}", message)
            sent.append(message)
        found, cursor = await poll(servers[round_ % 2], "ch1,ch2", cursor)
        received += messages(found)
    # One more poll on each: nothing left, nothing twice.
    for server in servers:
        found, same = await poll(server, "ch1,ch2", cursor)
        assert found == [] and same == cursor
    assert received == sent


async def test_a_page_read_on_one_continues_on_the_other(
    make_app: MakeApp, aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient
) -> None:
    a, b = await two(make_app, aiohttp_server, aiohttp_client, longpoll_hold=HOLD)
    cursor = await handshake(a, "ch1")
    for i in range(150):
        await publish((a, b)[i % 2], "ch1", i)
    first, cursor = await poll(a, "ch1", cursor)
    rest, cursor = await poll(b, "ch1", cursor)
    assert messages(first) + messages(rest) == list(range(150))
    assert len(first) == 100


async def test_each_timeout_and_each_interval_event_is_delivered_once(
    make_app: MakeApp, aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, clock: FakeClock
) -> None:
    a, b = await two(make_app, aiohttp_server, aiohttp_client, longpoll_hold=HOLD, announce_max=2, interval=10)
    watch = "ch1-pnpres"
    cursor = await handshake(a, watch, uuid="watcher")
    await heartbeat(a, "ch1", "u1", heartbeat=30)
    await heartbeat(b, "ch1", "u2", heartbeat=300)
    await heartbeat(a, "ch1", "u3", heartbeat=300)  # occupancy 3 > announce_max: not announced

    clock.advance(30)
    assert await sweep_both(a, b) == 1
    assert await sweep_both(b, a) == 0
    found, cursor = await poll(b, watch, cursor, uuid="watcher")
    ts = int(START)
    assert [env["d"] for env in found] == [
        {"action": "join", "uuid": "u1", "occupancy": 1, "timestamp": ts},
        {"action": "join", "uuid": "u2", "occupancy": 2, "timestamp": ts},
        # u1's timeout comes while u3's join waits for the interval event: it goes with it.
        {"action": "interval", "occupancy": 2, "timestamp": ts + 30, "join": ["u3"], "timeout": ["u1"]},
    ]

    # Above announce_max again (u4 makes 3): the interval events come from whichever sweeper runs,
    # once each, and keep coming while the channel stays above it.
    await heartbeat(b, "ch1", "u4", heartbeat=300)
    await heartbeat(a, "ch1", "u5", heartbeat=300)
    for _ in range(2):
        clock.advance(10)
        assert await sweep_both(a, b) == 0
        assert await sweep_both(b, a) == 0
    found, cursor = await poll(a, watch, cursor, uuid="watcher")
    assert [env["d"] for env in found] == [
        {"action": "interval", "occupancy": 4, "timestamp": ts + 40, "join": ["u4", "u5"]},
        {"action": "interval", "occupancy": 4, "timestamp": ts + 50},
    ]
    found, _ = await poll(b, watch, cursor, uuid="watcher")
    assert found == []


# -- two real server processes ---------------------------------------------------------------------


@contextlib.asynccontextmanager
async def server_on(redis_url: str, prefix: str, log: Path) -> AsyncIterator[str]:
    """``python -m presence_server`` on a free port; yields its base URL once /health answers."""
    port = free_port()
    env = server_env(
        PRESENCE_PORT=str(port),
        PRESENCE_REDIS_URL=redis_url,
        PRESENCE_KEY_PREFIX=prefix,
        PRESENCE_LONGPOLL_HOLD="2",
    )
    async with server_process(env, stderr=log) as proc:
        base = f"http://127.0.0.1:{port}"
        assert await wait_answering(base, "/health", 200, proc, log=log) == {"status": "ok"}
        yield base


async def call(session: aiohttp.ClientSession, base: str, path: str, params: dict[str, object] | None = None) -> Any:
    reply = await get_url(session, base, path, params)
    assert reply.status == 200, reply.body
    assert "javascript" in reply.content_type
    return reply.body


@pytest.mark.parametrize("redis_url", ["real_redis_url", "cluster_url", "sentinel_url"])
async def test_two_real_server_processes_share_presence_and_messages(
    redis_url: str, prefix: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue(redis_url)
    async with (
        server_on(url, prefix, tmp_path / "a.log") as a,
        server_on(url, prefix, tmp_path / "b.log") as b,
        aiohttp.ClientSession() as session,
    ):
        sub = "/v2/subscribe/demo"
        presence_path = "/v2/presence/sub-key/demo"
        # Presence made on A is seen on B.
        await call(session, a, f"{presence_path}/channel/ch1/heartbeat", {"uuid": "u1", "heartbeat": 60})
        here = await call(session, b, f"{presence_path}/channel/ch1")
        assert here["uuids"] == ["u1"] and here["occupancy"] == 1
        assert (await call(session, b, f"{presence_path}/uuid/u1"))["payload"]["channels"] == ["ch1"]

        # A subscriber handshakes on B; a join and a message made on A reach it on B.
        body = await call(session, b, f"{sub}/ch2,ch2-pnpres/0", {"uuid": "watcher", "tt": "0"})
        cursor = body["t"]["t"]
        await call(session, a, f"{sub}/ch2/0", {"uuid": "u2", "tt": "0"})
        sent = await call(session, a, f"/publish/pk/demo/0/ch2/0/{'%7B%22n%22%3A1%7D'}", {"uuid": "u2"})
        assert sent[:2] == [1, "Sent"]
        body = await call(session, b, f"{sub}/ch2,ch2-pnpres/0", {"uuid": "watcher", "tt": cursor})
        got = [(env["c"], env["d"]) for env in body["m"]]
        assert got == [
            (
                "ch2-pnpres",
                {"action": "join", "uuid": "watcher", "occupancy": 1, "timestamp": body["m"][0]["d"]["timestamp"]},
            ),
            (
                "ch2-pnpres",
                {"action": "join", "uuid": "u2", "occupancy": 2, "timestamp": body["m"][1]["d"]["timestamp"]},
            ),
            ("ch2", {"n": 1}),
        ]
        assert body["m"][2]["p"]["t"] == sent[2]
        cursor = body["t"]["t"]

        # A poll held on B is woken by a publish on A (through Redis), before B's 2 s hold ends.
        loop = asyncio.get_running_loop()
        pending = asyncio.create_task(call(session, b, f"{sub}/ch2/0", {"uuid": "watcher", "tt": cursor}))

        async def held() -> bool:
            assert not pending.done(), "the poll was answered before it was held"
            return await held_polls(session, b) >= 1

        await wait_until(held, 5, what="a poll held on B", interval=0.02)
        started = loop.time()
        await call(session, a, f"/publish/pk/demo/0/ch2/0/{'%22woken%22'}", {"uuid": "u2"})
        body = await pending
        assert [env["d"] for env in body["m"]] == ["woken"]
        assert loop.time() - started < 1.5


async def test_concurrent_publishes_and_presence_reach_every_subscription_whole_and_in_order(
    make_app: MakeApp, aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient
) -> None:
    """Publishes and presence events from both processes while subscribers of several shapes poll
    through either: each received exactly what its subscription's logs hold after its first cursor,
    once each, in timetoken order, whether a poll took a wake-up's entry or read."""
    rng = random.Random(15)
    a, b = await two(make_app, aiohttp_server, aiohttp_client, longpoll_hold=LONG_HOLD)
    assert a.app is not None and b.app is not None
    store, sub_key = a.app[STORE], "demo"
    servers = (a, b)
    shapes = ["a", "a", "a,b", "b,a-pnpres,a", "b", "a-pnpres"]
    cursors = [await handshake(servers[i % 2], shape, uuid=f"s{i}") for i, shape in enumerate(shapes)]
    received: list[list[tuple[str, str]]] = [[] for _ in shapes]
    done = False

    async def logged_after(shape: str, cursor: str) -> list[tuple[str, str]]:
        """What the subscription's logs hold after ``cursor``, read from the store itself."""
        subscription, found = subscription_of(tuple(shape.split(",")), ()), []
        while (page := await store.read(sub_key, subscription, cursor)).deliveries:
            found += [(d.source.delivered_as, d.timetoken) for d in page.deliveries]
            cursor = page.cursor
        return found

    async def subscriber(i: int) -> None:
        cursor = cursors[i]
        while not (done and not await logged_after(shapes[i], cursor)):
            found, cursor = await poll(rng.choice(servers), shapes[i], cursor, uuid=f"s{i}")
            received[i] += [(envelope["c"], envelope["p"]["t"]) for envelope in found]

    tasks = [asyncio.create_task(subscriber(i)) for i in range(len(shapes))]
    for n in range(120):
        server = rng.choice(servers)
        if rng.random() < 0.2:
            await heartbeat(server, rng.choice(["a", "b", "a,b"]), f"walker-{n}")  # a join each
        else:
            await publish(server, rng.choice(["a", "a", "b"]), {"n": n})
        for _ in range(rng.randrange(3)):
            await asyncio.sleep(0)  # let polls and wake-ups interleave with the next write
    # Then every poll answers at once (as at shutdown), so the subscribers catch up without holding.
    done = True
    for server in servers:
        assert server.app is not None
        server.app[LONGPOLLS].close()
    await asyncio.gather(*tasks)
    for i, shape in enumerate(shapes):
        assert received[i] == await logged_after(shape, cursors[i]), shape
        assert len(received[i]) > 10, shape
