"""The store's contract, run on fakeredis and on a real redis-server alike (through the `store` fixture).

Every test passes `now` explicitly; times are built from whole milliseconds (`at`) so that the
store's millisecond deadlines and the boundaries asserted here are exact.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.exceptions

from presence_server.store import GroupCapExceeded, LogEntry, PresenceStore, timetoken_at
from presence_server.store.fields import EVENT_UUID, deadline_of
from tests.helpers.app import START

# The contract holds on every engine: fakeredis, one Redis, a Redis Cluster, a Sentinel-managed Redis.
pytestmark = pytest.mark.engines("fakeredis", "redis", "cluster", "sentinel")

SUB = "demo"
T = START

Event = tuple[str, str | None, int]


def at(ms: int) -> float:
    """START plus a whole number of milliseconds."""
    return (int(T * 1000) + ms) / 1000


async def events(store: PresenceStore, channel: str, *, sub: str = SUB, after: str | None = None) -> list[Event]:
    """(action, uuid, occupancy) of each entry of a channel's log."""
    return [(e.action, e.fields.get(EVENT_UUID), e.occupancy) for e in await store.read_log(sub, channel, after)]


async def with_data(store: PresenceStore, channel: str, *, sub: str = SUB) -> list[tuple[str, Any]]:
    """(action, state data) of each entry of a channel's log."""
    return [(e.action, e.data) for e in await store.read_log(sub, channel)]


async def occupants(store: PresenceStore, channel: str, now: float, *, sub: str = SUB) -> list[str]:
    [entry] = await store.here_now(sub, [channel], now=now)
    assert entry.occupancy == len(entry.uuids)
    return sorted(entry.uuids)


# -- presence lifetime ------------------------------------------------------------------------------


async def test_heartbeat_makes_present_until_now_plus_timeout(store: PresenceStore) -> None:
    assert await store.heartbeat(SUB, "u1", ["a"], now=T, timeout=10) == 1
    assert await store.heartbeat(SUB, "u2", ["b"], now=T, timeout=2.5) == 1

    assert await occupants(store, "a", at(9_999)) == ["u1"]
    assert await store.where_now(SUB, "u1", now=at(9_999)) == ["a"]
    assert await occupants(store, "a", at(10_000)) == []
    assert await store.where_now(SUB, "u1", now=at(10_000)) == []

    assert await occupants(store, "b", at(2_499)) == ["u2"]
    assert await occupants(store, "b", at(2_500)) == []


async def test_timeout_none_reuses_the_last_timeout_else_the_default(redis_client: aioredis.Redis, prefix: str) -> None:
    store = PresenceStore(redis_client, prefix=prefix, default_timeout=42)
    await store.heartbeat(SUB, "u1", ["a"], now=T, timeout=10)
    # No timeout: the uuid's last one (10 s), also on a channel it had not joined yet.
    await store.heartbeat(SUB, "u1", ["a", "b"], now=at(5_000))
    for channel in ("a", "b"):
        assert await occupants(store, channel, at(14_999)) == ["u1"]
        assert await occupants(store, channel, at(15_000)) == []

    # A new explicit timeout becomes the one reused next.
    await store.heartbeat(SUB, "u1", ["a"], now=at(20_000), timeout=20)
    await store.heartbeat(SUB, "u1", ["a"], now=at(30_000))
    assert await occupants(store, "a", at(49_999)) == ["u1"]
    assert await occupants(store, "a", at(50_000)) == []

    # A uuid that never gave one gets the store's default.
    await store.heartbeat(SUB, "u2", ["c"], now=T)
    assert await occupants(store, "c", at(41_999)) == ["u2"]
    assert await occupants(store, "c", at(42_000)) == []


async def test_join_is_reported_once_and_refreshes_are_silent(store: PresenceStore) -> None:
    assert await store.heartbeat(SUB, "u1", ["a"], now=T, timeout=60) == 1
    assert await store.heartbeat(SUB, "u1", ["a"], now=at(1_000), timeout=60) == 0
    assert await store.heartbeat(SUB, "u1", ["a"], now=at(2_000)) == 0
    assert await store.heartbeat(SUB, "u2", ["a"], now=at(3_000), timeout=60) == 1
    # Refreshing a and joining b in one call: one join, on b only.
    assert await store.heartbeat(SUB, "u1", ["a", "b"], now=at(4_000)) == 1

    assert await events(store, "a") == [("join", "u1", 1), ("join", "u2", 2)]
    assert await events(store, "b") == [("join", "u1", 1)]


async def test_state_through_heartbeat_changes_once_per_real_change(store: PresenceStore) -> None:
    await store.heartbeat(SUB, "u1", ["a", "b"], now=T, timeout=60, states={"a": '{"mood":"x"}'})
    # The join carries the state when there is one.
    assert await with_data(store, "a") == [("join", {"mood": "x"})]
    assert await with_data(store, "b") == [("join", None)]

    # The same state again, or no state at all: no event, state kept.
    await store.heartbeat(SUB, "u1", ["a", "b"], now=at(1_000), states={"a": '{"mood":"x"}'})
    await store.heartbeat(SUB, "u1", ["a", "b"], now=at(2_000))
    assert len(await events(store, "a")) == 1
    assert await store.get_state(SUB, "u1", ["a"]) == {"a": {"mood": "x"}}

    # A real change: one state-change, on that channel only, with the new state.
    await store.heartbeat(SUB, "u1", ["a", "b"], now=at(3_000), states={"a": '{"mood":"y"}'})
    assert (await with_data(store, "a"))[1:] == [("state-change", {"mood": "y"})]
    assert (await events(store, "a"))[1:] == [("state-change", "u1", 1)]
    assert await with_data(store, "b") == [("join", None)]

    # '{}' clears the state: one state-change carrying {}, then nothing on a second clear.
    await store.heartbeat(SUB, "u1", ["a"], now=at(4_000), states={"a": "{}"})
    await store.heartbeat(SUB, "u1", ["a"], now=at(5_000), states={"a": "{}"})
    # Clearing a state that was never set is no change either.
    await store.heartbeat(SUB, "u1", ["b"], now=at(6_000), states={"b": "{}"})
    assert (await with_data(store, "a"))[2:] == [("state-change", {})]
    assert await with_data(store, "b") == [("join", None)]
    assert await store.get_state(SUB, "u1", ["a", "b"]) == {"a": {}, "b": {}}


async def test_state_through_heartbeat_via_group_and_own_entry_wins(store: PresenceStore) -> None:
    await store.group_add(SUB, "g", ["b", "c"])
    assert await store.heartbeat(SUB, "u1", ["a"], ["g"], now=T, timeout=60, states={"g": '{"s":1}'}) == 3
    assert await with_data(store, "a") == [("join", None)]
    assert await with_data(store, "b") == [("join", {"s": 1})]
    assert await with_data(store, "c") == [("join", {"s": 1})]

    # The group's state reaches its channels, but a channel's own entry wins over it.
    await store.heartbeat(SUB, "u1", [], ["g"], now=at(1_000), states={"g": '{"s":2}', "c": '{"own":1}'})
    assert (await with_data(store, "b"))[1:] == [("state-change", {"s": 2})]
    assert (await with_data(store, "c"))[1:] == [("state-change", {"own": 1})]
    assert await store.get_state(SUB, "u1", [], ["g"]) == {"b": {"s": 2}, "c": {"own": 1}}


async def test_set_state_changes_once_per_real_change(store: PresenceStore) -> None:
    await store.group_add(SUB, "g", ["a", "b"])
    await store.heartbeat(SUB, "u1", ["a", "b"], now=T, timeout=60)
    await store.heartbeat(SUB, "u2", ["a"], now=T, timeout=60)

    assert await store.set_state(SUB, "u1", ["a"], [], '{"k":1}', now=at(1_000)) == 1
    assert await store.set_state(SUB, "u1", ["a"], [], '{"k":1}', now=at(2_000)) == 0
    assert (await events(store, "a"))[2:] == [("state-change", "u1", 2)]
    assert (await with_data(store, "a"))[2:] == [("state-change", {"k": 1})]

    # Through the group: only b really changes.
    assert await store.set_state(SUB, "u1", [], ["g"], '{"k":1}', now=at(3_000)) == 1
    assert (await with_data(store, "b"))[1:] == [("state-change", {"k": 1})]

    # '{}' clears, with one state-change per channel, and clearing again changes nothing.
    assert await store.set_state(SUB, "u1", ["a"], ["g"], "{}", now=at(4_000)) == 2
    assert await store.set_state(SUB, "u1", ["a"], ["g"], "{}", now=at(5_000)) == 0
    assert (await with_data(store, "a"))[3:] == [("state-change", {})]
    assert (await with_data(store, "b"))[2:] == [("state-change", {})]
    assert await store.get_state(SUB, "u1", ["a", "b"]) == {"a": {}, "b": {}}
    assert len(await events(store, "a")) == 4
    assert len(await events(store, "b")) == 3


async def test_join_carries_state_set_before_joining(store: PresenceStore) -> None:
    await store.heartbeat(SUB, "u2", ["a"], now=T, timeout=60)
    assert await store.set_state(SUB, "u1", ["a"], [], '{"early":true}', now=T) == 1
    await store.heartbeat(SUB, "u1", ["a"], now=at(1_000), timeout=60)
    assert (await with_data(store, "a"))[1:] == [("state-change", {"early": True}), ("join", {"early": True})]
    assert (await events(store, "a"))[2] == ("join", "u1", 2)


async def test_leave_reports_one_leave_with_the_occupancy_after_it(store: PresenceStore) -> None:
    await store.group_add(SUB, "g", ["b"])
    for uuid in ("u1", "u2"):
        await store.heartbeat(SUB, uuid, ["a", "b"], now=T, timeout=60, states={"a": '{"s":1}'})

    assert await store.leave(SUB, "u1", ["a"], now=at(1_000)) == 1
    assert (await events(store, "a"))[2:] == [("leave", "u1", 1)]
    assert await occupants(store, "a", at(1_000)) == ["u2"]
    assert await store.where_now(SUB, "u1", now=at(1_000)) == ["b"]
    # Leaving takes the state with it.
    assert await store.get_state(SUB, "u1", ["a"]) == {"a": {}}

    # Leaving again, or a channel never joined, changes nothing.
    assert await store.leave(SUB, "u1", ["a", "never"], now=at(2_000)) == 0
    assert len(await events(store, "a")) == 3
    assert await store.read_log(SUB, "never") == []

    # Through a group.
    assert await store.leave(SUB, "u1", [], ["g"], now=at(3_000)) == 1
    assert (await events(store, "b"))[2:] == [("leave", "u1", 1)]
    assert await store.where_now(SUB, "u1", now=at(3_000)) == []

    # Coming back: a plain join, without the old state.
    await store.heartbeat(SUB, "u1", ["a"], now=at(4_000))
    assert (await with_data(store, "a"))[3:] == [("join", None)]


async def test_lapsed_user_who_heartbeats_gets_timeout_then_join(store: PresenceStore) -> None:
    await store.heartbeat(SUB, "u1", ["a"], now=T, timeout=10, states={"a": '{"s":1}'})
    await store.heartbeat(SUB, "u2", ["a"], now=T, timeout=60)
    # At its deadline exactly, not swept yet.
    assert await store.heartbeat(SUB, "u1", ["a"], now=at(10_000)) == 1
    assert await events(store, "a") == [
        ("join", "u1", 1),
        ("join", "u2", 2),
        ("timeout", "u1", 1),
        ("join", "u1", 2),
    ]
    # The state went with the timeout: the new join has none.
    assert (await with_data(store, "a"))[3] == ("join", None)
    assert await store.get_state(SUB, "u1", ["a"]) == {"a": {}}
    assert await store.where_now(SUB, "u1", now=at(10_000)) == ["a"]
    # Nothing is left for the sweeper to report.
    assert await store.sweep(now=at(10_000)) == 0
    assert len(await events(store, "a")) == 4


async def test_lapsed_user_who_leaves_gets_a_timeout_not_a_leave(store: PresenceStore) -> None:
    await store.heartbeat(SUB, "u1", ["a"], now=T, timeout=10)
    assert await store.leave(SUB, "u1", ["a"], now=at(20_000)) == 1
    assert await events(store, "a") == [("join", "u1", 1), ("timeout", "u1", 0)]
    assert await store.sweep(now=at(20_000)) == 0
    assert len(await events(store, "a")) == 2
    assert await store.where_now(SUB, "u1", now=at(20_000)) == []


# -- reads ------------------------------------------------------------------------------------------


async def test_reads_count_only_live_users_and_never_delete(store: PresenceStore) -> None:
    await store.heartbeat(SUB, "u1", ["a"], now=T, timeout=10, states={"a": '{"s":1}'})
    await store.heartbeat(SUB, "u2", ["a"], now=T, timeout=20)
    now = at(10_000)

    assert await occupants(store, "a", now) == ["u2"]
    assert await store.where_now(SUB, "u1", now=now) == []
    [entry] = await store.here_now_global(SUB, now=now)
    assert (entry.channel, entry.occupancy, entry.uuids) == ("a", 1, ["u2"])
    await store.here_now(SUB, ["a"], now=now, with_state=True)
    await store.get_state(SUB, "u1", ["a"])

    # u1 expired, but only a sweep removes it (with its timeout event).
    ks = store.keys(SUB)
    assert deadline_of(await store.redis.zscore(ks.occupants("a"), "u1") or 0) == int(T * 1000) + 10_000
    assert await store.redis.hget(ks.state("a"), "u1") == '{"s":1}'
    assert len(await events(store, "a")) == 2

    assert await store.sweep(now=now) == 1
    assert await store.redis.zscore(ks.occupants("a"), "u1") is None
    assert (await events(store, "a"))[2:] == [("timeout", "u1", 1)]


async def test_here_now_pages_by_offset_and_limit_with_states(store: PresenceStore) -> None:
    everyone = [f"u{i}" for i in range(5)]
    for uuid in everyone:
        await store.heartbeat(SUB, uuid, ["a"], now=T, timeout=60)
    await store.set_state(SUB, "u2", ["a"], [], '{"x":1}', now=T)

    pages = []
    for offset in (0, 2, 4, 6):
        [entry] = await store.here_now(SUB, ["a"], now=T, offset=offset, limit=2, with_state=True)
        assert entry.occupancy == 5
        assert len(entry.states) == len(entry.uuids)
        for uuid, state in zip(entry.uuids, entry.states, strict=True):
            assert state == ({"x": 1} if uuid == "u2" else None)
        pages.append(entry.uuids)
    assert [len(page) for page in pages] == [2, 2, 1, 0]
    assert sorted(uuid for page in pages for uuid in page) == everyone

    [entry] = await store.here_now(SUB, ["a"], now=T, with_uuids=False)
    assert (entry.occupancy, entry.uuids) == (5, [])


async def test_here_now_covers_channels_and_group_channels_once_each(store: PresenceStore) -> None:
    await store.group_add(SUB, "g", ["b", "c"])
    await store.heartbeat(SUB, "u1", ["a", "b"], now=T, timeout=60)
    found = await store.here_now(SUB, ["a", "b"], ["g"], now=T)
    assert sorted((e.channel, e.occupancy, tuple(e.uuids)) for e in found) == [
        ("a", 1, ("u1",)),
        ("b", 1, ("u1",)),
        ("c", 0, ()),
    ]


async def test_here_now_global_lists_occupied_channels_only(store: PresenceStore) -> None:
    await store.heartbeat(SUB, "u1", ["a"], now=T, timeout=60, states={"a": '{"s":1}'})
    await store.heartbeat(SUB, "u2", ["a"], now=T, timeout=60)
    await store.heartbeat(SUB, "u3", ["b"], now=T, timeout=10)  # lapsed, not swept
    await store.heartbeat(SUB, "u4", ["c"], now=T, timeout=60)
    await store.leave(SUB, "u4", ["c"], now=T)
    await store.heartbeat("other", "u5", ["d"], now=T, timeout=60)

    found = await store.here_now_global(SUB, now=at(10_000), with_state=True)
    assert [(e.channel, e.occupancy, sorted(e.uuids)) for e in found] == [("a", 2, ["u1", "u2"])]
    [entry] = found
    assert dict(zip(entry.uuids, entry.states, strict=True)) == {"u1": {"s": 1}, "u2": None}

    assert [(e.channel, e.occupancy) for e in await store.here_now_global("other", now=T)] == [("d", 1)]
    assert await store.here_now_global("empty", now=T) == []


async def test_where_now(store: PresenceStore) -> None:
    await store.heartbeat(SUB, "u1", ["a", "b"], now=T, timeout=60)
    await store.heartbeat(SUB, "u1", ["c"], now=T, timeout=10)
    assert sorted(await store.where_now(SUB, "u1", now=T)) == ["a", "b", "c"]
    await store.leave(SUB, "u1", ["b"], now=T)
    assert sorted(await store.where_now(SUB, "u1", now=T)) == ["a", "c"]
    assert await store.where_now(SUB, "u1", now=at(10_000)) == ["a"]
    assert await store.where_now(SUB, "nobody", now=T) == []
    assert await store.where_now("other", "u1", now=T) == []


async def test_get_state(store: PresenceStore) -> None:
    await store.group_add(SUB, "g", ["a", "c"])
    await store.heartbeat(SUB, "u1", ["a", "b", "c"], now=T, timeout=60, states={"a": '{"n":1}'})
    await store.set_state(SUB, "u1", ["b"], [], '{"n":2}', now=T)

    assert await store.get_state(SUB, "u1", ["a", "b", "c"]) == {"a": {"n": 1}, "b": {"n": 2}, "c": {}}
    assert await store.get_state(SUB, "u1", [], ["g"]) == {"a": {"n": 1}, "c": {}}
    assert await store.get_state(SUB, "u2", ["a"]) == {"a": {}}
    assert await store.get_state(SUB, "u1", ["a-pnpres"]) == {"a-pnpres": {}}
    assert await store.get_state("other", "u1", ["a"]) == {"a": {}}


# -- channel groups ---------------------------------------------------------------------------------


async def test_channel_groups_add_remove_delete_list(store: PresenceStore) -> None:
    assert await store.group_list(SUB) == []
    await store.group_add(SUB, "g1", ["a", "b"])
    await store.group_add(SUB, "g1", ["b", "c"])
    await store.group_add(SUB, "g2", ["x"])
    await store.group_add("other", "g3", ["y"])
    assert await store.group_channels(SUB, "g1") == ["a", "b", "c"]
    assert await store.group_list(SUB) == ["g1", "g2"]

    await store.group_remove(SUB, "g1", ["a", "not-a-member"])
    assert await store.group_channels(SUB, "g1") == ["b", "c"]
    # A group left without channels no longer exists.
    await store.group_remove(SUB, "g1", ["b", "c"])
    assert await store.group_channels(SUB, "g1") == []
    assert await store.group_list(SUB) == ["g2"]

    await store.group_delete(SUB, "g2")
    await store.group_delete(SUB, "never-existed")
    assert await store.group_channels(SUB, "g2") == []
    assert await store.group_list(SUB) == []
    assert await store.group_list("other") == ["g3"]


async def test_channel_group_cap(redis_client: aioredis.Redis, prefix: str) -> None:
    store = PresenceStore(redis_client, prefix=prefix, group_cap=3)
    await store.group_add(SUB, "g", ["a", "b"])
    # Channels already in the group do not count against the cap, nor do repeats in one call.
    await store.group_add(SUB, "g", ["a", "c", "c"])
    assert await store.group_channels(SUB, "g") == ["a", "b", "c"]

    for refused in (["d"], ["a", "d"], ["d", "e"]):
        with pytest.raises(GroupCapExceeded):
            await store.group_add(SUB, "g", refused)
        assert await store.group_channels(SUB, "g") == ["a", "b", "c"]

    # A new group refused outright does not come into existence.
    with pytest.raises(GroupCapExceeded):
        await store.group_add(SUB, "big", ["p", "q", "r", "s"])
    assert await store.group_channels(SUB, "big") == []
    assert await store.group_list(SUB) == ["g"]


async def test_pnpres_names_never_hold_presence(store: PresenceStore) -> None:
    assert await store.heartbeat(SUB, "u1", ["a-pnpres"], now=T, timeout=60) == 0
    assert await store.heartbeat(SUB, "u1", ["a-pnpres", "b"], now=T, timeout=60) == 1
    await store.group_add(SUB, "g", ["c", "c-pnpres"])
    assert await store.heartbeat(SUB, "u2", [], ["g"], now=T, timeout=60) == 1

    found = await store.here_now(SUB, ["a-pnpres", "c-pnpres"], now=T)
    assert [(e.channel, e.occupancy) for e in found] == [("a-pnpres", 0), ("c-pnpres", 0)]
    assert await store.where_now(SUB, "u1", now=T) == ["b"]
    assert await store.where_now(SUB, "u2", now=T) == ["c"]
    assert sorted(e.channel for e in await store.here_now_global(SUB, now=T)) == ["b", "c"]

    assert await store.set_state(SUB, "u1", ["a-pnpres"], [], '{"s":1}', now=T) == 0
    assert await store.leave(SUB, "u1", ["b-pnpres"], now=T) == 0
    for name in ("a-pnpres", "b-pnpres", "c-pnpres"):
        assert await store.read_log(SUB, name) == []


async def test_keysets_are_isolated(store: PresenceStore) -> None:
    await store.heartbeat("k1", "u1", ["a"], now=T, timeout=60)
    await store.heartbeat("k2", "u2", ["a"], now=T, timeout=10)
    assert await occupants(store, "a", T, sub="k1") == ["u1"]
    assert await occupants(store, "a", T, sub="k2") == ["u2"]
    assert await store.sweep(now=at(10_000)) == 1
    assert await occupants(store, "a", at(10_000), sub="k1") == ["u1"]
    assert await events(store, "a", sub="k1") == [("join", "u1", 1)]
    assert await events(store, "a", sub="k2") == [("join", "u2", 1), ("timeout", "u2", 0)]


# -- event log --------------------------------------------------------------------------------------


async def test_every_change_is_one_event_in_order_with_increasing_timetokens(store: PresenceStore) -> None:
    # (now in ms, what happens, the events it must produce as (channel, action, uuid)); `now`
    # jumps backwards several times, as it does between server processes with skewed clocks.
    steps: list[tuple[int, Callable[[float], Awaitable[Any]], list[tuple[str, str, str]]]] = [
        (5_000, lambda now: store.heartbeat(SUB, "u1", ["a"], now=now, timeout=60), [("a", "join", "u1")]),
        (1_000, lambda now: store.heartbeat(SUB, "u2", ["b"], now=now, timeout=60), [("b", "join", "u2")]),
        (
            1_000,
            lambda now: store.heartbeat(SUB, "u1", ["a", "c", "b"], now=now, states={"c": '{"s":1}'}),
            [("c", "join", "u1"), ("b", "join", "u1")],
        ),
        (
            3_000,
            lambda now: store.set_state(SUB, "u2", ["b", "c"], [], '{"t":2}', now=now),
            [("b", "state-change", "u2"), ("c", "state-change", "u2")],
        ),
        (2_000, lambda now: store.leave(SUB, "u1", ["a"], now=now), [("a", "leave", "u1")]),
        (
            2_000,
            lambda now: store.heartbeat(SUB, "u3", ["a", "c"], now=now, timeout=1),
            [("a", "join", "u3"), ("c", "join", "u3")],
        ),
        (3_000, lambda now: store.sweep(now=now), [("a", "timeout", "u3"), ("c", "timeout", "u3")]),
        (0, lambda now: store.heartbeat(SUB, "u2", ["c"], now=now), [("c", "join", "u2")]),
        (
            0,
            lambda now: store.heartbeat(SUB, "u1", ["b"], now=now, states={"b": '{"s":3}'}),
            [("b", "state-change", "u1")],
        ),
    ]
    expected: list[tuple[str, str, str, int]] = []
    for now_ms, step, produced in steps:
        await step(at(now_ms))
        expected += [(channel, action, uuid, int(at(now_ms))) for channel, action, uuid in produced]

    logged: list[tuple[str, LogEntry]] = []
    for channel in ("a", "b", "c"):
        logged += [(channel, entry) for entry in await store.read_log(SUB, channel)]
    logged.sort(key=lambda item: int(item[1].timetoken))
    assert [(ch, e.action, e.uuid, e.timestamp) for ch, e in logged] == expected

    tokens = [int(e.timetoken) for _, e in logged]
    assert all(len(e.timetoken) == 17 and e.timetoken.isdigit() for _, e in logged)
    assert len(set(tokens)) == len(tokens)  # strictly increasing across the keyset
    assert logged[0][1].timetoken == timetoken_at(at(5_000))


async def test_read_log_after_returns_exactly_the_later_entries(store: PresenceStore) -> None:
    for i in range(6):
        await store.heartbeat(SUB, f"u{i}", ["a"], now=at(i), timeout=60)
        await store.heartbeat(SUB, f"u{i}", ["b"], now=at(i), timeout=60)
        await store.set_state(SUB, f"u{i}", ["a"], [], f'{{"i":{i}}}', now=at(i))

    a_entries = await store.read_log(SUB, "a")
    assert len(a_entries) == 12
    assert await store.read_log(SUB, "a", None) == a_entries
    for i, entry in enumerate(a_entries):
        assert await store.read_log(SUB, "a", entry.timetoken) == a_entries[i + 1 :]
    # A timetoken that is not in this channel's log (one of b's) splits it just as well.
    for b_entry in await store.read_log(SUB, "b"):
        later = [e for e in a_entries if int(e.timetoken) > int(b_entry.timetoken)]
        assert await store.read_log(SUB, "a", b_entry.timetoken) == later
    assert await store.read_log(SUB, "a", a_entries[-1].timetoken) == []


@pytest.mark.parametrize("log_size", [100, 150])
async def test_log_is_bounded(redis_client: aioredis.Redis, prefix: str, log_size: int) -> None:
    store = PresenceStore(redis_client, prefix=prefix, log_size=log_size)
    await store.heartbeat(SUB, "u1", ["a"], now=T, timeout=600)
    changes = 3 * log_size
    for n in range(changes):
        assert await store.set_state(SUB, "u1", ["a"], [], f'{{"n":{n}}}', now=at(n)) == 1

    entries = await store.read_log(SUB, "a")
    # Trimming is approximate (whole stream nodes), but never below the bound nor far above it.
    assert log_size <= len(entries) <= 2 * log_size
    # What is kept is the newest entries, contiguous.
    kept = [entry.data for entry in entries]
    assert kept == [{"n": n} for n in range(changes - len(entries), changes)]


# -- coalesced script calls ------------------------------------------------------------------------


async def test_calls_coalesced_into_one_batch_each_get_their_own_reply_or_error(store: PresenceStore) -> None:
    # A key of the wrong type makes one call of the batch fail in Redis; the calls around it must
    # get their own replies (the reply stream stays in step), and the connection stays usable.
    await store.redis.set(store.keys(SUB).occupants("broken"), "not a sorted set")
    channels = ["a", "b", "broken", "c", "d"]
    batches = store._batch.batches
    outcomes = await asyncio.gather(
        *(store.heartbeat(SUB, f"u-{ch}", [ch], now=T) for ch in channels), return_exceptions=True
    )
    assert store._batch.batches == batches + 2  # one pipeline of five refresh attempts, one of five joins
    assert [isinstance(o, redis.exceptions.ResponseError) for o in outcomes] == [False, False, True, False, False]
    for ch in ("a", "b", "c", "d"):
        assert await occupants(store, ch, T) == [f"u-{ch}"]
    assert await store.heartbeat(SUB, "later", ["a"], now=T) == 1


async def test_scripts_flushed_from_redis_are_loaded_again(store: PresenceStore) -> None:
    await store.heartbeat(SUB, "u1", ["a"], now=T)
    await store.redis.script_flush()  # as after a Redis restart or failover
    joins = await asyncio.gather(*(store.heartbeat(SUB, f"u{i}", ["a"], now=T) for i in range(2, 6)))
    assert joins == [1, 1, 1, 1]
    assert await occupants(store, "a", T) == ["u1", "u2", "u3", "u4", "u5"]


# -- load ------------------------------------------------------------------------------------------


async def test_more_calls_in_flight_than_connections_wait_for_one(store: PresenceStore) -> None:
    # open_redis keeps at most 100 connections; past that a call waits for one. On the embedded
    # engine a burst of handshakes once failed with "Too many connections" instead.
    cursors = await asyncio.gather(*(store.cursor(SUB, now=T) for _ in range(300)))
    assert len(cursors) == 300
    assert all(cursor.isdigit() for cursor in cursors)


async def test_a_sweep_visit_renews_the_backstops_of_users_who_stay(
    store: PresenceStore, redis_client: aioredis.Redis
) -> None:
    # Refreshes renew no backstop expiry; a user present past the backstop keeps their presence and
    # their state because each sweep visit of the channel renews both.
    await store.heartbeat(SUB, "u1", ["a"], now=T, timeout=60, states={"a": '{"mood":"x"}'})
    keys = [store.keys(SUB).occupants("a"), store.keys(SUB).state("a")]
    for key in keys:
        await redis_client.expire(key, 5)  # as if the backstop were about to end
    await store.heartbeat(SUB, "u1", ["a"], now=at(30_000), timeout=60)  # a plain refresh
    for key in keys:
        assert await redis_client.ttl(key) <= 5
    assert await store.sweep(now=at(61_000)) == 0  # the channel was due at 60 s: visited, nobody expired
    for key in keys:
        assert await redis_client.ttl(key) > store.backstop_seconds - 60
    assert await store.get_state(SUB, "u1", ["a"]) == {"a": {"mood": "x"}}
    assert await store.where_now(SUB, "u1", now=at(89_999)) == ["a"]


async def test_aclose_waits_for_a_write_that_outlived_its_cancelled_caller(
    store: PresenceStore, redis_client: aioredis.Redis
) -> None:
    # The keyset's entry in the global due index is written after the join, shielded from the caller's
    # cancellation; closing the store lets it finish instead of leaving it to run on a closed client.
    async def late_write() -> None:
        await asyncio.sleep(0.05)
        await redis_client.set(f"{store.prefix}:late", "1")

    caller = asyncio.ensure_future(store._detach(late_write()))
    await asyncio.sleep(0)
    caller.cancel()
    await store.aclose()
    assert await redis_client.get(f"{store.prefix}:late") == "1"
