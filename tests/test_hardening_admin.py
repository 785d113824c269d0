"""Issue 10, items 4 and 10: the admin clock moves within a bound, no timetoken the server cannot
read back is ever written (not even after an older server wrote one), /health notices a clock out of
range, and PRESENCE_ADMIN_TOKEN puts every admin call behind a bearer token."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from presence_server.app import create_app
from presence_server.clock import Clock
from presence_server.config import Settings, SettingsError
from presence_server.routes.admin import MAX_ADVANCE, MAX_OFFSET
from presence_server.store.keys import KeysetKeys, clock_offset
from tests.helpers.app import START, TEST_SERVER_OPTIONS, AiohttpClient, AiohttpServer, FakeClock
from tests.helpers.http import OK, Client, P, assert_error, get, ok_body, request, stored

ADVANCE = "/admin/clock/advance"
TOKEN = "s3cret-token-of-the-tests"
NewAdmin = Callable[..., Awaitable[Client]]


@pytest.fixture
def new_admin(
    redis_client: aioredis.Redis,
    settings: Settings,
    clock: FakeClock,
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
) -> NewAdmin:
    """An app with the admin API on, with its own admin Clock over the test's FakeClock."""

    async def new(**overrides: Any) -> Client:
        current = dataclasses.replace(settings, **{"admin": True, "longpoll_hold": 0.2, **overrides})
        app = create_app(current, redis=redis_client, clock=Clock(base=clock), sweeper=False)
        return await aiohttp_client(await aiohttp_server(app, **TEST_SERVER_OPTIONS))

    return new


@pytest.mark.parametrize("seconds", ["1e12", "1e13", "1e300", str(MAX_ADVANCE + 1), "99999999999999999999"])
async def test_an_advance_past_the_bound_is_refused_and_moves_nothing(
    new_admin: NewAdmin, redis_client: aioredis.Redis, prefix: str, seconds: str
) -> None:
    client = await new_admin()
    await ok_body(client, f"{P}/channel/ch1/heartbeat", {"uuid": "u1", "heartbeat": 60})
    before = await stored(redis_client, prefix)
    status, body, _ = await request(client, f"{ADVANCE}?seconds={seconds}", "POST")
    assert_error(status, body, 400)
    assert await stored(redis_client, prefix) == before
    assert (await ok_body(client, "/time/0")) == [int(START * 10_000_000)]
    # The reported sequence: a handshake, then a poll with its cursor, then a heartbeat and a publish.
    cursor = (await ok_body(client, "/v2/subscribe/demo/ch1/0", {"uuid": "s1", "tt": 0}))["t"]["t"]
    assert len(cursor) == 17
    assert (await ok_body(client, "/v2/subscribe/demo/ch1/0", {"uuid": "s1", "tt": cursor}))["m"] == []
    assert await ok_body(client, f"{P}/channel/ch1/heartbeat", {"uuid": "u2"}) == OK
    assert len((await ok_body(client, "/publish/demo/demo/0/ch1/0/1", {"uuid": "u2"}))[2]) == 17


async def test_advances_add_up_to_the_bound_in_all_and_no_further(new_admin: NewAdmin) -> None:
    client = await new_admin()
    steps = int(MAX_OFFSET // MAX_ADVANCE)
    for _ in range(steps):
        status, body, _ = await request(client, f"{ADVANCE}?seconds={MAX_ADVANCE:.0f}", "POST")
        assert status == 200, body
    assert body["offset"] == MAX_OFFSET
    status, body, _ = await request(client, f"{ADVANCE}?seconds=1", "POST")
    assert_error(status, body, 400)
    # At the bound everything still answers, with 17-digit timetokens, and /health is ok.
    cursor = (await ok_body(client, "/v2/subscribe/demo/ch1/0", {"uuid": "s1", "tt": 0}))["t"]["t"]
    assert len(cursor) == 17 and cursor.startswith("2")
    assert (await ok_body(client, "/v2/subscribe/demo/ch1/0", {"uuid": "s1", "tt": cursor}))["m"] == []
    assert len(str((await ok_body(client, "/time/0"))[0])) == 17
    assert await ok_body(client, "/health") == {"status": "ok"}


async def test_an_offset_an_older_server_left_in_redis_is_noticed_and_writes_nothing(
    new_admin: NewAdmin, redis_client: aioredis.Redis, prefix: str
) -> None:
    # Before the bound, one advance of 1e13 s put every process's clock past what a timetoken tells.
    await redis_client.set(clock_offset(prefix), "10000000000000")
    client = await new_admin()  # reads the offset at start, as every process on that Redis would
    status, body, _ = await request(client, "/health", "GET")
    assert status == 503 and body["status"] == "unavailable" and "offset" in body["reason"], body
    before = await stored(redis_client, prefix)
    for path, params in (
        (f"{P}/channel/ch1/heartbeat", {"uuid": "u1"}),
        ("/v2/subscribe/demo/ch1/0", {"uuid": "u1", "tt": 0}),
        ("/time/0", {}),
    ):
        reply = await get(client, path, params)
        assert_error(reply.status, reply.body, 503)
    reply = await get(client, "/publish/demo/demo/0/ch1/0/1", {"uuid": "u1"})
    assert reply.status == 503, reply.body
    assert await stored(redis_client, prefix) == before


async def test_an_over_long_timetoken_an_older_server_left_in_a_keyset_is_written_over(
    new_admin: NewAdmin, redis_client: aioredis.Redis, prefix: str
) -> None:
    # A script that failed after setting its keyset's timetoken to 21 digits left every heartbeat a 500.
    await redis_client.set(KeysetKeys(prefix, "demo").timetoken, "100000000000000000000")
    client = await new_admin(admin=False)
    cursor = (await ok_body(client, "/v2/subscribe/demo/ch1,ch1-pnpres/0", {"uuid": "s1", "tt": 0}))["t"]["t"]
    assert len(cursor) == 17
    assert await ok_body(client, f"{P}/channel/ch1/heartbeat", {"uuid": "u1"}) == OK
    published = (await ok_body(client, "/publish/demo/demo/0/ch1/0/1", {"uuid": "u1"}))[2]
    assert len(published) == 17
    polled = await ok_body(client, "/v2/subscribe/demo/ch1,ch1-pnpres/0", {"uuid": "s1", "tt": cursor})
    assert [m["d"] for m in polled["m"] if m["c"] == "ch1"] == [1]
    assert await ok_body(client, "/health") == {"status": "ok"}


# -- PRESENCE_ADMIN_TOKEN ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", f"{ADVANCE}?seconds=1"), ("POST", "/admin/keysets/demo/reset"), ("GET", "/admin/keysets/demo/snapshot")],
)
async def test_with_a_token_every_admin_call_needs_it(
    new_admin: NewAdmin, redis_client: aioredis.Redis, prefix: str, method: str, path: str
) -> None:
    client = await new_admin(admin_token=TOKEN)
    await ok_body(client, f"{P}/channel/ch1/heartbeat", {"uuid": "u1"})
    before = await stored(redis_client, prefix)
    for headers in (
        {},
        {"Authorization": "Bearer wrong-token-of-the-tests"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": f"Bearer {TOKEN}x"},
    ):
        status, body, answered = await request(client, path, method, headers=headers)
        assert_error(status, body, 401)
        assert answered["WWW-Authenticate"].startswith("Bearer"), headers
        assert TOKEN not in str(body)
    assert await stored(redis_client, prefix) == before
    status, body, _ = await request(client, path, method, headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200, body
    status, body, _ = await request(client, path, method, headers={"Authorization": f"bearer {TOKEN}"})
    assert status == 200, body


async def test_without_a_token_loopback_clients_need_none(new_admin: NewAdmin) -> None:
    client = await new_admin()
    status, body, _ = await request(client, f"{ADVANCE}?seconds=1", "POST")
    assert status == 200, body


@pytest.mark.parametrize("token", ["short", "with a space in it ok", "caf\u00e9-caf\u00e9-caf\u00e9-caf\u00e9"])
def test_a_weak_or_odd_token_stops_the_server_without_echoing_it(token: str) -> None:
    with pytest.raises(SettingsError, match="PRESENCE_ADMIN_TOKEN") as caught:
        Settings.from_env({"PRESENCE_ADMIN_TOKEN": token})
    assert token not in str(caught.value)


def test_the_token_never_reaches_the_logged_summary() -> None:
    settings = Settings.from_env({"PRESENCE_ADMIN": "1", "PRESENCE_ADMIN_TOKEN": TOKEN})
    assert settings.admin_token == TOKEN
    assert TOKEN not in str(settings.summary())
    assert settings.summary()["admin_token"] == "set"
