"""The wake listener (store/bus.py): which keysets a process listens to, the cap on them, and what it
does when its subscription is lost without an error. On both engines unless said otherwise; the
cluster's side (one connection per master, the keyset's master only) is tests/test_cluster.py."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from presence_server.context import BUS, LONGPOLLS
from tests.helpers.app import AiohttpClient, AiohttpServer, Client, MakeApp, serve, waiting
from tests.helpers.wait import wait_until


async def subscribe(client: Client, sub_key: str, tt: str, uuid: str = "u1") -> Any:
    response = await client.get(f"/v2/subscribe/{sub_key}/ch/0", params={"uuid": uuid, "tt": tt})
    assert response.status == 200
    return orjson.loads(await response.read())


async def publish(client: Client, sub_key: str, text: str) -> None:
    response = await client.get(f"/publish/pk/{sub_key}/0/ch/0/%22{text}%22", params={"uuid": "p"})
    assert response.status == 200


async def test_a_keyset_is_listened_to_from_its_first_subscribe(client: Client) -> None:
    assert client.app is not None
    bus = client.app[BUS]
    assert bus.keysets == 0
    cursor = (await subscribe(client, "first", "0"))["t"]["t"]
    assert bus.keysets == 1
    pending = asyncio.create_task(subscribe(client, "first", cursor))
    await wait_until(lambda: waiting(client) == 1, 5, what="the poll held")
    await publish(client, "first", "hello")
    assert [env["d"] for env in (await asyncio.wait_for(pending, 5))["m"]] == ["hello"]
    # Other requests of a keyset do not make this process listen to it.
    await client.get("/v2/presence/sub-key/other/channel/ch/heartbeat", params={"uuid": "u1"})
    assert bus.keysets == 1


async def test_past_the_cap_the_least_used_keyset_without_a_held_poll_goes(client: Client) -> None:
    assert client.app is not None
    bus, polls = client.app[BUS], client.app[LONGPOLLS]
    bus.max_keysets = 2
    cursor_a = (await subscribe(client, "a", "0"))["t"]["t"]
    held = asyncio.create_task(subscribe(client, "a", cursor_a))
    await wait_until(lambda: waiting(client) == 1, 5, what="a poll held in a")
    cursor_b = (await subscribe(client, "b", "0"))["t"]["t"]
    assert ("b", "u1") in polls.memo._seen
    await subscribe(client, "c", "0")  # a holds a poll, so b (unused since) goes, and its memo with it
    assert bus.keysets == 2
    assert ("b", "u1") not in polls.memo._seen and ("a", "u1") in polls.memo._seen
    # a still hears its wake-ups; b is listened to again at its next poll, which hears them too.
    await publish(client, "a", "to-a")
    assert [env["d"] for env in (await asyncio.wait_for(held, 5))["m"]] == ["to-a"]
    again = asyncio.create_task(subscribe(client, "b", cursor_b))
    await wait_until(lambda: waiting(client) == 1, 5, what="a poll held in b")
    await publish(client, "b", "to-b")
    assert [env["d"] for env in (await asyncio.wait_for(again, 5))["m"]] == ["to-b"]


@pytest.mark.engines("redis")
async def test_a_listener_reconnected_behind_its_back_makes_held_polls_read_again(
    real_redis: aioredis.Redis, make_app: MakeApp, aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient
) -> None:
    # redis-py reconnects a pub/sub connection and subscribes its channels again by itself; whatever
    # was published in between is lost to it. The listener notices the second confirmation and
    # starts over: every held poll reads again, so a message published meanwhile is not left waiting.
    app = make_app()
    client = await serve(aiohttp_server, aiohttp_client, app)
    try:
        cursor = (await subscribe(client, "demo", "0"))["t"]["t"]
        pending = asyncio.create_task(subscribe(client, "demo", cursor))
        await wait_until(lambda: waiting(client) == 1, 5, what="the poll held")
        reads = app[LONGPOLLS].reads_started
        await real_redis.client_kill_filter(_type="pubsub")
        await wait_until(lambda: app[LONGPOLLS].reads_started > reads, 5, what="the held poll read again")
        await publish(client, "demo", "after")
        assert [env["d"] for env in (await asyncio.wait_for(pending, 5))["m"]] == ["after"]
    finally:
        await client.close()


@pytest.mark.engines("fakeredis", "redis", "cluster", "sentinel")
async def test_the_listeners_check_of_the_named_master_passes_while_nothing_changed(client: Client) -> None:
    # Run every second by the listener: behind Sentinel it compares the named master with its links;
    # on any other engine it has nothing to compare and must not fail (it would make it start over).
    assert client.app is not None
    await subscribe(client, "demo", "0")
    await client.app[BUS].check_master()


@pytest.mark.engines("fakeredis", "redis", "cluster", "sentinel")
async def test_keysets_watched_at_once_as_the_listener_starts_all_hear_their_wake_ups(
    make_app: MakeApp, aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient
) -> None:
    # The first subscriptions of a listener race its connection being opened: each must land on the
    # connection it reads (two concurrent first SSUBSCRIBEs once each opened a connection of its own,
    # and one of them was never read).
    client = await serve(aiohttp_server, aiohttp_client, make_app(longpoll_hold=30.0))
    sub_keys = [f"k{i}" for i in range(8)]
    cursors = await asyncio.gather(*(subscribe(client, k, "0") for k in sub_keys))
    pending = [asyncio.create_task(subscribe(client, k, c["t"]["t"])) for k, c in zip(sub_keys, cursors, strict=True)]
    await wait_until(lambda: waiting(client) == len(sub_keys), 5, what="every poll held")
    for sub_key in sub_keys:
        await publish(client, sub_key, sub_key)
    done = await asyncio.wait_for(asyncio.gather(*pending), 5)
    assert [[env["d"] for env in body["m"]] for body in done] == [[k] for k in sub_keys]


async def test_a_keyset_dropped_and_wanted_again_at_once_is_still_heard(client: Client) -> None:
    assert client.app is not None
    bus = client.app[BUS]
    await subscribe(client, "a", "0")
    bus.max_keysets = 1
    # b's watch drops a (its SUNSUBSCRIBE is on its way) and a's drops b again, before that went out.
    await asyncio.gather(bus.watch("b"), bus.watch("a"))
    assert bus.keysets == 1 and bus.hears("a") and not bus.hears("b")
    assert bus.restarts == 0  # heard without starting over (Redis ending a's subscription would)
    cursor = (await subscribe(client, "a", "0"))["t"]["t"]
    pending = asyncio.create_task(subscribe(client, "a", cursor))
    await wait_until(lambda: waiting(client) == 1, 5, what="a poll held in a")
    await publish(client, "a", "still")
    assert [env["d"] for env in (await asyncio.wait_for(pending, 5))["m"]] == ["still"]
