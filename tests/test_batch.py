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


class LosingProxy:
    """A TCP proxy to Redis that can lose the connections open so far: each is dropped at its next
    request, unforwarded, as a connection whose far end went away (a failover, a restart behind a
    proxy) looks open until it is used. Connections made later pass."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.accepted = 0
        self.lost_below = 0
        self.server: asyncio.Server | None = None
        self.handlers: set[asyncio.Task[None]] = set()

    def lose_open_connections(self) -> None:
        self.lost_below = self.accepted

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self.handlers.add(handler)
        try:
            await self._pump(client_in, client_out)
        finally:
            self.handlers.discard(handler)

    async def _pump(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        number, self.accepted = self.accepted, self.accepted + 1
        try:
            redis_in, redis_out = await asyncio.open_connection("127.0.0.1", self.port)
        except BaseException:
            client_out.close()
            raise

        async def upstream() -> None:
            while data := await client_in.read(65536):
                if number < self.lost_below:
                    break
                redis_out.write(data)
            client_out.close()
            redis_out.close()

        async def downstream() -> None:
            while data := await redis_in.read(65536):
                client_out.write(data)

        pumps = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            client_out.close()
            redis_out.close()

    async def aclose(self) -> None:
        """Stop listening and end every connection still open: a handler left pending when the
        test's loop closes would leave its streams to the garbage collector, whose ResourceWarning
        then fails whatever test happens to be running."""
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for handler in list(self.handlers):
            handler.cancel()
        await asyncio.gather(*self.handlers, return_exceptions=True)


async def test_a_batch_on_a_kept_connection_that_was_lost_is_sent_again(real_redis_url: str) -> None:
    proxy = LosingProxy(int(real_redis_url.rsplit(":", 1)[1].split("/")[0]))
    client = open_redis(f"redis://127.0.0.1:{await proxy.start()}/0")
    try:
        batcher = ScriptBatcher(client)
        script: AsyncScript = client.register_script(ECHO)
        assert await batcher.call(script, [], ["before"]) == "before"
        assert len(batcher._idle) == 1
        proxy.lose_open_connections()
        assert await batcher.call(script, [], ["after"]) == "after"
        await batcher.aclose()
    finally:
        await client.aclose()
        await proxy.aclose()


async def test_a_batch_that_ends_after_close_keeps_no_connection(redis_client: aioredis.Redis) -> None:
    # A connection kept after aclose handed the others back would outlive the client's pool unclosed.
    batcher = ScriptBatcher(redis_client)
    script: AsyncScript = redis_client.register_script(ECHO)
    assert await batcher.call(script, [], ["before"]) == "before"
    assert sum(map(len, batcher._idle.values())) == 1
    await batcher.aclose()
    assert batcher._idle == {}
    assert await batcher.call(script, [], ["after"]) == "after"
    assert sum(map(len, batcher._idle.values())) == 0
