"""The sweeper: exact expiry boundaries, exactly-once timeouts, races with heartbeats, batching, cost."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from presence_server.store import PresenceStore, open_redis
from presence_server.store.fields import deadline_of
from presence_server.store.keys import keysets_due
from presence_server.sweeper import Sweeper
from tests.helpers.app import START, FakeClock
from tests.helpers.redis import free_port, redis_server
from tests.helpers.wait import wait_until

SUB = "demo"
T = START
T_MS = int(T * 1000)


def at(ms: int) -> float:
    """START plus a whole number of milliseconds."""
    return (T_MS + ms) / 1000


async def timeouts_logged(store: PresenceStore, channel: str, sub: str = SUB) -> list[str]:
    return [e.uuid for e in await store.read_log(sub, channel) if e.action == "timeout"]


async def occupants(store: PresenceStore, channel: str, now: float, sub: str = SUB) -> list[str]:
    [entry] = await store.here_now(sub, [channel], now=now)
    return sorted(entry.uuids)


async def test_expiry_boundary_is_the_deadline_to_the_millisecond(store: PresenceStore, clock: FakeClock) -> None:
    # The store's rule: present iff deadline > now, in ms. Deadlines T+1 s, T+2 s, T+3 s.
    for i in (1, 2, 3):
        await store.heartbeat(SUB, f"u{i}", ["a"], now=T, timeout=i, states={"a": '{"s":1}'})
    sweeper = Sweeper(store, clock, 1.0)
    ks = store.keys(SUB)

    for i in (1, 2, 3):
        clock.now = at(i * 1000 - 1)
        assert await sweeper.run_once() == 0
        assert await occupants(store, "a", clock.now) == [f"u{j}" for j in range(i, 4)]
        clock.now = at(i * 1000)
        assert await sweeper.run_once() == 1
        assert await occupants(store, "a", clock.now) == [f"u{j}" for j in range(i + 1, 4)]
        assert await store.redis.zscore(ks.occupants("a"), f"u{i}") is None
        assert await store.redis.hget(ks.state("a"), f"u{i}") is None

    assert [(e.action, e.uuid, e.occupancy) for e in await store.read_log(SUB, "a")][3:] == [
        ("timeout", "u1", 2),
        ("timeout", "u2", 1),
        ("timeout", "u3", 0),
    ]
    # Nobody left: the keyset leaves the sweeper's index and later sweeps find nothing.
    assert await store.redis.zscore(keysets_due(store.prefix), SUB) is None
    assert await store.redis.exists(ks.occupants("a"), ks.state("a")) == 0
    clock.now = at(60_000)
    assert await sweeper.run_once() == 0
    assert len(await store.read_log(SUB, "a")) == 6
    assert (sweeper.sweeps, sweeper.timeouts) == (7, 3)


async def test_a_shorter_timeout_moves_the_sweep_earlier(store: PresenceStore, clock: FakeClock) -> None:
    await store.heartbeat(SUB, "u1", ["a"], now=T, timeout=300)
    await store.heartbeat(SUB, "u1", ["a"], now=T, timeout=10)
    clock.now = at(10_000)
    assert await Sweeper(store, clock, 1.0).run_once() == 1
    assert await timeouts_logged(store, "a") == ["u1"]


async def test_the_due_index_stays_a_lower_bound_and_a_sweep_makes_it_exact(store: PresenceStore) -> None:
    # Heartbeats only ever lower a channel's entry in the due index; whatever the mix of uuids,
    # timeouts and lapses, it must never pass the channel's earliest deadline (or a timeout would
    # be late), and a sweep that visits the channel puts the exact earliest deadline in place.
    rng = random.Random(7)
    ks = store.keys(SUB)

    async def earliest(channel: str) -> float:
        found = await store.redis.zrange(ks.occupants(channel), 0, 0, withscores=True)
        return deadline_of(cast("list[tuple[str, float]]", found)[0][1])

    for step in range(300):
        timeout = rng.choice([None, 5, 10, 20, 300])
        await store.heartbeat(SUB, f"u{rng.randrange(8)}", ["a", "b"], now=at(step * 250), timeout=timeout)
        for channel in ("a", "b"):
            due = await store.redis.zscore(ks.due, channel)
            assert due is not None and due <= await earliest(channel), (step, channel)
            if step % 50 == 49:
                await store.sweep(now=at(step * 250))
                assert await store.redis.zscore(ks.due, channel) == await earliest(channel), (step, channel)


async def test_a_refresh_of_the_first_to_expire_costs_the_sweeper_one_visit(store: PresenceStore) -> None:
    await store.heartbeat(SUB, "u1", ["a"], now=T, timeout=10)
    await store.heartbeat(SUB, "u2", ["a"], now=at(1000), timeout=10)
    await store.heartbeat(SUB, "u1", ["a"], now=at(2000), timeout=10)  # u1 was first; u2 is now
    # The entry still says T + 10 s: the sweep then finds nobody due and moves it to u2's deadline.
    assert await store.sweep(now=at(10_000)) == 0
    assert await store.redis.zscore(store.keys(SUB).due, "a") == T_MS + 11_000
    assert await store.redis.zscore(keysets_due(store.prefix), SUB) == T_MS + 11_000
    assert await store.sweep(now=at(11_000)) == 1
    assert await timeouts_logged(store, "a") == ["u2"]


async def test_two_concurrent_sweepers_report_each_timeout_once(redis_client: aioredis.Redis, prefix: str) -> None:
    # Small batches make each sweeper interleave many round trips with the other's.
    first, second = (
        PresenceStore(redis_client, prefix=prefix, sweep_budget=4, sweep_channels=2, announce_max=100) for _ in range(2)
    )
    channels = [f"c{i}" for i in range(5)]
    memberships = set()
    for i in range(30):
        joined = [channels[i % 5], channels[(i + 2) % 5]]
        await first.heartbeat(SUB, f"u{i}", joined, now=T, timeout=10)
        memberships |= {(channel, f"u{i}") for channel in joined}
    await first.heartbeat(SUB, "stays", ["c0"], now=T, timeout=60)

    # wait_for only guards against a sweep that never ends: it cancels both instead of hanging.
    removed = await asyncio.wait_for(asyncio.gather(first.sweep(now=at(10_000)), second.sweep(now=at(10_000))), 30)
    assert sum(removed) == len(memberships) == 60

    reported = [(channel, uuid) for channel in channels for uuid in await timeouts_logged(first, channel)]
    assert len(reported) == len(memberships)
    assert set(reported) == memberships
    assert await occupants(first, "c0", at(10_000)) == ["stays"]
    assert tuple(await asyncio.gather(first.sweep(now=at(10_000)), second.sweep(now=at(10_000)))) == (0, 0)


@pytest.mark.parametrize(
    ("heartbeat_ms", "expected"),
    [
        # Handled with a clock 1 ms behind the sweeper's: a plain refresh, no event at all.
        (9_999, [("join", "u1"), ("join", "u2"), ("timeout", "u2")]),
        # Handled at the deadline: the heartbeat itself reports the lapse, the sweep must not again.
        (10_000, [("join", "u1"), ("join", "u2"), ("timeout", "u1"), ("join", "u1"), ("timeout", "u2")]),
    ],
)
async def test_heartbeat_between_due_read_and_sweep_script_survives(
    redis_client: aioredis.Redis,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    heartbeat_ms: int,
    expected: list[tuple[str, str]],
) -> None:
    sweeping = PresenceStore(redis_client, prefix=prefix)
    other_server = PresenceStore(redis_client, prefix=prefix)
    await other_server.heartbeat(SUB, "u1", ["a"], now=T, timeout=10)
    await other_server.heartbeat(SUB, "u2", ["a"], now=T, timeout=10)

    # The interleaving: `_sweep_keyset` reads the due channels (ZRANGEBYSCORE on the keyset's due
    # index, which lists "a"), then awaits its sweep script. Another server's heartbeat lands in
    # that gap. We run it right before the script is sent, from inside the sweeper's own call;
    # Redis executes everything for real. The script re-reads each deadline, so u1 must survive.
    script = sweeping._sweep
    seen: list[list[Any]] = []

    async def heartbeat_then_sweep(keys: Any = None, args: Any = None, client: Any = None) -> Any:
        seen.append(list(args))
        if len(seen) == 1:
            await other_server.heartbeat(SUB, "u1", ["a"], now=at(heartbeat_ms))
        return await script(keys=keys, args=args, client=client)

    monkeypatch.setattr(sweeping, "_sweep", heartbeat_then_sweep)
    assert await sweeping.sweep(now=at(10_000)) == 1
    assert "a" in seen[0]

    assert await occupants(sweeping, "a", at(10_000)) == ["u1"]
    assert [(e.action, e.uuid) for e in await sweeping.read_log(SUB, "a")] == expected
    assert await sweeping.where_now(SUB, "u1", now=at(10_000)) == ["a"]
    # u1 is still swept when its new deadline comes.
    monkeypatch.setattr(sweeping, "_sweep", script)
    assert await sweeping.sweep(now=at(heartbeat_ms + 10_000)) == 1
    earlier_timeouts = [uuid for action, uuid in expected if action == "timeout"]
    assert await timeouts_logged(sweeping, "a") == [*earlier_timeouts, "u1"]


@pytest.mark.parametrize("others_stay", [False, True])
async def test_join_racing_the_sweepers_bookkeeping_is_not_missed(
    redis_client: aioredis.Redis,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    others_stay: bool,
) -> None:
    """The re-read in `_sweep_keyset`: a join landing between the sweep script and the index write."""
    sweeping = PresenceStore(redis_client, prefix=prefix)
    other_server = PresenceStore(redis_client, prefix=prefix)
    due_index = keysets_due(prefix)
    await other_server.heartbeat(SUB, "u1", ["a"], now=T, timeout=10)
    if others_stay:
        await other_server.heartbeat(SUB, "stays", ["c"], now=T, timeout=100)

    # The sweep script returns the keyset's earliest deadline after its removals: none at all
    # (others_stay False: the sweeper will ZREM the keyset) or T+100 s (it will ZADD that, not
    # LT). Right after the script, another server joins u2 with a 5 s timeout, lowering the
    # keyset's earliest deadline to T+15 s; its ZADD LT to the global index keeps the lower stale
    # T+10 s still there, and the sweeper's own write then replaces that. Only the re-read of the
    # keyset's own index that follows keeps u2 from being missed.
    script = sweeping._sweep
    calls = 0

    async def sweep_then_join(keys: Any = None, args: Any = None, client: Any = None) -> Any:
        nonlocal calls
        calls += 1
        reply = await script(keys=keys, args=args, client=client)
        if calls == 1:
            await other_server.heartbeat(SUB, "u2", ["b"], now=at(10_000), timeout=5)
        return reply

    monkeypatch.setattr(sweeping, "_sweep", sweep_then_join)
    assert await sweeping.sweep(now=at(10_000)) == 1
    assert await redis_client.zscore(due_index, SUB) == T_MS + 15_000

    monkeypatch.setattr(sweeping, "_sweep", script)
    assert await sweeping.sweep(now=at(14_999)) == 0
    assert await sweeping.sweep(now=at(15_000)) == 1
    assert await timeouts_logged(sweeping, "b") == ["u2"]
    expected_next = T_MS + 100_000 if others_stay else None
    assert await redis_client.zscore(due_index, SUB) == expected_next


async def test_one_sweep_call_removes_2500_expired_users_of_one_channel(
    redis_client: aioredis.Redis,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Announce mode throughout (no interval events), so that each timeout is an event of its own.
    store = PresenceStore(redis_client, prefix=prefix, log_size=10_000, sweep_budget=1000, announce_max=10_000)
    everyone = [f"user-{i:04d}" for i in range(2_500)]
    for start in range(0, len(everyone), 100):
        await asyncio.gather(
            *(store.heartbeat(SUB, uuid, ["crowd"], now=T, timeout=10) for uuid in everyone[start : start + 100])
        )
    assert (await store.here_now(SUB, ["crowd"], now=T, with_uuids=False))[0].occupancy == 2_500

    # Count the sweep script's calls (observation only): more than one batch is needed.
    script = store._sweep
    calls = 0

    async def counted(keys: Any = None, args: Any = None, client: Any = None) -> Any:
        nonlocal calls
        calls += 1
        return await script(keys=keys, args=args, client=client)

    monkeypatch.setattr(store, "_sweep", counted)
    assert await store.sweep(now=at(10_000)) == 2_500
    assert calls >= 3

    timed_out = await timeouts_logged(store, "crowd")
    assert len(timed_out) == 2_500
    assert sorted(timed_out) == everyone
    ks = store.keys(SUB)
    assert await redis_client.exists(ks.occupants("crowd"), ks.state("crowd")) == 0
    assert await store.sweep(now=at(10_000)) == 0


async def test_a_sweep_with_nothing_due_is_one_round_trip(real_redis: aioredis.Redis, prefix: str) -> None:
    store = PresenceStore(real_redis, prefix=prefix)
    # Someone is present, but not due yet, in two keysets.
    await store.heartbeat(SUB, "u1", ["a"], now=T, timeout=60)
    await store.heartbeat("other", "u2", ["b"], now=T, timeout=30)

    async def calls() -> dict[str, int]:
        stats = await real_redis.info("commandstats")
        return {name: int(stat["calls"]) for name, stat in stats.items() if name != "cmdstat_info"}

    before = await calls()
    assert await store.sweep(now=at(29_999)) == 0
    after = await calls()
    # Commands run inside scripts count in commandstats too, so this also proves no script ran.
    delta = {name: count - before.get(name, 0) for name, count in after.items() if count != before.get(name, 0)}
    assert delta == {"cmdstat_zrangebyscore": 1}


async def test_run_loop_survives_a_failing_store_and_cancels_cleanly(caplog: pytest.LogCaptureFixture) -> None:
    # Nothing listens on port 1: every sweep fails at once (no retries, so no waiting either).
    redis = open_redis("redis://127.0.0.1:1/0", retry=Retry(NoBackoff(), 0))
    store = PresenceStore(redis, prefix="unreachable")
    attempts = 0
    third_attempt = asyncio.Event()

    def clock() -> float:
        # run_once reads the clock once per attempt: a counter that needs no store.
        nonlocal attempts
        attempts += 1
        if attempts == 3:
            third_attempt.set()
        return T

    sweeper = Sweeper(store, clock, interval=0.001)
    caplog.set_level(logging.INFO, logger="presence_server")
    task = asyncio.create_task(sweeper.run())
    try:
        # A guard against a hang, not a way to let time pass: the loop sets the event itself.
        await asyncio.wait_for(third_attempt.wait(), timeout=10)
        assert not task.done()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await redis.aclose()

    assert task.cancelled()
    assert sweeper.sweeps == 0
    warnings = [r for r in caplog.records if r.name.startswith("presence_server") and r.levelno == logging.WARNING]
    assert len(warnings) == 1  # logged when it starts failing, not at every retry
    assert warnings[0].getMessage().startswith("redis lost during a sweep")


async def test_sweeping_resumes_within_a_second_of_redis_coming_back(caplog: pytest.LogCaptureFixture) -> None:
    # Real time, a Redis of its own stopped and started again on the same port (issue 10, item 7:
    # the backoff used to leave timeouts unswept for 11 s after a 20 s outage). This Redis keeps
    # nothing across the restart; tests/test_faults.py restarts one that does.
    caplog.set_level(logging.INFO, logger="presence_server")
    port = free_port()
    clock = FakeClock()
    with redis_server(port) as url:
        redis = open_redis(url)
        store = PresenceStore(redis, prefix="comeback")
        sweeper = Sweeper(store, clock, interval=1.0)
        task = asyncio.create_task(sweeper.run())
        await wait_until(lambda: sweeper.sweeps >= 1, 10, what="a first sweep")
    try:
        await asyncio.sleep(2.0)  # Redis is away for two seconds: several sweeps fail meanwhile
        assert not task.done()
        swept_before = sweeper.sweeps
        with redis_server(port):
            back = asyncio.get_running_loop().time()
            await wait_until(lambda: sweeper.sweeps > swept_before, 5, what="a sweep after Redis came back")
            resumed = asyncio.get_running_loop().time() - back
            assert resumed < 1.0, f"sweeping resumed {resumed:.2f} s after Redis answered again"
            # and keeps its cadence from there
            await store.heartbeat(SUB, "gone", ["ch1"], now=clock(), timeout=10)
            clock.advance(11)
            await wait_until(lambda: sweeper.timeouts == 1, 3, what="the next sweep")
            assert await timeouts_logged(store, "ch1") == ["gone"]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await redis.aclose()
    said = [r.getMessage() for r in caplog.records if r.name == "presence_server" and "redis" in r.getMessage()]
    assert len(said) == 2, said
    assert said[0].startswith("redis lost during a sweep") and said[1].startswith("redis back"), said
