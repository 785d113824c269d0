"""Subscribe v2 over raw HTTP through the real store (docs/protocol.md 1.4, 1.6, 2.2, 2.10 and 3).

Requests are sent byte for byte as the SDKs build them: names percent-encoded one by one and joined
with literal commas, query values percent-encoded. Every answer is checked for the wire shape the
SDKs need (``t.t`` a 17-digit string, non-zero ``t.r``, envelopes with ``a f k c d p``, no ``e`` on
messages and presence), so each test below also guards those crash traps.

Presence time is the injected FakeClock; the long-poll hold is real time and kept short (0.2 s), or
long (5 s) where a test must show that an answer came early: those assert a bound on loop time.
"""

from __future__ import annotations

import asyncio
import itertools
from urllib.parse import quote

import pytest

from tests.helpers.app import (
    START,
    AiohttpClient,
    AiohttpServer,
    Client,
    FakeClock,
    MakeApp,
    serve,
    sweeper_of,
    waiting,
)
from tests.helpers.http import (
    EARLY,
    ERROR_KEYS,
    HOLD,
    SUB,
    P,
    add_to_group,
    drain,
    get,
    handshake,
    heartbeat,
    messages,
    occupants,
    ok_body,
    poll,
    poll_reply,
    presence,
    publish,
    target,
    where,
)
from tests.helpers.wait import wait_until


@pytest.fixture
async def client(make_app: MakeApp, aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient) -> Client:
    """The conftest client, but its server holds an idle long-poll for HOLD seconds, not 280."""
    return await serve(aiohttp_server, aiohttp_client, make_app(longpoll_hold=HOLD))


# -- handshake and envelopes -----------------------------------------------------------------------


@pytest.mark.parametrize("tt", ["0", None], ids=["tt=0", "no-tt"])
async def test_handshake_answers_at_once_with_a_cursor(held: Client, tt: str | None) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    body = await poll_reply(held, "ch1,ch1-pnpres", tt)
    assert loop.time() - started < EARLY
    assert body["m"] == []
    # The cursor is the present (FakeClock START) or just before it, never in the future.
    assert int(body["t"]["t"]) <= int(START * 10_000_000)
    assert int(body["t"]["t"]) >= int(START * 10_000_000) - 10


@pytest.mark.parametrize("tt", ["0", None], ids=["tt=0", "no-tt"])
async def test_own_join_arrives_on_the_first_poll(client: Client, tt: str | None) -> None:
    body = await poll_reply(client, "ch1,ch1-pnpres", tt)
    found, _ = await poll(client, "ch1,ch1-pnpres", body["t"]["t"])
    assert len(found) == 1
    env = found[0]
    assert env["c"] == "ch1-pnpres"
    assert "b" not in env  # a direct subscription
    assert env["d"] == {"action": "join", "timestamp": int(START), "uuid": "u1", "occupancy": 1}


async def test_message_envelope(client: Client) -> None:
    cursor = await handshake(client, "ch1")
    tt = await publish(
        client, "ch1", {"text": "hi"}, uuid="alice", meta='{"lang":"en"}', custom_message_type="chat-text"
    )
    found, next_tt = await poll(client, "ch1", cursor)
    assert len(found) == 1
    env = found[0]
    assert env["p"]["t"] == tt == next_tt
    assert env["c"] == "ch1" and "b" not in env and "e" not in env
    assert env["d"] == {"text": "hi"}
    assert env["i"] == "alice"
    assert env["u"] == {"lang": "en"}
    assert env["cmt"] == "chat-text"


async def test_plain_message_has_no_meta_and_no_type(client: Client) -> None:
    cursor = await handshake(client, "ch1")
    await publish(client, "ch1", "plain")
    [env], _ = await poll(client, "ch1", cursor)
    assert env["d"] == "plain"
    assert env["i"] == "publisher"
    assert not {"u", "cmt", "e", "b"} & env.keys()


async def test_signal_envelope_has_e_1(client: Client) -> None:
    cursor = await handshake(client, "ch1")
    typing = quote('{"typing":true}', safe="")
    reply = await get(client, f"/signal/pub-key/demo/0/ch1/0/{typing}", {"uuid": "bob"})
    assert reply.status == 200 and reply.body[:2] == [1, "Sent"]
    await publish(client, "ch1", "after")
    found, _ = await poll(client, "ch1", cursor)
    assert [(env.get("e"), env["d"], env["i"]) for env in found] == [
        (1, {"typing": True}, "bob"),
        (None, "after", "publisher"),
    ]
    assert type(found[0]["e"]) is int


async def test_timetokens_strictly_increase_across_channels(client: Client) -> None:
    cursor = await handshake(client, "ch1,ch2,ch2-pnpres")
    sent = []
    for i in range(6):
        sent.append(await publish(client, "ch1" if i % 2 else "ch2", i))
    await heartbeat(client, "ch2", "u9")
    found, _ = await poll(client, "ch1,ch2,ch2-pnpres", cursor)
    # u1's own join first (handshake), then the messages in publish order, then u9's join.
    assert presence(found[:1]) == [("join", "u1", 1)]
    assert messages(found[1:7]) == list(range(6))
    assert [env["p"]["t"] for env in found[1:7]] == sent
    assert presence(found[7:]) == [("join", "u9", 2)]
    stamps = [int(env["p"]["t"]) for env in found]
    assert all(a < b for a, b in itertools.pairwise(stamps))


async def test_group_deliveries_carry_b(client: Client) -> None:
    await add_to_group(client, "cg1", "ch1,ch2")
    cursor = await handshake(client, ",", **{"channel-group": "cg1,cg1-pnpres"})
    await publish(client, "ch2", "via group")
    await heartbeat(client, "ch1", "u2")
    found, _ = await poll(client, ",", cursor, **{"channel-group": "cg1,cg1-pnpres"})
    # The handshake joined u1 to both member channels; each event names the group it came through.
    delivered = [
        (env["c"], env["b"], env["d"]["action"] if env["c"].endswith("-pnpres") else env["d"]) for env in found
    ]
    assert delivered == [
        ("ch1-pnpres", "cg1-pnpres", "join"),
        ("ch2-pnpres", "cg1-pnpres", "join"),
        ("ch2", "cg1", "via group"),
        ("ch1-pnpres", "cg1-pnpres", "join"),
    ]
    assert presence([found[3]]) == [("join", "u2", 2)]


async def test_direct_subscription_wins_over_group_for_b(client: Client) -> None:
    await add_to_group(client, "cg1", "ch1")
    cursor = await handshake(client, "ch1", **{"channel-group": "cg1"})
    await publish(client, "ch1", "once")
    found, _ = await poll(client, "ch1", cursor, **{"channel-group": "cg1"})
    assert len(found) == 1  # delivered once, not once per matching name
    assert "b" not in found[0]


async def test_wildcard_deliveries_carry_the_pattern_as_b(client: Client) -> None:
    # Both SDKs send `*` percent-encoded (docs/protocol.md 1.2).
    cursor = await handshake(client, "a.%2A,a.%2A-pnpres")
    await publish(client, "a.x", "to x")
    await heartbeat(client, "a.y", "u2")
    await publish(client, "b.x", "elsewhere")
    found, _ = await poll(client, "a.%2A,a.%2A-pnpres", cursor)
    assert [(env["c"], env["b"]) for env in found] == [("a.x", "a.*"), ("a.y-pnpres", "a.*-pnpres")]
    assert found[0]["d"] == "to x"
    assert presence(found[1:]) == [("join", "u2", 1)]


async def test_two_level_wildcard(client: Client) -> None:
    cursor = await handshake(client, "a.b.%2A")
    await publish(client, "a.b.c", 1)
    await publish(client, "a.c", 2)
    found, _ = await poll(client, "a.b.%2A", cursor)
    assert [(env["c"], env["b"], env["d"]) for env in found] == [("a.b.c", "a.b.*", 1)]


async def test_presence_payloads_of_every_action(client: Client, clock: FakeClock) -> None:
    cursor = await handshake(client, "ch1-pnpres", uuid="watcher")
    await heartbeat(client, "ch1", "u1", heartbeat=10, state='{"mood":"calm"}')
    await ok_body(client, f"{P}/channel/ch1/uuid/u1/data", {"uuid": "u1", "state": '{"mood":"busy"}'})
    await heartbeat(client, "ch1", "u2", heartbeat=20)
    await ok_body(client, f"{P}/channel/ch1/leave", {"uuid": "u2"})
    clock.advance(10)
    assert await sweeper_of(client).run_once() == 1
    found, _ = await poll(client, "ch1-pnpres", cursor, uuid="watcher")
    ts = int(START)
    assert [env["d"] for env in found] == [
        {"action": "join", "uuid": "u1", "occupancy": 1, "timestamp": ts, "data": {"mood": "calm"}},
        {"action": "state-change", "uuid": "u1", "occupancy": 1, "timestamp": ts, "data": {"mood": "busy"}},
        {"action": "join", "uuid": "u2", "occupancy": 2, "timestamp": ts},
        {"action": "leave", "uuid": "u2", "occupancy": 1, "timestamp": ts},
        {"action": "timeout", "uuid": "u1", "occupancy": 0, "timestamp": ts + 10},
    ]
    assert all(env["c"] == "ch1-pnpres" and "b" not in env for env in found)


# -- cursor catch-up -------------------------------------------------------------------------------


async def test_catch_up_from_an_old_cursor(client: Client) -> None:
    loop = asyncio.get_running_loop()
    cursor = await handshake(client, "ch1")
    sent = [await publish(client, "ch1", {"n": i}) for i in range(5)]
    found, latest = await poll(client, "ch1", cursor)
    assert messages(found) == [{"n": i} for i in range(5)]
    assert [env["p"]["t"] for env in found] == sent
    # Nothing newer: held, then empty with the same cursor.
    started = loop.time()
    again, same = await poll(client, "ch1", latest)
    assert again == [] and same == latest
    assert loop.time() - started >= HOLD * 0.9
    # A reconnect with an older cursor (after the second message) gets what it missed.
    missed, resumed = await poll(client, "ch1", sent[1])
    assert messages(missed) == [{"n": 2}, {"n": 3}, {"n": 4}]
    assert resumed == latest


async def test_more_than_a_page_pending_comes_in_pages_of_100(client: Client) -> None:
    cursor = await handshake(client, "ch1")
    for i in range(130):
        await publish(client, "ch1", i)
    first, cursor = await poll(client, "ch1", cursor)
    assert messages(first) == list(range(100))
    rest, cursor = await poll(client, "ch1", cursor)
    assert messages(rest) == list(range(100, 130))


async def test_page_spans_several_channels_in_timetoken_order(client: Client) -> None:
    cursor = await handshake(client, "ch1,ch2")
    for i in range(120):
        await publish(client, f"ch{1 + i % 2}", i)
    first, cursor = await poll(client, "ch1,ch2", cursor)
    assert messages(first) == list(range(100))
    rest, _ = await poll(client, "ch1,ch2", cursor)
    assert messages(rest) == list(range(100, 120))


async def test_channel_buffer_keeps_at_least_100_entries(
    make_app: MakeApp, aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient
) -> None:
    small = await serve(aiohttp_server, aiohttp_client, make_app(longpoll_hold=HOLD, log_size=100))
    cursor = await handshake(small, "ch1")
    for i in range(250):
        await publish(small, "ch1", i)
    # A subscriber far behind loses the oldest entries, but gets the newest 100 at least, with no gap.
    found, _ = await drain(small, "ch1", cursor)
    got = messages(found)
    assert len(got) >= 100
    assert got == list(range(250 - len(got), 250))


# -- long-poll hold and wake-up --------------------------------------------------------------------


async def test_idle_poll_is_held_then_answers_empty_with_the_same_cursor(client: Client) -> None:
    loop = asyncio.get_running_loop()
    cursor = await handshake(client, "ch1")
    started = loop.time()
    found, same = await poll(client, "ch1", cursor)
    elapsed = loop.time() - started
    assert found == [] and same == cursor
    assert HOLD * 0.9 <= elapsed < EARLY


async def test_publish_wakes_a_held_poll_long_before_the_hold(held: Client) -> None:
    loop = asyncio.get_running_loop()
    cursor = await handshake(held, "ch1")
    started = loop.time()
    pending = asyncio.create_task(poll(held, "ch1", cursor))
    await wait_until(lambda: waiting(held) == 1)
    tt = await publish(held, "ch1", "wake up")
    found, next_tt = await pending
    assert loop.time() - started < EARLY
    assert messages(found) == ["wake up"] and next_tt == tt
    assert waiting(held) == 0


async def test_presence_event_wakes_a_held_presence_poll(held: Client) -> None:
    loop = asyncio.get_running_loop()
    cursor = await handshake(held, "ch1-pnpres", uuid="watcher")
    started = loop.time()
    pending = asyncio.create_task(poll(held, "ch1-pnpres", cursor, uuid="watcher"))
    await wait_until(lambda: waiting(held) == 1)
    await heartbeat(held, "ch1", "u2")
    found, _ = await pending
    assert loop.time() - started < EARLY
    assert presence(found) == [("join", "u2", 1)]


async def test_new_wildcard_match_wakes_a_held_poll(held: Client) -> None:
    loop = asyncio.get_running_loop()
    cursor = await handshake(held, "a.%2A")
    started = loop.time()
    pending = asyncio.create_task(poll(held, "a.%2A", cursor))
    await wait_until(lambda: waiting(held) == 1)
    await publish(held, "a.brand-new", "first")
    found, _ = await pending
    assert loop.time() - started < EARLY
    assert [(env["c"], env["b"]) for env in found] == [("a.brand-new", "a.*")]


async def test_channel_added_to_a_group_wakes_a_held_poll(held: Client) -> None:
    # The subscribe route watches group changes (GROUP_CHANGED) so that a channel added to a group
    # during a held poll is read at once; a message on it must not wait for the whole hold.
    loop = asyncio.get_running_loop()
    await add_to_group(held, "cg1", "ch1")
    cursor = await handshake(held, ",", **{"channel-group": "cg1"})
    started = loop.time()
    pending = asyncio.create_task(poll(held, ",", cursor, **{"channel-group": "cg1"}))
    await wait_until(lambda: waiting(held) == 1)
    await add_to_group(held, "cg1", "ch2")
    await publish(held, "ch2", "on the new member")
    found, _ = await pending
    assert [(env["c"], env["b"], env["d"]) for env in found] == [("ch2", "cg1", "on the new member")]
    assert loop.time() - started < EARLY


async def test_abandoned_long_poll_is_released(held: Client) -> None:
    cursor = await handshake(held, "ch1")

    async def abandon() -> None:
        async with held.get(target(f"{SUB}/ch1/0", {"uuid": "u1", "tt": cursor})) as resp:
            raise AssertionError(f"the poll was answered: {resp.status}")

    pending = asyncio.create_task(abandon())
    await wait_until(lambda: waiting(held) == 1)
    # The client goes away (as SDKs do when the subscription changes): the held handler is
    # cancelled and its registration on the wake bus goes with it.
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    # Well before the 5 s hold would have ended the poll anyway.
    await wait_until(lambda: waiting(held) == 0, within=EARLY)
    # The server still serves that subscriber normally.
    await publish(held, "ch1", "after")
    found, _ = await poll(held, "ch1", cursor)
    assert messages(found) == ["after"]


async def test_cursor_from_the_future_answers_at_once(held: Client) -> None:
    loop = asyncio.get_running_loop()
    await handshake(held, "ch1")
    future = str(int(START * 10_000_000) + 10**9)
    started = loop.time()
    found, cursor = await poll(held, "ch1", future)
    assert loop.time() - started < EARLY
    assert found == [] and int(cursor) < int(future)
    # The cursor handed out instead is good: a message published next is delivered from it.
    await publish(held, "ch1", "next")
    found, _ = await poll(held, "ch1", cursor)
    assert messages(found) == ["next"]


# -- presence through subscribe --------------------------------------------------------------------


async def test_handshake_makes_the_subscriber_present(client: Client) -> None:
    await handshake(client, "ch1,ch2", uuid="u1")
    assert await occupants(client, "ch1") == ["u1"]
    assert await where(client, "u1") == ["ch1", "ch2"]


async def test_subscribe_to_a_group_makes_present_on_its_channels(client: Client) -> None:
    await add_to_group(client, "cg1", "ch1,ch2")
    await handshake(client, ",", uuid="u1", **{"channel-group": "cg1,cg1-pnpres"})
    assert await where(client, "u1") == ["ch1", "ch2"]


async def test_heartbeat_on_subscribe_sets_the_timeout(client: Client, clock: FakeClock) -> None:
    await handshake(client, "ch1", uuid="u1", heartbeat=30)
    clock.advance(29)
    assert await sweeper_of(client).run_once() == 0
    assert await occupants(client, "ch1") == ["u1"]
    clock.advance(1)
    assert await sweeper_of(client).run_once() == 1
    assert await occupants(client, "ch1") == []


async def test_default_timeout_without_heartbeat(client: Client, clock: FakeClock) -> None:
    await handshake(client, "ch1", uuid="u1")
    clock.advance(299)
    assert await sweeper_of(client).run_once() == 0
    clock.advance(1)
    assert await sweeper_of(client).run_once() == 1


async def test_polls_refresh_presence_with_the_last_timeout(client: Client, clock: FakeClock) -> None:
    cursor = await handshake(client, "ch1", uuid="u1", heartbeat=30)
    clock.advance(20)
    # A receive poll without `heartbeat` (JS event engine) refreshes with the last timeout, 30 s.
    await poll(client, "ch1", cursor, uuid="u1")
    clock.advance(29)
    assert await sweeper_of(client).run_once() == 0
    assert await occupants(client, "ch1") == ["u1"]
    clock.advance(1)
    assert await sweeper_of(client).run_once() == 1
    assert await where(client, "u1") == []


async def test_poll_after_a_timeout_joins_again(client: Client, clock: FakeClock) -> None:
    cursor = await handshake(client, "ch1,ch1-pnpres", uuid="u1", heartbeat=10)
    clock.advance(10)
    assert await sweeper_of(client).run_once() == 1
    found, _ = await poll(client, "ch1,ch1-pnpres", cursor, uuid="u1")
    assert presence(found) == [("join", "u1", 1), ("timeout", "u1", 0), ("join", "u1", 1)]
    assert await occupants(client, "ch1") == ["u1"]


async def test_state_on_subscribe_sets_state(client: Client) -> None:
    cursor = await handshake(client, "ch1,ch1-pnpres,ch2", uuid="u1", state='{"ch1":{"mood":"ok"}}')
    assert (await ok_body(client, f"{P}/channel/ch1/uuid/u1"))["payload"] == {"mood": "ok"}
    assert (await ok_body(client, f"{P}/channel/ch2/uuid/u1"))["payload"] == {}
    found, _ = await poll(client, "ch1,ch1-pnpres,ch2", cursor, uuid="u1")
    assert [env["d"] for env in found] == [
        {"action": "join", "uuid": "u1", "occupancy": 1, "timestamp": int(START), "data": {"mood": "ok"}},
    ]


async def test_state_on_a_later_poll_is_a_state_change(client: Client) -> None:
    cursor = await handshake(client, "ch1,ch1-pnpres", uuid="u1")
    # The poll's presence refresh (with the new state) runs before its read, so it reads its own change.
    found, _ = await poll(client, "ch1,ch1-pnpres", cursor, uuid="u1", state='{"ch1":{"mood":"new"}}')
    assert [env["d"] for env in found] == [
        {"action": "join", "uuid": "u1", "occupancy": 1, "timestamp": int(START)},
        {"action": "state-change", "uuid": "u1", "occupancy": 1, "timestamp": int(START), "data": {"mood": "new"}},
    ]
    assert (await ok_body(client, f"{P}/channel/ch1/uuid/u1"))["payload"] == {"mood": "new"}


async def test_group_presence_alone(client: Client) -> None:
    # `<group>-pnpres` alone: presence events of the group's channels, and nobody made present.
    await add_to_group(client, "cg1", "ch1")
    cursor = await handshake(client, ",", uuid="watcher", **{"channel-group": "cg1-pnpres"})
    await heartbeat(client, "ch1", "u2")
    found, _ = await poll(client, ",", cursor, uuid="watcher", **{"channel-group": "cg1-pnpres"})
    assert [(env["c"], env["b"]) for env in found] == [("ch1-pnpres", "cg1-pnpres")]
    assert presence(found) == [("join", "u2", 1)]
    assert await where(client, "watcher") == []


@pytest.mark.parametrize("channels", ["ch1-pnpres", "a.%2A", "a.%2A-pnpres", "ch1-pnpres,ch1-pnpres-pnpres"])
async def test_presence_and_wildcard_names_make_nobody_present(client: Client, channels: str) -> None:
    cursor = await handshake(client, channels, uuid="u1", heartbeat=60)
    await poll(client, channels, cursor, uuid="u1")
    assert await where(client, "u1") == []
    assert await occupants(client, "ch1") == []
    assert await occupants(client, "a.%2A") == []
    assert (await ok_body(client, P))["payload"]["channels"] == {}


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "message"),
    [
        ("ch1,ch1-pnpres", {"uuid": "u1", "tt": "abc"}, "Invalid timetoken"),
        ("ch1,ch1-pnpres", {"uuid": "u1", "tt": "1" * 20}, "Invalid timetoken"),
        ("ch1,ch1-pnpres", {"uuid": "u1", "tt": "-5"}, "Invalid timetoken"),
        ("ch1,a.b.c.%2A", {"uuid": "u1", "tt": "0"}, "Wildcard maximum depth exceeded"),
        ("ch1,a.b.c.%2A-pnpres", {"uuid": "u1", "tt": "0"}, "Wildcard maximum depth exceeded"),
        ("ch1,ch1-pnpres", {"tt": "0"}, "Missing uuid"),
        ("ch1,ch1-pnpres", {"uuid": "", "tt": "0"}, "Invalid uuid"),
        (",", {"uuid": "u1", "tt": "0"}, "Missing channels"),
        (",", {"uuid": "u1", "tt": "0", "channel-group": ""}, "Missing channels"),
        ("ch1," + ",".join(f"c{i}" for i in range(500)), {"uuid": "u1", "tt": "0"}, "Too many"),
        (
            "ch1," + ",".join(f"c{i}" for i in range(300)),
            {"uuid": "u1", "tt": "0", "channel-group": ",".join(f"g{i}" for i in range(200))},
            "Too many",
        ),
        ("ch1", {"uuid": "u1", "tt": "0", "heartbeat": "soon"}, "Invalid heartbeat"),
        ("ch1", {"uuid": "u1", "tt": "0", "state": "{not json"}, "Invalid state"),
    ],
    ids=[
        "tt-letters",
        "tt-too-long",
        "tt-negative",
        "wildcard-depth",
        "wildcard-depth-pnpres",
        "no-uuid",
        "empty-uuid",
        "no-names",
        "empty-group-list",
        "501-channels",
        "501-names",
        "bad-heartbeat",
        "bad-state",
    ],
)
async def test_bad_subscribe_is_a_400_that_changes_nothing(
    client: Client, path: str, params: dict[str, str], message: str
) -> None:
    reply = await get(client, f"{SUB}/{path}/0", params)
    assert reply.status == 400, reply.body
    assert set(reply.body) == ERROR_KEYS
    assert reply.body["status"] == 400 and reply.body["error"] is True and reply.body["service"] == "Presence"
    assert reply.body["message"].startswith(message), reply.body
    assert await occupants(client, "ch1") == []
    assert (await ok_body(client, P))["payload"]["channels"] == {}
    # Nothing was logged either: a subscriber from before sees no event.
    assert await where(client, "u1") == []


async def test_500_names_are_accepted(client: Client) -> None:
    channels = ",".join(f"c{i}" for i in range(499))
    cursor = await handshake(client, channels, uuid="u1", **{"channel-group": "g1"})
    assert len(await where(client, "u1")) == 499
    await publish(client, "c498", "last one")
    found, _ = await poll(client, channels, cursor, uuid="u1", **{"channel-group": "g1"})
    assert messages(found) == ["last one"]


async def test_two_dot_wildcard_and_python_duplicate_pnpres_are_accepted(client: Client) -> None:
    # Python's event engine may send `ch-pnpres-pnpres` (docs/protocol.md 2.2.6): never a 400.
    await handshake(client, "a.b.%2A,ch1,ch1-pnpres,ch1-pnpres-pnpres")
    assert await occupants(client, "ch1") == ["u1"]


async def test_unknown_group_is_an_empty_subscription_that_holds(client: Client) -> None:
    # Our choice: a group with no channels is not an error (it may get channels later); the poll
    # is held like any idle one and makes nobody present anywhere.
    loop = asyncio.get_running_loop()
    cursor = await handshake(client, ",", uuid="u1", **{"channel-group": "nobody-made-me"})
    await publish(client, "ch1", "not for the group")
    started = loop.time()
    found, same = await poll(client, ",", cursor, uuid="u1", **{"channel-group": "nobody-made-me"})
    assert found == [] and same == cursor
    assert loop.time() - started >= HOLD * 0.9
    assert await where(client, "u1") == []
    # Once the group has a channel, the same cursor reads it.
    await add_to_group(client, "nobody-made-me", "ch2")
    await publish(client, "ch2", "for the group")
    found, _ = await poll(client, ",", cursor, uuid="u1", **{"channel-group": "nobody-made-me"})
    assert [(env["c"], env["b"], env["d"]) for env in found] == [("ch2", "nobody-made-me", "for the group")]


# -- interval mode ---------------------------------------------------------------------------------


async def test_interval_mode_above_announce_max(
    make_app: MakeApp, aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, clock: FakeClock
) -> None:
    client = await serve(aiohttp_server, aiohttp_client, make_app(longpoll_hold=HOLD, announce_max=2, interval=10))
    cursor = await handshake(client, "ch1-pnpres", uuid="watcher")
    for uuid in ("u1", "u2", "u3"):
        await handshake(client, "ch1", uuid=uuid)
    found, cursor = await poll(client, "ch1-pnpres", cursor, uuid="watcher")
    # The third joiner takes occupancy above announce_max: not announced one by one.
    assert presence(found) == [("join", "u1", 1), ("join", "u2", 2)]
    assert await occupants(client, "ch1") == ["u1", "u2", "u3"]

    clock.advance(9)
    await sweeper_of(client).run_once()
    found, cursor = await poll(client, "ch1-pnpres", cursor, uuid="watcher")
    assert found == []

    clock.advance(1)
    await sweeper_of(client).run_once()
    await sweeper_of(client).run_once()  # a second sweep at the same time adds nothing
    found, cursor = await poll(client, "ch1-pnpres", cursor, uuid="watcher")
    assert [env["d"] for env in found] == [
        {"action": "interval", "occupancy": 3, "timestamp": int(START) + 10, "join": ["u3"]},
    ]
    assert found[0]["c"] == "ch1-pnpres"

    # Still above announce_max: every interval, an event even with no deltas.
    clock.advance(10)
    await sweeper_of(client).run_once()
    found, cursor = await poll(client, "ch1-pnpres", cursor, uuid="watcher")
    assert [env["d"] for env in found] == [{"action": "interval", "occupancy": 3, "timestamp": int(START) + 20}]

    # More than 100 deltas: here_now_refresh instead of the lists.
    for i in range(101):
        await heartbeat(client, "ch1", f"crowd{i:03}")
    await ok_body(client, f"{P}/channel/ch1/leave", {"uuid": "u1"})
    clock.advance(10)
    await sweeper_of(client).run_once()
    found, cursor = await poll(client, "ch1-pnpres", cursor, uuid="watcher")
    assert [env["d"] for env in found] == [
        {"action": "interval", "occupancy": 103, "timestamp": int(START) + 30, "here_now_refresh": True},
    ]


async def test_interval_lists_leaves_and_timeouts(
    make_app: MakeApp, aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, clock: FakeClock
) -> None:
    client = await serve(aiohttp_server, aiohttp_client, make_app(longpoll_hold=HOLD, announce_max=1, interval=10))
    cursor = await handshake(client, "ch1-pnpres", uuid="watcher")
    await heartbeat(client, "ch1", "u1", heartbeat=300)
    await heartbeat(client, "ch1", "u2", heartbeat=300)
    await heartbeat(client, "ch1", "u3", heartbeat=5)
    await heartbeat(client, "ch1", "u4", heartbeat=300)
    await ok_body(client, f"{P}/channel/ch1/leave", {"uuid": "u4"})
    clock.advance(5)
    assert await sweeper_of(client).run_once() == 1
    clock.advance(5)
    await sweeper_of(client).run_once()
    found, _ = await poll(client, "ch1-pnpres", cursor, uuid="watcher")
    assert [env["d"] for env in found] == [
        {"action": "join", "uuid": "u1", "occupancy": 1, "timestamp": int(START)},
        # Net deltas: u3 joined then timed out and u4 joined then left within the period, so a
        # listener applying the lists ends with here_now's {u1, u2}.
        {"action": "interval", "occupancy": 2, "timestamp": int(START) + 10, "join": ["u2"]},
    ]
