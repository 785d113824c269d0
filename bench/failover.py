"""Kill -9 a Redis master under load and measure what the clients saw (issue 13, "Failover").

One server (the app, in this process, on a real aiohttp TCP site, with an injected FakeClock and no
sweeper loop) on a Redis Cluster or a Sentinel-managed Redis of its own (tests/helpers/topologies.py).
The load, on one keyset (``demo``) and one channel (``ch``):

- ``--users`` users heartbeating every ``HEARTBEAT_EVERY`` (presence timeout 300 s, a state each);
- ten leavers who heartbeat once (timeout 60 s) at the start and then stop;
- a watcher long-polling ``ch-pnpres``, a reader long-polling ``ch``, a publisher publishing to ``ch``
  every ``PUBLISH_EVERY``;
- in the last ``LATE_WINDOW`` before the kill, new users heartbeating once each, one after another:
  the writes most likely to be acknowledged by the old master and never reach its replica.

After ``--seconds`` of load the master of the keyset's slot (the cluster) or the master (Sentinel) is
killed with SIGKILL, and the load goes on until every request has succeeded for ``SUSTAINED`` (at most
``RECOVER_WITHIN``). Then: here_now; one more heartbeat for each late user the failover lost; the
channel's history; the clock moved 100 s on and two sweeps, after which the leavers (and only they)
have timed out, once each.

``--stall-replica`` makes the replica fall behind for the last LATE_WINDOW (Stall): what asynchronous
replication loses when the old master dies with writes its replica never got.

Every request has the 10 s timeout of a PubNub SDK's non-subscribe calls. A failed request is one
answered with anything but a 200: a 503 with PubNub's JSON error body is what the server should answer
while Redis cannot; anything else (another status, a body that is not that JSON, a client-side timeout,
a connection reset) is a fault. tests/test_failover.py runs ``failover`` and asserts on its ``Result``.

The FakeClock follows real time while the load runs (a ticker moves it), so timetokens move on as
they do in production. With a frozen clock every timetoken would be the last one plus one, and a
new master that lost the last few would hand them out again, for other messages; a subscriber's cursor
from the old master would be ahead of it (answered as a cursor from the future, docs/protocol.md 2.2.2).

    python -m bench.failover [--topology cluster|sentinel|both] [--users N] [--seconds S] [--runs R]
                             [--stall-replica]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import os
import signal
import statistics
import uuid as uuids
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
import orjson
import redis
from aiohttp import hdrs, web
from redis.asyncio.sentinel import Sentinel
from redis.crc import key_slot
from yarl import URL

from presence_server.app import SWEEPER, create_app
from presence_server.config import Settings
from presence_server.context import REDIS
from presence_server.store import open_redis
from presence_server.store.keys import KeysetKeys, keysets_due
from tests.helpers.app import FakeClock, listening
from tests.helpers.http import target
from tests.helpers.topologies import HOST, Cluster, SentinelSet, redis_cluster, redis_sentinel

TOPOLOGIES = ("cluster", "sentinel")
SUB_KEY = "demo"
CHANNEL = "ch"
WATCHED = CHANNEL + "-pnpres"
SUBSCRIBE = f"/v2/subscribe/{SUB_KEY}"
PRESENCE = f"/v2/presence/sub-key/{SUB_KEY}/channel"
PUBLISH = f"/publish/pub-key/{SUB_KEY}/0/{CHANNEL}/0"
HISTORY = f"/v3/history/sub-key/{SUB_KEY}/channel"
HISTORY_PAGE = 100

CLIENT_TIMEOUT = 10.0  # a PubNub SDK's timeout for every request but subscribe
HOLD = 1.0  # the server's long-poll hold: a held poll answers well inside the client's timeout
SUSTAINED = 1.0  # recovered: every request succeeded for this long
RECOVER_WITHIN = 30.0
USER_TIMEOUT = 300
LEAVER_TIMEOUT = 60
LEAVERS = 10
SWEEP_AFTER = 100.0  # past the leavers' timeout, well inside everyone else's
HEARTBEAT_EVERY = 0.25
PUBLISH_EVERY = 0.05
LATE_WINDOW = 0.5
# More than a loopback link's socket buffers hold (net.ipv4.tcp_rmem's and tcp_wmem's maxima are 32 and
# 4 MiB on Linux by default), far less than the replica output buffer's limits (256 MiB hard).
FILLER = 48 * 1024 * 1024
TICK = 0.02
READER = "reader"
WATCHER = "watcher"

# What a request's answer was, when it was not a 200: PubNub's JSON 503 in the shape of its route
# (docs/protocol.md 1.5, 2.9), or (a defect, counted apart) a publish's 503 in the error object of the
# other routes.
UNAVAILABLE = "503"
PUBLISH_AS_OBJECT = "503 as object"


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One request of the load: what it was, when it started and ended (loop time), and its failure."""

    kind: str  # heartbeat, late-join, publish, subscribe (the reader), presence (the watcher)
    started: float
    ended: float
    failure: str | None  # None: a 200; UNAVAILABLE: a JSON 503; else what went wrong
    detail: str = ""  # the body of a failure that is not UNAVAILABLE


@dataclasses.dataclass
class Result:
    """What one run saw; times relative to the kill."""

    topology: str
    stalled: bool  # the replica fell behind before the kill (Stall)
    killed: int  # the port of the killed master
    promoted: int  # the port of the master after the failover
    globals_with_keyset: bool  # the global due index lived on the killed master too
    kill_at: float
    outcomes: list[Outcome]
    recovered_at: float | None  # loop time after which every request succeeded; None: not within the bound
    users: dict[str, dict[str, Any]]  # the heartbeating users and their states
    leavers: list[str]
    published: dict[int, str | None]  # message number -> its failure (None: acknowledged)
    delivered: list[int]  # message numbers as the reader got them
    latencies: list[tuple[float, float]]  # (sent, received) of each message the reader got while polling
    stored: list[int]  # message numbers in the channel's history after the failover
    events: list[dict[str, Any]]  # the watcher's presence events
    present: dict[str, Any]  # here_now after recovery: uuid -> state (None without one)
    late_tried: list[str]
    late_acknowledged: list[str]
    late_lost: list[str]  # acknowledged, then not present after the failover
    late_repaired: list[str]  # of those, present again after one more heartbeat
    sweeps: tuple[int, int]
    sentinels: list[int] | None  # behind Sentinel: the ports of the sentinels the client asks, at the end

    @property
    def failures(self) -> Counter[str]:
        return Counter(o.failure for o in self.outcomes if o.failure is not None)

    @property
    def acknowledged(self) -> set[int]:
        return {n for n, failure in self.published.items() if failure is None}

    @property
    def lost(self) -> list[int]:
        """Messages acknowledged and never delivered."""
        return sorted(self.acknowledged - set(self.delivered))

    @property
    def unstored(self) -> list[int]:
        """Messages acknowledged and missing from history after the failover."""
        return sorted(self.acknowledged - set(self.stored))

    def joined_twice(self) -> list[str]:
        """Users whose join was announced twice: once by the old master, again after the new one lost it."""
        joins = Counter(e["uuid"] for e in self.events if e.get("action") == "join")
        return sorted(uuid for uuid, count in joins.items() if count > 1)

    @property
    def duplicates(self) -> list[int]:
        return sorted(n for n, count in Counter(self.delivered).items() if count > 1)

    @property
    def unknown(self) -> list[int]:
        """Messages delivered and never sent."""
        return sorted(set(self.delivered) - set(self.published))

    def delivery(self, after: bool) -> tuple[float, float] | None:
        """Median and longest time from a publish's request to the reader's answer holding it, for the
        messages sent before the kill or after recovery: with wake-ups lost, the reader would get
        them only when its hold ran out (HOLD)."""
        if self.recovered_at is None:
            return None
        times = sorted(
            got - sent for sent, got in self.latencies if (sent > self.recovered_at if after else got < self.kill_at)
        )
        return (statistics.median(times), times[-1]) if times else None

    def timeouts(self) -> Counter[str]:
        return Counter(e["uuid"] for e in self.events if e.get("action") == "timeout")

    def failed_between(self) -> tuple[float, float] | None:
        ends = [o.ended - self.kill_at for o in self.outcomes if o.failure is not None]
        return (min(ends), max(ends)) if ends else None

    def max_latency(self, *kinds: str) -> float:
        return max((o.ended - o.started for o in self.outcomes if o.kind in kinds), default=0.0)

    def figures(self) -> list[tuple[str, str]]:
        """The run's figures as (name, value) rows."""
        failed = self.failed_between()
        recovered = "not within the bound" if self.recovered_at is None else _s(self.recovered_at - self.kill_at)
        by_status = ", ".join(f"{kind}: {count}" for kind, count in sorted(self.failures.items())) or "-"
        kinds = Counter(o.kind for o in self.outcomes if o.failure is not None)
        by_kind = ", ".join(f"{kind} {count}" for kind, count in sorted(kinds.items())) or "-"
        return [
            ("replica stalled for the last 0.5 s", "yes" if self.stalled else "no"),
            ("killed master -> new master", f"{self.killed} -> {self.promoted}"),
            ("global due index on it too", "yes" if self.globals_with_keyset else "no"),
            ("requests sent", str(len(self.outcomes))),
            ("failed (by answer)", f"{sum(self.failures.values())} ({by_status})"),
            ("failed (by request)", by_kind),
            ("first / last failure after the kill", "-" if failed is None else f"{_s(failed[0])} / {_s(failed[1])}"),
            ("every request succeeds again after", recovered),
            ("max latency, non-subscribe", _s(self.max_latency("heartbeat", "late-join", "publish"))),
            ("max latency, subscribe (hold 1 s)", _s(self.max_latency("subscribe", "presence"))),
            ("messages published / acknowledged", f"{len(self.published)} / {len(self.acknowledged)}"),
            ("delivered / acknowledged and lost", f"{len(self.delivered)} / {len(self.lost)}"),
            ("delivered twice / never sent", f"{len(self.duplicates)} / {len(self.unknown)}"),
            ("acknowledged, missing from history", str(len(self.unstored))),
            ("delivery p50 / max, before the kill", _pair(self.delivery(after=False))),
            ("delivery p50 / max, after recovery", _pair(self.delivery(after=True))),
            ("late joins acknowledged / lost", f"{len(self.late_acknowledged)} / {len(self.late_lost)}"),
            ("lost joins repaired by one heartbeat", f"{len(self.late_repaired)} / {len(self.late_lost)}"),
            ("users whose join was announced twice", str(len(self.joined_twice()))),
            ("sweeps after +100 s (timeouts)", f"{self.sweeps[0]}, {self.sweeps[1]}"),
            ("sentinels the client still asks", _sentinels(self.sentinels)),
        ]


def _sentinels(ports: list[int] | None) -> str:
    if ports is None:
        return "-"
    return f"{len(set(ports))} of {len(ports)}" + (
        " (one twice: redis-py's list reordered)" if len(set(ports)) < len(ports) else ""
    )


def _pair(times: tuple[float, float] | None) -> str:
    return "-" if times is None else f"{times[0] * 1000:.0f} / {times[1] * 1000:.0f} ms"


def _s(seconds: float) -> str:
    return f"{seconds:+.2f} s" if seconds < 0 else f"{seconds:.2f} s"


# -- the topologies ---------------------------------------------------------------------------------


class Target(Protocol):
    """A topology under test: its URL, and the means to kill the keyset's master."""

    url: str
    prefix: str
    globals_with_keyset: bool

    def kill(self) -> int: ...

    def promoted(self) -> int: ...

    def master(self) -> int: ...

    def replica(self) -> int: ...


class ClusterTarget:
    """The cluster's master of the keyset's slot. The key prefix is picked so that the global due index
    (a key of no keyset, in a slot of its own) lives on that master too: the sweep depends on it."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.url = cluster.url
        self.slot = key_slot(KeysetKeys("p", SUB_KEY).timetoken.encode())  # the tag alone decides it
        self.master_port = cluster.master_of_slot(self.slot)
        self.prefix = _prefix()
        while cluster.master_of_slot(key_slot(keysets_due(self.prefix).encode())) != self.master_port:
            self.prefix = _prefix()
        self.globals_with_keyset = True

    def kill(self) -> int:
        self.cluster.kill(self.master_port)
        return self.master_port

    def promoted(self) -> int:
        return self.cluster.master_of_slot(self.slot)

    def master(self) -> int:
        return self.master_port

    def replica(self) -> int:
        view = self.cluster.view()
        (master_id,) = (node.node_id for node in view if node.port == self.master_port)
        return next(node.port for node in view if node.master_id == master_id)


class SentinelTarget:
    def __init__(self, sentinels: SentinelSet) -> None:
        self.sentinels = sentinels
        self.url = sentinels.url
        self.prefix = _prefix()
        self.globals_with_keyset = True  # one master holds everything

    def kill(self) -> int:
        return self.sentinels.kill_master()

    def promoted(self) -> int:
        return self.sentinels.master_port()

    def master(self) -> int:
        return self.sentinels.master_port()

    def replica(self) -> int:
        master = self.sentinels.master_port()
        return next(port for port in self.sentinels.ports if port != master)


class Stall:
    """The keyset's replica falling behind: stopped (SIGSTOP), then more written to its master than the
    link's socket buffers hold, so every later write waits in the master's memory for the replica to
    read; continued (SIGCONT) by ``end`` or on leaving the block, whatever happens."""

    def __init__(self, target_: Target, prefix: str) -> None:
        self.target = target_
        self.filler = KeysetKeys(prefix, SUB_KEY).timetoken + ":bench-filler"  # in the keyset's slot
        self.pid: int | None = None

    def begin(self) -> None:
        replica, master = self.target.replica(), self.target.master()
        with redis.Redis(HOST, replica) as client:
            self.pid = int(client.info("server")["process_id"])
        os.kill(self.pid, signal.SIGSTOP)
        with redis.Redis(HOST, master) as client:
            client.set(self.filler, b"x" * FILLER)

    def end(self) -> None:
        if self.pid is not None:
            os.kill(self.pid, signal.SIGCONT)
            self.pid = None

    def __enter__(self) -> Stall:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.end()


def _prefix() -> str:
    return "f" + uuids.uuid4().hex[:12]


@contextlib.contextmanager
def topology(name: str) -> Iterator[Target]:
    """A fresh topology of its own (3 masters and 3 replicas; or one master, one replica, 3 sentinels)."""
    if name == "cluster":
        with redis_cluster() as cluster:
            yield ClusterTarget(cluster)
    elif name == "sentinel":
        with redis_sentinel() as sentinels:
            yield SentinelTarget(sentinels)
    else:
        raise ValueError(f"no topology {name!r}: one of {', '.join(TOPOLOGIES)}")


# -- the load ---------------------------------------------------------------------------------------


def _send_error(body: Any) -> bool:
    """A publish's error: ``[0, message, timetoken]`` (docs/protocol.md 2.9)."""
    return isinstance(body, list) and len(body) == 3 and body[0] == 0 and isinstance(body[1], str)


def _error_object(body: Any) -> bool:
    """The error object of every other route, ``{"status", "error", "message", "service"}`` (1.5), of a 503."""
    return (
        isinstance(body, dict)
        and set(body) >= {"status", "error", "message", "service"}
        and body["status"] == web.HTTPServiceUnavailable.status_code
        and body["error"] is True
    )


def judge(kind: str, status: int, content_type: str, raw: bytes) -> tuple[str | None, Any]:
    """A request's failure (None for a 200) and its parsed body."""
    if "json" not in content_type and "javascript" not in content_type:
        return f"{status} not JSON ({content_type or 'no Content-Type'})", None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return f"{status} unparsable", None
    if status == web.HTTPOk.status_code:
        return None, body
    if status == web.HTTPServiceUnavailable.status_code:
        if _send_error(body) if kind == "publish" else _error_object(body):
            return UNAVAILABLE, body
        if kind == "publish" and _error_object(body):
            return PUBLISH_AS_OBJECT, body
    return f"{status} {str(body)[:80]}", body


class Load:
    """The clients: every request goes through ``get``, which times and judges it."""

    def __init__(self, session: aiohttp.ClientSession, base: str, clock: FakeClock, users: int) -> None:
        self.session = session
        self.base = base
        self.clock = clock
        self.loop = asyncio.get_running_loop()
        self.users = {f"user-{i:03d}": {"i": i, "name": f"user {i}"} for i in range(users)}
        self.leavers = [f"leaver-{i:02d}" for i in range(LEAVERS)]
        self.outcomes: list[Outcome] = []
        self.in_flight: dict[int, tuple[str, float]] = {}
        self.stopping = asyncio.Event()
        self.killed = asyncio.Event()
        self.published: dict[int, str | None] = {}
        self.delivered: list[int] = []
        self.sent_at: dict[int, float] = {}
        self.latencies: list[tuple[float, float]] = []
        self.events: list[dict[str, Any]] = []
        self.late_acknowledged: list[str] = []
        self.late_tried: list[str] = []
        self.cursors = {READER: "0", WATCHER: "0"}
        self._requests = itertools.count()

    async def get(
        self, kind: str, path: str, params: Mapping[str, object], record: bool = True
    ) -> tuple[str | None, Any]:
        """One GET with the client's timeout: its failure (None for a 200) and its parsed body."""
        url = URL(self.base + str(target(path, params)), encoded=True)
        started = self.loop.time()
        request = next(self._requests)
        self.in_flight[request] = (kind, started)
        body: Any = None
        try:
            async with self.session.get(url) as resp:
                raw = await resp.read()
            failure, body = judge(kind, resp.status, resp.headers.get(hdrs.CONTENT_TYPE, ""), raw)
        except TimeoutError:
            failure = "client timeout"
        except aiohttp.ClientConnectionError as exc:
            failure = f"connection error ({type(exc).__name__})"
        finally:
            del self.in_flight[request]
        if record:
            detail = "" if failure in (None, UNAVAILABLE) else f"{kind} {path}: {str(body)[:200]}"
            self.outcomes.append(Outcome(kind, started, self.loop.time(), failure, detail))
        return failure, body

    async def heartbeat(self, uuid: str, seconds: int, state: Mapping[str, Any] | None, kind: str) -> bool:
        params: dict[str, object] = {"uuid": uuid, "heartbeat": seconds}
        if state is not None:
            params["state"] = orjson.dumps({CHANNEL: state}).decode()
        failure, _ = await self.get(kind, f"{PRESENCE}/{CHANNEL}/heartbeat", params)
        return failure is None

    async def user(self, uuid: str, offset: float) -> None:
        await asyncio.sleep(offset)
        while not self.stopping.is_set():
            await self.heartbeat(uuid, USER_TIMEOUT, self.users[uuid], "heartbeat")
            await self._pause(HEARTBEAT_EVERY)

    async def publisher(self) -> None:
        n = 0
        while not self.stopping.is_set():
            message = quote(orjson.dumps({"n": n}).decode(), safe="")
            self.sent_at[n] = self.loop.time()
            self.published[n], _ = await self.get("publish", f"{PUBLISH}/{message}", {"uuid": "publisher"})
            n += 1
            await self._pause(PUBLISH_EVERY)

    async def poll(self, who: str, channels: str, kind: str, record: bool = True) -> list[Any] | None:
        """One subscribe long-poll of the reader or the watcher from its cursor; the envelopes."""
        params = {"uuid": who, "tt": self.cursors[who], "heartbeat": USER_TIMEOUT}
        failure, body = await self.get(kind, f"{SUBSCRIBE}/{channels}/0", params, record)
        if failure is not None:
            return None
        self.cursors[who] = body["t"]["t"]
        envelopes: list[Any] = body["m"]
        if who == READER:
            numbers = [env["d"]["n"] for env in envelopes]
            self.delivered += numbers
            if record:
                now = self.loop.time()
                self.latencies += [(self.sent_at[n], now) for n in numbers if n in self.sent_at]
        else:
            self.events += [env["d"] for env in envelopes]
        return envelopes

    async def subscriber(self, who: str, channels: str, kind: str) -> None:
        while not self.stopping.is_set():
            if await self.poll(who, channels, kind) is None:
                await self._pause(PUBLISH_EVERY)  # an SDK waits a little before it polls again

    async def late_joiners(self) -> None:
        """New users, one heartbeat each, one after another, until the master is killed."""
        while not self.killed.is_set():
            uuid = f"late-{len(self.late_tried):03d}"
            self.late_tried.append(uuid)
            if await self.heartbeat(uuid, USER_TIMEOUT, None, "late-join"):
                self.late_acknowledged.append(uuid)

    async def ticker(self) -> None:
        """The FakeClock follows real time while the load runs."""
        last = self.loop.time()
        while not self.stopping.is_set():
            await asyncio.sleep(TICK)
            now = self.loop.time()
            self.clock.advance(now - last)
            last = now

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    def recovered_at(self, kill_at: float) -> float | None:
        """When every request began to succeed again, once that has lasted SUSTAINED and none in flight
        is older than that (a held poll: older than its hold and that); None until then."""
        now = self.loop.time()
        since = max([kill_at, *(o.ended for o in self.outcomes if o.failure is not None)])
        if now - since < SUSTAINED:
            return None
        for kind, started in self.in_flight.values():
            if started < now - SUSTAINED - (HOLD if kind in ("subscribe", "presence") else 0.0):
                return None
        succeeded = {o.kind for o in self.outcomes if o.started > since and o.failure is None}
        return since if {"heartbeat", "publish", "subscribe", "presence"} <= succeeded else None


# -- the scenario -----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def server(url: str, prefix: str, clock: FakeClock) -> AsyncIterator[tuple[web.Application, str]]:
    """The app on ``url`` with the injected clock and no sweeper loop, on a free loopback port."""
    settings = Settings(
        key_prefix=prefix,
        min_timeout=1.0,
        default_timeout=float(USER_TIMEOUT),
        max_timeout=3600.0,
        longpoll_hold=HOLD,
        announce_max=1000,  # every join and timeout announced on its own, not in interval events
    )
    redis = open_redis(url)
    try:
        app = create_app(settings, redis=redis, clock=clock, sweeper=False)
        async with listening(app) as port:
            yield app, f"http://127.0.0.1:{port}"
    finally:
        await redis.aclose()


async def failover(name: str, target_: Target, *, users: int = 40, seconds: float = 3.0, stall: bool = False) -> Result:
    """The whole scenario on one topology (see the module's docstring); with ``stall``, the replica
    falls behind for the last LATE_WINDOW before the kill (Stall)."""
    clock = FakeClock()
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)
    async with (
        server(target_.url, target_.prefix, clock) as (app, base),
        aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session,
    ):
        load = Load(session, base, clock, users)
        await _prepare(load)
        tasks = _start(load)
        with Stall(target_, target_.prefix) as stalled:
            await asyncio.sleep(max(seconds - LATE_WINDOW, 0.0))
            if stall:
                await asyncio.to_thread(stalled.begin)
            tasks.append(asyncio.create_task(load.late_joiners()))
            await asyncio.sleep(min(LATE_WINDOW, seconds))
            kill_at = load.loop.time()
            killed = await asyncio.to_thread(target_.kill)
            load.killed.set()
        recovered_at = await _recovery(load, kill_at)
        load.stopping.set()
        await asyncio.gather(*tasks)
        outcomes = load.outcomes
        present, lost, repaired = await _after(load)
        stored = await _history(load)
        sweeps = await _sweeps(load, app)
        sentinels = _sentinels_asked(app[REDIS])
        return Result(
            topology=name,
            stalled=stall,
            killed=killed,
            promoted=target_.promoted(),
            globals_with_keyset=target_.globals_with_keyset,
            kill_at=kill_at,
            outcomes=outcomes,
            recovered_at=recovered_at,
            users=load.users,
            leavers=load.leavers,
            published=load.published,
            delivered=load.delivered,
            latencies=load.latencies,
            stored=stored,
            events=load.events,
            present=present,
            late_tried=load.late_tried,
            late_acknowledged=load.late_acknowledged,
            late_lost=lost,
            late_repaired=repaired,
            sweeps=sweeps,
            sentinels=sentinels,
        )


def _manager(client: object) -> Sentinel | None:
    """The sentinels of a Sentinel-managed client (None for a cluster)."""
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    return manager if isinstance(manager, Sentinel) else None


def _sentinels_asked(client: object) -> list[int] | None:
    """The ports of the sentinels a Sentinel-managed client asks for its master (None for a cluster)."""
    manager = _manager(client)
    if manager is None:
        return None
    return [int(sentinel.connection_pool.connection_kwargs["port"]) for sentinel in manager.sentinels]


async def _prepare(load: Load) -> None:
    """The leavers' only heartbeat and both subscribers' handshakes, before any load."""
    for uuid in load.leavers:
        if not await load.heartbeat(uuid, LEAVER_TIMEOUT, None, "heartbeat"):
            raise RuntimeError(f"{uuid}'s heartbeat failed before the kill: {load.outcomes[-1]}")
    for who, channels in ((READER, CHANNEL), (WATCHER, WATCHED)):
        if await load.poll(who, channels, "subscribe") is None:
            raise RuntimeError(f"the {who}'s handshake failed before the kill: {load.outcomes[-1]}")


def _start(load: Load) -> list[asyncio.Task[None]]:
    spread = HEARTBEAT_EVERY / max(len(load.users), 1)
    coroutines = [load.user(uuid, i * spread) for i, uuid in enumerate(load.users)]
    coroutines += [load.publisher(), load.subscriber(READER, CHANNEL, "subscribe"), load.ticker()]
    coroutines.append(load.subscriber(WATCHER, WATCHED, "presence"))
    return [asyncio.create_task(coroutine) for coroutine in coroutines]


async def _recovery(load: Load, kill_at: float) -> float | None:
    while load.loop.time() - kill_at < RECOVER_WITHIN:
        found = load.recovered_at(kill_at)
        if found is not None:
            return found
        await asyncio.sleep(0.05)
    return None


async def _ok(load: Load, path: str, params: Mapping[str, object]) -> Any:
    failure, body = await load.get("check", path, params, record=False)
    if failure is not None:
        raise RuntimeError(f"{path} failed after the load: {failure}")
    return body


async def _here_now(load: Load) -> dict[str, Any]:
    body = await _ok(load, f"{PRESENCE}/{CHANNEL}", {"state": 1, "limit": 1000})
    return {entry["uuid"]: entry.get("state") for entry in body["uuids"]}


async def _after(load: Load) -> tuple[dict[str, Any], list[str], list[str]]:
    """here_now once the load stopped; the late users it lacks, and which of them one heartbeat brings
    back; the reader's last messages."""
    present = await _here_now(load)
    lost = [uuid for uuid in load.late_acknowledged if uuid not in present]
    for uuid in lost:
        await _ok(load, f"{PRESENCE}/{CHANNEL}/heartbeat", {"uuid": uuid, "heartbeat": USER_TIMEOUT})
    again = await _here_now(load)
    await _drain(load, READER, CHANNEL)
    return present, lost, [uuid for uuid in lost if uuid in again]


async def _history(load: Load) -> list[int]:
    """Every message number in the channel's history (fetch messages v3, pages of 100, newest first)."""
    found: list[int] = []
    params: dict[str, object] = {"max": HISTORY_PAGE}
    while True:
        body = await _ok(load, f"{HISTORY}/{CHANNEL}", params)
        items = body["channels"].get(CHANNEL, [])
        found = [item["message"]["n"] for item in items] + found
        if len(items) < HISTORY_PAGE:
            return found
        params["start"] = items[0]["timetoken"]


async def _drain(load: Load, who: str, channels: str) -> None:
    while True:
        envelopes = await load.poll(who, channels, "check", record=False)
        if envelopes is None:
            raise RuntimeError(f"the {who}'s poll failed after the load")
        if not envelopes:
            return


async def _sweeps(load: Load, app: web.Application) -> tuple[int, int]:
    """The clock past the leavers' timeout, two sweeps, and the watcher's last events."""
    load.clock.advance(SWEEP_AFTER)
    first = int(await app[SWEEPER].run_once())
    second = int(await app[SWEEPER].run_once())
    await _drain(load, WATCHER, WATCHED)
    return first, second


# -- the command ------------------------------------------------------------------------------------


def table(results: Sequence[Result]) -> str:
    """The figures of each run, one column each."""
    header = ["", *(f"{r.topology} #{i + 1}" for i, r in enumerate(results))]
    rows = [[name, *(dict(r.figures())[name] for r in results)] for name, _ in results[0].figures()]
    widths = [max(len(row[c]) for row in [header, *rows]) for c in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in [header, *rows]]
    return "\n".join(lines)


async def _run(names: Sequence[str], runs: int, users: int, seconds: float, stall: bool) -> list[Result]:
    results = []
    for name in names:
        for run in range(runs):
            print(f"{name} run {run + 1}/{runs}: starting the topology", flush=True)
            with topology(name) as found:
                results.append(await failover(name, found, users=users, seconds=seconds, stall=stall))
            print(table(results[-1:]), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__.split("\n\n")[0])
    parser.add_argument("--topology", choices=[*TOPOLOGIES, "both"], default="both")
    parser.add_argument("--users", type=int, default=40, help="users heartbeating (default 40)")
    parser.add_argument("--seconds", type=float, default=3.0, help="load before the kill (default 3)")
    parser.add_argument("--runs", type=int, default=3, help="runs per topology, each on a new one (default 3)")
    parser.add_argument(
        "--stall-replica",
        action="store_true",
        help="stop the replica and fill its link for the last 0.5 s before the kill: what a failover loses",
    )
    args = parser.parse_args(argv)
    names = TOPOLOGIES if args.topology == "both" else (args.topology,)
    results = asyncio.run(_run(names, args.runs, args.users, args.seconds, args.stall_replica))
    print("\n" + table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
