"""Behind Sentinel, a failover whose old master stays alive (``SENTINEL FAILOVER``, or a master the
sentinels lost sight of): the old master keeps its pub/sub clients as a replica, so the wake listener
must notice the sentinels naming another master and subscribe there (store/bus.py)."""

from __future__ import annotations

import asyncio
import time

import orjson
import redis

from presence_server.app import create_app
from presence_server.config import Settings
from presence_server.store import open_redis
from tests.helpers.app import AiohttpClient, AiohttpServer, Client, FakeClock, serve, waiting
from tests.helpers.topologies import redis_sentinel
from tests.helpers.wait import wait_until

HOLD = 30.0


async def subscribe(client: Client, tt: str) -> dict[str, object]:
    response = await client.get("/v2/subscribe/demo/ch/0", params={"uuid": "reader", "tt": tt})
    assert response.status == 200
    body: dict[str, object] = orjson.loads(await response.read())
    return body


async def published(client: Client) -> bool:
    response = await client.get("/publish/pk/demo/0/ch/0/%22after%22", params={"uuid": "p"})
    return response.status == 200  # a 503 while the master is switched


async def test_a_held_poll_is_woken_after_a_failover_that_left_the_old_master_alive(
    aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient
) -> None:
    with redis_sentinel() as sentinels:
        client_redis = open_redis(sentinels.url)
        app = create_app(Settings(longpoll_hold=HOLD), redis=client_redis, clock=FakeClock(), sweeper=False)
        client = await serve(aiohttp_server, aiohttp_client, app)
        try:
            cursor = str((await subscribe(client, "0"))["t"]["t"])  # type: ignore[index]
            pending = asyncio.create_task(subscribe(client, cursor))
            await wait_until(lambda: waiting(client) == 1, 5, what="the poll held")
            old = sentinels.master_port()
            with redis.Redis(port=sentinels.sentinel_ports[0]) as sentinel:
                assert sentinel.execute_command("SENTINEL", "FAILOVER", sentinels.name)
            sentinels.wait_failed_over(old)
            await wait_until(lambda: published(client), 10, what="a publish on the new master", interval=0.1)
            sent = time.monotonic()
            body = await asyncio.wait_for(pending, HOLD)
            # Woken through the new master, not answered at the end of its hold.
            assert [env["d"] for env in body["m"]] == ["after"]  # type: ignore[attr-defined]
            assert time.monotonic() - sent < 5
        finally:
            await client.close()
            await client_redis.aclose()
