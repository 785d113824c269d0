"""Wake-ups for waiting long-polls: one Redis pub/sub listener per process, fanned out in memory.

Scripts publish the names whose logs grew (common.lua ``publish_wakes``). A waiting poll never holds
a Redis connection: it registers the names it reads and sleeps on an asyncio.Event. A wake-up only
says "read again"; the log read by cursor is what guarantees nothing is lost, so a missed or extra
wake-up costs latency, never data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Hashable, Iterable
from types import TracebackType
from typing import Any

import orjson
import redis.asyncio as aioredis

from presence_server.store.subscription import split_presence

log = logging.getLogger("presence_server.bus")

GROUP_CHANGED = "\x00group:"


class Waiter:
    """One waiting poll: the names it reads, the wildcard prefixes it matches, and whether it was woken."""

    def __init__(self, bus: WakeBus, sub_key: str) -> None:
        self._bus = bus
        self.sub_key = sub_key
        self.names: frozenset[str] = frozenset()
        self.prefixes: tuple[str, ...] = ()
        self.woken = False  # set by a wake-up, cleared by the poll before it reads again
        self._future: asyncio.Future[bool] | None = None  # while the poll waits
        self.marker: int | None = None  # the store's read marker when a wake-up came
        # What the poll will read once woken: waiters with equal keys are read for once, by the
        # bus, before they are woken (see WakeBus.notify); the result waits in ``result``.
        self.read_key: Hashable | None = None
        self.reader: Callable[[int], Awaitable[Any]] | None = None
        self.result: Any = None

    def wake(self, marker: int, result: Any = None) -> None:
        self.marker = marker
        self.result = result
        self.signal()

    def signal(self) -> None:
        """Woken: a wait under way returns True now, the next one at once."""
        self.woken = True
        future = self._future
        if future is not None and not future.done():
            future.set_result(True)

    def clear(self) -> None:
        self.woken = False

    def read_ahead(self, key: Hashable, reader: Callable[[int], Awaitable[Any]]) -> None:
        """Let the bus do this poll's next read when it wakes it: ``reader(marker)`` must read
        everything written before the wake-up; polls with an equal ``key`` share one call."""
        self.read_key, self.reader = key, reader

    def take_result(self) -> Any:
        result, self.result = self.result, None
        return result

    def watch(self, names: Iterable[str], prefixes: Iterable[str] = ()) -> None:
        """Replace what this waiter is woken for."""
        self._bus._unregister(self)
        self.names = frozenset(names)
        self.prefixes = tuple(prefixes)
        self._bus._register(self)

    async def wait(self, seconds: float) -> bool:
        """Wait until woken or ``seconds`` pass; True when woken.

        A bare future and one timer: neither wait_for (a task of its own before Python 3.12) nor an
        Event under asyncio.timeout (a context object, a deque and a future), paid by each of the
        thousands of polls one publish wakes.
        """
        if self.woken:
            return True
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._future = future
        expiry = loop.call_later(seconds, _expire, future)
        try:
            return await future
        finally:
            expiry.cancel()
            self._future = None

    def __enter__(self) -> Waiter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Runs on cancellation too (client went away): the poll's registration goes with it.
        self._bus._unregister(self)


def _expire(future: asyncio.Future[bool]) -> None:
    if not future.done():
        future.set_result(False)


class WakeBus:
    def __init__(self, redis: aioredis.Redis, channel: str, read_marker: Callable[[], int]) -> None:
        self.redis = redis
        self.channel = channel
        # The store's read marker (PresenceStore.read_marker), taken when a wake-up is dispatched.
        self.read_marker = read_marker
        self._by_name: dict[tuple[str, str], set[Waiter]] = defaultdict(set)
        self._by_prefix: dict[str, set[Waiter]] = defaultdict(set)
        self.waiting = 0
        self.closing = False
        self.stopped = False
        self.on_clock: Callable[[float], None] | None = None
        self.on_connect: Callable[[], Awaitable[None]] | None = None
        self._reads: set[asyncio.Task[None]] = set()

    def close(self) -> None:
        """Shutting down: wake every waiting poll so it answers now and its client reconnects elsewhere."""
        self.closing = True
        self.wake_all()

    def waiter(self, sub_key: str) -> Waiter:
        return Waiter(self, sub_key)

    def notify(self, sub_key: str, names: Iterable[str]) -> None:
        """Wake every local waiter that reads one of ``names`` in the keyset.

        Waiters that said what they will read (``Waiter.read_ahead``) are read for first, once per
        distinct read, and woken with the result: a publish to a channel thousands of polls hold
        then costs one read and one task step per poll, not a wake-up, a read and another wake-up.
        """
        prefixed = self._by_prefix.get(sub_key, ())
        marker = self.read_marker()  # reads started after this see every entry the wake-up is for
        woken: set[Waiter] = set()
        for name in names:
            woken.update(self._by_name.get((sub_key, name), ()))
            if prefixed:
                base = split_presence(name)[0]
                woken.update(waiter for waiter in prefixed if any(base.startswith(p) for p in waiter.prefixes))
        groups: dict[Hashable, list[Waiter]] = {}
        for waiter in woken:
            if waiter.woken or waiter.read_key is None or waiter.reader is None:
                # Woken already and not yet read: it now reads for itself, after this marker, and
                # so sees both entries (a result waiting for it might lack the newer one).
                waiter.wake(marker)
            else:
                groups.setdefault(waiter.read_key, []).append(waiter)
        for group in groups.values():
            reader = group[0].reader
            assert reader is not None
            task = asyncio.ensure_future(self._read_then_wake(reader, marker, group))
            self._reads.add(task)
            task.add_done_callback(self._reads.discard)

    async def _read_then_wake(self, reader: Callable[[int], Awaitable[Any]], marker: int, group: list[Waiter]) -> None:
        try:
            result = await reader(marker)
        except Exception:  # each poll reads for itself and meets the error there
            result = None
        for waiter in group:
            waiter.wake(marker, result)

    async def aclose(self) -> None:
        """Stop the reads made for woken polls (at shutdown, before the Redis client closes): a read
        still under way would otherwise open a connection on a client that is being closed."""
        reads = list(self._reads)
        for task in reads:
            task.cancel()
        if reads:
            await asyncio.wait(reads, timeout=2.0)

    def wake_all(self) -> None:
        for waiters in self._by_name.values():
            for waiter in waiters:
                waiter.signal()
        for waiters in self._by_prefix.values():
            for waiter in waiters:
                waiter.signal()

    async def announce_clock(self, offset: float) -> None:
        """Tell every process the admin clock's new offset."""
        await self.redis.publish(self.channel, orjson.dumps({"clock": offset}))

    async def announce(self, sub_key: str, names: list[str]) -> None:
        """Tell every process's waiters (this one's included, through Redis) to read ``names`` again."""
        await self.redis.publish(self.channel, orjson.dumps({"k": sub_key, "n": names}))

    async def run(self) -> None:
        """Listen until cancelled. After a lost connection every waiter is woken to re-read."""
        # redis-py can swallow a cancellation (or turn it into a ConnectionError) inside its reads,
        # so the loop does not rely on it: it also checks, at every step, whether it should stop.
        backoff = 0.1
        while not self._should_stop():
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                backoff = 0.1
                self.wake_all()
                if self.on_connect is not None:
                    # Whatever was announced while we were away (the admin clock) is read again.
                    await self.on_connect()
                while not self._should_stop():
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._dispatch(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._should_stop():
                    return
                log.warning("wake-up listener lost its connection, reconnecting: %s", exc)
                self.wake_all()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                # Bounded: closing a pub/sub whose client was already closed must not hang shutdown.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), 1.0)  # type: ignore[no-untyped-call]

    def _should_stop(self) -> bool:
        task = asyncio.current_task()
        return self.stopped or (task is not None and task.cancelling() > 0)

    def _dispatch(self, data: str | bytes) -> None:
        try:
            body = orjson.loads(data)
            if "clock" in body:
                if self.on_clock is not None:
                    self.on_clock(float(body["clock"]))
                return
            sub_key, names = body["k"], body["n"]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("ignoring a malformed wake-up: %r", data)
            return
        self.notify(sub_key, names)

    def _register(self, waiter: Waiter) -> None:
        for name in waiter.names:
            self._by_name[(waiter.sub_key, name)].add(waiter)
        if waiter.prefixes:
            self._by_prefix[waiter.sub_key].add(waiter)
        self.waiting += 1

    def _unregister(self, waiter: Waiter) -> None:
        if not waiter.names and not waiter.prefixes:
            return
        for name in waiter.names:
            key = (waiter.sub_key, name)
            waiters = self._by_name.get(key)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._by_name[key]
        prefixed = self._by_prefix.get(waiter.sub_key)
        if prefixed is not None:
            prefixed.discard(waiter)
            if not prefixed:
                del self._by_prefix[waiter.sub_key]
        waiter.names, waiter.prefixes = frozenset(), ()
        self.waiting -= 1
