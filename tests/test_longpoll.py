"""The long-poll owner's refresh memo: a subscribe poll is an implicit heartbeat, skipped only while a
refresh saying the same thing was made within the window, and never after the user left or the keyset
was reset. Its memory is bounded in entries and bytes whatever the states subscribers send. And the
hold timers: one per grain of time, not one per held poll."""

from __future__ import annotations

import asyncio
import dataclasses
import tracemalloc
from collections.abc import Callable
from typing import Any, cast

import aiohttp
import orjson
import redis.asyncio as aioredis

from presence_server.app import create_app
from presence_server.config import Settings
from presence_server.context import LONGPOLLS
from presence_server.store.longpoll import HOLD_GRAIN, RefreshMemo, _HoldTimers
from presence_server.store.subscription import CACHED_NAMES, subscription_of
from tests.helpers.app import START, AiohttpClient, AiohttpServer, Client, FakeClock, MakeApp, NewClient, serve
from tests.helpers.http import HOLD, P, handshake, occupants, ok_body, poll
from tests.helpers.wait import wait_until

STATE_SIZE = 60_000
WARM_UP = 300


def memo_of(client: Client) -> RefreshMemo:
    assert client.app is not None
    return client.app[LONGPOLLS].memo


async def test_a_poll_after_an_explicit_leave_makes_the_user_present_again(
    make_app: MakeApp, aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient
) -> None:
    client = await serve(aiohttp_server, aiohttp_client, make_app(longpoll_hold=HOLD))
    cursor = await handshake(client, "ch1", uuid="u1")
    assert await occupants(client, "ch1") == ["u1"]
    await ok_body(client, f"{P}/channel/ch1/leave", {"uuid": "u1"})
    assert await occupants(client, "ch1") == []
    # Within the memo's window (no time passes): the poll still refreshes presence.
    await poll(client, "ch1", cursor, uuid="u1")
    assert await occupants(client, "ch1") == ["u1"]


async def test_a_leave_made_in_another_process_clears_this_ones_memo(new_client: NewClient) -> None:
    first, second = await new_client(longpoll_hold=HOLD), await new_client(longpoll_hold=HOLD)
    cursor = await handshake(first, "ch1", uuid="u1")
    assert len(memo_of(first)) == 1
    await ok_body(second, f"{P}/channel/ch1/leave", {"uuid": "u1"})
    await wait_until(lambda: len(memo_of(first)) == 0, what="the leave's wake-up reaching the other process")
    await poll(first, "ch1", cursor, uuid="u1")
    assert await occupants(second, "ch1") == ["u1"]


async def test_a_keyset_reset_clears_the_memo_of_that_keyset_only(new_client: NewClient) -> None:
    client = await new_client(longpoll_hold=HOLD, admin=True)
    cursor = await handshake(client, "ch1", uuid="u1")
    await handshake_elsewhere(client)
    assert len(memo_of(client)) == 2
    resp = await client.post("/admin/keysets/demo/reset")
    assert resp.status == 200, await resp.text()
    assert len(memo_of(client)) == 1  # the other keyset's subscriber is still remembered
    await poll(client, "ch1", cursor, uuid="u1")
    assert await occupants(client, "ch1") == ["u1"]


async def handshake_elsewhere(client: Client) -> None:
    """A subscriber of another keyset."""
    resp = await client.get("/v2/subscribe/other/ch1/0", params={"uuid": "u9", "tt": "0"})
    assert resp.status == 200, await resp.text()


async def test_memo_memory_does_not_grow_with_distinct_states(
    make_app: MakeApp, aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, clock: FakeClock
) -> None:
    client = await serve(aiohttp_server, aiohttp_client, make_app(longpoll_hold=HOLD))
    memo = memo_of(client)

    async def handshakes(users: range, size: int) -> None:
        for i in users:
            state = orjson.dumps({"s": f"{i:06d}" + "x" * size}).decode()
            await handshake(client, "ch1", uuid=f"u{i:03d}", state=state)

    await handshakes(range(20), 0)
    small = memo.bytes
    assert len(memo) == 20 and 0 < small < 20 * 400
    # The same users again, each with a distinct 60 KB state: the memo holds digests, not states.
    await handshakes(range(20), STATE_SIZE)
    assert (len(memo), memo.bytes) == (20, small)
    # Gone users (nobody refreshed them within the window) are forgotten at the next refresh.
    clock.advance(memo.window)
    await handshakes(range(100, 101), STATE_SIZE)
    assert len(memo) == 1 and memo.bytes < small / 10


def test_memo_is_bounded_in_entries_and_bytes() -> None:
    memo = RefreshMemo(10.0, max_entries=100, max_bytes=100 * RefreshMemo.ENTRY_COST)
    for i in range(1_500):
        assert memo.due("demo", "u1", hash("x" * STATE_SIZE + str(i)), START)  # a new state is always due
    assert (len(memo), memo.bytes) == (1, RefreshMemo.ENTRY_COST + len("demo") + len("u1"))
    for i in range(1_500):
        memo.due("demo", f"user-{i}", 0, START)
    assert len(memo) <= 100 and memo.bytes <= memo.max_bytes
    assert memo.due("demo", "user-0", 0, START)  # evicted: refreshed again, never wrongly skipped
    assert not memo.due("demo", "user-1499", 0, START + 1)  # kept: still skipped within the window
    memo.forget("demo", None)
    assert (len(memo), memo.bytes) == (0, 0)


def test_memo_skips_only_the_same_refresh_within_the_window() -> None:
    memo = RefreshMemo(5.0)
    assert memo.due("demo", "u1", 1, START)
    assert not memo.due("demo", "u1", 1, START + 4.9)
    assert memo.due("demo", "u1", 2, START + 4.9)  # a new state, timeout or channel list
    assert memo.due("demo", "u1", 2, START + 10)  # the window passed
    memo.forget("demo", "u1")
    assert memo.due("demo", "u1", 2, START + 10.1)  # left: refreshed at once
    assert memo.due("other", "u1", 2, START + 10.1)  # keysets are apart


async def test_a_held_poll_does_not_refresh_again_within_the_window(
    make_app: MakeApp, aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient
) -> None:
    client = await serve(aiohttp_server, aiohttp_client, make_app(longpoll_hold=HOLD))
    assert client.app is not None
    batcher = client.app[LONGPOLLS].store._batch
    cursor = await handshake(client, "ch1", uuid="u1")
    scripts = batcher.calls  # subscribe reads are pipelines: only a heartbeat would run a script
    await asyncio.gather(*(poll(client, "ch1", cursor, uuid="u1") for _ in range(3)))
    assert batcher.calls == scripts and len(memo_of(client)) == 1
    await poll(client, "ch1", cursor, uuid="u1", state='{"new": 1}')
    assert batcher.calls == scripts + 1  # a new state is refreshed at once


def test_only_small_subscriptions_are_kept_between_polls() -> None:
    small = tuple(f"ch{i}" for i in range(CACHED_NAMES))
    large = tuple(f"ch{i}" for i in range(CACHED_NAMES + 1))
    assert subscription_of(small, ()) is subscription_of(small, ())
    # Built again for each request, and still read like the same subscription (shared reads key on names).
    assert subscription_of(large, ()) is not subscription_of(large, ())
    assert subscription_of(large, ()).names == subscription_of(large, ()).names


async def test_process_memory_does_not_grow_with_distinct_states(
    real_redis: aioredis.Redis,
    settings: Settings,
    clock: FakeClock,
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
) -> None:
    # On the real redis-server only: fakeredis would keep the logged states in this process.
    app = create_app(dataclasses.replace(settings, longpoll_hold=HOLD), redis=real_redis, clock=clock, sweeper=False)
    client = await serve(aiohttp_server, aiohttp_client, app)

    url = client.make_url("/v2/subscribe/demo/ch1/0")

    async def handshakes(first: int, count: int) -> None:
        # A session of its own: the test client keeps every response it got until it closes.
        async with aiohttp.ClientSession() as session:
            for i in range(first, first + count):
                state = orjson.dumps({"s": f"{i:06d}" + "x" * STATE_SIZE}).decode()
                async with session.get(url, params={"uuid": "u1", "tt": "0", "state": state}) as resp:
                    assert resp.status == 200, await resp.text()

    tracemalloc.start()
    try:
        # Warm-up: past the size of every cache a request's text passes through (the query parse,
        # yarl's), which then stay full without growing.
        await handshakes(0, WARM_UP)
        before = tracemalloc.get_traced_memory()[0]
        await handshakes(WARM_UP, 200)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # A memo keyed by the state itself kept each one: 200 x 60 KB, 12 MB.
    assert grown < 2_000_000, f"{grown} bytes more after 200 distinct 60 KB states"


class _Loop:
    """The two calls the hold timers make of their loop, with time moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.timers: list[tuple[float, Callable[..., None], tuple[Any, ...]]] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[..., None], *args: Any) -> None:
        self.timers.append((when, callback, args))

    def run_due(self) -> None:
        due = [t for t in self.timers if t[0] <= self.now]
        self.timers = [t for t in self.timers if t[0] > self.now]
        for _, callback, args in due:
            callback(*args)


async def test_a_hold_ends_within_a_grain_after_its_time_and_shares_its_grains_timer() -> None:
    loop = _Loop()
    holds = _HoldTimers(cast("asyncio.AbstractEventLoop", loop))
    running = asyncio.get_running_loop()
    early, late, gone = (running.create_future() for _ in range(3))
    ends = [holds.add(early, 2.0), holds.add(late, 2.0 + HOLD_GRAIN / 2), holds.add(gone, 2.0)]
    assert len(loop.timers) <= 2  # one per grain, not one per poll
    holds.discard(gone, ends[2])
    loop.now += 2.0 - HOLD_GRAIN / 10
    loop.run_due()
    assert not early.done() and not late.done()  # not before its time
    loop.now += HOLD_GRAIN * 2
    loop.run_due()
    assert early.result() is False and late.result() is False
    assert not gone.done()  # taken out before its hold ended


async def test_a_grain_emptied_and_filled_again_still_ends() -> None:
    loop = _Loop()
    holds = _HoldTimers(cast("asyncio.AbstractEventLoop", loop))
    running = asyncio.get_running_loop()
    first, second = running.create_future(), running.create_future()
    holds.discard(first, holds.add(first, 1.0))
    holds.add(second, 1.0)
    loop.now += 1.0 + HOLD_GRAIN
    loop.run_due()
    assert second.result() is False and not first.done()
