"""Every refused request: right status, PubNub's JSON error body with a JSON content type, and the
store left exactly as it was (docs/protocol.md 1.4, 1.5, 7). Also Redis outages and unknown paths."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from presence_server.app import create_app
from presence_server.config import Settings
from presence_server.store import open_redis
from tests.helpers.app import TEST_SERVER_OPTIONS, AiohttpClient, AiohttpServer, Client, FakeClock, NewClient
from tests.helpers.http import assert_error, is_timetoken, send, stored

P = "/v2/presence/sub-key/demo"
CG = "/v1/channel-registration/sub-key/demo/channel-group"
PRESENCE = "Presence"
REGISTRY = "channel-registry"
LONG = "x" * 93  # one over the default limit of 92 (docs/protocol.md 3)


async def seed(client: Client) -> None:
    """Someone present with state, and a group, so that any accepted call would change something."""
    for path in (
        f"{CG}/cg0?add=ch0,ch1",
        f"{P}/channel/ch0/heartbeat?uuid=u0&heartbeat=60",
        f"{P}/channel/ch0/uuid/u0/data?state=%7B%22s%22%3A1%7D",
    ):
        status, body = await send(client, path)
        assert status == 200, body


@pytest.fixture
async def seeded(client: Client, redis_client: aioredis.Redis, prefix: str) -> AsyncIterator[Client]:
    await seed(client)
    before = await stored(redis_client, prefix)
    assert before
    yield client
    assert await stored(redis_client, prefix) == before, "a refused request changed the store"


# (path, status, service): each would change the store if it were accepted.
REFUSED = {
    # the caller's uuid
    "heartbeat without uuid": (f"{P}/channel/ch1/heartbeat?heartbeat=60", 400, PRESENCE),
    "heartbeat with empty uuid": (f"{P}/channel/ch1/heartbeat?uuid=", 400, PRESENCE),
    "leave without uuid": (f"{P}/channel/ch0/leave", 400, PRESENCE),
    "leave with empty uuid": (f"{P}/channel/ch0/leave?uuid=&ee=1", 400, PRESENCE),
    # no channel or group at all
    "heartbeat on the placeholder alone": (f"{P}/channel/,/heartbeat?uuid=u1", 400, PRESENCE),
    "heartbeat on empty names": (f"{P}/channel/,,,/heartbeat?uuid=u1&channel-group=,", 400, PRESENCE),
    "leave on the placeholder alone": (f"{P}/channel/,/leave?uuid=u0", 400, PRESENCE),
    "set state on the placeholder alone": (f"{P}/channel/,/uuid/u0/data?state=%7B%7D", 400, PRESENCE),
    "get state on the placeholder alone": (f"{P}/channel/,/uuid/u0", 400, PRESENCE),
    "here now on the placeholder alone": (f"{P}/channel/,", 400, PRESENCE),
    "here now with an empty group list": (f"{P}/channel/,?channel-group=", 400, PRESENCE),
    # names over 92 characters
    "long channel": (f"{P}/channel/ch1,{LONG}/heartbeat?uuid=u1", 400, PRESENCE),
    "long uuid in the query": (f"{P}/channel/ch1/heartbeat?uuid={LONG}", 400, PRESENCE),
    "long uuid in the path": (f"{P}/channel/ch0/uuid/{LONG}/data?state=%7B%7D", 400, PRESENCE),
    "long channel group": (f"{P}/channel/ch1/heartbeat?uuid=u1&channel-group={LONG}", 400, PRESENCE),
    "long subscribe key": (f"/v2/presence/sub-key/{LONG}/channel/ch1/heartbeat?uuid=u1", 400, PRESENCE),
    "long where-now uuid": (f"{P}/uuid/{LONG}", 400, PRESENCE),
    "long registry group": (f"{CG}/{LONG}?add=ch1", 400, REGISTRY),
    "long registry channel": (f"{CG}/cg0?add=ch9,{LONG}", 400, REGISTRY),
    "long registry subscribe key": (f"/v1/channel-registration/sub-key/{LONG}/channel-group/g?add=a", 400, REGISTRY),
    # encoded characters count once each: 93 of them
    "long encoded channel": (f"{P}/channel/{'%C3%A9' * 93}/heartbeat?uuid=u1", 400, PRESENCE),
    # state
    "heartbeat state not JSON": (f"{P}/channel/ch1/heartbeat?uuid=u1&state=%7Bnope", 400, PRESENCE),
    "heartbeat state a list": (f"{P}/channel/ch1/heartbeat?uuid=u1&state=%5B1%5D", 400, PRESENCE),
    "heartbeat state a number": (f"{P}/channel/ch1/heartbeat?uuid=u1&state=5", 400, PRESENCE),
    "heartbeat state null": (f"{P}/channel/ch1/heartbeat?uuid=u1&state=null", 400, PRESENCE),
    "heartbeat state empty": (f"{P}/channel/ch0/heartbeat?uuid=u0&state=", 400, PRESENCE),
    "set state not JSON": (f"{P}/channel/ch0/uuid/u0/data?state=%7B%22s%22%3A", 400, PRESENCE),
    "set state a string": (f"{P}/channel/ch0/uuid/u0/data?state=%22x%22", 400, PRESENCE),
    "set state a list": (f"{P}/channel/ch0/uuid/u0/data?state=%5B%5D", 400, PRESENCE),
    "set state true": (f"{P}/channel/ch0/uuid/u0/data?state=true", 400, PRESENCE),
    "set state missing": (f"{P}/channel/ch0/uuid/u0/data?uuid=u0", 400, PRESENCE),
    "set state empty": (f"{P}/channel/ch0/uuid/u0/data?state=", 400, PRESENCE),
    # heartbeat, limit, offset values
    "heartbeat not a number": (f"{P}/channel/ch1/heartbeat?uuid=u1&heartbeat=abc", 400, PRESENCE),
    "heartbeat zero": (f"{P}/channel/ch1/heartbeat?uuid=u1&heartbeat=0", 400, PRESENCE),
    "heartbeat negative": (f"{P}/channel/ch1/heartbeat?uuid=u1&heartbeat=-5", 400, PRESENCE),
    "heartbeat nan": (f"{P}/channel/ch1/heartbeat?uuid=u1&heartbeat=nan", 400, PRESENCE),
    "heartbeat infinite": (f"{P}/channel/ch1/heartbeat?uuid=u1&heartbeat=inf", 400, PRESENCE),
    "heartbeat overflowing": (f"{P}/channel/ch1/heartbeat?uuid=u1&heartbeat=1e999", 400, PRESENCE),
    "limit not a number": (f"{P}/channel/ch0?limit=ten", 400, PRESENCE),
    "limit negative": (f"{P}/channel/ch0?limit=-1", 400, PRESENCE),
    "limit fractional": (f"{P}/channel/ch0,ch1?limit=1.5", 400, PRESENCE),
    "limit with underscores": (f"{P}/channel/ch0?limit=1_0", 400, PRESENCE),
    "limit with spaces": (f"{P}/channel/ch0?limit=%205", 400, PRESENCE),
    "offset not a number": (f"{P}/channel/ch0?offset=x", 400, PRESENCE),
    "offset negative": (f"{P}?offset=-3", 400, PRESENCE),
    "global limit negative": (f"{P}?limit=-1", 400, PRESENCE),
    # invalid percent-encoding: not UTF-8 once decoded
    "channel not UTF-8": (f"{P}/channel/ch1,%FF/heartbeat?uuid=u1", 400, PRESENCE),
    "channel truncated UTF-8": (f"{P}/channel/%C3/heartbeat?uuid=u1", 400, PRESENCE),
    "uuid query not UTF-8": (f"{P}/channel/ch1/heartbeat?uuid=%FF", 400, PRESENCE),
    "leave uuid not UTF-8": (f"{P}/channel/ch0/leave?uuid=u%FF0", 400, PRESENCE),
    "group query not UTF-8": (f"{P}/channel/ch1/heartbeat?uuid=u1&channel-group=%C3%28", 400, PRESENCE),
    "uuid path not UTF-8": (f"{P}/channel/ch0/uuid/%FF/data?state=%7B%7D", 400, PRESENCE),
    "where-now uuid not UTF-8": (f"{P}/uuid/%E2%82", 400, PRESENCE),
    "subscribe key not UTF-8": ("/v2/presence/sub-key/%FF/channel/ch1/heartbeat?uuid=u1", 400, PRESENCE),
    "state not UTF-8": (f"{P}/channel/ch0/uuid/u0/data?state=%7B%22a%22%3A%22%FF%22%7D", 400, PRESENCE),
    "registry group not UTF-8": (f"{CG}/%FF?add=ch1", 400, REGISTRY),
    "registry channel not UTF-8": (f"{CG}/cg0?add=ch9,%FF", 400, REGISTRY),
    "registry delete not UTF-8": (f"{CG}/%FF/remove", 400, REGISTRY),
    # channel groups
    "add and remove at once": (f"{CG}/cg0?add=ch9&remove=ch0", 400, REGISTRY),
    "add nothing": (f"{CG}/cg0?add=", 400, REGISTRY),
    "add only commas": (f"{CG}/cg0?add=,,", 400, REGISTRY),
    "remove nothing": (f"{CG}/cg0?remove=", 400, REGISTRY),
    "add 201 channels": (f"{CG}/cg0?add=" + ",".join(f"c{i}" for i in range(201)), 400, REGISTRY),
    # unknown paths
    "unknown path": ("/nope?uuid=u1", 404, PRESENCE),
    "unknown presence path": (f"{P}/channel/ch1/heartbeats?uuid=u1", 404, PRESENCE),
    "empty channel segment": (f"{P}/channel//heartbeat?uuid=u1", 404, PRESENCE),
    "unknown registry path": (f"{CG}/cg0/add?add=ch9", 404, REGISTRY),
    "empty registry group": (f"{CG}/?add=ch9", 404, REGISTRY),
}


@pytest.mark.parametrize(("path", "status", "service"), REFUSED.values(), ids=REFUSED.keys())
async def test_refused_requests(seeded: Client, path: str, status: int, service: str) -> None:
    assert_error(*await send(seeded, path), status, service)


WRONG_METHOD = {
    "POST heartbeat": ("POST", f"{P}/channel/ch1/heartbeat?uuid=u1", PRESENCE),
    "PUT set state": ("PUT", f"{P}/channel/ch0/uuid/u0/data?state=%7B%7D", PRESENCE),
    "DELETE leave": ("DELETE", f"{P}/channel/ch0/leave?uuid=u0", PRESENCE),
    "POST time": ("POST", "/time/0", PRESENCE),
    "DELETE group": ("DELETE", f"{CG}/cg0", REGISTRY),
    "POST group add": ("POST", f"{CG}/cg0?add=ch9", REGISTRY),
}


@pytest.mark.parametrize(("method", "path", "service"), WRONG_METHOD.values(), ids=WRONG_METHOD.keys())
async def test_wrong_method(seeded: Client, method: str, path: str, service: str) -> None:
    assert_error(*await send(seeded, path, method), 405, service)


async def test_group_cap(client: Client, redis_client: aioredis.Redis, prefix: str) -> None:
    # At most 2,000 channels per group, 200 per call.
    for batch in range(10):
        status, body = await send(client, f"{CG}/full?add=" + ",".join(f"b{batch}c{i}" for i in range(200)))
        assert status == 200, body
    assert len((await send(client, f"{CG}/full"))[1]["payload"]["channels"]) == 2000
    # Channels already in the group do not grow it.
    assert (await send(client, f"{CG}/full?add=b0c0,b9c199"))[0] == 200
    before = await stored(redis_client, prefix)
    assert_error(*await send(client, f"{CG}/full?add=one-more"), 400, REGISTRY)
    assert_error(*await send(client, f"{CG}/full?add=b0c0,one-more"), 400, REGISTRY)
    assert await stored(redis_client, prefix) == before


async def test_refused_request_changes_nothing_even_when_valid_parts_came_first(
    client: Client, redis_client: aioredis.Redis, prefix: str
) -> None:
    # The check that fails is the last one the handler makes; nothing may have been applied before it.
    await seed(client)
    before = await stored(redis_client, prefix)
    for path in (
        f"{P}/channel/ch0,ch1/heartbeat?uuid=u0&heartbeat=10&channel-group=cg0&state=%5B%5D",
        f"{P}/channel/ch0/heartbeat?uuid=u0&state=%7B%22ch0%22%3A%7B%7D%7D&heartbeat=-1",
    ):
        status, body = await send(client, path)
        assert_error(status, body, 400, PRESENCE)
    assert await stored(redis_client, prefix) == before


async def test_name_length_limit_follows_the_setting(
    new_client: NewClient, redis_client: aioredis.Redis, prefix: str
) -> None:
    client = await new_client(max_name_length=10)
    ten, eleven = "a" * 10, "b" * 11
    assert (await send(client, f"{P}/channel/{ten}/heartbeat?uuid={ten}&channel-group={ten}"))[0] == 200
    assert (await send(client, f"{CG}/{ten}?add={ten}"))[0] == 200
    before = await stored(redis_client, prefix)
    for path, service in (
        (f"{P}/channel/{eleven}/heartbeat?uuid=u1", PRESENCE),
        (f"{P}/channel/ch1/heartbeat?uuid={eleven}", PRESENCE),
        (f"{P}/channel/ch1/heartbeat?uuid=u1&channel-group={eleven}", PRESENCE),
        (f"{P}/channel/ch1/uuid/{eleven}/data?state=%7B%7D", PRESENCE),
        (f"{P}/uuid/{eleven}", PRESENCE),
        (f"{CG}/{eleven}?add=ch1", REGISTRY),
        (f"{CG}/{ten}?add={eleven}", REGISTRY),
    ):
        assert_error(*await send(client, path), 400, service)
    assert await stored(redis_client, prefix) == before
    # A longer limit accepts what the default refuses.
    wide = await new_client(max_name_length=200)
    assert (await send(wide, f"{P}/channel/{LONG}/heartbeat?uuid={LONG}"))[0] == 200
    status, body = await send(wide, f"{P}/uuid/{LONG}")
    assert (status, body["payload"]["channels"]) == (200, [LONG])


async def test_redis_unreachable_answers_503_then_a_working_server_answers(
    client: Client,
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
    settings: Settings,
    clock: FakeClock,
) -> None:
    broken = open_redis("redis://127.0.0.1:1/0")  # port 1 refuses connections
    try:
        down = await aiohttp_client(
            await aiohttp_server(create_app(settings, redis=broken, clock=clock, sweeper=False), **TEST_SERVER_OPTIONS)
        )
        for path, service in (
            (f"{P}/channel/ch1/heartbeat?uuid=u1", PRESENCE),
            (f"{P}/channel/ch1/leave?uuid=u1", PRESENCE),
            (f"{P}/channel/ch1", PRESENCE),
            (f"{P}/channel/ch1,ch2", PRESENCE),
            (P, PRESENCE),
            (f"{P}/uuid/u1", PRESENCE),
            (f"{P}/channel/ch1/uuid/u1", PRESENCE),
            (f"{P}/channel/ch1/uuid/u1/data?state=%7B%7D", PRESENCE),
            (f"{P}/channel/,/heartbeat?uuid=u1&channel-group=cg1", PRESENCE),
            (f"{CG}/cg1?add=ch1", REGISTRY),
            (f"{CG}/cg1", REGISTRY),
            (f"{CG}/cg1/remove", REGISTRY),
            (CG, REGISTRY),
        ):
            assert_error(*await send(down, path), 503, service)
        # Publish and signal answer in their own error shape, the array (docs/protocol.md 2.9).
        for path in ("/publish/pk/demo/0/ch1/0/%221%22?uuid=u1", "/signal/pk/demo/0/ch1/0/%221%22?uuid=u1"):
            status, body = await send(down, path)
            assert status == 503 and body[:2] == [0, "Service Unavailable"] and is_timetoken(body[2]), body
        status, body = await send(down, "/publish/pk/demo/0/ch1/0?uuid=u1", "POST", b'"1"')
        assert status == 503 and body[:2] == [0, "Service Unavailable"], body
        # Bad requests are still refused as such before the store is asked.
        assert_error(*await send(down, f"{P}/channel/ch1/heartbeat"), 400, PRESENCE)
        status, body = await send(down, "/health")
        assert status == 503 and body["status"] != "ok"
        assert isinstance(body["reason"], str) and body["reason"]
        # The time needs no store.
        assert await send(down, "/time/0") == (200, [int(clock() * 10_000_000)])
        await down.close()
    finally:
        await broken.aclose()
    # The process survived: a server on a working Redis answers normally.
    assert await send(client, "/health") == (200, {"status": "ok"})
    assert (await send(client, f"{P}/channel/ch1/heartbeat?uuid=u1"))[0] == 200
    assert await send(client, f"{P}/channel/ch1") == (
        200,
        {"status": 200, "message": "OK", "service": PRESENCE, "uuids": ["u1"], "occupancy": 1},
    )


async def test_an_app_closed_right_after_start_stops_its_wake_listener(new_client: NewClient) -> None:
    # Shutdown can cancel the listener while its pub/sub connection is still being set up; the
    # cancellation must not be lost there, or the task outlives the app and hangs the loop's close.
    for attempt in range(5):
        client = await new_client()
        await client.close()
        leftovers = [task for task in asyncio.all_tasks() if task.get_name() == "wake-listener" and not task.done()]
        stacks = [task.get_stack() for task in leftovers]
        for task in leftovers:  # stop them here rather than hang this test's teardown
            task.cancel()
        if leftovers:
            await asyncio.wait(leftovers, timeout=10)
        assert not leftovers, f"attempt {attempt}: a wake-up listener outlived its app, stuck in {stacks}"
