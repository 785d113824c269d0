"""The script batcher on both engines: which path a batch takes, and what a cancelled batch leaves behind."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError

from presence_server.store.batch import ScriptBatcher
from presence_server.store.connect import open_redis

ECHO = "return ARGV[1]"


async def test_the_hiredis_fast_path_is_taken_on_a_real_redis(real_redis: aioredis.Redis) -> None:
    # If a redis-py upgrade moves the internals the fast path reads, every batch silently falls back
    # to the public calls: this test is what notices.
    batcher = ScriptBatcher(real_redis)
    script: AsyncScript = real_redis.register_script(ECHO)
    await script(keys=[], args=["load"])  # loaded, so the batch needs no NOSCRIPT fallback
    replies = await asyncio.gather(*(batcher.call(script, [], [str(i)]) for i in range(40)))
    await batcher.aclose()
    assert replies == [str(i) for i in range(40)]
    assert batcher.calls == 40 and batcher.batches >= 3  # 16 at a time: one burst, several batches
    assert batcher.fast_batches == batcher.batches


async def test_the_embedded_store_takes_the_public_calls() -> None:
    client = open_redis("memory://")
    try:
        batcher = ScriptBatcher(client)
        script: AsyncScript = client.register_script(ECHO)
        assert await batcher.call(script, [], ["x"]) == "x"
        await batcher.aclose()
        assert batcher.batches == 1 and batcher.fast_batches == 0
    finally:
        await client.aclose()


async def cancel_a_batch(client: aioredis.Redis, started: bool) -> list[object]:
    batcher = ScriptBatcher(client)
    script: AsyncScript = client.register_script(ECHO)
    futures = [batcher.call(script, [], [str(i)]) for i in range(3)]
    await asyncio.sleep(0)  # a loop iteration ends (no time passes): the batch's task exists
    (task,) = batcher._tasks
    if started:
        await asyncio.sleep(0)  # the task sent the batch and waits for the replies
    assert not any(f.done() for f in futures)
    task.cancel()
    results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), timeout=5)
    await batcher.aclose()
    return results


async def test_a_batch_cancelled_before_it_starts_settles_every_callers_future(redis_client: aioredis.Redis) -> None:
    results = await cancel_a_batch(redis_client, started=False)
    assert all(isinstance(r, ConnectionError) for r in results), results


async def test_a_batch_cancelled_while_it_waits_for_redis_settles_every_callers_future(
    real_redis: aioredis.Redis,
) -> None:
    # Only a real server leaves the replies outstanding across a loop iteration (fakeredis answers
    # within it).
    results = await cancel_a_batch(real_redis, started=True)
    assert all(isinstance(r, ConnectionError) for r in results), results
