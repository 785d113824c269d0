"""Stopping a server: held long-polls answer at once with their cursor (docs/protocol.md 2.2.7), so clients
poll again elsewhere without a gap, and nobody present is made to leave or time out.

Polls here are held for 30 s; every answer must come well within that (EARLY), which is what shows
that the shutdown answered them rather than their hold running out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from presence_server.app import create_app
from presence_server.config import Settings
from presence_server.context import LONGPOLLS, STORE
from presence_server.store import PresenceStore
from tests.helpers.app import (
    START,
    TEST_SERVER_OPTIONS,
    AiohttpClient,
    AiohttpServer,
    Client,
    FakeClock,
    MakeApp,
    sweeper_of,
    waiting,
)
from tests.helpers.http import EARLY, P, add_to_group, get, get_url, handshake, heartbeat, held_polls, ok_body
from tests.helpers.process import server_env, server_process, wait_answering
from tests.helpers.redis import free_port
from tests.helpers.wait import wait_until

HOLD = 30.0


async def raw_poll(
    session: aiohttp.ClientSession, base: str, channels: str, tt: str, uuid: str, **params: object
) -> tuple[int, Any]:
    """A subscribe poll from a client of its own (not the test client, whose close would drop it)."""
    reply = await get_url(session, base, f"/v2/subscribe/demo/{channels}/0", {"uuid": uuid, "tt": tt, **params})
    return reply.status, reply.body


async def test_closing_the_server_answers_every_held_poll_at_once(
    make_app: MakeApp,
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
) -> None:
    client = await aiohttp_client(await aiohttp_server(make_app(longpoll_hold=HOLD), **TEST_SERVER_OPTIONS))
    base = str(client.make_url("")).rstrip("/")
    await add_to_group(client, "g1", "ch9")
    subscriptions: list[tuple[str, dict[str, object]]] = [
        ("ch1,ch2-pnpres", {}),  # names (nobody is present on ch2)
        (",", {"channel-group": "g1"}),  # a group
        ("a.*", {}),  # a wildcard
    ]
    cursors = [
        await handshake(client, channels, uuid=f"s{i}", **params) for i, (channels, params) in enumerate(subscriptions)
    ]
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as session:
        polls = [
            asyncio.create_task(raw_poll(session, base, channels, cursor, f"s{i}", **params))
            for i, ((channels, params), cursor) in enumerate(zip(subscriptions, cursors, strict=True))
        ]
        await wait_until(lambda: waiting(client) == len(polls))
        app = client.app
        assert app is not None
        started = loop.time()
        await client.close()
        answers = await asyncio.wait_for(asyncio.gather(*polls), EARLY)
        assert loop.time() - started < EARLY
    for (status, body), cursor in zip(answers, cursors, strict=True):
        assert status == 200, body
        assert body == {"t": {"t": cursor, "r": 1}, "m": []}
    assert app[LONGPOLLS].waiting == 0
    # Shutting down made nobody leave.
    here = await app[STORE].here_now("demo", ["ch1", "ch9"], now=START)
    assert {entry.channel: entry.uuids for entry in here} == {"ch1": ["s0"], "ch9": ["s1"]}


async def test_presence_survives_a_restart_on_redis(
    real_redis: aioredis.Redis,
    settings: Settings,
    clock: FakeClock,
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
) -> None:
    async def start(hold: float) -> Client:
        # With its sweeper loop running, as deployed: stopping it must not sweep anyone away either.
        current = dataclasses.replace(settings, longpoll_hold=hold)
        app = create_app(current, redis=real_redis, clock=clock, sweeper=True)
        return await aiohttp_client(await aiohttp_server(app, **TEST_SERVER_OPTIONS))

    a = await start(HOLD)
    await heartbeat(a, "ch1", "u1", heartbeat=120, state='{"mood":"ok"}')
    cursor = await handshake(a, "ch1", uuid="watcher")
    before = await ok_body(a, f"{P}/channel/ch1", {"state": 1})
    assert before["occupancy"] == 2
    base = str(a.make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as session:
        pending = asyncio.create_task(raw_poll(session, base, "ch1", cursor, "watcher"))
        await wait_until(lambda: waiting(a) == 1)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await a.close()
        assert await asyncio.wait_for(pending, EARLY) == (200, {"t": {"t": cursor, "r": 1}, "m": []})
        assert loop.time() - started < EARLY  # answered by the shutdown, not by its hold running out

    b = await start(0.2)  # its idle polls answer quickly
    assert await ok_body(b, f"{P}/channel/ch1", {"state": 1}) == before
    assert (await ok_body(b, f"{P}/uuid/watcher"))["payload"]["channels"] == ["ch1"]
    assert await sweeper_of(b).run_once() == 0
    store = PresenceStore(real_redis, prefix=settings.key_prefix)
    assert [(e.action, e.uuid) for e in await store.read_log("demo", "ch1")] == [("join", "u1"), ("join", "watcher")]
    # The watcher goes on polling with its cursor on the new server.
    status, body = await raw_poll_client(b, "ch1", cursor, "watcher")
    assert status == 200 and body["m"] == []


async def raw_poll_client(client: Client, channels: str, tt: str, uuid: str) -> tuple[int, Any]:
    reply = await get(client, f"/v2/subscribe/demo/{channels}/0", {"uuid": uuid, "tt": tt})
    return reply.status, reply.body


async def test_sigterm_answers_a_held_poll_and_exits_cleanly(
    real_redis_url: str,
    real_redis: aioredis.Redis,
    prefix: str,
    tmp_path: Path,
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    env = server_env(
        PRESENCE_PORT=str(port),
        PRESENCE_REDIS_URL=real_redis_url,
        PRESENCE_KEY_PREFIX=prefix,
        PRESENCE_LONGPOLL_HOLD=str(HOLD),
    )
    loop = asyncio.get_running_loop()
    async with server_process(env, stderr=log) as proc, aiohttp.ClientSession() as session:
        await wait_answering(base, "/health", 200, proc, log=log)
        status, body = await raw_poll(session, base, "ch1", "0", "watcher", heartbeat=120)
        assert status == 200
        cursor = body["t"]["t"]
        pending = asyncio.create_task(raw_poll(session, base, "ch1", cursor, "watcher"))

        async def held() -> bool:
            assert not pending.done(), "the poll was answered before it was held"
            return await held_polls(session, base) == 1

        await wait_until(held, 10, what="the poll held", interval=0.02)

        started = loop.time()
        proc.send_signal(signal.SIGTERM)
        # A 200 with the same cursor, not a dropped connection; then a prompt, clean exit.
        assert await asyncio.wait_for(pending, EARLY) == (200, {"t": {"t": cursor, "r": 1}, "m": []})
        assert await asyncio.wait_for(proc.wait(), 5) == 0
        assert loop.time() - started < 5
    text = log.read_text(errors="replace")
    assert "stopped" in text and "Traceback" not in text, text
    # The subscriber is still present in Redis, and nothing was logged for it but its join.
    store = PresenceStore(real_redis, prefix=prefix)
    assert [(e.action, e.uuid) for e in await store.read_log("demo", "ch1")] == [("join", "watcher")]
    assert await store.where_now("demo", "watcher", now=time.time()) == ["ch1"]
