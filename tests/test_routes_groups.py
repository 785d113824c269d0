"""Channel groups over raw HTTP (docs/protocol.md 2.10) and presence through groups (2.3 to 2.8, 1.2)."""

from __future__ import annotations

from typing import Any

from tests.helpers.app import Client
from tests.helpers.http import OK, REGISTRY, P, ok_body

REGISTRY_OK = {"status": 200, "message": "OK", "service": "channel-registry", "error": False}


def listing(group: str, channels: list[str]) -> dict[str, Any]:
    return {**REGISTRY_OK, "payload": {"channels": channels, "group": group}}


def multi(channels: dict[str, Any]) -> dict[str, Any]:
    return {
        **OK,
        "payload": {
            "channels": channels,
            "total_channels": len(channels),
            "total_occupancy": sum(entry["occupancy"] for entry in channels.values()),
        },
    }


async def groups_of(client: Client, sub_key: str = "demo") -> list[str]:
    body = await ok_body(client, f"/v1/channel-registration/sub-key/{sub_key}/channel-group")
    assert body == {**REGISTRY_OK, "payload": {"groups": body["payload"]["groups"], "sub_key": sub_key}}
    groups: list[str] = body["payload"]["groups"]
    return groups


# -- the registry ----------------------------------------------------------------------------------


async def test_add_list_remove_and_delete_bodies(client: Client) -> None:
    assert await ok_body(client, f"{REGISTRY}/cg1", {"add": "ch2,ch1", "uuid": "u1"}) == REGISTRY_OK
    assert await ok_body(client, f"{REGISTRY}/cg1") == listing("cg1", ["ch1", "ch2"])
    assert await ok_body(client, f"{REGISTRY}/cg1", {"remove": "ch2"}) == REGISTRY_OK
    assert await ok_body(client, f"{REGISTRY}/cg1") == listing("cg1", ["ch1"])
    assert await ok_body(client, f"{REGISTRY}/cg1/remove") == REGISTRY_OK
    assert await ok_body(client, f"{REGISTRY}/cg1") == listing("cg1", [])
    assert await groups_of(client) == []


async def test_list_groups(client: Client) -> None:
    assert await groups_of(client) == []
    await ok_body(client, f"{REGISTRY}/b", {"add": "ch1"})
    await ok_body(client, f"{REGISTRY}/a", {"add": "ch1,ch2"})
    await ok_body(client, "/v1/channel-registration/sub-key/other/channel-group/c", {"add": "ch1"})
    assert await groups_of(client) == ["a", "b"]
    assert await groups_of(client, "other") == ["c"]
    # A group whose last channel is removed no longer exists; so does a deleted one.
    await ok_body(client, f"{REGISTRY}/b", {"remove": "ch1"})
    assert await groups_of(client) == ["a"]
    await ok_body(client, f"{REGISTRY}/a/remove")
    assert await groups_of(client) == []
    assert await groups_of(client, "other") == ["c"]


async def test_add_and_remove_lists_in_either_sdk_encoding(client: Client) -> None:
    # Python sends the commas raw, JS as %2C (docs/protocol.md 2.10); both separate names.
    assert await ok_body(client, f"{REGISTRY}/cg1?add=a,b&uuid=py") == REGISTRY_OK
    assert await ok_body(client, f"{REGISTRY}/cg1?add=c%2Cd&uuid=js") == REGISTRY_OK
    assert await ok_body(client, f"{REGISTRY}/cg1?add=a,a,e,") == REGISTRY_OK
    assert await ok_body(client, f"{REGISTRY}/cg1") == listing("cg1", ["a", "b", "c", "d", "e"])
    assert await ok_body(client, f"{REGISTRY}/cg1?remove=a%2Cc,e") == REGISTRY_OK
    assert await ok_body(client, f"{REGISTRY}/cg1") == listing("cg1", ["b", "d"])
    # Removing what is not there, or deleting a group that does not exist, is not an error.
    assert await ok_body(client, f"{REGISTRY}/cg1?remove=zzz") == REGISTRY_OK
    assert await ok_body(client, f"{REGISTRY}/nothing/remove") == REGISTRY_OK
    assert await ok_body(client, f"{REGISTRY}/cg1") == listing("cg1", ["b", "d"])


async def test_group_and_channel_names_round_trip(client: Client) -> None:
    await ok_body(client, f"{REGISTRY}/g%2F1%20%E2%9C%93%7Bx%7D", {"add": "ch 1/x,{y},a+b,✓"})
    assert await ok_body(client, f"{REGISTRY}/g%2F1%20%E2%9C%93%7Bx%7D") == listing(
        "g/1 ✓{x}", sorted(["ch 1/x", "{y}", "a+b", "✓"])
    )
    assert await groups_of(client) == ["g/1 ✓{x}"]
    # The same group named in a presence call's channel-group query.
    await ok_body(client, f"{P}/channel/,/heartbeat", {"uuid": "u1", "channel-group": "g/1 ✓{x}"})
    body = await ok_body(client, f"{P}/uuid/u1")
    assert sorted(body["payload"]["channels"]) == sorted(["ch 1/x", "{y}", "a+b", "✓"])


async def test_two_hundred_channels_in_one_add(client: Client) -> None:
    channels = [f"ch{i:03d}" for i in range(200)]
    assert await ok_body(client, f"{REGISTRY}/big", {"add": ",".join(channels)}) == REGISTRY_OK
    assert await ok_body(client, f"{REGISTRY}/big") == listing("big", channels)


# -- presence through groups -------------------------------------------------------------------------


async def test_heartbeat_here_now_and_leave_through_a_group(client: Client) -> None:
    await ok_body(client, f"{REGISTRY}/cg1", {"add": "ch1,ch2"})
    # Groups only: the path holds the placeholder "," (docs/protocol.md 1.2).
    assert await ok_body(client, f"{P}/channel/,/heartbeat", {"uuid": "u1", "channel-group": "cg1"}) == OK
    await ok_body(client, f"{P}/channel/ch2/heartbeat", {"uuid": "u2"})
    both = {"ch1": {"uuids": ["u1"], "occupancy": 1}, "ch2": {"uuids": ["u1", "u2"], "occupancy": 2}}
    assert await ok_body(client, f"{P}/channel/,", {"channel-group": "cg1"}) == multi(both)
    assert await ok_body(client, f"{P}/channel/ch1") == {**OK, "uuids": ["u1"], "occupancy": 1}
    assert sorted((await ok_body(client, f"{P}/uuid/u1"))["payload"]["channels"]) == ["ch1", "ch2"]
    body = await ok_body(client, f"{P}/channel/,/leave", {"uuid": "u1", "channel-group": "cg1"})
    assert body == {**OK, "action": "leave"}
    assert await ok_body(client, f"{P}/channel/,", {"channel-group": "cg1"}) == multi(
        {"ch2": {"uuids": ["u2"], "occupancy": 1}}
    )
    assert await ok_body(client, f"{P}/uuid/u1") == {**OK, "payload": {"channels": []}}


async def test_any_group_gets_the_payload_shape(client: Client) -> None:
    # The single shape for a group request crashes both SDKs (docs/protocol.md 2.5).
    await ok_body(client, f"{REGISTRY}/one", {"add": "ch1"})
    await ok_body(client, f"{P}/channel/ch1/heartbeat", {"uuid": "u1"})
    entry = {"ch1": {"uuids": ["u1"], "occupancy": 1}}
    assert await ok_body(client, f"{P}/channel/,", {"channel-group": "one"}) == multi(entry)
    assert await ok_body(client, f"{P}/channel/ch1", {"channel-group": "one"}) == multi(entry)
    assert await ok_body(client, f"{P}/channel/,", {"channel-group": "one", "disable_uuids": 1}) == multi(
        {"ch1": {"occupancy": 1}}
    )
    assert await ok_body(client, f"{P}/channel/,", {"channel-group": "empty-or-missing"}) == multi({})
    assert await ok_body(client, f"{P}/channel/ch9", {"channel-group": "one"}) == multi(entry)


async def test_channel_group_lists_in_either_sdk_encoding(client: Client) -> None:
    await ok_body(client, f"{REGISTRY}/cg1", {"add": "ch1"})
    await ok_body(client, f"{REGISTRY}/cg2", {"add": "ch2"})
    # Python: raw commas; JS: %2C.
    await ok_body(client, f"{P}/channel/,/heartbeat?uuid=py&channel-group=cg1,cg2,cg1-pnpres")
    await ok_body(client, f"{P}/channel/,/heartbeat?uuid=js&channel-group=cg1%2Ccg2%2Ccg2-pnpres")
    body = await ok_body(client, f"{P}/channel/,?channel-group=cg1,cg2")
    assert body == multi(
        {"ch1": {"uuids": ["js", "py"], "occupancy": 2}, "ch2": {"uuids": ["js", "py"], "occupancy": 2}}
    )
    assert await ok_body(client, f"{P}/channel/,?channel-group=cg1%2Ccg2") == body


async def test_a_channel_in_the_path_and_in_a_group_counts_once(client: Client) -> None:
    await ok_body(client, f"{REGISTRY}/cg1", {"add": "ch1,ch2"})
    await ok_body(client, f"{P}/channel/ch1/heartbeat", {"uuid": "u1", "channel-group": "cg1"})
    assert await ok_body(client, f"{P}/channel/ch1", {"channel-group": "cg1"}) == multi(
        {"ch1": {"uuids": ["u1"], "occupancy": 1}, "ch2": {"uuids": ["u1"], "occupancy": 1}}
    )


async def test_state_through_a_group(client: Client) -> None:
    await ok_body(client, f"{REGISTRY}/cg1", {"add": "ch1,ch2"})
    await ok_body(client, f"{P}/channel/,/heartbeat", {"uuid": "u1", "channel-group": "cg1"})
    # JS sends group-only set state with the "," placeholder (docs/protocol.md 2.7); the echo is flat.
    body = await ok_body(client, f"{P}/channel/,/uuid/u1/data", {"channel-group": "cg1", "state": '{"a":1}'})
    assert body == {**OK, "payload": {"a": 1}}
    body = await ok_body(client, f"{P}/channel/,/uuid/u1", {"channel-group": "cg1"})
    assert body == {**OK, "uuid": "u1", "payload": {"channels": {"ch1": {"a": 1}, "ch2": {"a": 1}}}}
    # A group (even with one channel named) is never the single get-state shape.
    body = await ok_body(client, f"{P}/channel/ch1/uuid/u1", {"channel-group": "cg1"})
    assert body == {**OK, "uuid": "u1", "payload": {"channels": {"ch1": {"a": 1}, "ch2": {"a": 1}}}}
    assert await ok_body(client, f"{P}/channel/ch2/uuid/u1") == {
        **OK,
        "uuid": "u1",
        "channel": "ch2",
        "payload": {"a": 1},
    }


async def test_heartbeat_state_keyed_by_group_and_flat_with_groups(client: Client) -> None:
    await ok_body(client, f"{REGISTRY}/cg1", {"add": "ch1,ch2"})
    await ok_body(
        client,
        f"{P}/channel/ch3/heartbeat",
        {"uuid": "u1", "channel-group": "cg1", "state": '{"cg1":{"via":"group"},"ch3":{"via":"ch"}}'},
    )
    body = await ok_body(client, f"{P}/channel/ch3/uuid/u1", {"channel-group": "cg1"})
    assert body["payload"] == {"channels": {"ch3": {"via": "ch"}, "ch1": {"via": "group"}, "ch2": {"via": "group"}}}
    await ok_body(
        client, f"{P}/channel/ch3/heartbeat", {"uuid": "u1", "channel-group": "cg1", "state": '{"mood":"flat"}'}
    )
    body = await ok_body(client, f"{P}/channel/ch3/uuid/u1", {"channel-group": "cg1"})
    assert body["payload"] == {"channels": {name: {"mood": "flat"} for name in ("ch3", "ch1", "ch2")}}
    # A channel's own entry wins over its group's.
    await ok_body(
        client,
        f"{P}/channel/ch1/heartbeat",
        {"uuid": "u1", "channel-group": "cg1", "state": '{"cg1":{"g":1},"ch1":{"c":1}}'},
    )
    body = await ok_body(client, f"{P}/channel/ch1,ch2/uuid/u1")
    assert body["payload"] == {"channels": {"ch1": {"c": 1}, "ch2": {"g": 1}}}
