"""What one keyset costs Redis per operation: heartbeats (joins, refreshes of present users), handshakes,
publishes (to a channel nobody polls, and to one with held polls) and subscribe polls, each driven
through a server process, with ``INFO commandstats`` and ``INFO cpu`` read before and after each phase.

``python -m bench.commandstats`` (``--help`` for the knobs; bench/README.md says what each figure
means, docs/scaling.md what follows from them). It starts a redis-server of its own and one server
process (``python -m presence_server``) on loopback, drives them from this process (aiohttp, and raw
keep-alive connections for the long-polls) and stops both on the way out. Redis's own background
work (its cron, the server's sweeper) is measured first, with nothing else running, and taken off
every phase in proportion to its length. Last, Redis bytes per present user (``used_memory`` before and
after --memory-users uuid4 users join one channel), with the default timeout and with heartbeat=120.
Nothing here runs in CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import platform
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import aiohttp
import orjson
import redis

from bench.live import Child, Children, Conn, free_port, given_options, knob, redis_server, say
from presence_server.store import PresenceStore, open_redis
from presence_server.store.batch import FLUSH_AT
from presence_server.store.fields import lua_header
from presence_server.store.refreshes import REFRESH_BATCH

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "presence_server" / "store" / "lua"
PUB_KEY, SUB_KEY = "bench-pub", "bench"
PREFIX = "cbench"
TIMEOUT = 300  # heartbeat=300, as the SDKs send by default
RETENTION = 604_800.0  # the server's default history retention, which its publishes run with
# Heartbeat intervals the derived capacity is given for: the SDKs' default (presence timeout 300 s,
# a heartbeat every timeout / 2 - 1 = 149 s, about 150) and an aggressive one (timeout 20 s, every 10 s).
INTERVALS = (150.0, 10.0)
MESSAGE = urllib.parse.quote(orjson.dumps({"text": "x" * 80}).decode(), safe="")  # about 100 bytes of JSON


def uuid_of(n: int) -> str:
    """uuid n, as bench/heartbeat.lua builds it."""
    return f"{n:08x}-0000-4000-8000-{n:012x}"


# -- what Redis spent -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Usage:
    """What Redis spent over a span: CPU seconds (user + system), and per command its calls and the
    microseconds spent in it (``INFO commandstats``: a script's commands are counted on their own and
    inside the script's ``evalsha`` too)."""

    seconds: float
    cpu: float
    calls: dict[str, float]
    usec: dict[str, float]

    def __sub__(self, other: Usage) -> Usage:
        return Usage(
            self.seconds - other.seconds,
            self.cpu - other.cpu,
            _minus(self.calls, other.calls),
            _minus(self.usec, other.usec),
        )

    def net_of(self, idle: Usage) -> Usage:
        """This span less what Redis spends idle (its cron, the server's sweeper) over as long a span."""
        share = self.seconds / idle.seconds if idle.seconds > 0 else 0.0
        scaled = Usage(0.0, share * idle.cpu, _scaled(idle.calls, share), _scaled(idle.usec, share))
        return self - scaled

    def per(self, ops: int) -> Cost:
        calls = {cmd: n / ops for cmd, n in self.calls.items() if n / ops >= 0.005}
        return Cost(1e6 * max(0.0, self.cpu) / ops, calls, {cmd: self.usec.get(cmd, 0.0) / ops for cmd in calls})


def _minus(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: a.get(k, 0.0) - b.get(k, 0.0) for k in a.keys() | b.keys()}


def _scaled(a: dict[str, float], by: float) -> dict[str, float]:
    return {k: by * v for k, v in a.items()}


# Commands that run other commands: their time includes those commands' own.
SCRIPTS = ("evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "exec")


@dataclasses.dataclass(frozen=True)
class Cost:
    """Redis's cost of one operation."""

    cpu_us: float  # CPU (INFO cpu), µs
    calls: dict[str, float]  # per command
    usec: dict[str, float]  # per command, µs inside it (a script's includes its commands')

    @property
    def commands(self) -> float:
        """Commands run, those inside scripts and MULTI included (EXEC and MULTI themselves not)."""
        return sum(n for cmd, n in self.calls.items() if cmd not in ("exec", "multi"))

    def breakdown(self, top: int = 10) -> str:
        ordered = sorted(self.calls.items(), key=lambda item: (-self.usec.get(item[0], 0.0), item[0]))
        return ", ".join(f"{cmd} {n:.2f} ({self.usec.get(cmd, 0.0):.1f} µs)" for cmd, n in ordered[:top])


def per_core(cpu_us: float) -> float:
    """Operations per second one Redis core carries at this cost each (all of the core, nothing else)."""
    return 1e6 / cpu_us if cpu_us > 0 else float("inf")


def present_users(refresh_cpu_us: float, interval: float) -> float:
    """Users one Redis core keeps present when each refreshes its presence every ``interval`` seconds."""
    return per_core(refresh_cpu_us) * interval


class Meter:
    """INFO cpu and INFO commandstats of one Redis, read as a ``Usage`` since an origin."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def read(self) -> Usage:
        cpu = self.client.info("cpu")
        stats = self.client.info("commandstats")
        calls = {k.removeprefix("cmdstat_"): float(v["calls"]) for k, v in stats.items() if k != "cmdstat_info"}
        usec = {k.removeprefix("cmdstat_"): float(v["usec"]) for k, v in stats.items() if k != "cmdstat_info"}
        return Usage(time.monotonic(), float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), calls, usec)


@dataclasses.dataclass
class Phase:
    name: str
    ops: int
    seconds: float
    cost: Cost
    note: str = ""

    def lines(self) -> str:
        c = self.cost
        return (
            f"  {self.name:<34} {self.ops:6d} ops in {self.seconds:5.1f} s ({self.ops / self.seconds:6.0f}/s): "
            f"Redis CPU {c.cpu_us:6.1f} µs/op, {c.commands:5.1f} commands/op{self.note}\n  {'':<34} {c.breakdown()}"
        )


# -- driving the server ---------------------------------------------------------------------------------


async def drive(session: aiohttp.ClientSession, base: str, paths: Iterable[str], concurrency: int) -> int:
    """GET every path (``concurrency`` at once); each must answer 200. Returns how many were sent."""
    pending = iter(paths)
    sent = 0

    async def worker() -> None:
        nonlocal sent
        for path in pending:
            async with session.get(base + path) as response:
                body = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"GET {path} answered {response.status}: {body[:300]!r}")
            sent += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sent


def heartbeats(first: int, count: int, channel: Callable[[int], str]) -> Iterator[str]:
    for n in range(first, first + count):
        yield f"/v2/presence/sub-key/{SUB_KEY}/channel/{channel(n)}/heartbeat?heartbeat={TIMEOUT}&uuid={uuid_of(n)}"


def subscribe_path(channel: str, uuid: str, cursor: str) -> str:
    return f"/v2/subscribe/{SUB_KEY}/{channel}/0?uuid={uuid}&tt={cursor}&heartbeat={TIMEOUT}"


def publish_path(channel: str, n: int) -> str:
    return f"/publish/{PUB_KEY}/{SUB_KEY}/0/{channel}/0/{MESSAGE}?uuid=publisher-{n % 1000}"


@dataclasses.dataclass
class Bench:
    opts: Options
    meter: Meter
    server: Child
    idle: Usage | None = None
    phases: list[Phase] = dataclasses.field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def measured(self, name: str, ops: int, before: Usage, note: str = "") -> Phase:
        used = self.meter.read() - before
        assert self.idle is not None
        phase = Phase(name, ops, used.seconds, used.net_of(self.idle).per(ops), note)
        say(phase.lines())
        self.phases.append(phase)
        return phase


async def load_phases(bench: Bench, session: aiohttp.ClientSession) -> None:
    o, base = bench.opts, bench.base
    rooms = max(1, o.announced_room)
    phases: list[tuple[str, Callable[[], Iterator[str]]]] = [
        # Joins announced one by one: rooms of --announced-room (below PRESENCE_ANNOUNCE_MAX, 20).
        (f"join, rooms of {rooms} (a join event each)", lambda: heartbeats(0, o.users, lambda n: f"room-{n // rooms}")),
        # Joins into crowded channels (above 20 occupants): a delta for the next interval event.
        (
            f"join, {o.crowded} crowded channels (interval mode)",
            lambda: heartbeats(o.users, o.users, lambda n: f"crowd-{n % o.crowded}"),
        ),
        ("refresh of a present user", lambda: heartbeats(o.users, o.users, lambda n: f"crowd-{n % o.crowded}")),
        (
            "handshake (tt=0) of a new subscriber",
            lambda: (subscribe_path(f"hs-{n // rooms}", uuid_of(n), "0") for n in range(2 * o.users, 3 * o.users)),
        ),
        (
            f"leave, rooms of {rooms} (a leave event each)",
            lambda: (
                f"/v2/presence/sub-key/{SUB_KEY}/channel/room-{n // rooms}/leave?uuid={uuid_of(n)}"
                for n in range(o.users)
            ),
        ),
        ("publish, nobody subscribed", lambda: (publish_path(f"pub-{n % 10}", n) for n in range(o.publishes))),
    ]
    for name, paths in phases:
        before = bench.meter.read()
        ops = await drive(session, base, paths(), o.concurrency)
        bench.measured(name, ops, before)
    # The same refreshes one at a time: each its own round trip to Redis, nothing pipelined.
    before = bench.meter.read()
    alone = min(o.users, o.alone)
    ops = await drive(session, base, heartbeats(o.users, alone, lambda n: f"crowd-{n % o.crowded}"), 1)
    bench.measured("refresh, one request at a time", ops, before)


async def poll_phase(bench: Bench, session: aiohttp.ClientSession) -> None:
    """Polls answered at once: each poller has a channel of its own holding one message, and polls it
    again and again from just before that message (so no two reads are the same, none is shared)."""
    o, base = bench.opts, bench.base
    pollers = o.concurrency
    cursors: list[str] = []
    for i in range(pollers):
        uuid = f"poller-{i}"
        async with session.get(base + subscribe_path(f"poll-{i}", uuid, "0")) as response:
            response.raise_for_status()
        async with session.get(base + publish_path(f"poll-{i}", i)) as response:
            cursors.append(str(int(orjson.loads(await response.read())[2]) - 1))
    per_poller = max(1, o.polls // pollers)

    async def poller(i: int) -> None:
        path = base + subscribe_path(f"poll-{i}", f"poller-{i}", cursors[i])
        for _ in range(per_poller):
            async with session.get(path) as response:
                body = await response.read()
                if response.status != 200 or len(orjson.loads(body)["m"]) != 1:
                    raise RuntimeError(f"poll answered {response.status}: {body[:300]!r}")

    before = bench.meter.read()
    await asyncio.gather(*(poller(i) for i in range(pollers)))
    bench.measured("poll answered at once (1 message)", pollers * per_poller, before)


class Subscriber:
    """One long-polling subscriber on a keep-alive connection, polling again with each cursor it gets."""

    def __init__(self, conn: Conn, uuid: str, cursor: str, fan: Fan) -> None:
        self.conn, self.uuid, self.cursor, self.fan = conn, uuid, cursor, fan

    async def run(self) -> None:
        while True:
            status, body, _ = await self.conn.get(subscribe_path("fan", self.uuid, self.cursor))
            if status != 200:
                raise RuntimeError(f"subscribe answered {status}: {body[:300]!r}")
            answer = orjson.loads(body)
            self.cursor = answer["t"]["t"]
            self.fan.got(len(answer["m"]))


class Fan:
    """Counts deliveries to the subscribers, so that a publisher waits for every one of them."""

    def __init__(self) -> None:
        self.delivered = 0
        self.wanted = 0
        self.done = asyncio.Event()

    def expect(self, more: int) -> None:
        self.wanted += more
        self.done.clear()

    def got(self, messages: int) -> None:
        self.delivered += messages
        if self.delivered >= self.wanted:
            self.done.set()


async def held_phases(bench: Bench, session: aiohttp.ClientSession) -> None:
    """--subscribers polls held on one channel (each a read, then a wait), then --fan-publishes
    publishes to it one at a time, each delivered to every subscriber before the next."""
    o, base = bench.opts, bench.base
    fan, subscribers, tasks = Fan(), [], []
    for i in range(o.subscribers):
        async with session.get(base + subscribe_path("fan", f"fan-{i}", "0")) as response:
            cursor = orjson.loads(await response.read())["t"]["t"]
        subscribers.append(Subscriber(await Conn.open(bench.server.port), f"fan-{i}", cursor, fan))
    metrics = await Conn.open(bench.server.port)
    try:
        before = bench.meter.read()
        for i, subscriber in enumerate(subscribers):  # one at a time: no two reads shared
            tasks.append(asyncio.create_task(subscriber.run()))
            await metrics.held(i + 1, pause=0.001)
        bench.measured("poll that finds nothing and is held", len(subscribers), before)
        before = bench.meter.read()
        for n in range(o.fan_publishes):
            fan.expect(len(subscribers))
            async with session.get(base + publish_path("fan", n)) as response:
                response.raise_for_status()
            await asyncio.wait_for(fan.done.wait(), 30)
            await metrics.held(len(subscribers), pause=0.001)
        phase = bench.measured(f"publish to {len(subscribers)} held polls", o.fan_publishes, before)
        per_delivery = phase.cost.cpu_us / len(subscribers)
        say(f"  {'':<34} per delivery {per_delivery:.1f} µs (the shared read, the re-poll's own read)")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for subscriber in subscribers:
            subscriber.conn.writer.close()
        metrics.writer.close()


def floors(bench: Bench) -> None:
    """What any call costs Redis on this machine, from redis-py in this process, pipelined as the server's
    batcher pipelines under load: a GET of a missing key, a script that returns at once, and one that
    runs the prelude every mutating script runs (the generated field names, common.lua) and returns."""
    o, client = bench.opts, bench.meter.client
    keys = [f"{PREFIX}:{{floor}}:k{i}" for i in range(10)]  # a one-channel heartbeat's 10 keys and 14 arguments
    args = [str(i) for i in range(14)]
    empty = client.register_script("return 0")
    prelude = client.register_script(lua_header() + (LUA / "common.lua").read_text() + "\nreturn 0")
    cases: list[tuple[str, Callable[[redis.client.Pipeline], object]]] = [
        ("floor: GET of a missing key", lambda pipe: pipe.get(keys[0])),
        ("floor: EVALSHA 'return 0'", lambda pipe: empty(keys=keys, args=args, client=pipe)),
        ("floor: EVALSHA of common.lua's prelude", lambda pipe: prelude(keys=keys, args=args, client=pipe)),
    ]
    for name, queue in cases:
        before = bench.meter.read()
        for _ in range(o.floor // o.concurrency):
            with client.pipeline(transaction=False) as pipe:
                for _ in range(o.concurrency):
                    queue(pipe)
                pipe.execute()
        bench.measured(name, o.floor // o.concurrency * o.concurrency, before)


async def store_phases(bench: Bench, url: str) -> None:
    """The refreshes of the crowded phase again, and --publishes publishes, from the store's own code in
    this process with 256 calls in flight: its batcher then sends full batches (FLUSH_AT calls in one
    write, the refreshes of one loop iteration up to REFRESH_BATCH to a refresh.lua call), as a server does
    when it is the busy one. Redis's cost at its ceiling is nearer this than the figures through one server."""
    o = bench.opts
    store = PresenceStore(open_redis(url), prefix=PREFIX, history_retention=RETENTION)
    try:
        before = bench.meter.read()
        for start in range(o.users, 2 * o.users, 256):
            await asyncio.gather(
                *(
                    store.heartbeat(SUB_KEY, uuid_of(n), [f"crowd-{n % o.crowded}"], now=time.time(), timeout=TIMEOUT)
                    for n in range(start, min(start + 256, 2 * o.users))
                )
            )
        # Refreshes of one loop iteration go as refresh.lua calls of up to REFRESH_BATCH heartbeats.
        bench.measured(f"refresh, 256 in flight (the store, {REFRESH_BATCH} per call)", o.users, before)
        body = orjson.dumps({"text": "x" * 80}).decode()
        before = bench.meter.read()
        for start in range(0, o.publishes, 256):
            await asyncio.gather(
                *(
                    store.publish(SUB_KEY, f"pub-{n % 10}", body, now=time.time(), publisher=f"publisher-{n % 1000}")
                    for n in range(start, min(start + 256, o.publishes))
                )
            )
        bench.measured(f"publish, batches of {FLUSH_AT} (the store)", o.publishes, before)
    finally:
        await store.aclose()
        await store.redis.aclose()


async def run_all(bench: Bench, url: str) -> None:
    connector = aiohttp.TCPConnector(limit=bench.opts.concurrency + 8)
    async with aiohttp.ClientSession(connector=connector) as session:
        await load_phases(bench, session)
        await store_phases(bench, url)
        await poll_phase(bench, session)
        await held_phases(bench, session)


async def fill(url: str, uuids: Sequence[str], length: float, now: float) -> None:
    """Make every uuid present on one channel (the store in this process, 256 calls in flight), then sweep
    as a running sweeper would within a minute (it flushes what interval mode keeps pending)."""
    store = PresenceStore(open_redis(url), prefix=PREFIX)
    try:
        for start in range(0, len(uuids), 256):
            await asyncio.gather(
                *(store.heartbeat(SUB_KEY, u, ["lobby"], now=now, timeout=length) for u in uuids[start : start + 256])
            )
        await store.sweep(now=now + 60)
    finally:
        await store.aclose()
        await store.redis.aclose()


def memory(bench: Bench, url: str) -> None:
    """Redis bytes per present user: ``used_memory`` before and after --memory-users uuid4 users join one
    channel with the default timeout (300 s), then, on an emptied Redis, with heartbeat=120. Last: it
    empties the bench's Redis."""
    o, client = bench.opts, bench.meter.client
    say(f"\n#### Redis bytes per present user ({o.memory_users:,} uuid4 users on one channel, used_memory delta)")
    figures = {}
    for timeout in (float(TIMEOUT), 120.0):
        client.flushall()
        uuids = [str(uuid.uuid4()) for _ in range(o.memory_users)]
        now = time.time()
        before = int(client.info("memory")["used_memory"])
        asyncio.run(fill(url, uuids, timeout, now))
        used = int(client.info("memory")["used_memory"]) - before
        figures[timeout] = used / o.memory_users
        say(f"  heartbeat={timeout:g} s: {figures[timeout]:.1f} B per user, {client.dbsize()} keys")
    say(f"  heartbeat=120 / default: {figures[120.0] / figures[float(TIMEOUT)]:.2f}")


def derive(phases: Sequence[Phase]) -> None:
    """What one Redis core carries for one keyset, from the measured costs."""
    say("\n#### one Redis core (one shard), one keyset, at 100% of the core and nothing else")
    for phase in phases:
        say(f"  {phase.name:<38} {per_core(phase.cost.cpu_us):9.0f} /s  ({phase.cost.cpu_us:.1f} µs each)")
    refresh = next((p for p in phases if p.name.startswith("refresh")), None)
    if refresh is not None:
        for interval in INTERVALS:
            users = present_users(refresh.cost.cpu_us, interval)
            say(f"  present users refreshing every {interval:g} s: {users:,.0f} (heartbeats alone)")


@dataclasses.dataclass
class Options:
    users: int = knob(10_000, "uuids per heartbeat phase (joins, crowded joins and refreshes, handshakes)")
    announced_room: int = knob(10, "occupants per channel in the announced-join phase (below PRESENCE_ANNOUNCE_MAX)")
    crowded: int = knob(4, "channels of the crowded-join and refresh phases")
    publishes: int = knob(10_000, "publishes to channels nobody subscribes to")
    polls: int = knob(10_000, "polls answered at once")
    subscribers: int = knob(200, "held long-polls on the fan-out channel")
    fan_publishes: int = knob(50, "publishes to them, one at a time (all within the 10 s refresh memo window)")
    concurrency: int = knob(32, "requests in flight (the server's batcher pipelines what arrives together)")
    alone: int = knob(2000, "refreshes sent one at a time")
    floor: int = knob(10_000, "calls of each floor case (redis-py, pipelined --concurrency at a time)")
    idle: float = knob(3.0, "seconds of Redis's background work measured first")
    memory_users: int = knob(100_000, "users of each memory case (0: no memory figures)")
    redis_server: str = knob("redis-server", "the redis-server binary")


def parse_args(argv: Sequence[str] | None) -> Options:
    parser, given = given_options("python -m bench.commandstats", Options, argv)
    opts = Options(**given)
    counts = [opts.users, opts.crowded, opts.publishes, opts.polls, opts.subscribers, opts.fan_publishes, opts.alone]
    if (
        min(counts) < 1
        or opts.concurrency < 1
        or opts.floor < opts.concurrency
        or opts.idle <= 0
        or opts.memory_users < 0
    ):
        parser.error("counts must be positive")
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="commandstats-bench-") as workdir, contextlib.ExitStack() as stack:
        children = Children(Path(workdir))
        stack.callback(children.stop_all)
        rcli = stack.enter_context(redis_server(opts.redis_server, Path(workdir), children))
        url = f"redis://127.0.0.1:{rcli.connection_pool.connection_kwargs['port']}/0"
        port = free_port()
        argv_ = [sys.executable, "-m", "presence_server", "--host", "127.0.0.1", "--port", str(port), "--redis-url"]
        env = dict(os.environ, PYTHONPATH=str(ROOT), PRESENCE_KEY_PREFIX=PREFIX)
        server = children.start("server", [*argv_, url], port, env=env).wait_up()
        say(
            f"machine: {platform.platform()}, {os.cpu_count()} CPUs shared with other work, load average "
            f"{os.getloadavg()[0]:.2f}; Python {platform.python_version()}, redis-server "
            f"{rcli.info('server')['redis_version']}; one server process, {opts.concurrency} requests in flight"
        )
        bench = Bench(opts, Meter(rcli), server)
        before = bench.meter.read()
        time.sleep(opts.idle)
        bench.idle = bench.meter.read() - before
        idle = bench.idle
        say(
            f"  idle (Redis cron, the server's sweeper): {1e6 * idle.cpu / idle.seconds:.0f} µs of CPU per second, "
            f"{sum(idle.calls.values()) / idle.seconds:.1f} commands/s; taken off every phase below"
        )
        say(
            "\n#### Redis per operation (each command: calls per op (µs inside it per op); "
            "a script's µs include its commands')"
        )
        asyncio.run(run_all(bench, url))
        floors(bench)
        derive(bench.phases)
        if opts.memory_users > 0:
            memory(bench, url)
    say(f"\n({time.monotonic() - started:.0f} s, load average now {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
