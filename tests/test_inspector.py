"""The inspector page's JSON endpoints and files (docs/protocol.md 9.2), through the real store on both
engines: last messages, the live feed (a long-poll over the keyset's logs), making a user leave or time
out, and the page with its files, its policy headers and the admin API's loopback and token checks.

Apps get a ``presence_server.clock.Clock`` over the test's FakeClock, as the admin API needs; no test
waits for presence time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from presence_server.inspector.page import FILES
from tests.helpers.admin import AdminServer, NewServer
from tests.helpers.app import (
    START,
    Client,
    FakeClock,
    sweeper_of,
    waiting,
)
from tests.helpers.http import (
    EARLY,
    LONG_HOLD,
    P,
    add_to_group,
    get,
    get_url,
    heartbeat,
    is_timetoken,
    ok_body,
    publish,
    request,
    stored,
)
from tests.helpers.wait import wait_until

KS = "/admin/keysets/demo"
TOKEN = "inspector-token-0123456789"


@pytest.fixture
async def server(new_server: NewServer) -> AdminServer:
    return await new_server()


async def call(client: Client, method: str, path: str, headers: Mapping[str, str] | None = None) -> tuple[int, Any]:
    status, body, _ = await request(client, path, method, headers=headers)
    return status, body


async def ok(client: Client, method: str, path: str) -> Any:
    status, body = await call(client, method, path)
    assert status == 200, body
    return body


async def fetch(
    client: Client, path: str, headers: Mapping[str, str] | None = None, *, method: str = "GET"
) -> tuple[int, str, bytes]:
    """Any answer, JSON or not: status, Content-Type, body."""
    resp = await client.request(method, path, headers=headers)
    return resp.status, resp.headers.get("Content-Type", ""), await resp.read()


def is_admin_error(body: Any, status: int, message: str | None = None) -> bool:
    return (
        set(body) == {"status", "error", "message", "service"}
        and body["status"] == status
        and body["error"] is True
        and body["service"] == "Admin"
        and (message is None or body["message"] == message)
    )


def occupants(snapshot: Any, channel: str) -> dict[str, Any]:
    found: dict[str, Any] = snapshot["channels"].get(channel, {}).get("occupants", {})
    return found


async def snapshot(client: Client) -> Any:
    return await ok(client, "GET", f"{KS}/snapshot")


# -- last messages ---------------------------------------------------------------------------------


async def test_last_messages_of_each_channel(server: AdminServer) -> None:
    client = server.client
    first = await publish(client, "ch1", {"n": 1}, uuid="alice")
    second = await publish(client, "ch1", "two", meta='{"tag":"x"}', custom_message_type="chat-text")
    reply = await get(client, "/signal/pub-key/demo/0/ch1/0/%22typing%22", {"uuid": "bob"})
    assert reply.status == 200
    signal = reply.body[2]
    live = await publish(client, "ch1", 4, store=0)
    other = await publish(client, "ch2", [5])
    await heartbeat(client, "ch3", "carol")  # a presence log only: no messages to list

    body = await ok(client, "GET", f"{KS}/messages")
    assert body == {
        "status": 200,
        "sub_key": "demo",
        "channels": {
            "ch1": [
                {"type": "message", "timetoken": first, "channel": "ch1", "message": {"n": 1}, "uuid": "alice"},
                {
                    "type": "message",
                    "timetoken": second,
                    "channel": "ch1",
                    "message": "two",
                    "uuid": "publisher",
                    "meta": {"tag": "x"},
                    "custom_message_type": "chat-text",
                },
                {
                    "type": "signal",
                    "timetoken": signal,
                    "channel": "ch1",
                    "message": "typing",
                    "uuid": "bob",
                    "stored": False,
                },
                {
                    "type": "message",
                    "timetoken": live,
                    "channel": "ch1",
                    "message": 4,
                    "uuid": "publisher",
                    "stored": False,
                },
            ],
            "ch2": [{"type": "message", "timetoken": other, "channel": "ch2", "message": [5], "uuid": "publisher"}],
        },
    }
    # The last two, oldest first; one channel asked for by name; an unknown one is left out.
    last_two = (await ok(client, "GET", f"{KS}/messages?count=2"))["channels"]["ch1"]
    assert [item["timetoken"] for item in last_two] == [signal, live]
    named = await ok(client, "GET", f"{KS}/messages?channel=ch2,nowhere")
    assert list(named["channels"]) == ["ch2"]
    assert (await ok(client, "GET", "/admin/keysets/other/messages"))["channels"] == {}


async def test_last_messages_with_history_off(new_server: NewServer) -> None:
    client = (await new_server(history_retention=0.0)).client
    tt = await publish(client, "ch1", "hi")
    body = await ok(client, "GET", f"{KS}/messages")
    assert body["channels"] == {
        "ch1": [
            {
                "type": "message",
                "timetoken": tt,
                "channel": "ch1",
                "message": "hi",
                "uuid": "publisher",
                "stored": False,
            }
        ]
    }


@pytest.mark.parametrize("query", ["count=0", "count=101", "count=abc", "count=-1", "count=1.5"])
async def test_last_messages_refuse_a_bad_count(server: AdminServer, query: str) -> None:
    status, body = await call(server.client, "GET", f"{KS}/messages?{query}")
    assert status == 400 and is_admin_error(body, 400, "Invalid count: an integer from 1 to 100"), body


# -- the live feed ---------------------------------------------------------------------------------


async def feed(client: Client, tt: str = "", **params: str) -> Any:
    query = "&".join(f"{k}={v}" for k, v in {"tt": tt, **params}.items() if v)
    return await ok(client, "GET", f"{KS}/events" + (f"?{query}" if query else ""))


async def test_the_feed_answers_at_once_without_a_cursor(new_server: NewServer) -> None:
    client = (await new_server(longpoll_hold=LONG_HOLD)).client
    loop = asyncio.get_running_loop()
    started = loop.time()
    body = await feed(client)
    assert loop.time() - started < EARLY
    assert set(body) == {"status", "sub_key", "tt", "events"}
    assert (body["status"], body["sub_key"], body["events"]) == (200, "demo", [])
    assert is_timetoken(body["tt"])
    assert body == await feed(client, "0")


@pytest.mark.engines("fakeredis", "redis", "cluster", "sentinel")
async def test_the_feed_hears_every_presence_event_of_the_keyset_as_it_happens(new_server: NewServer) -> None:
    server = await new_server(longpoll_hold=LONG_HOLD)
    client = server.client
    loop = asyncio.get_running_loop()
    cursor = (await feed(client))["tt"]

    async def next_events(action: Callable[[], Awaitable[object]]) -> tuple[list[Any], str]:
        """Hold a feed poll, do ``action``, and return what woke the poll (well before its hold ended)."""
        pending = asyncio.create_task(feed(client, cursor))
        await wait_until(lambda: waiting(client) == 1)
        started = loop.time()
        await action()
        body = await pending
        assert loop.time() - started < EARLY
        return body["events"], body["tt"]

    # A channel the feed never heard of before, with a state.
    events, cursor = await next_events(lambda: heartbeat(client, "room.1", "u1", heartbeat=60, state='{"mood":"ok"}'))
    assert events == [
        {
            "type": "presence",
            "timetoken": cursor,
            "channel": "room.1",
            "action": "join",
            "timestamp": int(START),
            "occupancy": 1,
            "uuid": "u1",
            "state": {"mood": "ok"},
        }
    ]
    events, cursor = await next_events(lambda: heartbeat(client, "ch2", "u2", heartbeat=30))
    assert [(e["channel"], e["action"], e["uuid"], e["occupancy"]) for e in events] == [("ch2", "join", "u2", 1)]
    state = f"{P}/channel/room.1/uuid/u1/data"
    events, cursor = await next_events(lambda: ok_body(client, state, {"state": '{"mood":"busy"}'}))
    assert [(e["action"], e["uuid"], e["state"]) for e in events] == [("state-change", "u1", {"mood": "busy"})]
    events, cursor = await next_events(lambda: ok_body(client, f"{P}/channel/ch2/leave", {"uuid": "u2"}))
    assert [(e["channel"], e["action"], e["uuid"], e["occupancy"]) for e in events] == [("ch2", "leave", "u2", 0)]
    events, cursor = await next_events(lambda: ok(client, "POST", "/admin/clock/advance?seconds=61"))
    assert [(e["channel"], e["action"], e["uuid"], e["timestamp"]) for e in events] == [
        ("room.1", "timeout", "u1", int(START) + 61)
    ]
    # Several events at once come in timetoken order, and the cursor passes the last.
    await heartbeat(client, "a,b", "u3")
    body = await feed(client, cursor)
    assert [(e["channel"], e["action"]) for e in body["events"]] == [("a", "join"), ("b", "join")]
    assert body["tt"] == body["events"][-1]["timetoken"]


async def test_the_feed_has_messages_only_when_asked(server: AdminServer) -> None:
    client = server.client  # polls are held 0.2 s
    cursor = (await feed(client))["tt"]
    await publish(client, "ch1", "hello", uuid="alice")
    assert await feed(client, cursor) == {"status": 200, "sub_key": "demo", "tt": cursor, "events": []}
    body = await feed(client, cursor, messages="1")
    assert [(e["type"], e["channel"], e["message"], e["uuid"]) for e in body["events"]] == [
        ("message", "ch1", "hello", "alice")
    ]
    await heartbeat(client, "ch1", "u1")
    body = await feed(client, body["tt"], messages="1")
    assert [(e["type"], e["action"]) for e in body["events"]] == [("presence", "join")]


async def test_the_feed_hears_nothing_of_other_keysets(server: AdminServer) -> None:
    client = server.client
    cursor = (await feed(client))["tt"]
    await ok_body(client, "/v2/presence/sub-key/other/channel/ch1/heartbeat", {"uuid": "u1"})
    await get(client, "/publish/pub-key/other/0/ch1/0/%22hi%22")
    assert (await feed(client, cursor, messages="1"))["events"] == []


@pytest.mark.parametrize(
    "query", ["tt=abc", "tt=-1", "tt=1.5", "tt=99999999999999999999", "messages=yes", "messages=2"]
)
async def test_the_feed_refuses_bad_input(server: AdminServer, query: str) -> None:
    status, body = await call(server.client, "GET", f"{KS}/events?{query}")
    assert status == 400 and is_admin_error(body, 400), body


async def test_a_held_feed_poll_is_answered_at_once_on_shutdown(new_server: NewServer) -> None:
    server = await new_server(longpoll_hold=30.0)
    client = server.client
    cursor = (await feed(client))["tt"]
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as session:
        pending = asyncio.create_task(get_url(session, server.base, f"{KS}/events", {"tt": cursor}))
        await wait_until(lambda: waiting(client) == 1)
        started = loop.time()
        await client.close()
        reply = await asyncio.wait_for(pending, EARLY)
    assert loop.time() - started < EARLY
    assert (reply.status, reply.body) == (200, {"status": 200, "sub_key": "demo", "tt": cursor, "events": []})


async def test_a_feed_poll_whose_client_went_away_is_let_go(new_server: NewServer) -> None:
    server = await new_server(longpoll_hold=30.0)
    client = server.client
    cursor = (await feed(client))["tt"]
    session = aiohttp.ClientSession()
    pending = asyncio.create_task(get_url(session, server.base, f"{KS}/events", {"tt": cursor}))
    try:
        await wait_until(lambda: waiting(client) == 1)
    finally:
        pending.cancel()
        await asyncio.gather(pending, return_exceptions=True)
        await session.close()
    await wait_until(lambda: waiting(client) == 0)
    # The feed still serves the next poll.
    await heartbeat(client, "ch1", "u1")
    assert [e["action"] for e in (await feed(client, cursor))["events"]] == ["join"]


# -- making a user leave ---------------------------------------------------------------------------


async def test_leave_makes_a_user_leave_with_the_usual_event(server: AdminServer) -> None:
    client, store = server.client, server.store
    await heartbeat(client, "ch1,ch2,ch3", "u1", heartbeat=60)
    await heartbeat(client, "ch1", "u2", heartbeat=60)
    body = await ok(client, "POST", f"{KS}/leave?uuid=u1&channel=ch1")
    assert body == {"status": 200, "sub_key": "demo", "uuid": "u1", "channels": ["ch1"], "left": 1}
    last = (await store.read_log("demo", "ch1"))[-1]
    assert (last.action, last.uuid, last.occupancy) == ("leave", "u1", 1)
    snap = await snapshot(client)
    assert list(occupants(snap, "ch1")) == ["u2"]
    assert list(occupants(snap, "ch2")) == ["u1"]

    # No channel named: every channel the user is on.
    body = await ok(client, "POST", f"{KS}/leave?uuid=u1")
    assert (sorted(body["channels"]), body["left"]) == (["ch2", "ch3"], 2)
    assert [(e.action, e.uuid) for e in (await store.read_log("demo", "ch3"))[-1:]] == [("leave", "u1")]
    snap = await snapshot(client)
    assert set(snap["channels"]) == {"ch1"}
    # Someone who is not there: nothing to do.
    assert (await ok(client, "POST", f"{KS}/leave?uuid=u1"))["left"] == 0
    assert (await ok(client, "POST", f"{KS}/leave?uuid=nobody&channel=ch1"))["left"] == 0
    assert list(occupants(await snapshot(client), "ch1")) == ["u2"]


# -- making a user time out ------------------------------------------------------------------------


@pytest.mark.engines("fakeredis", "redis", "cluster", "sentinel")
async def test_time_out_makes_a_user_time_out_now_with_the_usual_event(server: AdminServer, clock: FakeClock) -> None:
    client, store = server.client, server.store
    await heartbeat(client, "ch1,ch2,ch3", "u1", heartbeat=60)
    await heartbeat(client, "ch1", "u2", heartbeat=300)
    clock.advance(5)
    body = await ok(client, "POST", f"{KS}/timeout?uuid=u1&channel=ch1,ch2")
    assert body == {
        "status": 200,
        "sub_key": "demo",
        "uuid": "u1",
        "channels": ["ch1", "ch2"],
        "now": START + 5,
        "timeouts": 2,
    }
    for channel, occupancy in (("ch1", 1), ("ch2", 0)):
        last = (await store.read_log("demo", channel))[-1]
        assert (last.action, last.uuid, last.occupancy, last.timestamp) == ("timeout", "u1", occupancy, int(START) + 5)
    snap = await snapshot(client)
    assert occupants(snap, "ch1") == {"u2": {"deadline": START + 300, "state": {}}}
    assert occupants(snap, "ch3") == {"u1": {"deadline": START + 60, "state": {}}}
    assert "ch2" not in snap["channels"]

    # The sweeper's indexes still stand for the deadlines left: ch3 times out at its own time.
    clock.advance(54.5)
    assert await sweeper_of(client).run_once() == 0
    clock.advance(0.5)
    assert await sweeper_of(client).run_once() == 1
    assert set((await snapshot(client))["channels"]) == {"ch1"}
    # Back with a heartbeat: a join, as after any timeout.
    await heartbeat(client, "ch1", "u1", heartbeat=60)
    last = (await store.read_log("demo", "ch1"))[-1]
    assert (last.action, last.uuid) == ("join", "u1")


async def test_time_out_on_every_channel_of_the_user(server: AdminServer) -> None:
    client, store = server.client, server.store
    await heartbeat(client, "ch1,ch2", "u1", heartbeat=60)
    await heartbeat(client, "ch9", "u2", heartbeat=60)
    body = await ok(client, "POST", f"{KS}/timeout?uuid=u1")
    assert (sorted(body["channels"]), body["timeouts"]) == (["ch1", "ch2"], 2)
    assert set((await snapshot(client))["channels"]) == {"ch9"}
    # Nobody of that name, or not on that channel (and a -pnpres name holds nobody): nothing happens.
    before = await store.read_log("demo", "ch9")
    for query in ("uuid=u1", "uuid=nobody&channel=ch9", "uuid=u2&channel=ch1", "uuid=u2&channel=ch9-pnpres"):
        body = await ok(client, "POST", f"{KS}/timeout?{query}")
        assert (body["channels"], body["timeouts"]) == ([], 0), query
    assert await store.read_log("demo", "ch9") == before
    assert list(occupants(await snapshot(client), "ch9")) == ["u2"]


async def test_time_out_of_a_user_already_past_the_deadline(server: AdminServer, clock: FakeClock) -> None:
    client = server.client
    await heartbeat(client, "ch1", "u1", heartbeat=10)
    clock.advance(20)  # lapsed, not yet swept: still listed by the store, and timed out now
    body = await ok(client, "POST", f"{KS}/timeout?uuid=u1&channel=ch1")
    assert (body["channels"], body["timeouts"]) == (["ch1"], 1)


LONG = "x" * 93  # over the test settings' 92 characters


@pytest.mark.parametrize("action", ["leave", "timeout"])
@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "Missing uuid"),
        ("uuid=", "Missing uuid"),
        (f"uuid={LONG}", "Invalid uuid: longer than 92 characters"),
        ("uuid=%FF", "Invalid uuid: not UTF-8"),
        (f"uuid=u1&channel={LONG}", "Invalid channel: longer than 92 characters"),
        ("uuid=u1&channel=" + ",".join(f"c{i}" for i in range(501)), "Too many channels: at most 500 per request"),
    ],
)
async def test_leave_and_time_out_refuse_bad_input_and_change_nothing(
    server: AdminServer, redis_client: aioredis.Redis, prefix: str, action: str, query: str, message: str
) -> None:
    client = server.client
    await heartbeat(client, "ch1", "u1", heartbeat=60)
    before = await stored(redis_client, prefix)
    status, body = await call(client, "POST", f"{KS}/{action}?{query}")
    assert status == 400 and is_admin_error(body, 400, message), body
    assert await stored(redis_client, prefix) == before


async def test_a_bad_keyset_is_refused(server: AdminServer) -> None:
    for method, what in (("GET", "snapshot"), ("GET", "messages"), ("GET", "events"), ("POST", "leave?uuid=u")):
        status, body = await call(server.client, method, f"/admin/keysets/{LONG}/{what}")
        assert status == 400 and is_admin_error(body, 400, "Invalid subscribe key: longer than 92 characters")


# -- the page and its files ------------------------------------------------------------------------


async def test_the_page_and_its_files(server: AdminServer) -> None:
    client = server.client
    pages = {"/inspector?sub_key=demo": "text/html", "/inspector": "text/html"}
    pages |= {f"/inspector/{name}": kind.partition(";")[0] for name, kind in FILES.items() if name != "index.html"}
    for path, kind in pages.items():
        resp = await client.get(path)
        body = await resp.read()
        assert resp.status == 200, path
        assert resp.headers["Content-Type"].startswith(kind), (path, resp.headers["Content-Type"])
        policy = resp.headers["Content-Security-Policy"]
        for directive in ("default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"):
            assert directive in policy, (path, policy)
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        # Nothing fetched from elsewhere at run time: no absolute URL in any file.
        assert b"http://" not in body and b"https://" not in body and b'="//' not in body, path
    page = (await fetch(client, "/inspector"))[2].decode()
    assert 'src="inspector/inspector.js"' in page and 'href="inspector/inspector.css"' in page
    assert "<script>" not in page and "style=" not in page  # nothing inline: the policy would refuse it
    resp = await client.head("/inspector")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/html")


@pytest.mark.parametrize("name", ["other.js", "index.htm", "..%2Fpage.py", "%2e%2e", "INDEX.HTML"])
async def test_no_other_file_is_served(server: AdminServer, name: str) -> None:
    status, body = await call(server.client, "GET", f"/inspector/{name}")
    assert status == 404 and is_admin_error(body, 404), body


@pytest.mark.parametrize(
    ("query", "message"),
    [(f"sub_key={LONG}", "Invalid subscribe key: longer than 92 characters"), ("sub_key=%FF", None)],
)
async def test_the_page_refuses_a_bad_keyset(server: AdminServer, query: str, message: str | None) -> None:
    status, body = await call(server.client, "GET", f"/inspector?{query}")
    assert status == 400 and is_admin_error(body, 400, message), body


# -- access ----------------------------------------------------------------------------------------

API_CALLS = [
    ("GET", f"{KS}/messages"),
    ("GET", f"{KS}/events"),
    ("POST", f"{KS}/leave?uuid=u1&channel=ch1"),
    ("POST", f"{KS}/timeout?uuid=u1&channel=ch1"),
]
PAGE_CALLS = [("GET", "/inspector?sub_key=demo"), ("GET", "/inspector/inspector.js")]


@pytest.mark.parametrize(("method", "path"), API_CALLS + PAGE_CALLS)
async def test_nothing_is_there_when_the_admin_api_is_off(new_server: NewServer, method: str, path: str) -> None:
    server = await new_server(admin=False)
    await heartbeat(server.client, "ch1", "u1", heartbeat=60)
    status, body = await call(server.client, method, path)
    assert status == 404 and body["status"] == 404 and body["error"] is True
    assert list(occupants(await server.store.snapshot("demo", now=START), "ch1")) == ["u1"]


@pytest.mark.parametrize(("method", "path"), API_CALLS + PAGE_CALLS)
async def test_a_client_that_is_not_loopback_is_refused(new_server: NewServer, method: str, path: str) -> None:
    server = await new_server(remote="192.0.2.7")
    await heartbeat(server.client, "ch1", "u1", heartbeat=60)
    status, body = await call(server.client, method, path)
    assert status == 403 and is_admin_error(body, 403, "The admin API answers loopback clients only"), body
    assert list(occupants(await server.store.snapshot("demo", now=START), "ch1")) == ["u1"]
    # Unless the admin API is open to every client.
    open_server = await new_server(remote="192.0.2.7", admin_remote=True)
    assert (await fetch(open_server.client, path, method=method))[0] == 200


@pytest.mark.parametrize(("method", "path"), API_CALLS)
async def test_with_a_token_every_call_of_the_page_needs_it(new_server: NewServer, method: str, path: str) -> None:
    server = await new_server(admin_token=TOKEN)
    client = server.client
    await heartbeat(client, "ch1", "u1", heartbeat=60)
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN}):
        status, body = await call(client, method, path, headers)
        assert status == 401 and is_admin_error(body, 401), (headers, body)
    assert list(occupants(await server.store.snapshot("demo", now=START), "ch1")) == ["u1"]
    assert (await fetch(client, path, {"Authorization": f"Bearer {TOKEN}"}, method=method))[0] == 200


@pytest.mark.parametrize(("method", "path"), PAGE_CALLS)
async def test_with_a_token_the_page_itself_opens_without_it(new_server: NewServer, method: str, path: str) -> None:
    # A browser opening the page cannot send the token: the page (which holds no data) asks for it
    # and sends it with each call. The loopback rule still holds.
    server = await new_server(admin_token=TOKEN)
    assert (await fetch(server.client, path))[0] == 200
    remote = await new_server(remote="192.0.2.7", admin_token=TOKEN)
    status, body = await call(remote.client, method, path, {"Authorization": f"Bearer {TOKEN}"})
    assert status == 403 and is_admin_error(body, 403), body


async def test_the_keyset_stays_as_it_was_after_reads(
    server: AdminServer, redis_client: aioredis.Redis, prefix: str
) -> None:
    client = server.client
    await heartbeat(client, "ch1", "u1", heartbeat=60)
    await add_to_group(client, "g1", "ch1")
    await publish(client, "ch1", "hi")
    before = await stored(redis_client, prefix)
    await ok(client, "GET", f"{KS}/messages")
    await feed(client, "1", messages="1")
    assert (await fetch(client, "/inspector?sub_key=demo"))[0] == 200
    assert await stored(redis_client, prefix) == before


async def test_fault_rules_never_touch_the_admin_api(server: AdminServer) -> None:
    client = server.client
    await heartbeat(client, "ch1", "u1", heartbeat=60)
    status, body, _ = await request(
        client, "/admin/faults", "POST", b'{"route": "leave", "sub_key": "demo", "status": 503}'
    )
    assert status == 200, body
    assert (await call(client, "POST", f"{KS}/leave?uuid=u1&channel=ch1"))[0] == 200
    assert "ch1" not in (await snapshot(client))["channels"]
