"""The load harness: heartbeat throughput, fan-out, presence event latency, two server processes
against one, and an Access Manager keyset against an open one, each figure beside its baseline measured
in the same run and its target (PASS/FAIL).

``python -m bench.live`` (``--help`` for the knobs; bench/README.md says what each figure means).
It starts its own redis-server, the servers, the baseline app and the load generators on loopback,
and stops them on the way out. ``--compare REV`` measures a server started from REV (a git worktree
in a temporary directory) in the same run, taking turns with this tree's. Nothing here runs in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import http.client
import os
import platform
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis

from bench import cpucap
from bench.fanout_client import CONTENT_LENGTH, raise_fd_limit, request_bytes
from presence_server.access.signing import canonical_query, sign_v2

ROOT = Path(__file__).resolve().parent.parent
SUB_KEY = "bench"
TIMEOUT = 300  # heartbeat=300, as the SDKs send by default
HELD = re.compile(rb"^presence_longpolls_held (\S+)$", re.MULTILINE)
PHASES = ("heartbeat", "fanout", "presence", "processes", "access")
# The targets (issues 2, 3 and 11).
HEARTBEAT_RATIO = 0.5
FANOUT_P99_MS = 250.0
PRESENCE_MEDIAN_MS = 20.0
TWO_PROCESS_RATIO = 1.4
ACCESS_RATIO = 0.9
# Phase access: an open keyset (the bench's usual one) and an Access Manager keyset on one server.
AM_PUB_KEY, AM_SUB_KEY = "bench-am-pub", "bench-am"
ROOMS = "^room-[0-9]+$"  # the channels bench/heartbeat.lua and populate() heartbeat


def say(text: str = "") -> None:
    print(text, flush=True)


def pct(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] if ordered else 0.0


def listed(values: Sequence[float], sep: str = "/", digits: int = 1) -> str:
    return sep.join(f"{x:.{digits}f}" for x in values)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (every core, every process), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass
class Figure:
    """One entry of the summary: per server tree, the figure as text and whether it met the target."""

    name: str
    target: str
    values: dict[str, tuple[str, bool]] = dataclasses.field(default_factory=dict)


# -- processes --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    port: int = 0

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def wait_up(self, limit: float = 30.0) -> Child:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{tail}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    conn.close()
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer /health within {limit:.0f} s (log: {self.log})")


class Children:
    """Every long-lived subprocess of the run; all are stopped on the way out, whatever happens."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: list[Child] = []

    def start(self, name: str, argv: Sequence[str], port: int = 0, **popen: Any) -> Child:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            options = {"cwd": ROOT, "stdin": subprocess.DEVNULL, "stdout": out, "stderr": out, **popen}
            self.running.append(Child(name, subprocess.Popen(argv, start_new_session=True, **options), log, port))
        return self.running[-1]

    def stop(self, *children: Child) -> None:
        for child in children:
            if child.proc.poll() is None:
                child.proc.terminate()
                try:
                    child.proc.wait(10)
                except subprocess.TimeoutExpired:
                    child.proc.kill()
                    child.proc.wait()
            self.running.remove(child)

    def stop_all(self) -> None:
        self.stop(*reversed(self.running))


@contextlib.contextmanager
def redis_server(binary: str, workdir: Path, children: Children) -> Iterator[redis.Redis]:
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    children.start("redis", [*argv, "--dir", str(workdir)])
    client = redis.Redis(port=port, decode_responses=True)
    for _ in range(200):
        with contextlib.suppress(redis.ConnectionError):
            client.ping()
            break
        time.sleep(0.05)
    with client:
        yield client


@dataclasses.dataclass(frozen=True)
class Tree:
    """A server to measure: this checkout, or a revision checked out with ``git worktree``."""

    label: str
    path: Path
    package: str  # presence_server, or server before the rename (60f2c84)


def tree_at(path: Path, label: str) -> Tree:
    for package in ("presence_server", "server"):
        if (path / package / "__main__.py").is_file():
            return Tree(label, path, package)
    raise SystemExit(f"{path} has neither presence_server/ nor server/ with a __main__.py")


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout.strip()


@contextlib.contextmanager
def worktree(rev: str, workdir: Path) -> Iterator[Tree]:
    path = workdir / "compare-tree"
    git("worktree", "add", "--detach", str(path), rev)
    try:
        yield tree_at(path, git("rev-parse", "--short", rev))
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], capture_output=True)


@dataclasses.dataclass
class Bench:
    opts: Options
    children: Children
    trees: list[Tree]
    rcli: redis.Redis
    url: str

    def env(self, tree: Tree) -> dict[str, str]:
        """Each tree has a key prefix of its own on the one Redis."""
        prefix, hold = f"bench{self.trees.index(tree)}", f"{self.opts.hold:g}"
        return dict(os.environ, PYTHONPATH=str(tree.path), PRESENCE_KEY_PREFIX=prefix, PRESENCE_LONGPOLL_HOLD=hold)

    def server(self, tree: Tree, name: str, keysets: str = "") -> Child:
        """A server process of ``tree``; ``keysets`` is its PRESENCE_KEYSETS (by default every keyset is open)."""
        port = free_port()
        argv = [sys.executable, "-m", tree.package, "--host", "127.0.0.1", "--port", str(port), "--redis-url"]
        env = self.env(tree) | ({"PRESENCE_KEYSETS": keysets} if keysets else {})
        return self.children.start(name, [*argv, self.url], port, cwd=tree.path, env=env).wait_up()

    def baseline(self) -> Child:
        port = free_port()
        argv = [sys.executable, "-m", "bench.baseline", "--port", str(port), "--hold", f"{self.opts.hold:g}"]
        return self.children.start("baseline", argv, port).wait_up()

    def redis_cpu(self) -> float:
        info = self.rcli.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def commands(self) -> Counter[str]:
        """Calls per command so far (INFO commandstats: commands inside scripts too), the bench's INFOs left out."""
        stats = self.rcli.info("commandstats")
        return Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items() if "info" not in k})

    def scripts(self) -> tuple[int, float]:
        """EVALSHA calls so far, and the seconds Redis spent in them (INFO commandstats)."""
        stats = self.rcli.info("commandstats").get("cmdstat_evalsha", {})
        return int(stats.get("calls", 0)), int(stats.get("usec", 0)) / 1e6

    def alternate(self, repeat: int) -> list[Tree]:
        """The trees in turn, the order reversed every other repeat so that neither always goes first."""
        return self.trees if repeat % 2 == 0 else self.trees[::-1]


# -- heartbeats with wrk ------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """One load run: what each wrk reported and the CPU every process spent meanwhile."""

    rps: list[float]  # per wrk
    requests: int
    errors: int
    seconds: float
    p50_ms: list[float]
    p99_ms: list[float]
    wrk_cpu: float
    server_cpu: list[float]  # per server process watched (an idle one included)
    redis_cpu: float = 0.0
    machine_cpu: float = 0.0
    evalsha: int = 0  # script calls Redis served meanwhile
    evalsha_s: float = 0.0  # the time Redis spent in them (INFO commandstats), s

    def line(self, label: str) -> str:
        per_request = 1e6 * sum(self.server_cpu) / max(1, self.requests)
        return (
            f"  {label:<32} {sum(self.rps):7.0f} req/s ({listed(self.rps, '+', 0)}), {self.errors} errors, "
            f"p50 {listed(self.p50_ms)} ms, p99 {listed(self.p99_ms)} ms\n  {'':<32} CPU s: process "
            f"{listed(self.server_cpu, '+')} ({per_request:.0f} µs/request), redis {self.redis_cpu:.2f} "
            f"({1e6 * self.redis_cpu / max(1, self.requests):.1f} µs/request, "
            f"{1e6 * self.evalsha_s / max(1, self.requests):.1f} in scripts, "
            f"{self.requests / max(1, self.evalsha):.1f} requests per EVALSHA), "
            f"wrk {self.wrk_cpu:.1f}; machine busy {self.machine_cpu / self.seconds:.2f} cores"
        )


def _ms(text: str) -> float:
    found = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    return float(found.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)] if found else 0.0


def wrk(
    jobs: Sequence[tuple[int, int]],
    seconds: float,
    opts: Options,
    sub_key: str = SUB_KEY,
    auth: str = "",
    script: str = "bench/heartbeat.lua",
) -> Run:
    """One wrk per (port, connections), all at once, each reaped with wait4 for its CPU time; the
    heartbeats go to ``sub_key``, with ``auth`` (a token) when given. ``script`` takes the same
    arguments (``sub_key`` may be a comma list of keysets)."""
    argv = ["wrk", "-t1", f"-d{max(1, round(seconds))}s", "--timeout", "5s", "--latency", "-s", script]
    args = ["--", sub_key, str(opts.users), str(opts.channels), str(TIMEOUT)]
    args += [urllib.parse.quote(auth, safe="")] if auth else []
    procs = [
        subprocess.Popen([*argv, f"-c{n}", f"http://127.0.0.1:{port}", *args], cwd=ROOT, stdout=subprocess.PIPE)
        for port, n in jobs
    ]
    run = Run([], 0, 0, 0.0, [], [], 0.0, [])
    for proc in procs:
        assert proc.stdout is not None
        with proc.stdout:
            out = proc.stdout.read().decode()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        done = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m),", out)
        latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.MULTILINE))
        if proc.returncode or not done or len(latency) != 2:
            raise RuntimeError(f"wrk (exit status {proc.returncode}) gave no report:\n{out}")
        elapsed = float(done.group(2)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[done.group(3)]
        sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        run.errors += sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
        run.errors += sum(int(n) for n in sockets.groups()) if sockets else 0
        run.requests += int(done.group(1))
        run.rps.append(int(done.group(1)) / elapsed)
        run.seconds = max(run.seconds, elapsed)
        run.p50_ms.append(_ms(latency["50"]))
        run.p99_ms.append(_ms(latency["99"]))
        run.wrk_cpu += usage.ru_utime + usage.ru_stime
    return run


def measure(
    bench: Bench, watched: Sequence[Child], jobs: Sequence[tuple[int, int]], seconds: float, **keyset: str
) -> Run:
    """wrk on ``jobs`` (``keyset``: wrk's ``sub_key`` and ``auth``) and the CPU of ``watched`` and Redis meanwhile."""
    before, redis_before, busy_before = [c.cpu() for c in watched], bench.redis_cpu(), machine_busy()
    evalsha_before, evalsha_s_before = bench.scripts()
    run = wrk(jobs, seconds, bench.opts, **keyset)
    run.server_cpu = [c.cpu() - b for c, b in zip(watched, before, strict=True)]
    run.redis_cpu, run.machine_cpu = bench.redis_cpu() - redis_before, machine_busy() - busy_before
    evalsha, evalsha_s = bench.scripts()
    run.evalsha, run.evalsha_s = evalsha - evalsha_before, evalsha_s - evalsha_s_before
    return run


async def populate(
    port: int, users: int, channels: int, concurrency: int = 32, sub_key: str = SUB_KEY, auth: str = ""
) -> float:
    """Make the uuids wrk sends present, through HTTP heartbeats (with ``auth`` when given); returns
    heartbeats per second. uuid n is built as bench/heartbeat.lua builds it."""
    pending = iter(range(users))
    base = f"http://127.0.0.1:{port}/v2/presence/sub-key/{sub_key}/channel"

    async def worker(session: aiohttp.ClientSession) -> None:
        for n in pending:
            params = {"heartbeat": str(TIMEOUT), "uuid": f"{n:08x}-0000-4000-8000-{n:012x}"}
            params |= {"auth": auth} if auth else {}
            async with session.get(f"{base}/room-{n % channels}/heartbeat", params=params) as response:
                if response.status != 200:
                    raise RuntimeError(f"population heartbeat answered {response.status}: {await response.text()}")

    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return users / (time.perf_counter() - started)


def present(bench: Bench, server: Child, sub_key: str = SUB_KEY, auth: str = "") -> None:
    o = bench.opts
    rate = asyncio.run(populate(server.port, o.users, o.channels, sub_key=sub_key, auth=auth))
    say(f"  {o.users} uuids on {o.channels} channels of {sub_key} made present through {server.name}: {rate:.0f}/s")


def heartbeat(bench: Bench) -> list[Figure]:
    o = bench.opts
    say(
        f"\n== 1. heartbeat throughput: wrk -t1 -c{o.connections}, {o.warmup:g} s warm-up, then {o.rounds} rounds of "
        f"{o.seconds:g} s, the minimal aiohttp handler and each server in turn; {o.users} uuids, all present"
    )
    base = bench.baseline()
    servers = {tree: bench.server(tree, f"heartbeat-{i}") for i, tree in enumerate(bench.trees)}
    ratios: dict[Tree, list[float]] = {tree: [] for tree in bench.trees}
    errors = Counter[Tree]()
    try:
        for child in servers.values():
            present(bench, child)
        for child in [base, *servers.values()] if o.warmup > 0 else []:
            measure(bench, [child], [(child.port, o.connections)], o.warmup)
        for number in range(o.rounds):
            base_run = measure(bench, [base], [(base.port, o.connections)], o.seconds)
            say(f"  round {number + 1}\n{base_run.line('minimal aiohttp handler')}")
            for tree in bench.alternate(number):
                run = measure(bench, [servers[tree]], [(servers[tree].port, o.connections)], o.seconds)
                ratios[tree].append(sum(run.rps) / sum(base_run.rps))
                errors[tree] += run.errors
                say(run.line(tree.label) + f"\n  {'':<32} ratio to the baseline {ratios[tree][-1]:.2f}")
    finally:
        bench.children.stop(base, *servers.values())
    figure = Figure("heartbeat throughput / minimal aiohttp, median of rounds", f">= {HEARTBEAT_RATIO:g}, no errors")
    for tree, each in ratios.items():
        text = f"{statistics.median(each):.2f} (rounds {listed(each, ', ', 2)}; {errors[tree]} errors)"
        figure.values[tree.label] = (text, statistics.median(each) >= HEARTBEAT_RATIO and not errors[tree])
    return [figure]


# -- fan-out and presence: asyncio from here ------------------------------------------------------------


class Conn:
    """One keep-alive connection; ``get`` returns (status, body, time.monotonic() once the body is read)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Conn:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def get(self, path: str) -> tuple[int, bytes, float]:
        self.writer.write(request_bytes(path, "127.0.0.1"))
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = CONTENT_LENGTH.search(head)
        body = await self.reader.readexactly(int(length.group(1)) if length else 0)
        return int(head[9:12]), body, time.monotonic()

    async def held(self, expected: int, limit: float = 60.0, pause: float = 0.002) -> None:
        """Until /metrics shows exactly ``expected`` long-polls held (each scrape costs the server a little)."""
        deadline = time.monotonic() + limit
        while (found := HELD.search((await self.get("/metrics"))[1])) is None or int(float(found[1])) != expected:
            if found is None or time.monotonic() > deadline:
                raise RuntimeError(f"{found and found[1]!r} long-polls held after {limit:.0f} s, expected {expected}")
            await asyncio.sleep(pause)


Process = asyncio.subprocess.Process


async def event(gen: Process, kind: str, limit: float = 60.0) -> dict[str, Any]:
    """The next JSON-line event of a bench.fanout_client process, which must be of ``kind``."""
    assert gen.stdout is not None
    line = await asyncio.wait_for(gen.stdout.readline(), limit)
    found: dict[str, Any] = orjson.loads(line) if line else {"event": "exit", "code": await gen.wait()}
    if found.get("event") != kind:
        raise RuntimeError(f"fan-out generator {gen.pid}: {found} while waiting for {kind!r}")
    return found


async def stats(gens: Sequence[Process]) -> list[dict[str, Any]]:
    for gen in gens:
        assert gen.stdin is not None
        gen.stdin.write(b"stats\n")
    return [await event(gen, "stats", 30) for gen in gens]


@dataclasses.dataclass
class Round:
    latencies: list[float]  # ms, every subscriber's delivery
    reheld: float  # s, publish sent -> every subscriber held again
    generator_cpu: list[float]  # s per generator process over that span
    generator_lag_ms: float  # the longest event-loop stall of any generator
    read_delay_ms: float  # the longest an answer waited in a generator before it was read
    spent: tuple[float, float, float]  # CPU s of the process under test, Redis, the whole machine
    commands: Counter[str]  # Redis commands run over the span

    def line(self, number: int, last: float) -> str:
        lat, (target, redis_cpu, _) = self.latencies, self.spent
        return (
            f"  round {number:>2}: first {min(lat):6.1f}  p50 {pct(lat, 0.5):6.1f}  p99 {pct(lat, 0.99):6.1f}  "
            f"max {max(lat):6.1f} ms | last "
            f"at {1000 * last:4.0f} ms, all held again at {1000 * self.reheld:4.0f} ms | CPU s: target {target:.2f}, "
            f"redis {redis_cpu:.2f}, generators {listed(self.generator_cpu, '+', 2)} | generator "
            f"lag {self.generator_lag_ms:.1f} ms, read delay {self.read_delay_ms:.1f} ms"
        )


async def fanout_round(bench: Bench, number: int, gens: list[Process], conn: Conn, target: Child) -> Round:
    before = await stats(gens)  # also empties each generator's records
    cpu, redis_cpu, busy, commands = target.cpu(), bench.redis_cpu(), machine_busy(), bench.commands()
    sent = time.time()  # the generators' arrivals are kernel timestamps: CLOCK_REALTIME
    message = urllib.parse.quote(orjson.dumps({"r": number, "t": sent}).decode(), safe="")
    status, body, _ = await conn.get(f"/publish/bench-pub/{SUB_KEY}/0/fanout/0/{message}?uuid=bench-publisher")
    if status != 200 or not body.startswith(b'[1,"Sent"'):
        raise RuntimeError(f"publish answered {status}: {body[:200]!r}")
    last = max([float((await event(gen, "round"))["last"]) for gen in gens])
    await conn.held(bench.opts.subscribers, pause=0.02)
    reheld = time.time() - sent
    spent = (target.cpu() - cpu, bench.redis_cpu() - redis_cpu, machine_busy() - busy)
    commands = bench.commands() - commands
    after = await stats(gens)
    latencies = [ms for each in after for r, ms in each["latencies"] if r == number]
    if len(latencies) != bench.opts.subscribers:
        raise RuntimeError(f"round {number}: {len(latencies)} deliveries, expected {bench.opts.subscribers}")
    generator_cpu = [a["cpu"] - b["cpu"] for a, b in zip(after, before, strict=True)]
    lag, delay = max(a["lag_ms"] for a in after), max(a["read_delay_ms"] for a in after)
    done = Round(latencies, reheld, generator_cpu, lag, delay, spent, commands)
    say(done.line(number, last - sent) + ("   (warm-up, not counted)" if number == 0 else ""))
    return done


async def fanout_run(bench: Bench, target: Child) -> tuple[list[Round], dict[str, Any]]:
    """Subscribers in generator processes, one warm-up round that puts them on one cursor, then the
    publishes; returns the measured rounds and the generators' trouble counts."""
    o, total = bench.opts, bench.opts.subscribers
    sizes = [total // o.generators + (i < total % o.generators) for i in range(o.generators)]
    argv = [sys.executable, "-m", "bench.fanout_client", "--port", str(target.port), "--channel", "fanout"]
    gens: list[Process] = []
    conn = None
    try:
        for i, size in enumerate(sizes):
            more = ["--sub-key", SUB_KEY, "--first", str(sum(sizes[:i])), "--count", str(size)]
            pipe = subprocess.PIPE
            gens.append(
                await asyncio.create_subprocess_exec(*argv, *more, cwd=ROOT, stdin=pipe, stdout=pipe, limit=1 << 26)
            )
        started = time.monotonic()
        for gen in gens:
            await event(gen, "ready", 90)
        conn = await Conn.open(target.port)
        await conn.held(total, pause=0.02)
        say(f"  {target.name}: {total} subscribers handshaken and held after {time.monotonic() - started:.1f} s")
        rounds = [await fanout_round(bench, number, gens, conn, target) for number in range(o.publishes + 1)]
        finals = await stats(gens)
    finally:
        if conn is not None:
            conn.writer.close()
        for gen in gens:
            with contextlib.suppress(ProcessLookupError):
                gen.terminate()
            await gen.wait()
    trouble: dict[str, Any] = {k: sum(f[k] for f in finals) for k in ("errors", "lost", "duplicates", "empty")}
    trouble["sample"] = next((f["error_sample"] for f in finals if f["error_sample"]), "")
    trouble["stamps"] = all(f["kernel_stamps"] for f in finals)
    return rounds[1:], trouble


BASELINE_FANOUT = "minimal aiohttp long-poll (one Event, no store)"


def p99_of(rounds: list[Round]) -> float:
    return pct(sorted(ms for r in rounds for ms in r.latencies), 0.99)


def round_p99(rounds: list[Round]) -> float:
    """The median of the rounds' own p99: one slow round (the machine's other work) moves it far less
    than the pooled p99, which is that round's tail."""
    return statistics.median(pct(sorted(r.latencies), 0.99) for r in rounds)


def summarise_fanout(label: str, rounds: list[Round], trouble: dict[str, Any]) -> tuple[float, float, bool]:
    pooled = sorted(ms for r in rounds for ms in r.latencies)
    p50, p99 = pct(pooled, 0.5), pct(pooled, 0.99)
    span = mean([r.reheld for r in rounds])
    target, redis_cpu, machine = (mean([r.spent[i] for r in rounds]) for i in range(3))
    calls: Counter[str] = sum((r.commands for r in rounds), Counter())
    first = mean([min(r.latencies) for r in rounds])
    say(
        f"  {label}: {len(pooled)} deliveries in {len(rounds)} rounds, first {first:.1f} ms (mean of the rounds'), "
        f"p50 {p50:.1f} ms  p99 {p99:.1f} ms  max "
        f"{pooled[-1]:.1f} ms; {trouble['errors']} error answers, {trouble['lost']} connections lost, "
        f"{trouble['duplicates']} duplicates, {trouble['empty']} holds ran out {trouble['sample']}\n"
        f"    per round: all held again after {1000 * span:.0f} ms; the process under test {100 * target / span:.0f} % "
        f"of a core, Redis {redis_cpu:.2f} s, the busiest generator "
        f"{100 * mean([max(r.generator_cpu) for r in rounds]) / span:.0f} % of a core (arrivals from "
        f"{'kernel timestamps' if trouble['stamps'] else 'the reads'}), the machine {machine / span:.2f} cores"
    )
    if calls:
        each = ", ".join(f"{k} {n / len(rounds):.0f}" for k, n in calls.most_common() if n >= len(rounds) / 2)
        say(f"    Redis commands per round: {each}")
    return p50, p99, trouble["errors"] == trouble["lost"] == trouble["duplicates"] == 0


def fanout(bench: Bench) -> list[Figure]:
    o = bench.opts
    say(
        f"\n== 2. fan-out: {o.subscribers} long-polls on one channel in {o.generators} generator processes, "
        f"1 warm-up round then {o.publishes} publishes, each {o.spacing:g} s after all are held again; "
        f"{o.fanout_runs} run(s) per server"
    )
    # The baseline takes its turn in every repeat, among the servers, so that each ratio compares runs
    # a few seconds apart: the machine's load moves the figures more than any tree does.
    base_runs: list[tuple[list[Round], dict[str, Any]]] = []
    runs: dict[Tree, list[tuple[list[Round], dict[str, Any]]]] = {tree: [] for tree in bench.trees}
    ratios: dict[Tree, list[float]] = {tree: [] for tree in bench.trees}
    for repeat in range(o.fanout_runs):
        order: list[Tree | None] = [None, *bench.alternate(repeat)]
        for tree in order if repeat % 2 == 0 else order[::-1]:
            if tree is None:
                base = bench.baseline()
                try:
                    base_runs.append(asyncio.run(fanout_run(bench, base)))
                finally:
                    bench.children.stop(base)
                summarise_fanout(f"{BASELINE_FANOUT}, run {repeat + 1}", *base_runs[-1])
                continue
            bench.rcli.flushall()  # every run starts from nobody present
            server = bench.server(tree, f"fanout-{bench.trees.index(tree)}-{repeat}")
            try:
                runs[tree].append(asyncio.run(fanout_run(bench, server)))
            finally:
                bench.children.stop(server)
            summarise_fanout(f"{tree.label}, run {repeat + 1}", *runs[tree][-1])
        base_p99 = p99_of(base_runs[-1][0])
        for tree in bench.trees:
            ratios[tree].append(p99_of(runs[tree][-1][0]) / base_p99)
            say(f"  run {repeat + 1}: {tree.label} p99 x{ratios[tree][-1]:.2f} the baseline's of this run")
    base_trouble = base_runs[0][1] | {k: sum(t[k] for _, t in base_runs) for k in ("errors", "lost", "duplicates")}
    base_rounds = [r for rs, _ in base_runs for r in rs]
    _, base_p99, _ = summarise_fanout(f"{BASELINE_FANOUT}, all runs", base_rounds, base_trouble | {"empty": 0})
    base_round_p99 = round_p99(base_rounds)
    figure = Figure(f"fan-out to {o.subscribers} long-polls", f"p99 < {FANOUT_P99_MS:g} ms")
    for tree, each in runs.items():
        trouble = each[0][1] | {k: sum(t[k] for _, t in each) for k in ("errors", "lost", "duplicates", "empty")}
        p50, p99, clean = summarise_fanout(f"{tree.label}, all runs", [r for rs, _ in each for r in rs], trouble)
        rounds_p99 = round_p99([r for rs, _ in each for r in rs])
        text = (
            f"p99 {p99:.1f} ms (p50 {p50:.1f}; baseline p99 {base_p99:.1f}, x{p99 / base_p99:.2f}; median of the "
            f"runs' ratios x{statistics.median(ratios[tree]):.2f}; median of the rounds' p99 {rounds_p99:.1f} ms "
            f"against {base_round_p99:.1f}, x{rounds_p99 / base_round_p99:.2f})"
        )
        figure.values[tree.label] = (text, p99 < FANOUT_P99_MS and clean)
    return [figure]


async def presence_latency(port: int, samples: int, warmup: int = 3) -> tuple[list[float], ...]:
    """A listener holds a poll on ``<ch>-pnpres``; another connection makes a new uuid join, then leave,
    so occupancy stays at 0 or 1 and every event is announced. Returns the join and leave latencies,
    the heartbeats' own round trips (ms) and the number of joins read before the heartbeat's answer."""
    listener, joiner, scrape = [await Conn.open(port) for _ in range(3)]
    poll = f"/v2/subscribe/{SUB_KEY}/presence-watch-pnpres/0?uuid=presence-listener&tr=1&tt="
    presence = f"/v2/presence/sub-key/{SUB_KEY}/channel/presence-watch"
    cursor = orjson.loads((await listener.get(poll + "0"))[1])["t"]["t"]

    async def announced(path: str, action: str, uuid: str) -> tuple[float, float, float]:
        nonlocal cursor
        listening = asyncio.create_task(listener.get(poll + cursor))
        await scrape.held(1)
        sent = time.monotonic()
        _, _, answered = await joiner.get(path)
        status, body, received = await asyncio.wait_for(listening, 10)
        reply = orjson.loads(body)
        if status != 200 or [(e["d"]["action"], e["d"]["uuid"]) for e in reply["m"]] != [(action, uuid)]:
            raise RuntimeError(f"expected the {action} of {uuid}, the listener got {status}: {body[:300]!r}")
        cursor = reply["t"]["t"]
        return sent, answered, received

    join: list[float] = []
    leave: list[float] = []
    beat: list[float] = []
    early: list[float] = []
    try:
        for i in range(warmup + samples):
            uuid = f"watch-{i:08d}-0000-4000-8000-000000000000"
            sent, answered, joined = await announced(f"{presence}/heartbeat?uuid={uuid}&heartbeat=60", "join", uuid)
            _, left_answer, left = await announced(f"{presence}/leave?uuid={uuid}", "leave", uuid)
            if i >= warmup:
                join.append(1000 * (joined - answered))
                leave.append(1000 * (left - left_answer))
                beat.append(1000 * (answered - sent))
                early += [join[-1]] * (joined < answered)
    finally:
        for conn in (listener, joiner, scrape):
            conn.writer.close()
    return join, leave, beat, early


def presence(bench: Bench) -> list[Figure]:
    say(
        f"\n== 3. presence event latency: a listener holds a poll on presence-watch-pnpres, another "
        f"connection joins a new uuid, then leaves; {bench.opts.samples} samples after 3 unmeasured"
    )
    figure = Figure("presence event latency (join)", f"median < {PRESENCE_MEDIAN_MS:g} ms")
    for tree in bench.trees:
        server = bench.server(tree, f"presence-{bench.trees.index(tree)}")
        try:
            join, leave, beat, early = asyncio.run(presence_latency(server.port, bench.opts.samples))
        finally:
            bench.children.stop(server)
        say(
            f"  {tree.label}: heartbeat answer -> join event median {statistics.median(join):.2f} ms, p99 "
            f"{pct(join, 0.99):.2f}, max {max(join):.2f} ({len(early)} joins read before the heartbeat's own answer); "
            f"leave -> event median {statistics.median(leave):.2f} ms; the heartbeat's round trip median "
            f"{statistics.median(beat):.2f} ms"
        )
        figure.values[tree.label] = (f"median {statistics.median(join):.2f} ms", statistics.median(join) < 20)
    return [figure]


# -- one process against two --------------------------------------------------------------------------


def pair(bench: Bench, a: Child, b: Child) -> tuple[Run, Run]:
    """wrk on A alone, then split over A and B: the same connections and duration."""
    o, half = bench.opts, bench.opts.connections // 2
    one, two = [(a.port, o.connections)], [(a.port, half), (b.port, half)]
    runs = [measure(bench, [a, b], jobs, seconds) for jobs in (one, two) for seconds in (o.warmup, o.pair_seconds)]
    say(runs[1].line("one process (A)") + "\n" + runs[3].line(f"two processes (A and B, -c{half} each)"))
    return runs[1], runs[3]


def judge(label: str, pairs: list[tuple[Run, Run]]) -> tuple[str, bool]:
    """The ratio of the mean rates and what the machine allowed: with c cores and t CPU seconds per
    heartbeat in all (server + Redis + wrk), no number of processes gets far past c / t."""
    cores = os.cpu_count() or 1
    ones, twos = [one for one, _ in pairs], [two for _, two in pairs]
    one_rps = mean([sum(r.rps) for r in ones])
    ratio = mean([sum(r.rps) for r in twos]) / one_rps
    errors = sum(r.errors for r in ones + twos)
    requests = max(1, sum(r.requests for r in ones))
    parts = [sum(sum(r.server_cpu) for r in ones), sum(r.redis_cpu for r in ones), sum(r.wrk_cpu for r in ones)]
    per_request = sum(parts) / requests
    busy = sum(r.machine_cpu for r in twos) / sum(r.seconds for r in twos)
    text = f"{ratio:.2f}x (pairs {', '.join(f'{sum(t.rps) / sum(o.rps):.2f}' for o, t in pairs)}; {errors} errors)"
    say(
        f"  {label}: two / one {text}; one process costs {1e6 * per_request:.0f} µs of CPU per heartbeat in all "
        f"(server {1e6 * parts[0] / requests:.0f}, redis {1e6 * parts[1] / requests:.0f}, wrk "
        f"{1e6 * parts[2] / requests:.0f}), so {cores} cores allow about {cores / per_request / one_rps:.2f}x; the "
        f"machine was busy {busy:.2f} of {cores} cores in the two-process runs" + " (saturated)" * (busy > 0.9 * cores)
    )
    return text, ratio >= TWO_PROCESS_RATIO and errors == 0


def capped_pair(bench: Bench, a: Child, b: Child, share: float) -> tuple[Run, Run] | None:
    try:
        with cpucap.capped([a.proc.pid, b.proc.pid], share):
            one, two = pair(bench, a, b)
    except cpucap.CapUnavailable as error:
        say(f"  !! no capped runs: {error} (run as root or in a delegated cgroup); the verdict is the uncapped one")
        return None
    for run in (one, two):
        if max(run.server_cpu) > 1.05 * share * run.seconds:
            say(f"  !! a server used {max(run.server_cpu) / run.seconds:.2f} of a core, over its quota")
    return one, two


def processes(bench: Bench) -> list[Figure]:
    o, cores = bench.opts, os.cpu_count() or 1
    # Two servers, Redis and wrk need about 4 cores; below that each server gets a quarter of the
    # machine in every run, one process or two, which leaves about half of it for Redis and wrk.
    share = o.server_cpu or (1.0 if cores >= 4 else cores / 4)
    say(
        f"\n== 4. heartbeats, one server process against two on one Redis: wrk -c{o.connections} in all, "
        f"{o.warmup:g} s warm-up then {o.pair_seconds:g} s, one then two, {o.repeats} times per server tree"
        + f"; each pair also with every server held to {share:g} of a core (cgroup quota)"
        * (share < 1)
    )
    servers = {
        tree: [bench.server(tree, f"process-{bench.trees.index(tree)}{x}") for x in "ab"] for tree in bench.trees
    }
    plain: dict[Tree, list[tuple[Run, Run]]] = {tree: [] for tree in bench.trees}
    capped: dict[Tree, list[tuple[Run, Run]]] = {tree: [] for tree in bench.trees}
    try:
        for tree in bench.trees:
            present(bench, servers[tree][0])
        for repeat in range(o.repeats):
            for tree in bench.alternate(repeat):
                a, b = servers[tree]
                say(f"  -- {tree.label}, pair {repeat + 1}, uncapped")
                plain[tree].append(pair(bench, a, b))
                if share < 1 and (repeat == 0 or capped[tree]):
                    say(f"  -- {tree.label}, pair {repeat + 1}, each server held to {share:g} of a core")
                    capped[tree] += filter(None, [capped_pair(bench, a, b, share)])
    finally:
        bench.children.stop(*(child for pair_ in servers.values() for child in pair_))
    figures = [Figure("two processes / one (heartbeats), uncapped", f">= {TWO_PROCESS_RATIO:g}")]
    figures[0].values = {tree.label: judge(f"{tree.label}, uncapped", runs) for tree, runs in plain.items()}
    if all(capped.values()):
        figures.append(Figure(f"two processes / one, each held to {share:g} of a core", f">= {TWO_PROCESS_RATIO:g}"))
        figures[1].values = {tree.label: judge(f"{tree.label}, capped", runs) for tree, runs in capped.items()}
        say(f"  below 4 cores the capped ratio is the verdict ({cores} here): the uncapped one is bounded by them")
    return figures


# -- an Access Manager keyset against an open one -----------------------------------------------------


def call(port: int, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body or None, headers={"Content-Type": "application/json"} if body else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def grant(port: int, secret: str) -> str:
    """A token granting read on every channel the load heartbeats (a pattern), minted by a signed grant."""
    path = f"/v3/pam/{AM_SUB_KEY}/grant"
    body = orjson.dumps({"ttl": 1440, "permissions": {"patterns": {"channels": {ROOMS: 1}}}})
    raw = urllib.parse.urlencode({"uuid": "bench-admin", "timestamp": int(time.time())}, quote_via=urllib.parse.quote)
    signature = sign_v2(secret, "POST", AM_PUB_KEY, path, canonical_query(raw), body)
    status, answer = call(port, "POST", f"{path}?{raw}&signature={signature}", body)
    if status != 200:
        raise RuntimeError(f"the grant answered {status}: {answer[:300]!r}")
    token: str = orjson.loads(answer)["data"]["token"]
    return token


def check_access(port: int, token: str) -> None:
    """Before measuring: the token's heartbeat is a 200, and the Access Manager keyset refuses one
    without it (else the phase would compare two open keysets); the open keyset needs none."""
    query = urllib.parse.urlencode({"heartbeat": TIMEOUT, "uuid": f"{0:08x}-0000-4000-8000-{0:012x}"})
    cases = [
        (SUB_KEY, "", 200),
        (AM_SUB_KEY, "&auth=" + urllib.parse.quote(token, safe=""), 200),
        (AM_SUB_KEY, "", 403),
    ]
    for sub_key, auth, expected in cases:
        status, answer = call(port, "GET", f"/v2/presence/sub-key/{sub_key}/channel/room-0/heartbeat?{query}{auth}")
        if status != expected:
            with_token = "with the token" if auth else "without a token"
            raise RuntimeError(
                f"a heartbeat to {sub_key} {with_token} answered {status}, not {expected}: {answer[:300]!r}"
            )


def access(bench: Bench) -> list[Figure]:
    o, tree = bench.opts, bench.trees[0]
    say(
        f"\n== 5. heartbeats to an Access Manager keyset with a token / to an open keyset, on one server process "
        f"of {tree.label}: wrk -t1 -c{o.connections}, {o.warmup:g} s warm-up each, then {o.rounds} rounds of "
        f"{o.seconds:g} s, the two keysets in turn; {o.users} uuids present in each"
        + "; this phase measures this tree only (--compare does not apply)"
        * (len(bench.trees) > 1)
    )
    secret = secrets.token_urlsafe(24)  # a new one per run
    bench.rcli.flushall()  # both keysets start from nobody present
    server = bench.server(tree, "access", f"{SUB_KEY}-pub:{SUB_KEY},{AM_PUB_KEY}:{AM_SUB_KEY}:{secret}")
    ratios: list[float] = []
    errors = 0
    try:
        token = grant(server.port, secret)
        check_access(server.port, token)
        say(f"  a token of {len(token)} characters grants read on channels {ROOMS!r} of {AM_SUB_KEY}")
        present(bench, server)
        present(bench, server, AM_SUB_KEY, token)
        keysets: list[tuple[str, dict[str, str]]] = [
            (f"open keyset ({SUB_KEY})", {}),
            (f"Access Manager ({AM_SUB_KEY}), token", {"sub_key": AM_SUB_KEY, "auth": token}),
        ]
        for _, keyset in keysets if o.warmup > 0 else []:
            measure(bench, [server], [(server.port, o.connections)], o.warmup, **keyset)
        for number in range(o.rounds):
            say(f"  round {number + 1}")
            rates: dict[str, float] = {}
            for label, keyset in keysets if number % 2 == 0 else keysets[::-1]:
                run = measure(bench, [server], [(server.port, o.connections)], o.seconds, **keyset)
                rates[label], errors = sum(run.rps), errors + run.errors
                say(run.line(label))
            ratios.append(rates[keysets[1][0]] / rates[keysets[0][0]])
            say(f"  {'':<32} Access Manager / open {ratios[-1]:.2f}")
    finally:
        bench.children.stop(server)
    figure = Figure("heartbeats, Access Manager keyset with a token / open keyset", f">= {ACCESS_RATIO:g}, no errors")
    text = f"{statistics.median(ratios):.2f} (rounds {listed(ratios, ', ', 2)}; {errors} errors)"
    figure.values[tree.label] = (text, statistics.median(ratios) >= ACCESS_RATIO and not errors)
    return [figure]


# -- main ---------------------------------------------------------------------------------------------


def knob(default: Any, text: str) -> Any:
    """An option of a bench: its default, and its --help text."""
    return dataclasses.field(default=default, metadata={"help": text})


def given_options(
    prog: str, options: type[Any], argv: Sequence[str] | None
) -> tuple[argparse.ArgumentParser, dict[str, Any]]:
    """The parser of a bench's command line (one flag per ``knob`` field of ``options``) and the options
    given on it, by field name; the parser is for the bench's own refusals (``parser.error``)."""
    description = (sys.modules[options.__module__].__doc__ or "").splitlines()[0]
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for field in dataclasses.fields(options):
        help_text = f"{field.metadata['help']} (default {field.default})"
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), help=help_text)
    return parser, {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}


@dataclasses.dataclass
class Options:
    phases: str = knob(",".join(PHASES), "comma list of " + ", ".join(PHASES))
    compare: str = knob("", "also measure a server from this git revision, taking turns with this tree's")
    engine: str = knob("redis", "the servers' store: redis, or memory (memory://)")
    seconds: float = knob(5.0, "each heartbeat run, s")
    rounds: int = knob(3, "heartbeat rounds of the baseline and each server (phase access: of each keyset)")
    warmup: float = knob(2.0, "unmeasured wrk run before each heartbeat figure, s")
    connections: int = knob(64, "wrk connections in all")
    users: int = knob(10_000, "uuids heartbeating")
    channels: int = knob(4, "channels they heartbeat")
    subscribers: int = knob(2000, "long-polls on the fan-out channel")
    generators: int = knob(2, "processes holding them")
    publishes: int = knob(10, "measured fan-out rounds per run")
    fanout_runs: int = knob(0, "fan-out runs per server; 0: 1, or 2 with --compare")
    spacing: float = knob(1.0, "pause before each publish, s")
    hold: float = knob(60.0, "PRESENCE_LONGPOLL_HOLD of the servers, s")
    samples: int = knob(50, "presence event samples")
    pair_seconds: float = knob(10.0, "each one- or two-process run, s")
    repeats: int = knob(3, "one-then-two pairs per server tree")
    server_cpu: float = knob(0.0, "share of a core per server in the capped pairs; 0: a quarter of the cores below 4")
    redis_server: str = knob("redis-server", "the redis-server binary")


def parse_args(argv: Sequence[str] | None) -> Options:
    parser, given = given_options("python -m bench.live", Options, argv)
    opts = Options(**given)
    opts.fanout_runs = opts.fanout_runs or (2 if opts.compare else 1)
    if opts.engine == "memory" and "phases" not in given:
        opts.phases = "heartbeat,fanout,presence,access"
    counts = [opts.rounds, opts.subscribers, opts.generators, opts.publishes, opts.samples, opts.repeats]
    if not set(opts.phases.split(",")) <= set(PHASES) or min(counts) < 1 or opts.connections < 2:
        parser.error(f"--phases takes {', '.join(PHASES)}; counts must be positive, --connections at least 2")
    if opts.engine == "memory" and "processes" in opts.phases:
        parser.error("processes on memory:// would be two servers with a store each: leave out phase processes")
    return opts


def describe(bench: Bench) -> None:
    say(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} "
        f"(other work skews every figure); Python {platform.python_version()}, aiohttp {aiohttp.__version__}, "
        f"redis-py {redis.__version__}, redis-server {bench.rcli.info('server')['redis_version']}"
    )
    for tree in bench.trees:
        code = f"import {tree.package}; print({tree.package}.__file__)"
        run = subprocess.run([sys.executable, "-c", code], cwd=tree.path, env=bench.env(tree), capture_output=True)
        say(f"server {tree.label!r}: python -m {tree.package}, code from {run.stdout.decode().strip()}; {bench.url}")


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    phases = opts.phases.split(",")
    if {"heartbeat", "processes", "access"} & set(phases) and not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install -y wrk); or leave out heartbeat, processes and access")
    raise_fd_limit(opts.subscribers + 1024)  # every long-poll is a socket; children inherit the limit
    started = time.monotonic()
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="presence-bench-") as workdir, contextlib.ExitStack() as stack:
        trees = [tree_at(ROOT, f"this tree ({git('describe', '--always', '--dirty')})")]
        if opts.compare:
            trees.append(stack.enter_context(worktree(opts.compare, Path(workdir))))
        children = Children(Path(workdir))
        stack.callback(children.stop_all)  # before the worktree is removed
        rcli = stack.enter_context(redis_server(opts.redis_server, Path(workdir), children))
        port = rcli.connection_pool.connection_kwargs["port"]
        url = "memory://" if opts.engine == "memory" else f"redis://127.0.0.1:{port}/0"
        bench = Bench(opts, children, trees, rcli, url)
        describe(bench)
        run = {"heartbeat": heartbeat, "fanout": fanout, "presence": presence, "processes": processes, "access": access}
        for phase in phases:
            figures += run[phase](bench)
    say(f"\n#### summary ({time.monotonic() - started:.0f} s, load average now {os.getloadavg()[0]:.2f})")
    for figure in figures:
        say(f"  {figure.name} (target {figure.target})")
        for label, (text, ok) in figure.values.items():
            say(f"    {'PASS' if ok else 'FAIL'}  {label:<28} {text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
