"""Exact counts of what the store asks of Redis, on a redis-server of this module's own.

These were figures of the bench; as counts they are exact, so they are tests. Two counters, both on
the server side so that every client path counts (the script batcher writes to the socket itself):
- round trips: the delta of ``total_reads_processed`` (INFO stats), the read events Redis served.
  A request, or a pipeline, written at once is one read event;
- commands: the delta of ``INFO commandstats``, commands run inside scripts included.
Nothing else talks to this Redis while a test counts (no sweeper, the bus's listener only listens).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
import redis

from presence_server.app import create_app
from presence_server.config import Settings
from presence_server.context import STORE
from presence_server.store import PresenceStore, open_redis
from tests.helpers.app import TEST_SERVER_OPTIONS, AiohttpClient, Client
from tests.helpers.redis import redis_server
from tests.helpers.wait import wait_until

SUB_KEY = "k"
TIMEOUT = 300.0
HELD = re.compile(r"^presence_longpolls_held (\S+)$", re.MULTILINE)


@pytest.fixture(scope="module")
def private_redis() -> Iterator[redis.Redis]:
    with redis_server() as url:
        client = redis.Redis.from_url(url, decode_responses=True)
        try:
            yield client
        finally:
            client.close()


@pytest.fixture
async def app(private_redis: redis.Redis, aiohttp_client: AiohttpClient, aiohttp_server: Any) -> AsyncIterator[Client]:
    """The server app on the private Redis, as the server builds it (PRESENCE_* defaults), no sweeper."""
    private_redis.flushall()
    port = private_redis.connection_pool.connection_kwargs["port"]
    client = open_redis(f"redis://127.0.0.1:{port}/0")
    settings = Settings.from_env(key_prefix="count", host="127.0.0.1")
    test_client = await aiohttp_client(
        await aiohttp_server(create_app(settings, redis=client, sweeper=False), **TEST_SERVER_OPTIONS)
    )
    yield test_client
    await test_client.close()
    await client.aclose()


def store_of(client: Client) -> PresenceStore:
    assert client.app is not None
    return client.app[STORE]


@dataclasses.dataclass
class Counts:
    round_trips: int = -1
    commands: dict[str, int] = dataclasses.field(default_factory=dict)

    def inside(self, script: str = "evalsha") -> int:
        """Commands run inside scripts: all but the top-level ones."""
        return sum(n for name, n in self.commands.items() if name != script)


def snapshot(rcli: redis.Redis) -> tuple[int, dict[str, int]]:
    info = rcli.info("stats", "commandstats")
    calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in info.items() if name.startswith("cmdstat_")}
    return int(info["total_reads_processed"]), calls


@contextlib.contextmanager
def counting(rcli: redis.Redis) -> Iterator[Counts]:
    """What Redis served for the block. The INFO that takes the second snapshot is one read and, in
    commandstats, the first snapshot's INFO is one call: both are taken off."""
    counts = Counts()
    reads, calls = snapshot(rcli)
    yield counts
    reads_after, calls_after = snapshot(rcli)
    delta = {name: n - calls.get(name, 0) for name, n in calls_after.items()}
    delta["info"] -= 1
    counts.round_trips = reads_after - reads - 1
    counts.commands = {name: n for name, n in sorted(delta.items()) if n}


async def warm(store: PresenceStore, now: float) -> None:
    """Every script loaded and every connection open, so that no NOSCRIPT or handshake is counted."""
    await store.heartbeat(SUB_KEY, "warm", ["warm"], now=now - 1000, timeout=TIMEOUT)
    await store.heartbeat(SUB_KEY, "warm", ["warm"], now=now - 999, timeout=TIMEOUT)  # renew.lua
    await store.heartbeat(SUB_KEY, "warm", ["warm"], now=now - 998)  # refresh.lua
    await store.here_now(SUB_KEY, ["warm"], now=now, limit=1000, with_uuids=True)
    await store.here_now(SUB_KEY, ["warm"], now=now, limit=1000, with_uuids=False)
    await store.sweep(now=now)  # expires "warm": the sweep script runs
    await store.heartbeat(SUB_KEY, "warm", ["warm"], now=now, timeout=TIMEOUT)
    await store.leave(SUB_KEY, "warm", ["warm"], now=now)


async def populate(store: PresenceStore, channel: str, users: int, now: float, length: float = TIMEOUT) -> None:
    for start in range(0, users, 64):
        await asyncio.gather(
            *(
                store.heartbeat(SUB_KEY, f"{n:08x}-0000-4000-8000-{n:012x}", [channel], now=now, timeout=length)
                for n in range(start, min(users, start + 64))
            )
        )


async def test_a_refresh_is_one_round_trip_of_three_commands_in_a_script_and_a_join_two_round_trips(
    app: Client, private_redis: redis.Redis
) -> None:
    """A join is a renew.lua call that finds the uuid absent, then heartbeat.lua; a refresh is renew.lua
    alone when it sends its timeout (the default or another one), refresh.lua alone when it sends none
    (the one its deadline holds)."""
    store, now = store_of(app), time.time()
    await warm(store, now)
    await store.heartbeat(SUB_KEY, "first", ["ch"], now=now, timeout=TIMEOUT)  # the keyset's first join
    with counting(private_redis) as join:
        await store.heartbeat(SUB_KEY, "u1", ["ch"], now=now, timeout=TIMEOUT)
    await store.heartbeat(SUB_KEY, "u2", ["ch"], now=now, timeout=60)
    refreshes = []
    for uuid, timeout in (("u1", TIMEOUT), ("u1", None), ("u2", 60), ("u2", None)):
        with counting(private_redis) as refresh:
            await store.heartbeat(SUB_KEY, uuid, ["ch"], now=now + 1, timeout=timeout)
        refreshes.append(refresh)
    assert join.round_trips == 2, join
    assert join.commands["evalsha"] == 2 and join.commands["xadd"] == 1, join  # the join event
    assert join.commands["zmscore"] == 1, join  # renew.lua, to find the uuid absent
    for refresh, sent in zip(refreshes, (True, False, True, False), strict=True):
        assert refresh.round_trips == 1, refresh
        # The channel's lapsed members counted (none) and the deadline written (renew.lua), or the
        # uuid's deadline read and moved (refresh.lua); the channel's due entry offered (ZADD LT: no
        # lower). No expiry: the sweep's visits renew it.
        read = {"zcount": 1} if sent else {"zmscore": 1}
        assert refresh.commands == {"evalsha": 1, "zadd": 2, **read}, refresh
        assert refresh.inside() == 3


async def test_the_refreshes_of_one_loop_iteration_are_one_script_call(app: Client, private_redis: redis.Redis) -> None:
    store, now, users = store_of(app), time.time(), 40
    await warm(store, now)
    await populate(store, "ch", users, now)
    with counting(private_redis) as refresh:
        await populate(store, "ch", users, now + 1)
    # populate sends 40 at once: one call for all, the channel's lapsed members counted and its
    # deadlines moved on in one command each, and its due entry offered in one more.
    assert refresh.round_trips == 1, refresh
    assert refresh.commands == {"evalsha": 1, "zadd": 2, "zcount": 1}, refresh


async def test_here_now_is_one_round_trip_whatever_the_occupancy(app: Client, private_redis: redis.Redis) -> None:
    store, now = store_of(app), time.time()
    await warm(store, now)
    await populate(store, "crowd", 1500, now)
    with counting(private_redis) as page:
        channels = await store.here_now(SUB_KEY, ["crowd"], now=now, limit=1000, with_uuids=True)
    with counting(private_redis) as count:
        await store.here_now(SUB_KEY, ["crowd"], now=now, limit=1000, with_uuids=False)
    assert len(channels[0].uuids) == 1000
    assert page.round_trips == 1 and page.commands == {"evalsha": 1, "zcount": 1, "zrangebyscore": 1}
    assert count.round_trips == 1 and count.commands == {"evalsha": 1, "zcount": 1}


async def test_a_sweep_with_nothing_due_is_one_round_trip(app: Client, private_redis: redis.Redis) -> None:
    store, now = store_of(app), time.time()
    await warm(store, now)
    await populate(store, "sweep", 1000, now)
    with counting(private_redis) as idle:
        assert await store.sweep(now=now + 1) == 0
    assert idle.round_trips == 1
    assert idle.commands == {"zrangebyscore": 1}


async def test_a_mass_expiry_takes_one_script_call_per_budget(app: Client, private_redis: redis.Redis) -> None:
    store, now, users = store_of(app), time.time(), 2450  # not a multiple of the budget
    await warm(store, now)
    await populate(store, "sweep", users, now)
    with counting(private_redis) as sweep:
        assert await store.sweep(now=now + TIMEOUT + 1) == users
    calls = math.ceil(users / store.sweep_budget)
    assert sweep.commands["evalsha"] == calls, sweep.commands
    # The global index read; per call a pipeline of the two indexes and the script; then the
    # keyset's global entry written and re-read (a pipeline) to lower it again.
    assert sweep.round_trips == 1 + 2 * calls + 2, sweep
    assert sweep.commands["zrem"] >= users  # each user left the occupants and the due index


async def test_one_publish_to_held_polls_is_one_round_trip_however_many_polls(
    app: Client, private_redis: redis.Redis
) -> None:
    """The fan-out's Redis cost: the publish script, whose wake-up carries the entry every woken poll
    answers with (their cursor is the keyset's last timetoken)."""
    polls = 40

    async def poll(uuid: str, tt: str) -> str:
        path = f"/v2/subscribe/{SUB_KEY}/fan/0?uuid={uuid}&tt={tt}&heartbeat=300"
        response = await app.get(path + ("&tr=1" if tt != "0" else ""))
        assert response.status == 200
        reply = orjson.loads(await response.read())
        return str(reply["t"]["t"])

    async def held() -> int:
        found = HELD.search(await (await app.get("/metrics")).text())
        assert found is not None
        return int(float(found.group(1)))

    async def held_now(count: int) -> bool:
        return await held() == count

    async def publish(text: str) -> None:
        response = await app.get(f"/publish/p/{SUB_KEY}/0/fan/0/%22{text}%22?uuid=publisher")
        assert response.status == 200

    uuids = [f"fan-{i}" for i in range(polls)]
    cursors = await asyncio.gather(*(poll(u, "0") for u in uuids))
    rounds = []
    for number in range(3):  # the first round also puts every poll on the same cursor
        pending = [asyncio.create_task(poll(u, c)) for u, c in zip(uuids, cursors, strict=True)]
        await wait_until(lambda: held_now(polls), 10, what="the polls all held")
        with counting(private_redis) as counts:
            await publish(f"m{number}")
            cursors = list(await asyncio.gather(*pending))
        rounds.append(counts)
    for counts in rounds[1:]:
        assert counts.round_trips == 1, counts
        assert "xrange" not in counts.commands and "multi" not in counts.commands, counts
        assert counts.commands["evalsha"] == 1 and counts.commands["spublish"] == 1, counts


async def test_a_present_user_costs_under_125_bytes_of_redis_memory_whatever_its_timeout(
    app: Client, private_redis: redis.Redis
) -> None:
    """MEMORY USAGE of every key of one channel's 10,000 occupants (36-character uuids, no state), after the
    sweep a running sweeper would make within a minute (it flushes what interval mode keeps pending): with
    the default timeout, and with another one, which their deadlines remember (no key per user)."""
    store, now, users = store_of(app), time.time(), 10_000
    await warm(store, now)
    per_user, keys = {}, {}
    for timeout in (TIMEOUT, 120.0):
        private_redis.flushall()
        await populate(store, "lobby", users, now, timeout)
        await store.sweep(now=now + 60)
        names = list(private_redis.scan_iter(count=1000))
        per_user[timeout] = sum(private_redis.memory_usage(key, samples=0) or 0 for key in names) / users
        keys[timeout] = len(names)
    assert per_user[TIMEOUT] < 125, f"{per_user} B per present user"
    assert per_user[120.0] <= 1.1 * per_user[TIMEOUT], f"{per_user} B per present user"
    assert keys[120.0] == keys[TIMEOUT] < 20, keys
