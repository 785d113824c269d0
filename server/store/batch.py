"""Coalescing of concurrent script calls: the calls made in one event-loop iteration go to Redis in
one pipeline. Under load this is most of the throughput (one write and one read for many calls, and
one reply parse), and at low load it costs one loop iteration of latency."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError

_Call = tuple[AsyncScript, Sequence[Any], Sequence[Any], "asyncio.Future[Any]"]


class ScriptBatcher:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._pending: list[_Call] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.calls = 0

    def call(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> asyncio.Future[Any]:
        """Queue one script call; the returned future resolves with its reply."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((script, keys, args, future))
        return future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._run(batch))
        self._tasks.add(task)  # keep a reference until it is done
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[_Call]) -> None:
        self.batches += 1
        self.calls += len(batch)
        try:
            if len(batch) == 1:
                script, keys, args, future = batch[0]
                _settle(future, await script(keys=keys, args=args))
                return
            replies = await self._send(batch)
            for (script, keys, args, future), reply in zip(batch, replies, strict=True):
                if isinstance(reply, NoScriptError):
                    # Redis restarted or flushed its scripts: this call loads it and runs again.
                    try:
                        reply = await script(keys=keys, args=args)
                    except Exception as exc:
                        reply = exc
                _settle(future, reply)
        except Exception as exc:
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)


    async def _send(self, batch: list[_Call]) -> list[Any]:
        """The whole batch as one write on one connection, packed by hiredis: redis-py's pipeline
        packs every argument in Python, which was the largest cost on the heartbeat path. Real and
        fakeredis connections alike take the packed stream."""
        payload = b"".join(
            hiredis.pack_command(("EVALSHA", script.sha, len(keys), *keys, *args)) for script, keys, args, _ in batch
        )
        pool = self.redis.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await connection.send_packed_command(payload, check_health=False)
            replies: list[Any] = []
            for _ in batch:
                try:
                    replies.append(await connection.read_response())
                except ResponseError as exc:  # a reply of its own: the stream stays in step
                    replies.append(exc)
        except BaseException:
            # Cancelled or broken half-way: the connection's replies are out of step with its
            # requests, so it must not be reused.
            await connection.disconnect()
            raise
        finally:
            await pool.release(connection)
        return replies


def _settle(future: asyncio.Future[Any], reply: Any) -> None:
    # A caller that went away (cancelled request) leaves a cancelled future: nothing to tell it.
    if future.done():
        return
    if isinstance(reply, Exception):
        future.set_exception(reply)
    else:
        future.set_result(reply)
