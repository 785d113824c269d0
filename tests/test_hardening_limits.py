"""Issue 10, item 6: channels and channel groups per request are capped (params.MAX_CHANNELS,
MAX_GROUPS), more is a JSON 400 that changes nothing, and what a request names through groups is
split into script calls of at most SCRIPT_CHANNELS channels."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from presence_server.context import STORE
from presence_server.params import MAX_CHANNELS, MAX_GROUPS
from presence_server.store.core import SCRIPT_CHANNELS
from tests.helpers.http import ERROR_KEYS, REGISTRY, Client, P, get, ok_body, stored

SUB = "/v2/subscribe/demo"


def names(prefix: str, count: int) -> str:
    return ",".join(f"{prefix}{i}" for i in range(count))


def over_the_caps() -> dict[str, str]:
    channels, groups = names("c", MAX_CHANNELS + 1), names("g", MAX_GROUPS + 1)
    out = {}
    for what, path, query in (
        ("heartbeat", "/heartbeat", "uuid=u1"),
        ("leave", "/leave", "uuid=u0"),
        ("set state", "/uuid/u0/data", "state=%7B%7D"),
        ("get state", "/uuid/u0", ""),
        ("here now", "", ""),
    ):
        out[f"{what}, too many channels"] = f"{P}/channel/{channels}{path}?{query}"
        out[f"{what}, too many groups"] = f"{P}/channel/,{path}?{query}&channel-group={groups}"
    out["subscribe, too many channels"] = f"{SUB}/{channels}/0?uuid=u1&tt=0"
    out["subscribe, too many groups"] = f"{SUB}/,/0?uuid=u1&tt=0&channel-group={groups}"
    return out


@pytest.mark.parametrize("path", over_the_caps().values(), ids=over_the_caps().keys())
async def test_a_request_over_a_cap_is_a_400_and_changes_nothing(
    client: Client, redis_client: aioredis.Redis, prefix: str, path: str
) -> None:
    await ok_body(client, f"{P}/channel/c0/heartbeat", {"uuid": "u0"})
    before = await stored(redis_client, prefix)
    reply = await get(client, path)
    assert reply.status == 400, reply.body
    assert set(reply.body) == ERROR_KEYS and "Too many" in reply.body["message"], reply.body
    assert await stored(redis_client, prefix) == before


async def test_requests_at_the_caps_are_served(client: Client) -> None:
    channels = names("c", MAX_CHANNELS)
    # Ten groups, each with its -pnpres twin as SDKs send them (and Python's doubled one).
    groups = ",".join(f"g{i},g{i}-pnpres,g{i}-pnpres-pnpres" for i in range(MAX_GROUPS))
    await ok_body(client, f"{P}/channel/{channels}/heartbeat", {"uuid": "u1", "channel-group": groups})
    assert (await ok_body(client, P))["payload"]["total_occupancy"] == MAX_CHANNELS
    # Subscribe also takes at most 500 names in all, channels and groups together.
    fewer = names("c", MAX_CHANNELS - 3 * MAX_GROUPS)
    body = await ok_body(client, f"{SUB}/{fewer}/0", {"uuid": "u2", "tt": "0", "channel-group": groups})
    assert len(body["t"]["t"]) == 17


async def test_groups_of_thousands_of_channels_are_written_in_bounded_script_calls(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert client.app is not None
    store = client.app[STORE]
    for group in range(3):  # 1,200 channels: three script calls of at most 500
        for batch in range(2):
            await ok_body(client, f"{REGISTRY}/g{group}", {"add": names(f"g{group}b{batch}c", 200)})
    sizes: list[int] = []
    original = store._batch.call

    async def measured(script: Any, keys: list[str], args: list[Any]) -> Any:
        sizes.append(len(keys))
        return await original(script, keys, args)

    monkeypatch.setattr(store._batch, "call", measured)  # a spy: every call still goes to Redis
    groups = {"channel-group": "g0,g1,g2"}
    await ok_body(client, f"{P}/channel/,/heartbeat", {"uuid": "u1", "state": '{"k": 1}', **groups})
    body = await ok_body(client, P)
    assert body["payload"]["total_channels"] == 1200 and body["payload"]["total_occupancy"] == 1200
    here = await ok_body(client, f"{P}/channel/,", {"state": 1, **groups})
    assert here["payload"]["channels"]["g2b1c199"] == {"uuids": [{"uuid": "u1", "state": {"k": 1}}], "occupancy": 1}
    await ok_body(client, f"{P}/channel/,/uuid/u1/data", {"state": '{"k": 2}', **groups})
    assert (await ok_body(client, f"{P}/channel/g1b1c7/uuid/u1"))["payload"] == {"k": 2}
    await ok_body(client, f"{P}/channel/,/leave", {"uuid": "u1", **groups})
    assert (await ok_body(client, P))["payload"]["total_occupancy"] == 0
    # Heartbeat, set state, leave and the two here nows that found someone: three calls each, none
    # naming more than SCRIPT_CHANNELS channels (eight keys of common.lua's and four per channel).
    assert len(sizes) == 5 * 3
    assert max(sizes) == 8 + 4 * SCRIPT_CHANNELS
