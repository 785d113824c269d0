"""Speed and memory figures of the presence core, each printed beside its target (issue 2).

Run from the checkout: ``python -m bench.presence`` (``--help`` for the knobs). It starts its own
redis-server, the server and a minimal aiohttp baseline as subprocesses on loopback, drives them with
wrk (or, without wrk, an aiohttp generator in another process), prints every figure with the
baseline measured in the same run and PASS/FAIL per target, and stops everything it started.
This is a measurement, not a test: nothing here runs in CI. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, ClassVar, TypeVar, cast

import aiohttp
import orjson
import redis
import redis.asyncio as aioredis
from aiohttp import web
from redis.asyncio.connection import Connection
from redis.utils import HIREDIS_AVAILABLE

import presence_server
from presence_server.app import create_app
from presence_server.config import Settings
from presence_server.context import STORE
from presence_server.store import PresenceStore, open_redis
from presence_server.store.keys import keysets_due

T = TypeVar("T")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WRK_SCRIPT = HERE / "heartbeat.lua"

PREFIX = "bench"  # PRESENCE_KEY_PREFIX of the server under test; the bench writes with the same one
SUB_KEY = "bench"
TIMEOUT = 300  # heartbeat=300, as the SDKs send by default
POPULATE_CONCURRENCY = 64  # below redis-py's default pool cap of 100 connections

# Targets of issue 2.
THROUGHPUT_RATIO = 0.5
HERE_NOW_PAGE_MS = 10.0
HERE_NOW_COUNT_MS = 2.0
SWEEP_SECONDS = 1.0
IDLE_SWEEP_ROUND_TRIPS = 1
BYTES_PER_USER = 200.0


def say(text: str = "") -> None:
    print(text, flush=True)


def uuid_of(n: int) -> str:
    """A 36-character, uuid4-shaped id; bench/heartbeat.lua builds the same text for the same n."""
    return f"{n:08x}-0000-4000-8000-{n:012x}"


def room_of(n: int, channels: int) -> str:
    return f"room-{n % channels}"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * fraction))]


# -- processes ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclasses.dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    def log_tail(self, lines: int = 20) -> str:
        self.log_file.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class Children:
    """Every subprocess the bench starts; all of them are stopped on the way out, whatever happens."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: list[Child] = []

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Child:
        log_path = self.workdir / f"{name}.log"
        log_file = log_path.open("wb")
        proc = subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env=env,
            start_new_session=True,
        )
        child = Child(name, proc, log_path, log_file)
        self.running.append(child)
        return child

    def stop(self, child: Child) -> None:
        if child.proc.poll() is None:
            child.proc.terminate()
            try:
                child.proc.wait(10)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
        child.log_file.close()
        if child in self.running:
            self.running.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self.running)):
            self.stop(child)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def wait_http(child: Child, port: int, path: str = "/health", limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited with {child.proc.returncode}:\n{child.log_tail()}")
        try:
            with _NO_PROXY.open(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{child.name} did not answer {path} within {limit:.0f} s:\n{child.log_tail()}")


def start_redis(children: Children, binary: str) -> tuple[Child, int, redis.Redis]:
    port = free_port()
    child = children.start(
        "redis",
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(children.workdir),
        ],
    )
    client = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            return child, port, client
        except redis.ConnectionError:
            if child.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start:\n{child.log_tail()}") from None
            time.sleep(0.05)


def start_server(children: Children, name: str, redis_url: str) -> tuple[Child, int]:
    port = free_port()
    env = dict(os.environ, PRESENCE_KEY_PREFIX=PREFIX, PRESENCE_HOST="127.0.0.1")
    child = children.start(
        name, [sys.executable, "-m", "presence_server", "--port", str(port), "--redis-url", redis_url], env=env
    )
    wait_http(child, port)
    return child, port


def start_baseline(children: Children) -> tuple[Child, int]:
    port = free_port()
    child = children.start("baseline", [sys.executable, "-m", "bench.baseline_app", "--port", str(port)])
    wait_http(child, port)
    return child, port


# -- load generation ------------------------------------------------------------------------------


@dataclasses.dataclass
class Load:
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    generator_cpu: float
    target_cpu: float
    redis_cpu: float | None

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def line(self, label: str) -> str:
        redis_part = "" if self.redis_cpu is None else f", redis {self.redis_cpu:.1f}"
        per_request = self.target_cpu / self.requests * 1e6 if self.requests else 0.0
        return (
            f"  {label:<26} {self.rps:8.0f} req/s  ({self.requests} in {self.seconds:.1f} s, "
            f"{self.errors} errors)  p50 {self.p50_ms:.2f} ms  p99 {self.p99_ms:.2f} ms\n"
            f"  {'':<26} CPU s: process {self.target_cpu:.1f} ({per_request:.0f} us/request){redis_part}, "
            f"generator {self.generator_cpu:.1f}"
        )


@dataclasses.dataclass
class LoadPlan:
    generator: str  # "wrk" or "aiohttp"
    seconds: float
    warmup: float
    connections: int
    users: int
    channels: int
    rounds: int


def _wait_with_cpu(proc: subprocess.Popen[str]) -> tuple[str, float]:
    """Read a child's output to the end and reap it with wait4, which also reports its CPU time."""
    if proc.stdout is None:
        raise RuntimeError("the load generator was started without a pipe")
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator exited with {proc.returncode}:\n{out}")
    return out, usage.ru_utime + usage.ru_stime


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse_wrk(out: str) -> tuple[int, float, int, float, float]:
    """requests, seconds, errors, p50 ms, p99 ms from wrk's report (run with --latency)."""
    done = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m),", out)
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    if not (done and p50 and p99):
        raise RuntimeError(f"cannot read wrk's report:\n{out}")
    seconds = float(done.group(2)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[done.group(3)]
    errors = 0
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        errors += int(non_2xx.group(1))
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sockets:
        errors += sum(int(g) for g in sockets.groups())
    return int(done.group(1)), seconds, errors, _ms(*p50.groups()), _ms(*p99.groups())


def drive(plan: LoadPlan, port: int, seconds: float, target: Child, rcli: redis.Redis | None) -> Load:
    """One load run against 127.0.0.1:port, with the CPU each process spent during it."""
    target_before = cpu_seconds(target.proc.pid)
    redis_before = None if rcli is None else redis_cpu(rcli)
    if plan.generator == "wrk":
        argv = [
            "wrk",
            "-t1",
            f"-c{plan.connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "5s",
            "--latency",
            "-s",
            str(WRK_SCRIPT),
            f"http://127.0.0.1:{port}",
            "--",
            SUB_KEY,
            str(plan.users),
            str(plan.channels),
            str(TIMEOUT),
        ]
    else:
        argv = [
            sys.executable,
            "-m",
            "bench.loadgen",
            "--origin",
            f"http://127.0.0.1:{port}",
            "--seconds",
            str(seconds),
            "--connections",
            str(plan.connections),
            "--sub-key",
            SUB_KEY,
            "--users",
            str(plan.users),
            "--channels",
            str(plan.channels),
            "--timeout",
            str(TIMEOUT),
        ]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT, text=True
    )
    out, generator_cpu = _wait_with_cpu(proc)
    target_cpu = cpu_seconds(target.proc.pid) - target_before
    redis_spent = None if rcli is None or redis_before is None else redis_cpu(rcli) - redis_before
    if plan.generator == "wrk":
        requests, elapsed, errors, p50, p99 = parse_wrk(out)
    else:
        report = orjson.loads(out.strip().splitlines()[-1])
        requests, elapsed, errors = int(report["requests"]), float(report["seconds"]), int(report["errors"])
        p50, p99 = float(report["p50_ms"]), float(report["p99_ms"])
    return Load(requests, errors, elapsed, p50, p99, generator_cpu, target_cpu, redis_spent)


# -- the store ------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def server_store(client: aioredis.Redis) -> AsyncIterator[PresenceStore]:
    """The PresenceStore exactly as the server builds it (PRESENCE_* env, prefix PREFIX), on ``client``."""
    settings = Settings.from_env(key_prefix=PREFIX, host="127.0.0.1")
    runner = web.AppRunner(create_app(settings, redis=client, sweeper=False))
    await runner.setup()
    try:
        yield runner.app[STORE]
    finally:
        await runner.cleanup()


async def with_store(client: aioredis.Redis, work: Callable[[PresenceStore], Awaitable[T]]) -> T:
    """Run ``work`` on a server-built store over ``client``, then close the client."""
    try:
        async with server_store(client) as store:
            return await work(store)
    finally:
        await client.aclose()


# -- population -----------------------------------------------------------------------------------


async def populate_store(
    store: PresenceStore, members: Sequence[tuple[str, str]], now: float, concurrency: int = POPULATE_CONCURRENCY
) -> float:
    """Heartbeat (uuid, channel) pairs straight into the store; returns heartbeats per second."""
    started = time.perf_counter()
    for start in range(0, len(members), concurrency):
        await asyncio.gather(
            *(
                store.heartbeat(SUB_KEY, uuid, [channel], now=now, timeout=TIMEOUT)
                for uuid, channel in members[start : start + concurrency]
            )
        )
    return len(members) / (time.perf_counter() - started)


async def populate_http(origin: str, members: Sequence[tuple[str, str]], concurrency: int = 32) -> float:
    """Heartbeat (uuid, channel) pairs through the server's HTTP API; returns heartbeats per second."""
    queue = iter(members)
    failures: list[str] = []

    async def worker(session: aiohttp.ClientSession) -> None:
        for uuid, channel in queue:
            url = f"{origin}/v2/presence/sub-key/{SUB_KEY}/channel/{channel}/heartbeat"
            async with session.get(url, params={"heartbeat": str(TIMEOUT), "uuid": uuid}) as response:
                if response.status != 200:
                    failures.append(await response.text())

    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    if failures:
        raise RuntimeError(f"{len(failures)} heartbeats failed, first: {failures[0]}")
    return len(members) / (time.perf_counter() - started)


def members_of(first: int, count: int, channel: str | None, channels: int = 1) -> list[tuple[str, str]]:
    return [(uuid_of(n), channel or room_of(n, channels)) for n in range(first, first + count)]


# -- here_now -------------------------------------------------------------------------------------


@dataclasses.dataclass
class Latency:
    samples: list[float]  # ms, sorted
    body_bytes: int

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p99(self) -> float:
        return percentile(self.samples, 0.99)


async def here_now_http(
    origin: str, channel: str, params: dict[str, str], samples: int, expect: int, warmup: int = 20
) -> Latency:
    """Sequential here_now requests; each answer must report the expected occupancy."""
    url = f"{origin}/v2/presence/sub-key/{SUB_KEY}/channel/{channel}"
    times: list[float] = []
    size = 0
    async with aiohttp.ClientSession() as session:
        for i in range(warmup + samples):
            started = time.perf_counter()
            async with session.get(url, params=params) as response:
                body = await response.read()
            elapsed = time.perf_counter() - started
            if response.status != 200:
                raise RuntimeError(f"here_now answered {response.status}: {body[:200]!r}")
            reply = orjson.loads(body)
            if reply["occupancy"] != expect:
                raise RuntimeError(f"here_now on {channel} counted {reply['occupancy']}, expected {expect}")
            if i >= warmup:
                times.append(1000 * elapsed)
                size = len(body)
    return Latency(sorted(times), size)


async def here_now_store(store: PresenceStore, channel: str, samples: int, *, with_uuids: bool) -> Latency:
    """The same read through PresenceStore.here_now in this process: Redis + store, no HTTP."""
    times: list[float] = []
    for _ in range(samples):
        started = time.perf_counter()
        await store.here_now(SUB_KEY, [channel], now=time.time(), limit=1000, with_uuids=with_uuids)
        times.append(1000 * (time.perf_counter() - started))
    return Latency(sorted(times), 0)


def print_here_now(label: str, latency: Latency, target_ms: float | None) -> bool | None:
    ok = None if target_ms is None else latency.median < target_ms
    tail = "" if target_ms is None else f"   target median < {target_ms:g} ms  {verdict(bool(ok))}"
    size = f", body {latency.body_bytes} B" if latency.body_bytes else ""
    say(
        f"  {label:<44} median {latency.median:6.2f} ms  p99 {latency.p99:6.2f} ms"
        f"  ({len(latency.samples)} requests{size}){tail}"
    )
    return ok


# -- sweep ----------------------------------------------------------------------------------------


class CountingConnection(Connection):
    """A redis-py connection that counts what it writes: one write is one round trip (a pipeline too)."""

    writes: ClassVar[int] = 0

    async def send_packed_command(self, command: bytes | str | Any, check_health: bool = True) -> None:
        CountingConnection.writes += 1
        await super().send_packed_command(command, check_health)


def command_calls(rcli: redis.Redis) -> dict[str, tuple[int, int]]:
    """Per command: (calls, usec) from INFO commandstats; commands run inside scripts count too."""
    stats = cast("dict[str, dict[str, Any]]", rcli.info("commandstats"))
    return {name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for name, v in stats.items()}


def commands_between(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict[str, int]:
    delta = {name: calls - before.get(name, (0, 0))[0] for name, (calls, _) in after.items()}
    delta["info"] = delta.get("info", 0) - 1  # the INFO that took the second snapshot
    return {name: n for name, n in sorted(delta.items()) if n > 0}


@dataclasses.dataclass
class SweepFigures:
    users: int
    removed: int
    seconds: float
    idle_removed: int
    idle_ms: float
    idle_round_trips: int | None
    idle_commands: dict[str, int] | None
    script_calls: int | None
    script_ms_per_call: float | None
    longest_script_ms: float | None


async def sweep_figures(store: PresenceStore, rcli: redis.Redis | None, users: int) -> SweepFigures:
    """Expire ``users`` users of one channel in one sweep, after an idle sweep while they are present."""
    now = time.time()
    await populate_store(store, members_of(3_000_000, users, "sweep"), now)
    await store.ping()  # the idle sweep must find a connected, health-checked connection

    before = command_calls(rcli) if rcli is not None else None
    writes = CountingConnection.writes
    started = time.perf_counter()
    idle_removed = await store.sweep(now=now + 1)
    idle_ms = 1000 * (time.perf_counter() - started)
    idle_round_trips = CountingConnection.writes - writes
    idle_commands = None
    if rcli is not None and before is not None:
        idle_commands = commands_between(before, command_calls(rcli))

    before = None
    if rcli is not None:
        rcli.config_set("slowlog-log-slower-than", 1000)  # every command over 1 ms, to find the longest
        rcli.slowlog_reset()
        before = command_calls(rcli)
    started = time.perf_counter()
    removed = await store.sweep(now=now + TIMEOUT + 1)
    seconds = time.perf_counter() - started
    script_calls = script_ms = longest = None
    if rcli is not None and before is not None:
        after = command_calls(rcli)
        script_calls = after.get("evalsha", (0, 0))[0] - before.get("evalsha", (0, 0))[0]
        usec = after.get("evalsha", (0, 0))[1] - before.get("evalsha", (0, 0))[1]
        script_ms = usec / 1000 / script_calls if script_calls else 0.0
        slow = rcli.slowlog_get(128)
        longest = max((int(entry["duration"]) for entry in slow), default=0) / 1000
        rcli.config_set("slowlog-log-slower-than", 10_000)
    counted = rcli is not None
    return SweepFigures(
        users,
        removed,
        seconds,
        idle_removed,
        idle_ms,
        idle_round_trips if counted else None,
        idle_commands,
        script_calls,
        script_ms,
        longest,
    )


def print_sweep(figures: SweepFigures, targets: bool) -> list[tuple[str, bool]]:
    results: list[tuple[str, bool]] = []
    ok = figures.seconds < SWEEP_SECONDS and figures.removed == figures.users
    tail = f"   target < {SWEEP_SECONDS:g} s  {verdict(ok)}" if targets else ""
    say(f"  sweep expiring {figures.users} users: {figures.seconds * 1000:.0f} ms, removed {figures.removed}{tail}")
    if figures.script_calls is not None and figures.script_ms_per_call is not None:
        say(
            f"    {figures.script_calls} sweep script calls, {figures.script_ms_per_call:.1f} ms of Redis time each on "
            f"average, longest {figures.longest_script_ms or 0:.1f} ms (Redis serves nobody else meanwhile)"
        )
    if targets:
        results.append(("sweep of 10,000 expiries < 1 s", ok))
    if figures.idle_round_trips is None:
        say(f"  sweep with nothing due: {figures.idle_ms:.3f} ms (in-process store: no round trips to count)")
    else:
        idle_ok = figures.idle_round_trips == IDLE_SWEEP_ROUND_TRIPS and figures.idle_removed == 0
        tail = f"   target exactly {IDLE_SWEEP_ROUND_TRIPS}  {verdict(idle_ok)}" if targets else ""
        say(
            f"  sweep with nothing due ({figures.users} present, none due): {figures.idle_round_trips} round trip(s), "
            f"{figures.idle_ms:.3f} ms{tail}"
        )
        say(f"    Redis commands it ran (INFO commandstats delta): {figures.idle_commands}")
        if targets:
            results.append(("idle sweep = 1 round trip", idle_ok))
    return results


# -- memory ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class KeyFigure:
    label: str
    kind: str
    encoding: str
    length: int
    bytes: int


def key_length(rcli: redis.Redis, key: str, kind: str) -> int:
    length = {
        "zset": rcli.zcard,
        "hash": rcli.hlen,
        "stream": rcli.xlen,
        "set": rcli.scard,
        "string": rcli.strlen,
        "list": rcli.llen,
    }.get(kind)
    return int(length(key)) if length else 0


# What each key of a keyset holds, by the name of the KeysetKeys member that builds it; members
# that a given server version lacks are skipped, keys without a label are shown by name.
KEY_LABELS = [
    ("occupants", "occupants zset", True),
    ("state", "state hash", True),
    ("log", "presence log stream", True),
    ("deltas", "interval deltas hash", True),
    ("messages", "message stream", True),
    ("where", "where hash (keyset-wide)", False),
    ("due", "due index", False),
    ("intervals", "interval index", False),
    ("names", "channel-name index", False),
    ("timetoken", "timetoken", False),
]


def key_labels(store: PresenceStore, channel: str) -> dict[str, str]:
    ks = store.keys(SUB_KEY)
    labels = {keysets_due(PREFIX): "keysets index (global)"}
    for member, label, per_channel in KEY_LABELS:
        builder = getattr(ks, member, None)
        if builder is not None:
            labels[builder(channel) if per_channel else builder] = label
    return labels


async def idle_connections_closed(store: PresenceStore) -> None:
    await store.redis.connection_pool.disconnect(inuse_connections=False)
    await asyncio.sleep(0.3)  # let Redis notice the closed sockets and free those clients


async def memory_figures(store: PresenceStore, rcli: redis.Redis, users: int) -> tuple[list[KeyFigure], int, int]:
    """Keys of one channel's ``users`` occupants by MEMORY USAGE, plus used_memory and dataset deltas."""
    await store.heartbeat("warmup", "warmup", ["warmup"], now=time.time(), timeout=TIMEOUT)  # scripts cached
    rcli.flushall()
    # Connections cost Redis memory of their own: measure with only the same few open each time
    # (this one and the store's pub/sub listener), the population's idle connections closed.
    await idle_connections_closed(store)
    before = rcli.info("memory")
    now = time.time()
    await populate_store(store, members_of(4_000_000, users, "lobby"), now)
    # What the running sweeper would have done within a minute: pending interval deltas flushed,
    # nobody expired (their deadlines are TIMEOUT seconds away).
    await store.sweep(now=now + 60)
    await idle_connections_closed(store)
    after = rcli.info("memory")
    labels = key_labels(store, "lobby")
    figures = []
    for key in sorted(rcli.scan_iter(match=f"{PREFIX}:*", count=1000)):
        kind = str(rcli.type(key))
        encoding = str(rcli.object("encoding", key))
        size = rcli.memory_usage(key, samples=0) or 0
        figures.append(KeyFigure(labels.get(key, key), kind, encoding, key_length(rcli, key, kind), size))
    used = int(after["used_memory"]) - int(before["used_memory"])
    dataset = int(after["used_memory_dataset"]) - int(before["used_memory_dataset"])
    return figures, used, dataset


# -- engines --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Options:
    seconds: float
    rounds: int
    warmup: float
    connections: int
    users: int
    channels: int
    crowd: int
    huge: int
    memory_huge: int
    samples: int
    generator: str
    engines: list[str]
    redis_server: str


def throughput(
    children: Children, plan: LoadPlan, server: Child, server_port: int, rcli: redis.Redis | None, label: str
) -> tuple[list[Load], list[Load]]:
    """The baseline and the server under the same load, taking turns for ``plan.rounds`` rounds.

    On a shared machine the speed drifts from one minute to the next; runs side by side in time,
    repeated, give ratios that drift less than one long run of each.
    """
    baseline, baseline_port = start_baseline(children)
    bases: list[Load] = []
    loads: list[Load] = []
    try:
        if plan.warmup > 0:
            drive(plan, baseline_port, plan.warmup, baseline, None)
            drive(plan, server_port, plan.warmup, server, rcli)
        for round_number in range(1, plan.rounds + 1):
            base = drive(plan, baseline_port, plan.seconds, baseline, None)
            load = drive(plan, server_port, plan.seconds, server, rcli)
            say(f"  round {round_number}")
            say(base.line("minimal aiohttp handler"))
            say(load.line(label))
            say(f"  {'':<26} ratio {ratio_of(base, load):.2f}")
            bases.append(base)
            loads.append(load)
    finally:
        children.stop(baseline)
    return bases, loads


def ratio_of(base: Load, load: Load) -> float:
    return load.rps / base.rps if base.rps else 0.0


def median_ratio(bases: Sequence[Load], loads: Sequence[Load]) -> float:
    return statistics.median(ratio_of(base, load) for base, load in zip(bases, loads, strict=True))


def redis_engine(children: Children, opts: Options, plan: LoadPlan) -> list[tuple[str, bool]]:
    results: list[tuple[str, bool]] = []
    _, redis_port, rcli = start_redis(children, opts.redis_server)
    url = f"redis://127.0.0.1:{redis_port}/0"
    say(f"\n#### engine: redis ({url}, redis-server {rcli.info('server')['redis_version']})")

    # Store-only figures first, while no server (and so no sweeper) touches Redis.
    say(f"\n== 3. sweep (PresenceStore.sweep in this process, against {url})")
    counting = open_redis(url, connection_class=CountingConnection)
    try:
        sweep = asyncio.run(with_store(counting, lambda store: sweep_figures(store, rcli, opts.crowd)))
    finally:
        rcli.flushall()
    results += print_sweep(sweep, targets=True)

    say(
        f"\n== 4. Redis memory per present user: {opts.crowd} users ({len(uuid_of(0))}-character uuids) "
        "heartbeating one channel, no state"
    )
    keys, used, dataset = asyncio.run(
        with_store(open_redis(url), lambda store: memory_figures(store, rcli, opts.crowd))
    )
    total = sum(k.bytes for k in keys)
    for k in keys:
        say(
            f"  {k.label:<28} {k.kind:<7} {k.encoding:<10} {k.length:>7} entries {k.bytes:>10} B"
            f"  = {k.bytes / opts.crowd:7.1f} B/user"
        )
    per_user = total / opts.crowd
    say(f"  {'all keys (MEMORY USAGE)':<28} {'':<34} {total:>10} B  = {per_user:7.1f} B/user")
    say(
        f"  used_memory delta {used} B = {used / opts.crowd:.1f} B/user; "
        f"used_memory_dataset delta {dataset} B = {dataset / opts.crowd:.1f} B/user"
    )
    worst = max(per_user, used / opts.crowd)
    ok = worst < BYTES_PER_USER
    say(
        f"  per present user (larger of the two estimates): {worst:.1f} B   target < {BYTES_PER_USER:g} B  "
        f"{verdict(ok)}"
    )
    results.append(("Redis memory < 200 B per present user", ok))
    rcli.flushall()

    say(f"\n   populating through PresenceStore.heartbeat (prefix {PREFIX!r}, same Redis as the server) ...")
    now = time.time()
    members = (
        members_of(0, opts.users, None, opts.channels)
        + members_of(1_000_000, opts.crowd, "crowd")
        + members_of(2_000_000, opts.huge, "huge")
    )
    rate = asyncio.run(with_store(open_redis(url), lambda store: populate_store(store, members, now)))
    say(
        f"   {opts.users + opts.crowd + opts.huge} heartbeats straight into the store: {rate:.0f}/s "
        f"({POPULATE_CONCURRENCY} concurrent, this process)"
    )
    server_child, server_port = start_server(children, "server-redis", url)
    try:
        say(f"\n== 1. heartbeat throughput ({describe(plan)})")
        bases, loads = throughput(children, plan, server_child, server_port, rcli, "server on redis")
        ratio = median_ratio(bases, loads)
        ok = ratio >= THROUGHPUT_RATIO and not any(load.errors for load in loads)
        say(
            f"  ratio server / baseline (median of {len(loads)} rounds): {ratio:.2f}   "
            f"target >= {THROUGHPUT_RATIO:.2f}  {verdict(ok)}"
        )
        results.append(("heartbeat throughput >= 50% of minimal aiohttp", ok))

        say("\n== 2. here_now latency (sequential HTTP requests from this process)")
        origin = f"http://127.0.0.1:{server_port}"
        page = asyncio.run(here_now_http(origin, "crowd", {"limit": "1000"}, opts.samples, opts.crowd))
        fast = print_here_now(f"{opts.crowd} occupants, limit=1000", page, HERE_NOW_PAGE_MS)
        results.append(("here_now 10k limit=1000 median < 10 ms", bool(fast)))
        count = asyncio.run(here_now_http(origin, "huge", {"disable_uuids": "1"}, opts.samples, opts.huge))
        fast = print_here_now(f"{opts.huge} occupants, disable_uuids=1", count, HERE_NOW_COUNT_MS)
        results.append(("here_now 100k disable_uuids median < 2 ms", bool(fast)))
        page_store, count_store = asyncio.run(
            with_store(open_redis(url), lambda store: _store_reads(store, opts.samples))
        )
        print_here_now("  same page via PresenceStore (no HTTP)", page_store, None)
        print_here_now("  same count via PresenceStore (no HTTP)", count_store, None)
    finally:
        children.stop(server_child)
    return results


async def _store_reads(store: PresenceStore, samples: int) -> tuple[Latency, Latency]:
    return (
        await here_now_store(store, "crowd", samples, with_uuids=True),
        await here_now_store(store, "huge", samples, with_uuids=False),
    )


def memory_engine(children: Children, opts: Options, plan: LoadPlan) -> None:
    say("\n#### engine: memory:// (fakeredis inside the server process; figures only, no targets)")
    server_child, server_port = start_server(children, "server-memory", "memory://")
    origin = f"http://127.0.0.1:{server_port}"
    try:
        # Populating memory:// goes through HTTP at a few hundred heartbeats a second, so the
        # occupancy-only figure reuses the crowd channel when the sizes agree.
        huge = "crowd" if opts.memory_huge == opts.crowd else "huge"
        members = members_of(0, opts.users, None, opts.channels) + members_of(1_000_000, opts.crowd, "crowd")
        if huge == "huge":
            members += members_of(2_000_000, opts.memory_huge, "huge")
        say(f"   populating through HTTP heartbeats ({len(members)}) ...")
        rate = asyncio.run(populate_http(origin, members))
        say(f"   {len(members)} HTTP heartbeats: {rate:.0f}/s (32 concurrent, this process)")

        say(f"\n== 1. heartbeat throughput ({describe(plan)})")
        bases, loads = throughput(children, plan, server_child, server_port, None, "server on memory://")
        say(f"  ratio server / baseline (median of {len(loads)} rounds): {median_ratio(bases, loads):.2f}")

        say("\n== 2. here_now latency (sequential HTTP requests from this process)")
        page = asyncio.run(here_now_http(origin, "crowd", {"limit": "1000"}, opts.samples, opts.crowd))
        print_here_now(f"{opts.crowd} occupants, limit=1000", page, None)
        count = asyncio.run(here_now_http(origin, huge, {"disable_uuids": "1"}, opts.samples, opts.memory_huge))
        print_here_now(f"{opts.memory_huge} occupants, disable_uuids=1", count, None)
        if opts.memory_huge != opts.huge:
            say(
                f"    ({opts.memory_huge}, not {opts.huge}: populating memory:// through HTTP runs at the rate above; "
                "--memory-huge changes it)"
            )
    finally:
        children.stop(server_child)

    say("\n== 3. sweep (PresenceStore.sweep on memory:// in this process: the embedded store's code path)")
    sweep = asyncio.run(with_store(open_redis("memory://"), lambda store: sweep_figures(store, None, opts.crowd)))
    print_sweep(sweep, targets=False)


def describe(plan: LoadPlan) -> str:
    return (
        f"{plan.generator}, {plan.connections} connections, {plan.warmup:g} s warm-up then {plan.rounds} rounds "
        f"of {plan.seconds:g} s each; "
        f"{plan.users} uuids on {plan.channels} channels, heartbeat={TIMEOUT}, all already present"
    )


# -- main -----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.presence", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="each throughput run (default 5)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="throughput runs of the baseline and the server, taking turns (default 3)"
    )
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured run before the first (default 2)")
    parser.add_argument("--connections", type=int, default=64, help="concurrent connections (default 64)")
    parser.add_argument("--users", type=int, default=10_000, help="uuids heartbeating (default 10000)")
    parser.add_argument("--channels", type=int, default=4, help="channels they heartbeat (default 4)")
    parser.add_argument(
        "--crowd",
        type=int,
        default=10_000,
        help="occupants for here_now limit=1000, the sweep and memory (default 10000)",
    )
    parser.add_argument("--huge", type=int, default=100_000, help="occupants for here_now disable_uuids")
    parser.add_argument(
        "--memory-huge", type=int, default=10_000, help="the same on memory://, populated through HTTP (default 10000)"
    )
    parser.add_argument("--samples", type=int, default=300, help="here_now requests per figure (default 300)")
    parser.add_argument("--generator", choices=["auto", "wrk", "aiohttp"], default="auto")
    parser.add_argument("--engines", default="redis,memory", help="comma list of redis, memory")
    parser.add_argument("--redis-server", default="redis-server", help="redis-server binary")
    args = parser.parse_args(argv)
    engines = [e for e in args.engines.split(",") if e]
    if not set(engines) <= {"redis", "memory"}:
        parser.error("--engines takes redis and/or memory")
    if args.rounds < 1:
        parser.error("--rounds takes 1 or more")
    return Options(
        args.seconds,
        args.rounds,
        args.warmup,
        args.connections,
        args.users,
        args.channels,
        args.crowd,
        args.huge,
        args.memory_huge,
        args.samples,
        args.generator,
        engines,
        args.redis_server,
    )


def choose_generator(requested: str) -> str:
    if requested == "aiohttp":
        return "aiohttp"
    if shutil.which("wrk"):
        return "wrk"
    if requested == "wrk":
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    say("!! wrk is not installed (Debian/Ubuntu: apt-get install -y wrk). Falling back to bench.loadgen, an aiohttp")
    say("!! generator in another process: on a small machine it, not the server, limits both throughput figures,")
    say("!! so the ratio below compares two generator-bound numbers.")
    return "aiohttp"


def describe_machine(generator: str) -> None:
    revision = "unknown"
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        revision = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], check=True, capture_output=True, text=True
        ).stdout.strip()
    version = ""
    if generator == "wrk":
        with contextlib.suppress(OSError):
            version = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    parser = "hiredis" if HIREDIS_AVAILABLE else "pure Python (no hiredis)"
    say(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs; Python {platform.python_version()}, "
        f"aiohttp {aiohttp.__version__}, redis-py {redis.__version__} with the {parser} reply parser"
    )
    say(f"server code: {Path(presence_server.__file__).parent} (git {revision}); generator: {version or generator}")
    say(f"load average before the run: {load_average()} (other work on the machine skews every figure)")


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


@contextlib.contextmanager
def workspace() -> Iterator[Children]:
    with tempfile.TemporaryDirectory(prefix="presence-bench-") as workdir:
        children = Children(Path(workdir))
        try:
            yield children
        finally:
            children.stop_all()


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    generator = choose_generator(opts.generator)
    describe_machine(generator)
    plan = LoadPlan(generator, opts.seconds, opts.warmup, opts.connections, opts.users, opts.channels, opts.rounds)
    started = time.monotonic()
    results: list[tuple[str, bool]] = []
    with workspace() as children:
        if "redis" in opts.engines:
            results += redis_engine(children, opts, plan)
        if "memory" in opts.engines:
            memory_engine(children, opts, plan)
    say(
        f"\n#### summary (redis engine targets; {time.monotonic() - started:.0f} s in all, "
        f"load average now {load_average()})"
    )
    for name, ok in results:
        say(f"  {verdict(ok)}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
