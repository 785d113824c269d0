"""The wake listener: this process's sharded pub/sub subscriptions, handed to the long-poll owner.

Each keyset has a shard channel of its own (``KeysetKeys.wake``, in the keyset's slot): scripts
SPUBLISH the names whose logs grew there (common.lua ``publish_wakes``; the message's fields are
``WAKE_*`` of fields.py), leaves name the uuid that left, resets the keyset, group changes the group,
revocations the token. The admin clock's moves go out on one more shard channel (``clock_channel``).
On a Redis Cluster a wake-up therefore reaches only the master that owns the keyset (a classic PUBLISH
is copied to every node of the cluster), and this process listens on one connection per master that
owns a keyset it serves.

A process listens to the keysets it needs: the clock, the ``always`` ones (Access Manager keysets,
whose revocations its token cache must hear), and each keyset it answers a subscribe for, from the
first one on (``watch``; the first poll of a keyset waits for the subscription, the next ones pay a set
lookup). At most ``max_keysets`` are kept: past that, the longest unused keyset without a held poll
is dropped, and its refresh memo with it.

After any lost connection, slot move or failover, everything is subscribed again from a fresh map of
the cluster, every held poll reads again and ``on_connect`` runs (wake-ups may have been missed). What
a wake-up does to held polls is longpoll.py's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster

from presence_server.store.connect import refresh_slots, sentinel_master
from presence_server.store.fields import (
    WAKE_CLOCK,
    WAKE_ENTRY,
    WAKE_FAULTS,
    WAKE_KEYSET,
    WAKE_LEFT,
    WAKE_NAMES,
    WAKE_RESET,
    WAKE_REVOKED,
)
from presence_server.store.longpoll import LongPolls, Published

log = logging.getLogger("presence_server.bus")

MAX_KEYSETS = 10_000
WATCH_WAIT = 2.0  # seconds the first poll of a keyset waits for its subscription (then reads anyway)
MAX_BACKOFF = 1.0  # seconds between attempts to subscribe again (a failover takes a few)
# What a cluster node's own client takes from the cluster's connection settings (TLS ones too).
_NODE_OPTIONS = (
    "host",
    "port",
    "username",
    "password",
    "credential_provider",
    "decode_responses",
    "encoding",
    "encoding_errors",
    "socket_connect_timeout",
    "socket_timeout",
    "socket_keepalive",
)


class SubscriptionLost(Exception):
    """Redis ended a subscription (a slot moved) or confirmed one again (a silent reconnection)."""


class _Link:
    """One pub/sub connection: to the single Redis, or to one cluster master."""

    def __init__(self, name: str, pubsub: PubSub, client: aioredis.Redis | None) -> None:
        self.name = name
        self.pubsub = pubsub
        self.client = client  # a cluster node's own client, closed with the link
        self.reader: asyncio.Task[None] | None = None
        # One (un)subscribe at a time: redis-py's PubSub opens its connection at its first command, and
        # two first commands at once would each open one, the one not kept never read.
        self.lock = asyncio.Lock()

    async def aclose(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            await asyncio.wait({self.reader}, timeout=1.0)
        # Bounded: closing a pub/sub whose client was already closed must not hang shutdown.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.pubsub.aclose(), 1.0)  # type: ignore[no-untyped-call]
        if self.client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.client.aclose(), 1.0)


class WakeBus:
    def __init__(
        self,
        redis: aioredis.Redis,
        channel_of: Callable[[str], str],
        clock_channel: str,
        polls: LongPolls,
        *,
        always: Iterable[str] = (),
        max_keysets: int = MAX_KEYSETS,
        on_clock: Callable[[float], None] | None = None,
        on_connect: Callable[[], Awaitable[None]] | None = None,
        on_revoke: Callable[[str, str | None], None] | None = None,
        on_faults: Callable[[], None] | None = None,
    ) -> None:
        """``channel_of`` names a keyset's shard channel. ``on_clock`` gets each announced admin clock
        offset; ``on_connect`` runs at each (re)connection, to read again what may have been announced
        while this process was away; ``on_revoke`` gets (subscribe key, token id) for each revoked Access
        Manager token, (subscribe key, None) when a keyset was reset."""
        self.redis = redis
        self.channel_of = channel_of
        self.clock_channel = clock_channel
        self.polls = polls
        self.max_keysets = max_keysets
        self.on_clock = on_clock
        self.on_connect = on_connect
        self.on_revoke = on_revoke
        self.on_faults = on_faults  # the admin API's fault rules changed
        self.stopped = False
        self.restarts = 0  # times everything was subscribed again after a failure
        self._always = set(always)
        self._keysets: OrderedDict[str, str] = OrderedDict()  # watched keyset -> its channel, least used first
        self._by_channel: dict[str, str] = {}  # channel -> keyset
        self._live: set[str] = set()  # channels Redis confirmed on the current links
        self._sent: set[str] = set()  # channels asked for on the current links
        self._confirmed: dict[str, asyncio.Future[None]] = {}  # channel -> resolved once Redis confirms it
        self._links: dict[str, _Link] = {}
        self._connected = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._lost: asyncio.Future[None] | None = None
        for sub_key in self._always:
            self._want(sub_key)

    @property
    def keysets(self) -> int:
        """How many keysets this process listens to."""
        return len(self._keysets)

    def hears(self, sub_key: str) -> bool:
        """Whether Redis confirmed this process's subscription to the keyset's wake-ups."""
        channel = self._keysets.get(sub_key)
        return channel is not None and channel in self._live

    async def announce_clock(self, offset: float) -> None:
        """Tell every process the admin clock's new offset."""
        await self.redis.spublish(self.clock_channel, orjson.dumps({WAKE_CLOCK: offset}))

    async def announce(self, sub_key: str, names: list[str]) -> None:
        """Tell every process's waiters (this one's included, through Redis) to read ``names`` again."""
        await self.redis.spublish(self.channel_of(sub_key), orjson.dumps({WAKE_KEYSET: sub_key, WAKE_NAMES: names}))

    # -- which keysets are listened to -------------------------------------------------------------

    async def watch(self, sub_key: str) -> None:
        """Return once this process hears ``sub_key``'s wake-ups (at once when it already does). While
        Redis cannot be reached, after WATCH_WAIT seconds: the caller's read then fails or is correct
        anyway (a wake-up only shortens a wait)."""
        channel = self._keysets.get(sub_key)
        if channel is not None and channel in self._live:
            self._keysets.move_to_end(sub_key)
            return
        channel = self._want(sub_key)
        confirmed = self._confirmed.get(channel)
        if confirmed is None:
            confirmed = self._confirmed[channel] = asyncio.get_running_loop().create_future()
        if self._connected:
            await self._subscribe(channel)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(confirmed), WATCH_WAIT)

    def _want(self, sub_key: str) -> str:
        channel = self._keysets.get(sub_key)
        if channel is None:
            channel = self._keysets[sub_key] = self.channel_of(sub_key)
            self._by_channel[channel] = sub_key
            self._evict()
        else:
            self._keysets.move_to_end(sub_key)
        return channel

    def _evict(self) -> None:
        """Past ``max_keysets``, drop the least used keysets that hold no poll (never an ``always`` one)."""
        excess = len(self._keysets) - self.max_keysets
        if excess <= 0:
            return
        for sub_key in list(self._keysets):
            if excess <= 0:
                return
            if sub_key in self._always or self.polls.holds(sub_key):
                continue
            channel = self._keysets.pop(sub_key)
            del self._by_channel[channel]
            self._confirmed.pop(channel, None)
            self._sent.discard(channel)  # wanted again before the SUNSUBSCRIBE below: subscribed again
            self._live.discard(channel)
            self.polls.forget(sub_key, None)  # its memo would no longer hear of leaves
            excess -= 1
            if self._connected:
                task = asyncio.ensure_future(self._unsubscribe(channel))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    # -- the listener ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Listen until cancelled. After a lost connection every waiter is woken to re-read."""
        # redis-py can swallow a cancellation (or turn it into a ConnectionError) inside its reads,
        # so the loop does not rely on it: it also checks, at every step, whether it should stop.
        backoff = 0.1
        failing = False
        while not self._should_stop():
            lost = self._lost = asyncio.get_running_loop().create_future()
            try:
                await self._connect()
                if lost.done():
                    lost.result()  # a subscription failed: raises why
                if self.on_connect is not None:
                    # Whatever was announced while we were away (the admin clock) is read again.
                    await self.on_connect()
                backoff = 0.1
                self.polls.wake_all()
                if failing:
                    log.info("wake-up listener subscribed again")
                failing = False
                while not self._should_stop():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(lost), 1.0)
                        lost.result()  # raises what ended a link
                    await self.check_master()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._should_stop():
                    return
                # Said once per outage: while Redis (or a master) is away, this retries every second.
                if not failing:
                    log.warning("wake-up listener lost its connection, subscribing again: %s", exc)
                failing = True
                self.restarts += 1
                self.polls.wake_all()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
            finally:
                if lost.done() and not lost.cancelled():
                    lost.exception()  # retrieved: a failure after the loop moved on is not "never retrieved"
                await self._disconnect()

    async def check_master(self) -> None:
        """Behind Sentinel, raise SubscriptionLost once the sentinels name another master than the one
        this listener is subscribed on. A master demoted to a replica (a failover while it was alive,
        ``SENTINEL FAILOVER``) keeps its pub/sub clients, but the scripts now run, and publish, on the
        new master. Asked once a second; sentinels that do not answer are no reason to start over."""
        named = await sentinel_master(self.redis)
        if named is None:
            return
        for link in self._links.values():
            connection = link.pubsub.connection
            if connection is not None and (connection.host, connection.port) != named:
                now_on = f"{connection.host}:{connection.port}"
                raise SubscriptionLost(f"the sentinels name {named[0]}:{named[1]} the master; subscribed on {now_on}")

    def _should_stop(self) -> bool:
        task = asyncio.current_task()
        return self.stopped or (task is not None and task.cancelling() > 0)

    async def _connect(self) -> None:
        if isinstance(self.redis, RedisCluster):
            # A fresh map of the slots: after a failover the keysets have other masters.
            await refresh_slots(self.redis)
        self._connected = True
        for channel in [self.clock_channel, *self._keysets.values()]:
            self._confirmed.setdefault(channel, asyncio.get_running_loop().create_future())
            await self._subscribe(channel)

    async def _disconnect(self) -> None:
        self._connected = False
        self._live.clear()
        self._sent.clear()
        links, self._links = list(self._links.values()), {}
        for link in links:
            await link.aclose()
        for channel, confirmed in list(self._confirmed.items()):
            if confirmed.done():  # a new future for the next links' confirmation
                del self._confirmed[channel]

    async def _subscribe(self, channel: str) -> None:
        if channel in self._sent:
            return
        self._sent.add(channel)
        try:
            link = await self._link_for(channel)
            async with link.lock:
                await link.pubsub.ssubscribe(channel)
        except Exception as exc:
            self._lose(exc)

    async def _unsubscribe(self, channel: str) -> None:
        with contextlib.suppress(Exception):
            link = await self._link_for(channel)
            async with link.lock:
                if channel not in self._by_channel:  # not wanted again meanwhile
                    await link.pubsub.sunsubscribe(channel)

    async def _link_for(self, channel: str) -> _Link:
        """The link to the node that owns ``channel``, opened (and its reader started) on first use."""
        if isinstance(self.redis, RedisCluster):
            node = self.redis.get_node_from_key(channel)
            name = node.name
        else:
            node, name = None, ""
        link = self._links.get(name)
        if link is None:
            if node is None:
                link = _Link(name, self.redis.pubsub(), None)
            else:
                options: dict[str, Any] = {k: v for k, v in node.connection_kwargs.items() if k in _NODE_OPTIONS}
                options.update({k: v for k, v in node.connection_kwargs.items() if k.startswith("ssl")})
                pool = aioredis.ConnectionPool(connection_class=node.connection_class, **options)
                client = aioredis.Redis.from_pool(pool)
                link = _Link(name, client.pubsub(), client)
            self._links[name] = link
            link.reader = asyncio.ensure_future(self._read(link))
        return link

    def _lose(self, exc: BaseException) -> None:
        if self._lost is not None and not self._lost.done():
            self._lost.set_exception(exc)

    async def _read(self, link: _Link) -> None:
        try:
            while True:
                if not link.pubsub.subscribed:
                    await asyncio.sleep(0.05)  # the first SSUBSCRIBE is on its way
                    continue
                message = await link.pubsub.get_message(timeout=1.0)
                if message is not None:
                    self._receive(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._lose(exc)

    def _receive(self, message: dict[str, Any]) -> None:
        kind, channel = message["type"], message["channel"]
        if kind == "smessage":
            self._dispatch(message["data"])
        elif kind == "ssubscribe":
            if channel in self._live:
                raise SubscriptionLost(f"{channel} was subscribed again: the connection was lost")
            self._live.add(channel)
            confirmed = self._confirmed.get(channel)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)
        elif kind == "sunsubscribe" and (channel in self._by_channel or channel == self.clock_channel):
            # Not asked for: the channel's slot moved to another node.
            raise SubscriptionLost(f"Redis ended the subscription of {channel} (its slot moved)")

    def _dispatch(self, data: str | bytes) -> None:
        try:
            body = orjson.loads(data)
            if WAKE_CLOCK in body:
                if self.on_clock is not None:
                    self.on_clock(float(body[WAKE_CLOCK]))
                return
            if WAKE_FAULTS in body:
                if self.on_faults is not None:
                    self.on_faults()
                return
            sub_key = body[WAKE_KEYSET]
            names = body.get(WAKE_NAMES) or ()
            left = body.get(WAKE_LEFT)
            revoked = body.get(WAKE_REVOKED)
            published = Published.of(body.get(WAKE_ENTRY))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            log.warning("ignoring a malformed wake-up: %r", data)
            return
        if self.on_revoke is not None and (revoked is not None or WAKE_RESET in body):
            self.on_revoke(sub_key, None if revoked is None else str(revoked))
        if left is not None or WAKE_RESET in body:
            self.polls.forget(sub_key, left)
        if names:
            self.polls.notify(sub_key, names, published)
