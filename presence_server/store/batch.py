"""Coalescing of concurrent script calls: the calls made in one event-loop iteration go to Redis in
one pipeline. Under load this is most of the throughput (one write and one read for many calls, and
one reply parse), and at low load it costs one loop iteration of latency.

On a Redis Cluster the calls are grouped by the master that owns their keys (every key of a call shares
the keyset's slot), one pipeline per master. A call a master redirects (MOVED, ASK: a slot moved), or
that fails while the cluster is down or switching, goes once more through redis-py's cluster client,
which follows the redirect and refreshes its map of the slots."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Coroutine, Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ConnectionError,
    MovedError,
    NoScriptError,
    RedisClusterException,
    ResponseError,
    TimeoutError,
    TryAgainError,
)

# The fast path reads three redis-py internals: the connection's ``_writer`` and ``_parser``, the
# parser's hiredis ``_reader``, and the sentinel below. Each is looked up with a guard, and any
# missing one sends the batch through redis-py's public calls instead (slower, still correct).
# tests/test_batch.py proves the fast path is taken with the pinned redis-py, so an upgrade that
# moves them fails a test instead of silently losing the speed.
try:  # the sentinel redis-py's hiredis reader returns for "not enough data yet"
    from redis._parsers.hiredis import NOT_ENOUGH_DATA
except ImportError:  # internals moved: the public calls serve
    NOT_ENOUGH_DATA = None

_Call = tuple[AsyncScript, Sequence[Any], Sequence[Any], "asyncio.Future[Any]"]
# Replies that mean the script did not run: it runs again on its own (through the cluster client on a
# cluster, which follows redirects), after its script is loaded if Redis lacks it.
_AGAIN = (NoScriptError, MovedError, AskError, ClusterDownError, TryAgainError)


class _NotSent(Exception):
    """A cluster node's connection failed before any reply: nothing of the batch is known to have run."""


# Connections the batcher keeps between batches instead of handing them back to the pool: the
# pool's acquire and release (locks, events, counters) cost more than a small batch's reply parse.
KEEP_CONNECTIONS = 4
# A batch goes out as soon as it holds this many calls, not only at the end of the loop iteration:
# Redis then works on the first calls while the server still parses the rest of a burst of
# requests, instead of the two taking turns.
FLUSH_AT = 16


class ScriptBatcher:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._cluster = redis if isinstance(redis, RedisCluster) else None
        self._pending: list[_Call] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle: dict[str, list[AbstractConnection]] = {}  # by node name ("" for a single Redis)
        self._closed = False  # aclose began: no connection is kept any more
        self.batches = 0
        self.calls = 0
        self.fast_batches = 0  # of ``batches``, those sent through the hiredis fast path

    def call(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> asyncio.Future[Any]:
        """Queue one script call; the returned future resolves with its reply."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((script, keys, args, future))
        if len(self._pending) >= FLUSH_AT:
            self._flush()
        return future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:  # already sent for being full
            return
        if self._cluster is None:
            self._start(self._run(batch, None), batch)
            return
        for node, calls in self._by_node(self._cluster, batch).items():
            self._start(self._run(calls, node) if node is not None else self._reroute(calls), calls)

    def _start(self, work: Coroutine[Any, Any, None], batch: list[_Call]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)  # keep a reference until it is done
        task.add_done_callback(functools.partial(self._finished, batch))

    @staticmethod
    def _by_node(cluster: RedisCluster, batch: list[_Call]) -> dict[ClusterNode | None, list[_Call]]:
        """The calls grouped by the master of their first key (None: the client's map has no master for
        it yet, and the cluster client finds one)."""
        groups: dict[ClusterNode | None, list[_Call]] = {}
        for call in batch:
            try:
                node: ClusterNode | None = cluster.get_node_from_key(call[1][0])
            except RedisClusterException:
                node = None
            groups.setdefault(node, []).append(call)
        return groups

    def _finished(self, batch: list[_Call], task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            # Cancelled (shutdown, or before it even started): the callers wait on their own
            # futures, not on this task, so each is settled here or it would wait for ever.
            error = ConnectionError("script batch cancelled")
            for *_, future in batch:
                if not future.done():
                    future.set_exception(error)

    async def _run(self, batch: list[_Call], node: ClusterNode | None) -> None:
        self.batches += 1
        self.calls += len(batch)
        try:
            try:
                replies = await self._send(batch, node)
            except _NotSent:
                await self._reroute(batch)
                return
            again = []
            for call, reply in zip(batch, replies, strict=True):
                # NOSCRIPT: Redis restarted, flushed its scripts, or is a replica that just took over
                # and never saw this one; a redirect: the slot has another master. Either way the
                # script did not run: it runs again on its own, loading the script if needed.
                if isinstance(reply, _AGAIN):
                    again.append(call)
                else:
                    _settle(call[3], reply)
            if again:
                await self._reroute(again)
        except Exception as exc:
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)

    async def _reroute(self, batch: list[_Call]) -> None:
        """Each call on its own, all at once, through redis-py's script call: it loads a script Redis
        lacks, and on a cluster finds the slot's master (following MOVED and ASK, refreshing its map
        after a failover) and retries a lost connection."""

        async def one(call: _Call) -> None:
            script, keys, args, future = call
            try:
                reply = await script(keys=keys, args=args)
            except Exception as exc:
                reply = exc
            _settle(future, reply)

        await asyncio.gather(*(one(call) for call in batch))

    async def _send(self, batch: list[_Call], node: ClusterNode | None) -> list[Any]:
        """The whole batch as one write on one connection, packed by hiredis: redis-py's pipeline
        packs every argument in Python, which was the largest cost on the heartbeat path. Real and
        fakeredis connections alike take the packed stream."""
        payload = b"".join(
            hiredis.pack_command(("EVALSHA", script.sha, len(keys), *keys, *args)) for script, keys, args, _ in batch
        )
        connection = await self._connection(node)
        replies: list[Any] = []
        try:
            await self._exchange(connection, payload, len(batch), replies)
        except (ConnectionError, OSError):
            await self._drop(connection, node)
            if replies:
                raise
            if node is not None:
                raise _NotSent from None
            # Lost before any reply: a connection whose far end went away (a restart, a failover,
            # a proxy in between) looks open until it is used. Once more, at once, on a connection
            # the pool checks first: the same policy as redis-py's retry for every other command
            # (connect.py), with the same caveat that a Redis which ran the batch and died before
            # answering runs it twice.
            connection = await self._connection(node, fresh=True)
            try:
                await self._exchange(connection, payload, len(batch), replies)
            except BaseException:
                await self._drop(connection, node)
                raise
        except BaseException:
            # Cancelled or broken half-way: the connection's replies are out of step with its
            # requests, so it must not be reused.
            await self._drop(connection, node)
            raise
        idle = self._idle.setdefault("" if node is None else node.name, [])
        if len(idle) < KEEP_CONNECTIONS and connection.is_connected and not self._closed:
            idle.append(connection)
        else:
            await self._release(connection, node)
        return replies

    async def _exchange(self, connection: AbstractConnection, payload: bytes, count: int, replies: list[Any]) -> None:
        reader = _hiredis_reader(connection)
        if reader is None:
            await _exchange(connection, payload, count, replies)
        else:
            self.fast_batches += 1
            await _exchange_fast(connection, reader, payload, count, replies)

    async def _release(self, connection: AbstractConnection, node: ClusterNode | None) -> None:
        if node is None:
            await self.redis.connection_pool.release(connection)
        else:
            node.release(connection)  # type: ignore[arg-type]

    async def _drop(self, connection: AbstractConnection, node: ClusterNode | None) -> None:
        await connection.disconnect()
        await self._release(connection, node)

    async def _connection(self, node: ClusterNode | None, fresh: bool = False) -> AbstractConnection:
        """A connection for one batch (to ``node``, on a cluster): one kept from an earlier batch,
        unless ``fresh``."""
        idle = self._idle.get("" if node is None else node.name)
        while idle and not fresh:
            connection = idle.pop()
            if _still_open(connection) and _to_master(connection, self.redis):
                return connection
            # Redis went away since the last batch (restart, failover): drop it, the pool reconnects.
            await self._drop(connection, node)
        if node is not None:
            fresh_one: AbstractConnection = node.acquire_connection()
            try:
                if not fresh_one.is_connected:
                    await fresh_one.connect()  # type: ignore[no-untyped-call]
            except (ConnectionError, TimeoutError, OSError):
                node.release(fresh_one)  # type: ignore[arg-type]
                raise _NotSent from None
            except BaseException:
                node.release(fresh_one)  # type: ignore[arg-type]
                raise
            return fresh_one
        pooled: AbstractConnection = await self.redis.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        return pooled

    async def aclose(self) -> None:
        """Let the batches under way finish (those still waiting after 2 s are cancelled, which
        drops their connections), then hand the kept connections back to the pool (before the
        client closes it). A batch that ends later keeps no connection, which would outlive the
        pool unclosed."""
        self._closed = True
        if self._tasks:
            _, late = await asyncio.wait(list(self._tasks), timeout=2.0)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=2.0)
        idle, self._idle = self._idle, {}
        nodes: dict[str, ClusterNode] = {}
        if self._cluster is not None:
            nodes = {node.name: node for node in self._cluster.get_nodes()}
        for name, connections in idle.items():
            for connection in connections:
                node = nodes.get(name)
                if name and node is None:
                    await connection.disconnect()  # its node left the cluster's map
                else:
                    await self._release(connection, node)


async def _exchange(connection: AbstractConnection, payload: bytes, count: int, replies: list[Any]) -> None:
    """Through redis-py's public connection calls: any connection class, fakeredis included."""
    await connection.send_packed_command(payload, check_health=False)
    for _ in range(count):
        try:
            replies.append(await connection.read_response())
        except ResponseError as exc:  # a reply of its own: the stream stays in step
            replies.append(exc)


def _still_open(connection: AbstractConnection) -> bool:
    """False once the server closed or reset a kept connection (the stream saw EOF or an error)."""
    if not connection.is_connected:
        return False
    stream = getattr(connection, "_reader", None)
    if isinstance(stream, asyncio.StreamReader):
        return not stream.at_eof() and stream.exception() is None
    return True


def _to_master(connection: AbstractConnection, redis: aioredis.Redis) -> bool:
    """False for a kept connection to a master the sentinels no longer name (the pool learns of a new one
    at its next connection, and the wake listener asks every second): a demoted master may still take
    writes until it is reconfigured, and they would be lost."""
    named = getattr(getattr(redis, "connection_pool", None), "master_address", None)
    return named is None or (getattr(connection, "host", None), getattr(connection, "port", None)) == tuple(named)


def _hiredis_reader(connection: AbstractConnection) -> Any:
    """The hiredis reader of a real socket connection, or None (fakeredis, no hiredis, or a
    redis-py whose internals moved: then the public calls above serve, only slower)."""
    if NOT_ENOUGH_DATA is None or not type(connection).__module__.startswith("redis.") or not connection.is_connected:
        return None
    parser = getattr(connection, "_parser", None)
    reader = getattr(parser, "_reader", None)
    if not isinstance(reader, hiredis.Reader) or not hasattr(parser, "read_from_socket"):
        return None
    if getattr(connection, "_writer", None) is None:
        return None
    return reader


async def _exchange_fast(connection: Any, reader: Any, payload: bytes, count: int, replies: list[Any]) -> None:
    """One write and the batch's replies straight from the hiredis reader: redis-py's
    ``send_packed_command`` starts a task per write (``wait_for``) and ``read_response`` enters a
    timeout per reply. Error replies come back as exception objects (the reader's replyError)."""
    async with asyncio.timeout(connection.socket_timeout):
        connection._writer.write(payload)
        await connection._writer.drain()
        while len(replies) < count:
            reply = reader.gets()
            if reply is NOT_ENOUGH_DATA:
                await connection._parser.read_from_socket()
            else:
                replies.append(reply)


def _settle(future: asyncio.Future[Any], reply: Any) -> None:
    # A caller that went away (cancelled request) leaves a cancelled future: nothing to tell it.
    if future.done():
        return
    if isinstance(reply, Exception):
        future.set_exception(reply)
    else:
        future.set_result(reply)
