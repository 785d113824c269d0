"""Presence webhooks: every presence event of every keyset POSTed as JSON to PRESENCE_WEBHOOK_URL.

The presence scripts write each event to its keyset's webhook stream in the same script as the change
it reports (common.lua's ``hook``), so an accepted change always has its event queued. Every process
runs a ``WebhookSender``; for each keyset one of them at a time holds the lease (hook_lease.lua) and
reads the stream through the consumer group ``webhooks`` (store/webhooks.py):

- **Once**: only the holder reads, and an entry is deleted when the receiver has answered 2xx. A
  holder that stops (crash, lost Redis) loses the lease when it runs out; the next one claims what it
  had read but not delivered (``XAUTOCLAIM``) and sends it again: delivery is at least once, and
  exactly once while the receiver answers 2xx in time and no process dies mid-POST.
- **In order per channel**: the events of one channel go one at a time, each only after the one before
  it was delivered or dropped; channels go side by side.
- **Retries**: an attempt that times out (``attempt_timeout``), fails to connect or gets anything but
  2xx is tried again after 1, 2, 4, 8, then every 10 s, until ``retry_for`` seconds after its first
  failure; the next failure drops it, with a log line and ``presence_webhooks_dropped_total``.

Time comes from the server's clock (tests move it) and ``run_once`` makes one pass, so tests inject
time rather than sleep. docs/protocol.md 13 is the contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from presence_server.logs import REDIS_DOWN, RedisOutage
from presence_server.store import PresenceStore
from presence_server.store.fields import (
    EVENT_ACTION,
    EVENT_TIMESTAMP,
    HOOK_AT,
    HOOK_CHANNEL,
    presence_payload,
)
from presence_server.store.webhooks import LEASE_LOST, LEASE_TAKEN, Entry

log = logging.getLogger("presence_server.webhooks")

BACKLOG = 100_000  # events one keyset's stream holds at most; beyond, new ones are counted as dropped
SIGNATURE_HEADER = "X-Presence-Signature"  # "sha256=<hex HMAC-SHA256 of the body with the secret>"
EVENT_ID_HEADER = "X-Presence-Event-Id"  # the event's stream id: unique within its keyset (sub_key)
USER_AGENT = "pubnub-presence-server webhooks"
ATTEMPT_TIMEOUT = 5.0
LEASE_SECONDS = 10.0  # a holder renews its lease on every pass, several times a second
IDLE_RELEASE = 5.0  # a keyset with nothing to send for this long is given back (then looked at by scans)
MAX_QUEUED = 1_000  # events one keyset has read and not yet delivered, at most
SCAN_EVERY = 1.0  # how often every known keyset's stream is looked at (events written by other processes)
HELD_POLL = 0.2  # how often the streams of held keysets are read when nothing nudges
MIN_PASS_GAP = 0.02  # nudges (every presence write) are coalesced into at most this many passes a second
LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


def backoff(attempts: int) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: 1, 2, 4, 8, then 10."""
    return float(min(2 ** (attempts - 1), 10))


def body_of(sub_key: str, fields: dict[str, str]) -> dict[str, Any]:
    """The POST body of one webhook event, in PubNub's legacy presence-webhook shape: the ``-pnpres``
    payload with ``sub_key`` and ``channel``; active/inactive notices carry ``status`` instead."""
    head = {"sub_key": sub_key, "channel": fields[HOOK_CHANNEL]}
    action = fields[EVENT_ACTION]
    if action in ("active", "inactive"):
        return {"action": action, **head, "status": action, "timestamp": int(fields[EVENT_TIMESTAMP])}
    return {"action": action, **head, **presence_payload(fields)}


def signature(secret: str, body: bytes) -> str:
    """The signature header's value: ``sha256=`` and the HMAC-SHA256 of the body, in hex."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(slots=True)
class _Event:
    entry_id: str
    channel: str
    body: bytes
    at: float  # when it happened (server clock, seconds)
    attempts: int = 0
    failing_since: float | None = None
    next_at: float = 0.0


@dataclass(slots=True)
class _Keyset:
    """What this process holds of one keyset whose lease it has."""

    channels: dict[str, deque[_Event]] = field(default_factory=dict)
    busy: set[str] = field(default_factory=set)  # channels with an attempt under way
    size: int = 0
    idle_since: float = 0.0
    unacked: list[str] = field(default_factory=list)  # delivered, but Redis was not told yet

    def add(self, event: _Event) -> None:
        self.channels.setdefault(event.channel, deque()).append(event)
        self.size += 1

    def pop(self, channel: str) -> None:
        queue = self.channels[channel]
        queue.popleft()
        self.size -= 1
        if not queue:
            del self.channels[channel]


class WebhookStats:
    """The webhook metrics, in the app's registry."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.delivered = Counter(
            "presence_webhooks_delivered", "Webhook events the receiver took (2xx)", registry=registry
        )
        self.retried = Counter(
            "presence_webhooks_retried", "Webhook attempts that failed and will be tried again", registry=registry
        )
        self.dropped = Counter(
            "presence_webhooks_dropped",
            "Webhook events given up: retries ran out, or the keyset's stream was full",
            ["reason"],
            registry=registry,
        )
        self.pending = Gauge(
            "presence_webhooks_pending",
            "Webhook events waiting in the streams of the keysets this process delivers (as of its last look)",
            registry=registry,
        )
        self.lag = Histogram(
            "presence_webhooks_delivery_lag_seconds",
            "From a presence event to the receiver's 2xx for it",
            buckets=LAG_BUCKETS,
            registry=registry,
        )


class WebhookSender:
    def __init__(
        self,
        store: PresenceStore,
        clock: Callable[[], float],
        url: str,
        *,
        secret: str = "",
        retry_for: float = 60.0,
        attempt_timeout: float = ATTEMPT_TIMEOUT,
        lease: float = LEASE_SECONDS,
        registry: CollectorRegistry | None = None,
        outage: RedisOutage | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.url = url
        self._secret = secret
        self.retry_for = retry_for
        self.attempt_timeout = attempt_timeout
        self.lease = lease
        self.stats = WebhookStats(registry)
        self.outage = outage if outage is not None else RedisOutage()
        self.consumer = secrets.token_hex(8)  # this process, in the consumer group and the leases
        self._held: dict[str, _Keyset] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        # One pass at a time: two concurrent reads of one stream could queue its entries out of order.
        self._passing = asyncio.Lock()
        self._held_read = float("-inf")  # when (loop time) every held keyset's stream was last read

    def nudge(self, sub_key: str) -> None:
        """A presence write of this process may have queued events of ``sub_key``: look soon."""
        self._dirty.add(sub_key)
        self._wake.set()

    async def run_once(self) -> None:
        """One pass at the clock's current time (every known keyset looked at), then every attempt
        due: each channel's events one after the other, until a channel is empty or waits for a retry.
        Attempts the delivery loop has under way are waited for too."""
        await self._pass(scan=True)
        while self._tasks:
            await asyncio.wait(set(self._tasks))
            self._start(self.clock())
        for sub_key in list(self._held):
            await self._acknowledge(sub_key)

    async def run(self) -> None:
        """Passes until cancelled: at once when nudged (at most one per MIN_PASS_GAP), else every
        HELD_POLL, or SCAN_EVERY while holding nothing."""
        loop = asyncio.get_running_loop()
        scanned = last = float("-inf")
        while True:
            if (since := loop.time() - last) < MIN_PASS_GAP:
                await asyncio.sleep(MIN_PASS_GAP - since)
            self._wake.clear()  # before the pass: a nudge during it makes the next one
            last = loop.time()
            delay = SCAN_EVERY
            try:
                scan = last - scanned >= SCAN_EVERY
                if scan:
                    scanned = last
                await self._pass(scan=scan)
                self.outage.answered()
                delay = self._next_wait()
            except asyncio.CancelledError:
                raise
            except REDIS_DOWN as exc:
                self.outage.failed("a webhook pass", exc, request=False)
            except Exception as exc:
                log.warning("webhook pass failed, retrying: %s", exc, exc_info=exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def _next_wait(self) -> float:
        if not self._held:
            return SCAN_EVERY
        now = self.clock()
        wait = HELD_POLL
        for ks in self._held.values():
            for channel, queue in ks.channels.items():
                if channel not in ks.busy:
                    wait = min(wait, queue[0].next_at - now)
        return max(wait, 0.0)

    async def aclose(self) -> None:
        """Stop: attempts under way are abandoned (their events stay pending, for whichever process
        holds the keyset next), and the leases are given back so that one takes over at once."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        now = self.clock()
        for sub_key in list(self._held):
            with contextlib.suppress(Exception):
                await self._acknowledge(sub_key)
                await self.store.hook_lease(sub_key, self.consumer, now=now, seconds=self.lease, keep=False)
        self._held.clear()
        if self._session is not None:
            await self._session.close()

    # -- one pass -------------------------------------------------------------------------------

    async def _pass(self, *, scan: bool) -> None:
        """Read what is new for the keysets that may have some, then start what is due. Held keysets are
        read every HELD_POLL (and when nudged); a nudged keyset not held is leased only if its stream has
        events (a heartbeat that changed nothing nudges too); every keyset with events, at each scan."""
        async with self._passing:
            now, ticks = self.clock(), asyncio.get_running_loop().time()
            nudged, self._dirty = self._dirty, set()
            names = nudged & set(self._held)
            if scan or ticks - self._held_read >= HELD_POLL:
                names |= set(self._held)
                self._held_read = ticks
            if scan:
                names |= await self._scan()
            others = sorted(nudged - names)
            if others:
                names |= {k for k, n in zip(others, await self.store.hook_backlogs(others), strict=True) if n}
            await asyncio.gather(*(self._refill(sub_key, now) for sub_key in sorted(names)))
            self._start(now)

    async def _scan(self) -> set[str]:
        """Keysets with events waiting; the pending gauge and the events full streams lost."""
        known = await self.store.hook_keysets()
        backlogs = dict(zip(known, await self.store.hook_backlogs(known), strict=True))
        self.stats.pending.set(sum(backlogs[sub_key] for sub_key in self._held if sub_key in backlogs))
        for sub_key in self._held:
            lost = await self.store.hook_lost(sub_key)
            if lost:
                self.stats.dropped.labels("backlog").inc(lost)
                log.warning(
                    "webhooks: %d events of keyset %r dropped, its stream was full (%d)", lost, sub_key, BACKLOG
                )
        return {sub_key for sub_key, waiting in backlogs.items() if waiting}

    async def _refill(self, sub_key: str, now: float) -> None:
        await self._acknowledge(sub_key)
        status = await self.store.hook_lease(sub_key, self.consumer, now=now, seconds=self.lease)
        if status == LEASE_LOST:
            self._held.pop(sub_key, None)  # another process took over; what it claims it sends
            return
        ks = self._held.get(sub_key)
        if ks is None or status == LEASE_TAKEN:
            ks = self._held[sub_key] = _Keyset(idle_since=now)
            self._queue(sub_key, ks, await self.store.hook_claim(sub_key, self.consumer))
        if ks.size < MAX_QUEUED:
            self._queue(sub_key, ks, await self.store.hook_read(sub_key, self.consumer, MAX_QUEUED - ks.size))
        if ks.size:
            ks.idle_since = now
        elif now - ks.idle_since >= IDLE_RELEASE and not ks.busy:
            del self._held[sub_key]
            await self.store.hook_lease(sub_key, self.consumer, now=now, seconds=self.lease, keep=False)

    async def _acknowledge(self, sub_key: str) -> None:
        """Tell Redis of the keyset's events delivered (or dropped) since the last call."""
        ks = self._held.get(sub_key)
        if ks is not None and ks.unacked:
            done, ks.unacked = ks.unacked, []
            try:
                await self.store.hook_done(sub_key, done)
            except BaseException:
                ks.unacked = done + ks.unacked  # told next time
                raise

    def _queue(self, sub_key: str, ks: _Keyset, entries: Iterable[Entry]) -> None:
        for entry_id, fields in entries:
            try:
                body = orjson.dumps(body_of(sub_key, fields))
                event = _Event(entry_id, fields[HOOK_CHANNEL], body, int(fields[HOOK_AT]) / 1000)
            except (KeyError, ValueError, orjson.JSONEncodeError):
                log.warning("webhooks: unreadable event %s of keyset %r skipped", entry_id, sub_key)
                ks.unacked.append(entry_id)
                continue
            ks.add(event)

    def _start(self, now: float) -> None:
        """A task for each channel whose next event is due and that has none under way."""
        for sub_key, ks in self._held.items():
            for channel, queue in ks.channels.items():
                if channel in ks.busy or queue[0].next_at > now:
                    continue
                ks.busy.add(channel)
                task = asyncio.create_task(self._drain(sub_key, ks, channel))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    # -- one channel's events -------------------------------------------------------------------

    async def _drain(self, sub_key: str, ks: _Keyset, channel: str) -> None:
        """The channel's events one after the other, until none is left or one waits for a retry."""
        try:
            while self._held.get(sub_key) is ks and channel in ks.channels:
                event = ks.channels[channel][0]  # only this task takes from the channel's queue
                if event.next_at > self.clock() or not await self._attempt(sub_key, channel, event):
                    return
                ks.pop(channel)
                ks.unacked.append(event.entry_id)  # Redis is told with the next pass, in one call
        finally:
            ks.busy.discard(channel)  # a retry it waits for is started by the pass after its time

    async def _attempt(self, sub_key: str, channel: str, event: _Event) -> bool:
        """One POST of the event; whether it is finished with (delivered, or dropped)."""
        delivered = await self._post(event)
        now = self.clock()
        if delivered:
            self.stats.delivered.inc()
            self.stats.lag.observe(max(0.0, now - event.at))
            return True
        event.attempts += 1
        if event.failing_since is None:
            event.failing_since = now
        if now - event.failing_since < self.retry_for:
            self.stats.retried.inc()
            event.next_at = now + backoff(event.attempts)
            return False
        self.stats.dropped.labels("retries").inc()
        log.warning(
            "webhook dropped after %d attempts over %.0f s: keyset %r, channel %r, event %s",
            event.attempts,
            now - event.failing_since,
            sub_key,
            channel,
            event.entry_id,
        )
        return True

    async def _post(self, event: _Event) -> bool:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={"User-Agent": USER_AGENT}, connector=aiohttp.TCPConnector(limit=100)
            )
        headers = {"Content-Type": "application/json", EVENT_ID_HEADER: event.entry_id}
        if self._secret:
            headers[SIGNATURE_HEADER] = signature(self._secret, event.body)
        try:
            async with self._session.post(
                self.url,
                data=event.body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.attempt_timeout),
                allow_redirects=False,
            ) as response:
                return 200 <= response.status < 300
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False
