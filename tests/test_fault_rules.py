"""Fault injection through the admin API (presence_server/faults.py): rules that make matching requests
answer an error status, wait, lose their connection or come back empty; shared by every process on one
Redis, a rule's ``times`` used up exactly once each across them. Apps here have the admin API on and a
Clock over the test's FakeClock, so ``seconds`` ends with the admin clock, never by waiting."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from presence_server.app import create_app
from presence_server.clock import Clock
from presence_server.config import Settings
from presence_server.context import FAULTS
from presence_server.faults import route_of
from presence_server.routes import Router, setup_admin_routes, setup_routes
from tests.helpers.app import TEST_SERVER_OPTIONS, AiohttpClient, AiohttpServer, Client, FakeClock
from tests.helpers.wait import wait_until

HB = "/v2/presence/sub-key/demo/channel/ch1/heartbeat"
NewApp = Callable[..., Awaitable[Client]]


@pytest.fixture
def new_app(
    redis_client: aioredis.Redis,
    settings: Settings,
    clock: FakeClock,
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
) -> NewApp:
    async def new(**overrides: Any) -> Client:
        current = dataclasses.replace(settings, **{"admin": True, "longpoll_hold": 5.0, **overrides})
        app = create_app(current, redis=redis_client, clock=Clock(base=clock), sweeper=False)
        return await aiohttp_client(await aiohttp_server(app, **TEST_SERVER_OPTIONS))

    return new


@pytest.fixture
async def app(new_app: NewApp) -> Client:
    return await new_app()


async def call(client: Client, method: str, path: str, body: Any = None, **params: str) -> tuple[int, Any]:
    data = None if body is None else orjson.dumps(body)
    resp = await client.request(method, path, data=data, params=params)
    return resp.status, orjson.loads(await resp.read())


async def add(client: Client, **rule: Any) -> str:
    status, body = await call(client, "POST", "/admin/faults", rule)
    assert status == 200, body
    fault_id: str = body["id"]
    return fault_id


async def heartbeat(client: Client, uuid: str = "u1") -> tuple[int, Any]:
    return await call(client, "GET", HB, uuid=uuid)


async def test_a_status_rule_with_times_answers_that_many_requests_then_none(app: Client) -> None:
    await add(app, route="heartbeat", sub_key="demo", status=503, times=2)
    for _ in range(2):
        status, body = await heartbeat(app)
        assert status == 503
        assert body == {"status": 503, "error": True, "message": "Service Unavailable", "service": "Presence"}
    assert (await heartbeat(app))[0] == 200
    assert (await call(app, "GET", "/admin/faults"))[1]["faults"] == []  # used up, gone


async def test_a_rule_matches_its_route_keyset_channel_and_uuid_only(app: Client) -> None:
    await add(app, route="heartbeat", sub_key="demo", channel="ch1", uuid="bob", status=500)
    assert (await heartbeat(app, "alice"))[0] == 200
    assert (await call(app, "GET", "/v2/presence/sub-key/demo/channel/ch2/heartbeat", uuid="bob"))[0] == 200
    assert (await call(app, "GET", "/v2/presence/sub-key/other/channel/ch1/heartbeat", uuid="bob"))[0] == 200
    assert (await call(app, "GET", "/v2/presence/sub-key/demo/channel/ch1", uuid="bob"))[0] == 200  # here now
    assert (await heartbeat(app, "bob"))[0] == 500
    assert (await call(app, "GET", "/v2/presence/sub-key/demo/channel/ch0,ch1/heartbeat", uuid="bob"))[0] == 500


async def test_publish_and_signal_fail_in_their_array_shape(app: Client) -> None:
    await add(app, route="publish", sub_key="demo", status=400)
    status, body = await call(app, "GET", "/publish/pk/demo/0/ch1/0/%221%22")
    assert status == 400 and body[:2] == [0, "Bad Request"] and body[2].isdigit()
    await add(app, route="signal", sub_key="demo", status=403)
    status, body = await call(app, "GET", "/signal/pk/demo/0/ch1/0/%221%22")
    assert status == 403 and body[:2] == [0, "Forbidden"]


async def test_seconds_end_with_the_servers_clock(app: Client, clock: FakeClock) -> None:
    await add(app, route="heartbeat", sub_key="demo", status=503, seconds=30)
    assert (await heartbeat(app))[0] == 503
    clock.advance(31)
    assert (await heartbeat(app))[0] == 200
    assert (await call(app, "GET", "/admin/faults"))[1]["faults"] == []


async def test_a_delay_answers_late_and_then_normally(app: Client) -> None:
    await add(app, route="here_now", sub_key="demo", delay_ms=200, times=1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, body = await call(app, "GET", "/v2/presence/sub-key/demo/channel/ch1")
    assert status == 200 and body["occupancy"] == 0
    assert loop.time() - started >= 0.2


async def test_empty_answers_a_poll_at_once_with_its_cursor(app: Client) -> None:
    status, hello = await call(app, "GET", "/v2/subscribe/demo/ch1/0", uuid="u1")
    cursor = hello["t"]["t"]
    await add(app, route="subscribe", sub_key="demo", empty=True, times=1)
    status, body = await call(app, "GET", "/v2/subscribe/demo/ch1/0", uuid="u1", tt=cursor)
    assert status == 200 and body == {"t": {"t": cursor, "r": 1}, "m": []}


async def test_drop_closes_the_connection_without_an_answer(app: Client) -> None:
    await add(app, route="heartbeat", sub_key="demo", drop=True, times=1)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await heartbeat(app)
    assert (await heartbeat(app))[0] == 200


async def test_rules_are_listed_removed_one_by_one_and_cleared(app: Client) -> None:
    first = await add(app, route="heartbeat", sub_key="demo", status=503)
    second = await add(app, route="leave", sub_key="demo", status=500, times=3)
    listed = (await call(app, "GET", "/admin/faults"))[1]["faults"]
    assert [(rule["id"], rule["route"]) for rule in listed] == [(first, "heartbeat"), (second, "leave")]
    assert listed[1]["left"] == 3
    assert (await call(app, "DELETE", f"/admin/faults/{first}"))[0] == 200
    assert (await call(app, "DELETE", f"/admin/faults/{first}"))[0] == 404
    assert (await heartbeat(app))[0] == 200
    assert (await call(app, "DELETE", "/admin/faults"))[1]["removed"] == 1
    assert (await call(app, "GET", "/v2/presence/sub-key/demo/channel/ch1/leave", uuid="u1"))[0] == 200


@pytest.mark.parametrize(
    "rule",
    [
        {},
        {"route": "nope", "sub_key": "demo", "status": 503},
        {"route": "heartbeat", "status": 503},
        {"route": "heartbeat", "sub_key": "demo"},
        {"route": "heartbeat", "sub_key": "demo", "status": 503, "drop": True},
        {"route": "heartbeat", "sub_key": "demo", "status": 200},
        {"route": "heartbeat", "sub_key": "demo", "status": "503"},
        {"route": "heartbeat", "sub_key": "demo", "delay_ms": -1},
        {"route": "heartbeat", "sub_key": "demo", "empty": True},
        {"route": "heartbeat", "sub_key": "demo", "drop": 1},
        {"route": "heartbeat", "sub_key": "demo", "status": 503, "times": 0},
        {"route": "heartbeat", "sub_key": "demo", "status": 503, "seconds": 0},
        {"route": "heartbeat", "sub_key": "demo", "status": 503, "extra": 1},
        [1],
    ],
)
async def test_a_bad_rule_is_refused_and_adds_nothing(app: Client, rule: Any) -> None:
    status, body = await call(app, "POST", "/admin/faults", rule)
    assert status == 400 and body["service"] == "Admin" and body["message"].startswith(("Invalid", "Bad")), body
    assert (await call(app, "GET", "/admin/faults"))[1]["faults"] == []
    assert (await heartbeat(app))[0] == 200


async def test_rules_are_shared_and_times_used_up_once_across_processes(new_app: NewApp) -> None:
    a, b = await new_app(), await new_app()
    await add(a, route="heartbeat", sub_key="demo", status=503, times=3)
    assert b.app is not None
    await wait_until(lambda: bool(b.app and b.app[FAULTS].by_route), 5, what="B hearing of the rule")
    answers = await asyncio.gather(*(heartbeat(c, f"u{i}") for i, c in enumerate([a, b] * 4)))
    assert sorted(status for status, _ in answers) == [200] * 5 + [503] * 3
    await wait_until(lambda: bool(b.app and not b.app[FAULTS].by_route), 5, what="B hearing it is used up")


async def test_fault_routes_do_not_exist_without_the_admin_api(new_app: NewApp) -> None:
    plain = await new_app(admin=False)
    assert (await call(plain, "POST", "/admin/faults", {"route": "heartbeat"}))[0] == 404


async def test_of_two_matching_rules_the_first_added_applies(app: Client) -> None:
    for _ in range(3):  # ids are random: the order must not depend on them
        await add(app, route="heartbeat", sub_key="demo", status=500, times=1)
        await add(app, route="heartbeat", sub_key="demo", status=503, times=1)
        assert [(await heartbeat(app))[0] for _ in range(3)] == [500, 503, 200]


async def test_a_status_without_a_reason_phrase_says_error(app: Client) -> None:
    await add(app, route="heartbeat", sub_key="demo", status=499, times=1)
    assert await heartbeat(app) == (499, {"status": 499, "error": True, "message": "Error", "service": "Presence"})


def test_every_route_of_the_table_maps_to_its_fault_route_and_the_admin_api_to_none() -> None:
    app = web.Application()
    setup_routes(Router(app, lambda handler, route, needs: handler))
    setup_admin_routes(Router(app, lambda handler, route, needs: handler))
    named = {resource.canonical: route_of(resource.canonical) for resource in app.router.resources()}
    assert {path: name for path, name in named.items() if path.startswith("/admin/") and name} == {}
    assert named["/v2/presence/sub-key/{sub_key}/channel/{channels}/leave"] == "leave"
    assert named["/v2/presence/sub-key/{sub_key}/channel/{channels}/heartbeat"] == "heartbeat"
    assert named["/time/0"] is None and named["/metrics"] is None
    expected = {"subscribe", "heartbeat", "leave", "here_now", "where_now", "state", "publish", "signal"}
    assert set(named.values()) - {None} == expected | {"groups", "history"}
