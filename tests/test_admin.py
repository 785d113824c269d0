"""The admin API for use as a test double (PRESENCE_ADMIN=1): clock advance, keyset reset, snapshot.

Apps here get a ``presence_server.clock.Clock`` built on the test's FakeClock, as the admin API needs: the
FakeClock is the wall clock, the admin API moves the offset on top of it, so no test waits for time.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import redis.asyncio as aioredis

from presence_server.app import create_app
from presence_server.clock import Clock
from presence_server.config import Settings
from presence_server.context import STORE
from presence_server.store import PresenceStore, open_redis
from tests.helpers.admin import AdminServer, NewServer
from tests.helpers.app import (
    START,
    TEST_SERVER_OPTIONS,
    AiohttpClient,
    AiohttpServer,
    Client,
    FakeClock,
    sweeper_of,
    waiting,
)
from tests.helpers.http import (
    EARLY,
    LONG_HOLD,
    add_to_group,
    get,
    handshake,
    heartbeat,
    ok_body,
    poll,
    presence,
    publish,
)
from tests.helpers.redis import free_port, redis_server
from tests.helpers.wait import wait_until

P = "/v2/presence/sub-key/demo"
ADVANCE = "/admin/clock/advance"


@pytest.fixture
async def server(new_server: NewServer) -> AdminServer:
    return await new_server()


async def admin(client: Client, method: str, path: str) -> tuple[int, Any]:
    resp = await client.request(method, path)
    assert "javascript" in resp.headers["Content-Type"] or "json" in resp.headers["Content-Type"]
    return resp.status, await resp.json(content_type=None)


async def advance(client: Client, seconds: float | str) -> Any:
    status, body = await admin(client, "POST", f"{ADVANCE}?seconds={seconds}")
    assert status == 200, body
    return body


async def server_time(client: Client) -> int:
    body = (await get(client, "/time/0")).body
    value: int = body[0]
    return value


def error(status: int, message: str | None = None) -> Callable[[Any], bool]:
    def check(body: Any) -> bool:
        return (
            set(body) == {"status", "error", "message", "service"}
            and body["status"] == status
            and body["error"] is True
            and body["service"] == "Admin"
            and (message is None or body["message"] == message)
        )

    return check


# -- clock -----------------------------------------------------------------------------------------


@pytest.mark.engines("fakeredis", "redis", "cluster", "sentinel")
async def test_advance_delivers_a_due_timeout_to_a_held_poll_at_once(new_server: NewServer) -> None:
    loop = asyncio.get_running_loop()
    server = await new_server(longpoll_hold=LONG_HOLD)
    client = server.client
    cursor = await handshake(client, "ch1-pnpres", uuid="watcher")
    await heartbeat(client, "ch1", "u1", heartbeat=60)
    found, cursor = await poll(client, "ch1-pnpres", cursor, uuid="watcher")
    assert presence(found) == [("join", "u1", 1)]

    pending = asyncio.create_task(poll(client, "ch1-pnpres", cursor, uuid="watcher"))
    await wait_until(lambda: waiting(client) == 1)
    started = loop.time()
    assert await advance(client, 61) == {"status": 200, "offset": 61.0, "now": START + 61, "timeouts": 1}
    found, _ = await pending
    assert loop.time() - started < EARLY  # the sweep ran with the advance, not later
    assert [env["d"] for env in found] == [
        {"action": "timeout", "uuid": "u1", "occupancy": 0, "timestamp": int(START) + 61}
    ]
    assert (await ok_body(client, f"{P}/channel/ch1"))["occupancy"] == 0
    assert await server_time(client) == int((START + 61) * 10_000_000)


async def test_nobody_times_out_before_their_deadline(server: AdminServer) -> None:
    client = server.client
    await heartbeat(client, "ch1", "u1", heartbeat=60)
    assert (await advance(client, 59.5))["timeouts"] == 0
    assert (await ok_body(client, f"{P}/channel/ch1"))["uuids"] == ["u1"]
    assert (await advance(client, 0.5))["timeouts"] == 1
    assert (await ok_body(client, f"{P}/channel/ch1"))["uuids"] == []


async def test_advances_add_up_and_bad_seconds_are_refused(server: AdminServer, clock: FakeClock) -> None:
    client = server.client
    assert (await advance(client, 10))["offset"] == 10.0
    body = await advance(client, "2.5")
    assert (body["offset"], body["now"]) == (12.5, START + 12.5)
    for query in ("", "?seconds="):
        status, body = await admin(client, "POST", ADVANCE + query)
        assert status == 400 and error(400, "Missing seconds")(body), (query, body)
    for query in ("?seconds=abc", "?seconds=0", "?seconds=-5", "?seconds=inf", "?seconds=nan"):
        status, body = await admin(client, "POST", ADVANCE + query)
        assert status == 400 and body["status"] == 400 and body["error"] is True, (query, body)
    # Refused advances moved nothing, and the wall clock under the offset still counts.
    assert await server.store.clock_offset() == 12.5
    clock.advance(1)
    assert (await advance(client, 1))["now"] == START + 14.5
    assert server.clock() == START + 14.5


@pytest.mark.engines("fakeredis", "redis", "cluster", "sentinel")
async def test_every_process_follows_an_advance_made_on_one(new_server: NewServer) -> None:
    a = await new_server()
    b = await new_server(longpoll_hold=LONG_HOLD)
    cursor = await handshake(b.client, "ch1-pnpres", uuid="watcher")
    pending = asyncio.create_task(poll(b.client, "ch1-pnpres", cursor, uuid="watcher"))
    await wait_until(lambda: waiting(b.client) == 1)
    # A join made on A wakes B's held poll through Redis: B's listener is subscribed.
    await heartbeat(a.client, "ch1", "u1", heartbeat=60)
    found, cursor = await pending
    assert presence(found) == [("join", "u1", 1)]

    pending = asyncio.create_task(poll(b.client, "ch1-pnpres", cursor, uuid="watcher"))
    await wait_until(lambda: waiting(b.client) == 1)
    assert (await advance(a.client, 61))["timeouts"] == 1
    await wait_until(lambda: b.clock() == START + 61)  # through the wake bus
    found, _ = await pending
    assert presence(found) == [("timeout", "u1", 0)]
    assert found[0]["d"]["timestamp"] == int(START) + 61

    # B now keeps time with A: its deadlines, its timetokens.
    assert await server_time(b.client) == int((START + 61) * 10_000_000)
    await heartbeat(b.client, "ch2", "u2", heartbeat=30)
    snap = (await admin(a.client, "GET", "/admin/keysets/demo/snapshot"))[1]
    assert snap["channels"]["ch2"]["occupants"]["u2"]["deadline"] == START + 61 + 30
    # A process started later reads the offset at start.
    c = await new_server()
    assert c.clock() == START + 61
    assert (await advance(c.client, 30))["timeouts"] == 1
    await wait_until(lambda: a.clock() == b.clock() == START + 91)


async def test_a_process_that_started_while_redis_was_away_catches_up_with_the_clock(
    settings: Settings, clock: FakeClock, aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient
) -> None:
    # B starts while its Redis is unreachable, so it cannot read the shared offset; meanwhile the
    # offset was moved (as another process's advance does, whose announcement B could not hear).
    # Once B is connected it must keep the shared time, not its own.
    port = free_port()
    redis = open_redis(f"redis://127.0.0.1:{port}/0", socket_connect_timeout=1)
    try:
        b_clock = Clock(base=clock)
        app = create_app(dataclasses.replace(settings, admin=True), redis=redis, clock=b_clock, sweeper=False)
        b = await aiohttp_client(await aiohttp_server(app, **TEST_SERVER_OPTIONS))
        with redis_server(port):
            other = PresenceStore(redis, prefix=settings.key_prefix)
            assert await other.advance_clock(100) == 100.0
            assert b.app is not None
            clock_channel = b.app[STORE].clock_channel

            async def listening() -> bool:  # B's listener is back
                return bool((await redis.pubsub_shardnumsub(clock_channel))[0][1] >= 1)

            await wait_until(listening, 10, what="B's wake-up listener connected", interval=0.05)
            await wait_until(lambda: b_clock() == START + 100, within=5)
            await b.close()
    finally:
        await redis.aclose()


# -- keyset reset ----------------------------------------------------------------------------------


async def fill(client: Client, sub_key: str) -> str:
    """Presence with state, a group, messages and presence logs in ``sub_key``; returns a cursor from
    before all of it."""
    p = f"/v2/presence/sub-key/{sub_key}"
    cursor: str = (await ok_body(client, f"/v2/subscribe/{sub_key}/ch1/0", {"uuid": "watcher", "tt": "0"}))["t"]["t"]
    await ok_body(client, f"{p}/channel/ch1/heartbeat", {"uuid": "u1", "heartbeat": 60, "state": '{"mood":"ok"}'})
    await ok_body(client, f"{p}/channel/ch2/heartbeat", {"uuid": "u2", "heartbeat": 60})
    await ok_body(client, f"/v1/channel-registration/sub-key/{sub_key}/channel-group/g1", {"add": "ch1,ch3"})
    reply = await get(client, f"/publish/pk/{sub_key}/0/ch1/0/%22hello%22")
    assert reply.status == 200
    return cursor


@pytest.mark.engines("fakeredis", "redis", "cluster", "sentinel")
async def test_reset_empties_one_keyset_and_leaves_the_others(
    server: AdminServer,
    new_server: NewServer,
    redis_client: aioredis.Redis,
    clock: FakeClock,
) -> None:
    client, store = server.client, server.store
    old_cursor = await fill(client, "demo")
    await fill(client, "other")
    # The same keyset name under another key prefix (another deployment on this Redis).
    neighbour = await new_server(key_prefix=store.prefix + "-n")
    await fill(neighbour.client, "demo")
    other_before = await store.snapshot("other", now=START)
    neighbour_before = await neighbour.store.snapshot("demo", now=START)
    other_log = await store.read_log("other", "ch1")
    assert await store.read_log("demo", "ch1")

    status, body = await admin(client, "POST", "/admin/keysets/demo/reset")
    assert status == 200
    assert body["status"] == 200 and body["sub_key"] == "demo" and body["removed_keys"] > 0
    # A second reset finds nothing.
    assert (await admin(client, "POST", "/admin/keysets/demo/reset"))[1]["removed_keys"] == 0

    # demo: no presence, state, groups, messages or logs left; not a key.
    assert [key async for key in redis_client.scan_iter(match=store.keys("demo").match_all)] == []
    assert (await ok_body(client, "/v2/presence/sub-key/demo"))["payload"]["total_occupancy"] == 0
    assert (await ok_body(client, f"{P}/uuid/u1"))["payload"]["channels"] == []
    assert (await ok_body(client, f"{P}/channel/ch1/uuid/u1"))["payload"] == {}
    assert (await ok_body(client, "/v1/channel-registration/sub-key/demo/channel-group"))["payload"]["groups"] == []
    assert (await ok_body(client, "/v1/channel-registration/sub-key/demo/channel-group/g1"))["payload"][
        "channels"
    ] == []
    assert await store.read_log("demo", "ch1") == []
    assert (await admin(client, "GET", "/admin/keysets/demo/snapshot"))[1] == {
        "sub_key": "demo",
        "now": START,
        "timetoken": None,
        "channels": {},
        "groups": {},
    }
    found, _ = await poll(client, "ch1", old_cursor, uuid="reader")  # makes "reader" present
    assert found == []  # the message went with the keyset
    # The others: exactly as they were.
    assert await store.snapshot("other", now=START) == other_before
    assert await store.read_log("other", "ch1") == other_log
    assert await neighbour.store.snapshot("demo", now=START) == neighbour_before
    # demo's former occupants never time out; other's do.
    clock.advance(60)
    assert await sweeper_of(client).run_once() == 2  # other's u1 and u2 (its watcher has 300 s)
    assert [(e.action, e.uuid) for e in await store.read_log("demo", "ch1")] == [("join", "reader")]
    assert await store.read_log("demo", "ch2") == []


async def test_a_subscriber_polling_after_a_reset_is_present_again(server: AdminServer) -> None:
    client = server.client
    cursor = await handshake(client, "ch1", uuid="watcher")
    assert (await ok_body(client, f"{P}/channel/ch1"))["uuids"] == ["watcher"]
    assert (await admin(client, "POST", "/admin/keysets/demo/reset"))[0] == 200
    assert (await ok_body(client, f"{P}/channel/ch1"))["uuids"] == []
    await poll(client, "ch1", cursor, uuid="watcher")  # its next poll, as an SDK would send it
    assert (await ok_body(client, f"{P}/channel/ch1"))["uuids"] == ["watcher"]


@pytest.mark.parametrize("pattern", ["d*", "d?mo", "[d]emo", "*"])
@pytest.mark.engines("fakeredis", "redis", "cluster", "sentinel")
async def test_reset_of_a_key_with_glob_characters_removes_only_that_key(server: AdminServer, pattern: str) -> None:
    client, store = server.client, server.store
    await fill(client, "demo")
    await ok_body(client, f"/v2/presence/sub-key/{quote(pattern, safe='')}/channel/ch1/heartbeat", {"uuid": "u9"})
    demo_before = await store.snapshot("demo", now=START)
    status, body = await admin(client, "POST", f"/admin/keysets/{quote(pattern, safe='')}/reset")
    assert status == 200 and body["sub_key"] == pattern and body["removed_keys"] > 0
    assert (await store.snapshot(pattern, now=START))["channels"] == {}
    assert await store.snapshot("demo", now=START) == demo_before


# -- snapshot --------------------------------------------------------------------------------------


async def test_snapshot_shape(server: AdminServer, clock: FakeClock) -> None:
    client = server.client
    await heartbeat(client, "ch1", "u1", heartbeat=60, state='{"mood":"ok","n":1}')
    await heartbeat(client, "ch1,ch2", "u2", heartbeat=30)
    await heartbeat(client, "ch3", "u3", heartbeat=10)
    await add_to_group(client, "g1", "ch1,ch9")
    await add_to_group(client, "g2", "ch2")
    tt = await publish(client, "ch1", "last")
    clock.advance(10)  # u3 is past its deadline though not yet swept: not in the picture
    status, snap = await admin(client, "GET", "/admin/keysets/demo/snapshot")
    assert status == 200
    assert snap == {
        "sub_key": "demo",
        "now": START + 10,
        "timetoken": tt,
        "channels": {
            "ch1": {
                "occupancy": 2,
                "occupants": {
                    "u1": {"deadline": START + 60, "state": {"mood": "ok", "n": 1}},
                    "u2": {"deadline": START + 30, "state": {}},
                },
            },
            "ch2": {"occupancy": 1, "occupants": {"u2": {"deadline": START + 30, "state": {}}}},
        },
        "groups": {"g1": ["ch1", "ch9"], "g2": ["ch2"]},
    }


async def test_snapshot_of_an_unused_keyset(server: AdminServer) -> None:
    status, snap = await admin(server.client, "GET", "/admin/keysets/never-used/snapshot")
    assert (status, snap) == (
        200,
        {"sub_key": "never-used", "now": START, "timetoken": None, "channels": {}, "groups": {}},
    )


# -- access ----------------------------------------------------------------------------------------


ADMIN_CALLS = [
    ("POST", f"{ADVANCE}?seconds=100"),
    ("POST", "/admin/keysets/demo/reset"),
    ("GET", "/admin/keysets/demo/snapshot"),
]


@pytest.mark.parametrize(("method", "path"), ADMIN_CALLS)
async def test_admin_routes_do_not_exist_when_admin_is_off(new_server: NewServer, method: str, path: str) -> None:
    server = await new_server(admin=False)
    await heartbeat(server.client, "ch1", "u1", heartbeat=60)
    status, body = await admin(server.client, method, path)
    assert status == 404 and body["status"] == 404 and body["error"] is True
    assert await server.store.clock_offset() == 0.0
    assert server.clock() == START
    assert (await ok_body(server.client, f"{P}/channel/ch1"))["uuids"] == ["u1"]


@pytest.fixture
def remote_server(new_server: NewServer) -> NewServer:
    """An admin app whose requests all seem to come from another address."""

    async def new(address: str, **overrides: Any) -> AdminServer:
        return await new_server(remote=address, **overrides)

    return new


@pytest.mark.parametrize(("method", "path"), ADMIN_CALLS)
@pytest.mark.parametrize("address", ["192.0.2.7", "2001:db8::7", "10.0.0.1"])
async def test_admin_refuses_a_client_that_is_not_loopback(
    remote_server: Callable[..., Awaitable[AdminServer]], method: str, path: str, address: str
) -> None:
    server = await remote_server(address)
    await heartbeat(server.client, "ch1", "u1", heartbeat=60)
    status, body = await admin(server.client, method, path)
    assert status == 403 and error(403)(body), body
    # Nothing moved, nothing was removed; the public API still answers that client.
    assert await server.store.clock_offset() == 0.0 and server.clock() == START
    assert (await ok_body(server.client, f"{P}/channel/ch1"))["uuids"] == ["u1"]


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
async def test_admin_answers_a_loopback_client(
    remote_server: Callable[..., Awaitable[AdminServer]], address: str
) -> None:
    server = await remote_server(address)
    assert (await advance(server.client, 5))["offset"] == 5.0


async def test_admin_remote_lets_any_client_in(remote_server: Callable[..., Awaitable[AdminServer]]) -> None:
    server = await remote_server("192.0.2.7", admin_remote=True)
    assert (await advance(server.client, 5))["offset"] == 5.0
    assert (await admin(server.client, "GET", "/admin/keysets/demo/snapshot"))[0] == 200
    assert (await admin(server.client, "POST", "/admin/keysets/demo/reset"))[0] == 200


async def test_admin_answers_a_client_on_any_loopback_address(
    settings: Settings,
    aiohttp_server: AiohttpServer,
) -> None:
    # A real connection from 127.0.0.2: the whole of 127.0.0.0/8 is loopback (RFC 1122), not just .1.
    # (One engine is enough here: the embedded store.)
    app = create_app(dataclasses.replace(settings, admin=True, redis_url="memory://"), sweeper=False)
    port = (await aiohttp_server(app, **TEST_SERVER_OPTIONS)).port
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(f"http://127.0.0.1:{port}{ADVANCE}?seconds=5") as resp,
    ):
        body = await resp.json(content_type=None)
    assert resp.status == 200, body
    assert body["offset"] == 5.0
