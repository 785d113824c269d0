"""Presence routes over raw HTTP through the real store (docs/protocol.md 1.2, 1.4, 2.1, 2.3 to 2.8, 5, 7).

Paths are sent exactly as written (already percent-encoded, the way the SDKs build them), so these
tests also cover what only newer clients send: ``limit``/``offset``, ``ee``, flat heartbeat state.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import orjson
import pytest

from presence_server.context import STORE
from presence_server.store import timetoken_at
from tests.helpers.app import START, Client, FakeClock, NewClient, sweeper_of
from tests.helpers.http import OK, P, get, heartbeat, occupants, ok_body, state_of, where


def single(uuids: list[Any], occupancy: int | None = None) -> dict[str, Any]:
    return {**OK, "uuids": uuids, "occupancy": len(uuids) if occupancy is None else occupancy}


def multi(channels: dict[str, Any]) -> dict[str, Any]:
    return {
        **OK,
        "payload": {
            "channels": channels,
            "total_channels": len(channels),
            "total_occupancy": sum(entry["occupancy"] for entry in channels.values()),
        },
    }


# -- time, heartbeat, leave --------------------------------------------------------------------


async def test_time_is_a_one_element_array_holding_the_timetoken_number(client: Client, clock: FakeClock) -> None:
    reply = await get(client, "/time/0", {"uuid": "u1", "pnsdk": "PubNub-Python/10.4.0", "requestid": "r"})
    assert reply.status == 200
    assert reply.body == [int(START * 10_000_000)]
    assert isinstance(reply.body[0], int) and len(str(reply.body[0])) == 17
    clock.advance(1.5)
    assert (await ok_body(client, "/time/0")) == [int(timetoken_at(START + 1.5))]


async def test_heartbeat_answers_ok_and_makes_the_uuid_present(client: Client) -> None:
    reply = await get(client, f"{P}/channel/ch1/heartbeat", {"uuid": "u1", "heartbeat": 300})
    assert (reply.status, reply.body) == (200, {"status": 200, "message": "OK", "service": "Presence"})
    assert await ok_body(client, f"{P}/channel/ch1") == single(["u1"])
    assert await where(client, "u1") == ["ch1"]


async def test_leave_answers_the_leave_body_and_removes_the_uuid(client: Client) -> None:
    await heartbeat(client, "ch1,ch2", "u1")
    await heartbeat(client, "ch1", "u2")
    reply = await get(client, f"{P}/channel/ch1/leave", {"uuid": "u1"})
    assert (reply.status, reply.body) == (
        200,
        {"status": 200, "action": "leave", "message": "OK", "service": "Presence"},
    )
    assert await occupants(client, "ch1") == ["u2"]
    assert await where(client, "u1") == ["ch2"]
    # Leaving where one is not present is not an error (JS leaves every channel it unsubscribes).
    again = await get(client, f"{P}/channel/ch1,never/leave", {"uuid": "u1"})
    assert (again.status, again.body) == (200, {**OK, "action": "leave"})
    assert await occupants(client, "ch1") == ["u2"]


async def test_occupancy_counts_unique_uuids(client: Client) -> None:
    for _ in range(3):
        await heartbeat(client, "ch1", "u1")
    await heartbeat(client, "ch1,ch1", "u1")
    assert await ok_body(client, f"{P}/channel/ch1") == single(["u1"])
    await heartbeat(client, "ch1", "u2")
    assert await ok_body(client, f"{P}/channel/ch1") == single(["u1", "u2"])


async def test_unknown_and_ignored_params_change_nothing(client: Client) -> None:
    ignored = {
        "pnsdk": "PubNub-JS-Nodejs/12.0.3",
        "requestid": "6f1e",
        "instanceid": "pn-1",
        "tr": "12",
        "signature": "v2.abc",
        "timestamp": "1700000000",
        "auth": "secret",
        "on-demand": "1",
    }
    await heartbeat(client, "ch1", "u1", ee="1", **ignored)  # Python event engine: ee=1
    await heartbeat(client, "ch2", "u1", ee="", **ignored)  # JS: ee= (empty)
    body = await ok_body(client, f"{P}/channel/ch1,ch2", {"ee": "", **ignored})
    assert body == multi({"ch1": {"uuids": ["u1"], "occupancy": 1}, "ch2": {"uuids": ["u1"], "occupancy": 1}})
    body = await ok_body(client, f"{P}/uuid/u1", {"ee": "1", **ignored})
    assert body == {**OK, "payload": {"channels": ["ch1", "ch2"]}}
    reply = await get(client, f"{P}/channel/ch1/leave", {"uuid": "u1", "ee": "1", **ignored})
    assert (reply.status, reply.body) == (200, {**OK, "action": "leave"})
    assert await where(client, "u1") == ["ch2"]


# -- here now ------------------------------------------------------------------------------------


async def test_here_now_single_shape_only_for_exactly_one_channel(client: Client) -> None:
    await heartbeat(client, "ch1", "u2")
    await heartbeat(client, "ch1", "u1")
    assert await ok_body(client, f"{P}/channel/ch1") == single(["u1", "u2"])
    assert await ok_body(client, f"{P}/channel/empty") == single([])
    # The SDKs always send limit=1000 (Python also offset=0); the shape is the same.
    assert await ok_body(client, f"{P}/channel/ch1", {"limit": 1000, "offset": 0}) == single(["u1", "u2"])


async def test_here_now_single_shape_without_uuids(client: Client) -> None:
    await heartbeat(client, "ch1", "u1")
    body = await ok_body(client, f"{P}/channel/ch1", {"disable_uuids": 1})
    assert body == {**OK, "occupancy": 1}
    # state=1 asks for state inside the uuid list; without the list there is nothing to show.
    assert await ok_body(client, f"{P}/channel/ch1", {"disable_uuids": 1, "state": 1}) == {**OK, "occupancy": 1}
    assert await ok_body(client, f"{P}/channel/ch1", {"disable_uuids": 0}) == single(["u1"])


async def test_here_now_with_state_lists_objects_with_state_only_where_set(client: Client) -> None:
    await heartbeat(client, "ch1", "u1")
    await heartbeat(client, "ch1", "u2", state=orjson.dumps({"ch1": {"count": 5, "name": "Alex"}}).decode())
    body = await ok_body(client, f"{P}/channel/ch1", {"state": 1})
    assert body == single([{"uuid": "u1"}, {"uuid": "u2", "state": {"count": 5, "name": "Alex"}}])
    body = await ok_body(client, f"{P}/channel/ch1,ch2", {"state": 1})
    assert body == multi(
        {"ch1": {"uuids": [{"uuid": "u1"}, {"uuid": "u2", "state": {"count": 5, "name": "Alex"}}], "occupancy": 2}}
    )


async def test_here_now_payload_shape_for_several_channels_lists_only_occupied_ones(client: Client) -> None:
    await heartbeat(client, "ch1,ch2", "u1")
    await heartbeat(client, "ch2", "u2")
    body = await ok_body(client, f"{P}/channel/ch1,ch2,empty")
    assert body == multi({"ch1": {"uuids": ["u1"], "occupancy": 1}, "ch2": {"uuids": ["u1", "u2"], "occupancy": 2}})
    payload = body["payload"]
    assert type(payload["total_channels"]) is int and type(payload["total_occupancy"]) is int
    assert (payload["total_channels"], payload["total_occupancy"]) == (2, 3)
    # Even when nobody is present the payload carries "channels" (Python KeyError otherwise).
    assert await ok_body(client, f"{P}/channel/x,y") == multi({})


async def test_here_now_payload_shape_without_uuids(client: Client) -> None:
    await heartbeat(client, "ch1,ch2", "u1")
    await heartbeat(client, "ch2", "u2")
    body = await ok_body(client, f"{P}/channel/ch1,ch2", {"disable_uuids": 1, "state": 1})
    assert body == multi({"ch1": {"occupancy": 1}, "ch2": {"occupancy": 2}})


async def test_here_now_global(client: Client) -> None:
    await heartbeat(client, "ch1,ch2", "u1", state=orjson.dumps({"ch1": {"a": 1}}).decode())
    await heartbeat(client, "ch2", "u2")
    await ok_body(client, "/v2/presence/sub-key/other/channel/elsewhere/heartbeat", {"uuid": "u9"})
    body = await ok_body(client, P)
    assert body == multi({"ch1": {"uuids": ["u1"], "occupancy": 1}, "ch2": {"uuids": ["u1", "u2"], "occupancy": 2}})
    body = await ok_body(client, P, {"disable_uuids": 1})
    assert body == multi({"ch1": {"occupancy": 1}, "ch2": {"occupancy": 2}})
    body = await ok_body(client, P, {"state": 1, "limit": 1000})
    assert body == multi(
        {
            "ch1": {"uuids": [{"uuid": "u1", "state": {"a": 1}}], "occupancy": 1},
            "ch2": {"uuids": [{"uuid": "u1"}, {"uuid": "u2"}], "occupancy": 2},
        }
    )
    assert await ok_body(client, "/v2/presence/sub-key/nobody") == multi({})
    await ok_body(client, f"{P}/channel/ch1,ch2/leave", {"uuid": "u1"})
    assert await ok_body(client, P) == multi({"ch2": {"uuids": ["u2"], "occupancy": 1}})


async def test_here_now_paging_with_limit_and_offset(client: Client) -> None:
    # Same deadline for all three: occupants come in name order.
    for uuid in ("c", "a", "b"):
        await heartbeat(client, "ch1,ch2", uuid)
    page = f"{P}/channel/ch1"
    assert await ok_body(client, page, {"limit": 2}) == single(["a", "b"], 3)
    assert await ok_body(client, page, {"limit": 2, "offset": 2}) == single(["c"], 3)
    assert await ok_body(client, page, {"offset": 1}) == single(["b", "c"], 3)
    assert await ok_body(client, page, {"offset": 3}) == single([], 3)
    assert await ok_body(client, page, {"offset": 10**30}) == single([], 3)
    # limit=0: counts only, the uuid list is empty.
    assert await ok_body(client, page, {"limit": 0}) == single([], 3)
    assert await ok_body(client, page, {"limit": 0, "state": 1}) == single([], 3)
    # Paging applies to each channel of the payload shape; occupancy and totals are never paged.
    body = await ok_body(client, f"{P}/channel/ch1,ch2", {"limit": 1, "offset": 1})
    assert body == multi({"ch1": {"uuids": ["b"], "occupancy": 3}, "ch2": {"uuids": ["b"], "occupancy": 3}})
    body = await ok_body(client, f"{P}/channel/ch1,ch2", {"limit": 0})
    assert body == multi({"ch1": {"uuids": [], "occupancy": 3}, "ch2": {"uuids": [], "occupancy": 3}})
    body = await ok_body(client, P, {"limit": 2, "offset": 1})
    assert body == multi({"ch1": {"uuids": ["b", "c"], "occupancy": 3}, "ch2": {"uuids": ["b", "c"], "occupancy": 3}})


async def test_here_now_limit_defaults_to_1000_and_larger_limits_are_capped(client: Client, clock: FakeClock) -> None:
    assert client.app is not None
    store = client.app[STORE]
    names = [f"u{i:04d}" for i in range(1001)]
    for name in names:  # straight through the store: a thousand requests would only be slower
        await store.heartbeat("demo", name, ["big"], now=clock())
    for params in ({}, {"limit": 1000}, {"limit": 1001}, {"limit": 5000}, {"limit": 10**30}):
        body = await ok_body(client, f"{P}/channel/big", params)
        assert body["occupancy"] == 1001
        assert body["uuids"] == names[:1000], params
    assert await ok_body(client, f"{P}/channel/big", {"offset": 1000}) == single(["u1000"], 1001)
    body = await ok_body(client, P, {"limit": 5000})
    assert body["payload"]["total_occupancy"] == 1001 and len(body["payload"]["channels"]["big"]["uuids"]) == 1000


# -- where now, state ----------------------------------------------------------------------------


async def test_where_now(client: Client) -> None:
    await heartbeat(client, "ch1,ch2", "u1")
    await heartbeat(client, "ch3", "u2")
    body = await ok_body(client, f"{P}/uuid/u1", {"uuid": "caller"})
    assert body.keys() == {"status", "message", "payload", "service"}
    assert {**body, "payload": {"channels": sorted(body["payload"]["channels"])}} == {
        **OK,
        "payload": {"channels": ["ch1", "ch2"]},
    }
    assert await ok_body(client, f"{P}/uuid/nobody") == {**OK, "payload": {"channels": []}}


async def test_get_state_single_and_multi_shapes(client: Client) -> None:
    await heartbeat(client, "ch1,ch2", "u1")
    await ok_body(client, f"{P}/channel/ch1/uuid/u1/data", {"state": '{"count": 5, "name": "Alex"}'})
    assert await ok_body(client, f"{P}/channel/ch1/uuid/u1", {"uuid": "caller"}) == {
        **OK,
        "uuid": "u1",
        "channel": "ch1",
        "payload": {"count": 5, "name": "Alex"},
    }
    # No state: an empty object.
    assert await ok_body(client, f"{P}/channel/ch2/uuid/u1") == {**OK, "uuid": "u1", "channel": "ch2", "payload": {}}
    # Several channels: wrapped in payload.channels, which Python requires (docs/protocol.md 2.8).
    assert await ok_body(client, f"{P}/channel/ch1,ch2/uuid/u1") == {
        **OK,
        "uuid": "u1",
        "payload": {"channels": {"ch1": {"count": 5, "name": "Alex"}, "ch2": {}}},
    }


async def test_set_state_echoes_the_flat_state_and_replaces_the_previous_one(client: Client) -> None:
    await heartbeat(client, "ch1,ch2", "u1")
    reply = await get(client, f"{P}/channel/ch1,ch2/uuid/u1/data", {"state": '{"count":5,"name":"Alex"}'})
    assert (reply.status, reply.body) == (200, {**OK, "payload": {"count": 5, "name": "Alex"}})
    assert await state_of(client, "ch1,ch2", "u1") == {
        "channels": {"ch1": {"count": 5, "name": "Alex"}, "ch2": {"count": 5, "name": "Alex"}}
    }
    # Replaced wholesale, never merged.
    assert await ok_body(client, f"{P}/channel/ch1/uuid/u1/data", {"state": '{"mood": "x"}'}) == {
        **OK,
        "payload": {"mood": "x"},
    }
    assert await state_of(client, "ch1", "u1") == {"mood": "x"}
    assert await state_of(client, "ch2", "u1") == {"count": 5, "name": "Alex"}
    # {} clears it.
    assert await ok_body(client, f"{P}/channel/ch1/uuid/u1/data", {"state": "{}"}) == {**OK, "payload": {}}
    assert await state_of(client, "ch1", "u1") == {}
    assert await ok_body(client, f"{P}/channel/ch1", {"state": 1}) == single([{"uuid": "u1"}])


async def test_heartbeat_state_keyed_by_channel(client: Client) -> None:
    await heartbeat(client, "ch1,ch2", "u1", state='{"ch1":{"mood":"x"}}')
    assert await state_of(client, "ch1,ch2", "u1") == {"channels": {"ch1": {"mood": "x"}, "ch2": {}}}
    # A later map replaces ch1's state and leaves channels it does not name alone.
    await heartbeat(client, "ch1,ch2", "u1", state='{"ch2":{"n":1}}')
    assert await state_of(client, "ch1,ch2", "u1") == {"channels": {"ch1": {"mood": "x"}, "ch2": {"n": 1}}}
    await heartbeat(client, "ch1,ch2", "u1", state='{"ch1":{"other":true}}')
    assert await state_of(client, "ch1", "u1") == {"other": True}
    # An empty object for a channel clears that channel's state.
    await heartbeat(client, "ch1,ch2", "u1", state='{"ch1":{}}')
    assert await state_of(client, "ch1,ch2", "u1") == {"channels": {"ch1": {}, "ch2": {"n": 1}}}


async def test_heartbeat_flat_state_applies_to_every_channel(client: Client) -> None:
    # JS setState({withHeartbeat: true}) sends the flat object; Python's json.dumps adds spaces.
    await heartbeat(client, "ch1,ch2", "u1", state='{"mood": "x", "n": [1, 2]}')
    assert await state_of(client, "ch1,ch2", "u1") == {
        "channels": {"ch1": {"mood": "x", "n": [1, 2]}, "ch2": {"mood": "x", "n": [1, 2]}}
    }
    # A key naming a channel but holding a non-object makes the whole thing a flat state.
    await heartbeat(client, "ch1,ch2", "u1", state='{"ch1": 5}')
    assert await state_of(client, "ch1,ch2", "u1") == {"channels": {"ch1": {"ch1": 5}, "ch2": {"ch1": 5}}}


async def test_heartbeat_empty_state_changes_nothing(client: Client) -> None:
    await heartbeat(client, "ch1,ch2", "u1", state='{"mood":"x"}')
    await heartbeat(client, "ch1,ch2", "u1", state="{}")  # what the JS presence engine sends by default
    await heartbeat(client, "ch1,ch2", "u1")
    assert await state_of(client, "ch1,ch2", "u1") == {"channels": {"ch1": {"mood": "x"}, "ch2": {"mood": "x"}}}
    await heartbeat(client, "ch3", "u2", state="{}")
    assert await ok_body(client, f"{P}/channel/ch3", {"state": 1}) == single([{"uuid": "u2"}])


async def test_state_is_cleared_on_leave(client: Client) -> None:
    await heartbeat(client, "ch1", "stay")
    await heartbeat(client, "ch1", "u1", state='{"ch1":{"mood":"x"}}')
    await ok_body(client, f"{P}/channel/ch1/leave", {"uuid": "u1"})
    assert await state_of(client, "ch1", "u1") == {}
    await heartbeat(client, "ch1", "u1")
    assert await ok_body(client, f"{P}/channel/ch1", {"state": 1}) == single([{"uuid": "stay"}, {"uuid": "u1"}])


async def test_state_is_cleared_on_timeout(client: Client, clock: FakeClock) -> None:
    await heartbeat(client, "ch1", "stay", heartbeat=600)
    await heartbeat(client, "ch1", "u1", heartbeat=60, state='{"ch1":{"mood":"x"}}')
    clock.advance(60)
    assert await sweeper_of(client).run_once() == 1
    assert await occupants(client, "ch1") == ["stay"]
    assert await state_of(client, "ch1", "u1") == {}
    await heartbeat(client, "ch1", "u1")
    # Occupants come in deadline order: u1's (now + 60 s) is before stay's.
    assert await ok_body(client, f"{P}/channel/ch1", {"state": 1}) == single([{"uuid": "u1"}, {"uuid": "stay"}])


# -- presence timeout ----------------------------------------------------------------------------


async def test_heartbeat_timeout_is_clamped_to_the_configured_bounds(new_client: NewClient, clock: FakeClock) -> None:
    client = await new_client(min_timeout=20, max_timeout=60, default_timeout=300)
    sweep = sweeper_of(client).run_once
    await heartbeat(client, "ch1", "short", heartbeat=5)  # below the minimum: 20 s
    await heartbeat(client, "ch1", "exact", heartbeat=30)
    await heartbeat(client, "ch1", "long", heartbeat=100000)  # above the maximum: 60 s
    await heartbeat(client, "ch1", "default")  # default 300, clamped too: 60 s
    await heartbeat(client, "ch1", "fraction", heartbeat="25.5")
    clock.advance(19.999)
    assert await sweep() == 0
    assert await occupants(client, "ch1") == ["default", "exact", "fraction", "long", "short"]
    clock.advance(0.001)
    assert await sweep() == 1
    assert await occupants(client, "ch1") == ["default", "exact", "fraction", "long"]
    clock.advance(5.5)  # 25.5
    assert await sweep() == 1
    clock.advance(4.5)  # 30
    assert await sweep() == 1
    assert await occupants(client, "ch1") == ["default", "long"]
    clock.advance(29.999)
    assert await sweep() == 0
    clock.advance(0.001)  # 60
    assert await sweep() == 2
    assert await occupants(client, "ch1") == []
    assert await where(client, "long") == []


async def test_heartbeat_without_a_timeout_keeps_the_last_one_sent(client: Client, clock: FakeClock) -> None:
    await heartbeat(client, "ch1", "u1", heartbeat=10)
    clock.advance(8)
    await heartbeat(client, "ch1", "u1")  # JS event engine: the subscribe/heartbeat without a value
    clock.advance(9.9)
    assert await sweeper_of(client).run_once() == 0
    assert await occupants(client, "ch1") == ["u1"]
    clock.advance(0.1)
    assert await sweeper_of(client).run_once() == 1
    assert await occupants(client, "ch1") == []


async def test_expired_uuid_is_absent_even_before_the_sweep(client: Client, clock: FakeClock) -> None:
    await heartbeat(client, "ch1", "u1", heartbeat=10)
    clock.advance(10)
    assert await ok_body(client, f"{P}/channel/ch1") == single([])
    assert await where(client, "u1") == []


# -- names ---------------------------------------------------------------------------------------


ENCODED_NAMES = {
    "ch%201%2Fx": "ch 1/x",
    "c%2Cd": "c,d",
    "%7Bbraces%7D": "{braces}",
    "a%2Bb": "a+b",
    "%E2%9C%93%20caf%C3%A9": "✓ café",
    "wc.%2A": "wc.*",
    "per%25cent": "per%cent",
    "a%2F..%2Fb": "a/../b",
}


async def test_percent_encoded_names_round_trip_exactly(client: Client) -> None:
    path = ",".join(ENCODED_NAMES)
    await heartbeat(client, path, "u1")
    decoded = sorted(ENCODED_NAMES.values())
    assert await where(client, "u1") == decoded
    body = await ok_body(client, f"{P}/channel/{path}")
    assert sorted(body["payload"]["channels"]) == decoded
    assert sorted((await ok_body(client, P))["payload"]["channels"]) == decoded
    # One channel named "c,d" is not the two channels "c" and "d".
    assert await ok_body(client, f"{P}/channel/c%2Cd") == single(["u1"])
    assert await ok_body(client, f"{P}/channel/c,d") == multi({})
    assert await ok_body(client, f"{P}/channel/c") == single([])
    await heartbeat(client, "c,d", "u2")
    assert await ok_body(client, f"{P}/channel/c,d") == multi(
        {"c": {"uuids": ["u2"], "occupancy": 1}, "d": {"uuids": ["u2"], "occupancy": 1}}
    )
    assert await ok_body(client, f"{P}/channel/c%2Cd") == single(["u1"])
    # The same names as state keys and in set/get state paths.
    await ok_body(client, f"{P}/channel/ch%201%2Fx/uuid/u1/data", {"state": '{"k": "v"}'})
    assert await ok_body(client, f"{P}/channel/ch%201%2Fx,c%2Cd/uuid/u1") == {
        **OK,
        "uuid": "u1",
        "payload": {"channels": {"ch 1/x": {"k": "v"}, "c,d": {}}},
    }
    await ok_body(client, f"{P}/channel/%7Bbraces%7D,c%2Cd/leave", {"uuid": "u1"})
    assert await where(client, "u1") == sorted(set(decoded) - {"{braces}", "c,d"})


async def test_percent_encoded_uuids_round_trip_exactly(client: Client) -> None:
    uuid = "user/1 ✓,{x}+y"
    await heartbeat(client, "ch1", uuid)  # JS encodes the query value
    assert await occupants(client, "ch1") == [uuid]
    encoded = quote(uuid, safe="")
    assert await where(client, encoded) == ["ch1"]
    await ok_body(client, f"{P}/channel/ch1/uuid/{encoded}/data", {"state": '{"a":1}'})
    assert await ok_body(client, f"{P}/channel/ch1/uuid/{encoded}") == {
        **OK,
        "uuid": uuid,
        "channel": "ch1",
        "payload": {"a": 1},
    }
    await ok_body(client, f"{P}/channel/ch1/leave", {"uuid": uuid})
    assert await where(client, encoded) == []


async def test_python_sends_uuid_and_groups_unencoded_and_plus_is_not_a_space(client: Client) -> None:
    # Python builds `uuid=py+user` by hand (docs/protocol.md 1.2); no SDK sends "+" for a space.
    body = await ok_body(client, f"{P}/channel/ch1/heartbeat?uuid=py+user&heartbeat=60")
    assert body == OK
    assert await occupants(client, "ch1") == ["py+user"]
    assert await where(client, "py%2Buser") == ["ch1"]
    assert await where(client, "py%20user") == []


async def test_presence_names_never_make_anyone_present(client: Client) -> None:
    # Python's legacy managers put -pnpres names (even doubled) into heartbeat and leave paths.
    await heartbeat(client, "ch1,ch1-pnpres,ch1-pnpres-pnpres", "u1")
    await heartbeat(client, "only-pnpres,only-pnpres-pnpres", "u2")
    await heartbeat(client, "alone-pnpres", "u3")  # one name alone: no list to dedupe
    assert await where(client, "u1") == ["ch1"]
    assert await where(client, "u2") == []
    assert await where(client, "u3") == []
    assert await ok_body(client, f"{P}/channel/alone") == single([])
    assert await ok_body(client, f"{P}/channel/ch1-pnpres") == single([])
    assert await ok_body(client, f"{P}/channel/only") == single([])
    assert await ok_body(client, P) == multi({"ch1": {"uuids": ["u1"], "occupancy": 1}})
    # Leaving the presence channel is not leaving the channel.
    assert (await get(client, f"{P}/channel/ch1-pnpres/leave", {"uuid": "u1"})).status == 200
    assert await where(client, "u1") == ["ch1"]
    assert (await get(client, f"{P}/channel/ch1,ch1-pnpres,ch1-pnpres-pnpres/leave", {"uuid": "u1"})).status == 200
    assert await where(client, "u1") == []


# -- several server processes ----------------------------------------------------------------------


async def test_two_servers_on_one_redis_behave_as_one(new_client: NewClient, clock: FakeClock) -> None:
    # Two apps on the same Redis and key prefix, as two server processes would be.
    first = await new_client()
    second = await new_client()
    await heartbeat(first, "ch1,ch2", "u1", heartbeat=30, state='{"mood":"x"}')
    await heartbeat(second, "ch1", "u2", heartbeat=300)
    for client in (first, second):
        assert await occupants(client, "ch1") == ["u1", "u2"]
        assert await where(client, "u1") == ["ch1", "ch2"]
        assert await state_of(client, "ch2", "u1") == {"mood": "x"}
    await ok_body(second, f"{P}/channel/ch2/leave", {"uuid": "u1"})
    assert await where(first, "u1") == ["ch1"]
    # Either process sweeps; each timeout is reported once.
    clock.advance(30)
    assert await sweeper_of(second).run_once() == 1
    assert await sweeper_of(first).run_once() == 0
    assert await occupants(first, "ch1") == ["u2"]
    assert await where(second, "u1") == []


@pytest.mark.parametrize("path", [f"{P}/channel/ch1", f"{P}/uuid/u1", P, f"{P}/channel/ch1,ch2"])
async def test_read_only_calls_accept_a_missing_caller_uuid(client: Client, path: str) -> None:
    assert (await get(client, path)).status == 200
