"""Message counts (docs/protocol.md 12.4) against a plain count of what history shows, on both engines,
through a seeded run of publishes (shown, store=0, signals, with a ttl), deletes of random ranges and
clock moves past ttls and retention. Counts subtract ranks instead of reading the messages in between,
so every way a message can leave history must be subtracted exactly once."""

from __future__ import annotations

import random

import pytest
import redis.asyncio as aioredis

from presence_server.store import PresenceStore
from presence_server.store.history import Walk
from tests.helpers.app import START

RETENTION = 3600.0
CHANNELS = ["a", "b", "c"]


async def shown_after(store: PresenceStore, channel: str, tt: int, now: float) -> int:
    entries = await store.history("k", channel, Walk(start=None, end=tt + 1, reverse=True), 100_000, now=now)
    return len(entries)


@pytest.mark.parametrize("seed", [12, 7, 2026])
async def test_counts_agree_with_history_through_publishes_deletes_ttls_and_retention(
    redis_client: aioredis.Redis, prefix: str, seed: int
) -> None:
    store = PresenceStore(redis_client, prefix=prefix, history_retention=RETENTION, history_max=100_000)
    rng = random.Random(seed)
    now = START
    tts: list[int] = [0]
    for step in range(400):
        now += rng.choice([0.001, 0.01, 1.0, 30.0])
        action = rng.random()
        channel = rng.choice(CHANNELS)
        if action < 0.6:
            kind = rng.choice([None, None, None, 1])
            published = await store.publish(
                "k",
                channel,
                f'"m{step}"',
                now=now,
                kind=kind,
                store=rng.random() > 0.15,
                ttl_hours=rng.choice([0.0, 0.0, 0.0, 0.005, 0.02, 2.0]),
            )
            tts.append(int(published))
        elif action < 0.7:
            a, b = rng.choice(tts), rng.choice(tts)
            start = rng.choice([None, max(0, a + rng.choice([-1, 0, 1]))])
            end = rng.choice([None, max(0, b + rng.choice([-1, 0, 1]))])
            await store.delete_history("k", channel, Walk(start, end))
        elif action < 0.75:
            now += rng.choice([60.0, 600.0, 2000.0])
        if step % 10 == 0:
            bounds = sorted({0, rng.choice(tts), rng.choice(tts) - 1, rng.choice(tts) + 1, tts[-1]})
            after = [(ch, bound) for ch in CHANNELS for bound in bounds if bound >= 0]
            counts = await store.history_counts("k", after, now=now)
            for ch, bound in after:
                expected = await shown_after(store, ch, bound, now)
                got = (await store.history_counts("k", [(ch, bound)], now=now))[ch]
                assert got == expected, (step, ch, bound, got, expected)
            assert len(counts) == len(CHANNELS) and all(isinstance(v, int) for v in counts.values())
    await store.aclose()
