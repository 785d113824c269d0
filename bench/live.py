"""The load harness: heartbeat throughput, fan-out, presence event latency and two server processes
against one, each figure beside its baseline measured in the same run and its target (PASS/FAIL).

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
import queue
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
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

ROOT = Path(__file__).resolve().parent.parent
WRK_SCRIPT = ROOT / "bench" / "heartbeat.lua"
SUB_KEY = "bench"
TIMEOUT = 300  # heartbeat=300, as the SDKs send by default
FANOUT_CHANNEL = "fanout"
PRESENCE_CHANNEL = "presence-watch"
HELD = re.compile(rb"^presence_longpolls_held (\S+)$", re.MULTILINE)
PHASES = ("heartbeat", "fanout", "presence", "processes")

# The targets (issues 2 and 3).
HEARTBEAT_RATIO = 0.5
FANOUT_P99_MS = 250.0
PRESENCE_MEDIAN_MS = 20.0
TWO_PROCESS_RATIO = 1.4


def say(text: str = "") -> None:
    print(text, flush=True)


def pct(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] if ordered else 0.0


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def uuid_of(n: int) -> str:
    """bench/heartbeat.lua builds the same text for the same n."""
    return f"{n:08x}-0000-4000-8000-{n:012x}"


@dataclasses.dataclass
class Figure:
    """One line of the summary: per server tree, the figure as text and whether it met the target."""

    name: str
    target: str
    values: dict[str, tuple[str, bool]]


# -- processes --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (every core, every process), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    port: int = 0

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Children:
    """Every subprocess of the run; all are stopped on the way out, whatever happens."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: list[Child] = []

    def start(self, name: str, argv: Sequence[str], *, port: int = 0, pipes: bool = False, **popen: Any) -> Child:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            pipe_or = subprocess.PIPE if pipes else None
            proc = subprocess.Popen(
                argv,
                stdin=pipe_or or subprocess.DEVNULL,
                stdout=pipe_or or out,
                stderr=out,
                start_new_session=True,
                **{"cwd": ROOT, **popen},
            )
        self.running.append(Child(name, proc, log, port))
        return self.running[-1]

    def stop(self, child: Child) -> None:
        if child.proc.poll() is None:
            child.proc.terminate()
            try:
                child.proc.wait(10)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
        for stream in (child.proc.stdin, child.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if child in self.running:
            self.running.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self.running)):
            self.stop(child)


class Http:
    """A keep-alive connection for the few requests this process makes itself (publish, /metrics)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def get(self, path: str) -> tuple[int, bytes]:
        for attempt in (1, 2):  # once more on a new connection if the server closed an idle one
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                self.conn.request("GET", path)
                response = self.conn.getresponse()
                return response.status, response.read()
            except (http.client.HTTPException, OSError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def held(self) -> int:
        status, body = self.get("/metrics")
        found = HELD.search(body)
        if status != 200 or found is None:
            raise RuntimeError(f"/metrics answered {status} without presence_longpolls_held")
        return int(float(found.group(1)))

    def wait_held(self, expected: int, limit: float = 60.0) -> None:
        deadline = time.monotonic() + limit
        while (held := self.held()) != expected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{held} long-polls held after {limit:.0f} s, expected {expected}")
            time.sleep(0.02)  # each scrape costs the server a little

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def wait_up(child: Child, limit: float = 30.0) -> Child:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited with {child.proc.returncode}:\n{child.tail()}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if Http(child.port).get("/health")[0] == 200:
                return child
        time.sleep(0.1)
    raise RuntimeError(f"{child.name} did not answer /health within {limit:.0f} s:\n{child.tail()}")


# -- the servers under test -------------------------------------------------------------------------


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

    def env(self, tree: Tree, prefix: str) -> dict[str, str]:
        hold = f"{self.opts.hold:g}"
        return dict(os.environ, PYTHONPATH=str(tree.path), PRESENCE_KEY_PREFIX=prefix, PRESENCE_LONGPOLL_HOLD=hold)

    def server(self, tree: Tree, name: str) -> Child:
        """A server process from ``tree``; each tree has a key prefix of its own on the one Redis."""
        port = free_port()
        argv = [sys.executable, "-m", tree.package, "--host", "127.0.0.1", "--port", str(port), "--redis-url"]
        prefix = f"bench{self.trees.index(tree)}"
        child = self.children.start(name, [*argv, self.url], port=port, cwd=tree.path, env=self.env(tree, prefix))
        return wait_up(child)

    def baseline(self) -> Child:
        port = free_port()
        argv = [sys.executable, "-m", "bench.baseline", "--port", str(port), "--hold", f"{self.opts.hold:g}"]
        return wait_up(self.children.start("baseline", argv, port=port))

    def redis_cpu(self) -> float:
        info = self.rcli.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def commands(self) -> Counter[str]:
        """Calls per command so far (INFO commandstats: commands inside scripts too), the bench's INFOs left out."""
        stats = self.rcli.info("commandstats")
        return Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items() if "info" not in k})

    def alternate(self, repeat: int) -> list[Tree]:
        """The trees in turn, the order reversed every other repeat so that neither always goes first."""
        return self.trees if repeat % 2 == 0 else self.trees[::-1]


# -- heartbeats with wrk ------------------------------------------------------------------------------


@dataclasses.dataclass
class Wrk:
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float
    cpu: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def _ms(text: str) -> float:
    found = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    return float(found.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)] if found else 0.0


def parse_wrk(out: str, cpu: float) -> Wrk:
    done = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m),", out)
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.MULTILINE))
    if not done or len(latency) != 2:
        raise RuntimeError(f"cannot read wrk's report:\n{out}")
    seconds = float(done.group(2)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[done.group(3)]
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors += sum(int(n) for n in sockets.groups()) if sockets else 0
    return Wrk(int(done.group(1)), seconds, errors, _ms(latency["50"]), _ms(latency["99"]), cpu)


def wrk(jobs: Sequence[tuple[int, int]], seconds: float, opts: Options) -> list[Wrk]:
    """One wrk per (port, connections), all at once; each reaped with wait4 for its CPU time."""
    argv = ["wrk", "-t1", f"-d{max(1, round(seconds))}s", "--timeout", "5s", "--latency", "-s", str(WRK_SCRIPT)]
    args = ["--", SUB_KEY, str(opts.users), str(opts.channels), str(TIMEOUT)]
    procs = [
        subprocess.Popen(
            [*argv, f"-c{conns}", f"http://127.0.0.1:{port}", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for port, conns in jobs
    ]
    loads = []
    for proc in procs:
        assert proc.stdout is not None
        with proc.stdout:
            out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            raise RuntimeError(f"wrk exited with {proc.returncode}:\n{out}")
        loads.append(parse_wrk(out, usage.ru_utime + usage.ru_stime))
    return loads


@dataclasses.dataclass
class Run:
    """One load run: wrk's reports and the CPU every process spent meanwhile."""

    loads: list[Wrk]
    server_cpu: list[float]  # per server process watched (an idle one included)
    redis_cpu: float
    machine_cpu: float

    @property
    def rps(self) -> float:
        return sum(load.rps for load in self.loads)

    @property
    def requests(self) -> int:
        return sum(load.requests for load in self.loads)

    @property
    def errors(self) -> int:
        return sum(load.errors for load in self.loads)

    @property
    def seconds(self) -> float:
        return max(load.seconds for load in self.loads)

    @property
    def wrk_cpu(self) -> float:
        return sum(load.cpu for load in self.loads)

    def line(self, label: str) -> str:
        each = "+".join(f"{load.rps:.0f}" for load in self.loads)
        return (
            f"  {label:<32} {self.rps:7.0f} req/s ({each}), {self.errors} errors, "
            f"p50 {'/'.join(f'{x.p50_ms:.1f}' for x in self.loads)} ms, "
            f"p99 {'/'.join(f'{x.p99_ms:.1f}' for x in self.loads)} ms\n"
            f"  {'':<32} CPU s: process {'+'.join(f'{c:.1f}' for c in self.server_cpu)} "
            f"({1e6 * sum(self.server_cpu) / max(1, self.requests):.0f} µs/request), redis {self.redis_cpu:.1f}, "
            f"wrk {self.wrk_cpu:.1f}; machine busy {self.machine_cpu / self.seconds:.2f} cores"
        )


def measure(bench: Bench, watched: Sequence[Child], jobs: Sequence[tuple[int, int]], seconds: float) -> Run:
    before, redis_before, busy_before = [c.cpu() for c in watched], bench.redis_cpu(), machine_busy()
    loads = wrk(jobs, seconds, bench.opts)
    spent = [c.cpu() - b for c, b in zip(watched, before, strict=True)]
    return Run(loads, spent, bench.redis_cpu() - redis_before, machine_busy() - busy_before)


async def populate(port: int, users: int, channels: int, concurrency: int = 32) -> float:
    """Make the uuids wrk will send present, through HTTP heartbeats; returns heartbeats per second."""
    pending = iter(range(users))
    base = f"http://127.0.0.1:{port}/v2/presence/sub-key/{SUB_KEY}/channel"

    async def worker(session: aiohttp.ClientSession) -> None:
        for n in pending:
            params = {"heartbeat": str(TIMEOUT), "uuid": uuid_of(n)}
            async with session.get(f"{base}/room-{n % channels}/heartbeat", params=params) as response:
                if response.status != 200:
                    raise RuntimeError(f"population heartbeat answered {response.status}: {await response.text()}")

    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return users / (time.perf_counter() - started)


def present(bench: Bench, server: Child) -> None:
    rate = asyncio.run(populate(server.port, bench.opts.users, bench.opts.channels))
    say(
        f"  {bench.opts.users} uuids on {bench.opts.channels} channels made present through {server.name}: {rate:.0f}/s"
    )


def heartbeat(bench: Bench) -> list[Figure]:
    o = bench.opts
    say(
        f"\n== 1. heartbeat throughput: wrk -t1 -c{o.connections}, {o.warmup:g} s warm-up, then {o.rounds} rounds of "
        f"{o.seconds:g} s, the minimal aiohttp handler and each server in turn; {o.users} uuids, all present"
    )
    base = bench.baseline()
    servers = [bench.server(tree, f"heartbeat-{i}") for i, tree in enumerate(bench.trees)]
    ratios: dict[str, list[float]] = {tree.label: [] for tree in bench.trees}
    errors = Counter[str]()
    try:
        for server in servers:
            present(bench, server)
        for child in [base, *servers] if o.warmup > 0 else []:
            measure(bench, [child], [(child.port, o.connections)], o.warmup)
        for number in range(o.rounds):
            base_run = measure(bench, [base], [(base.port, o.connections)], o.seconds)
            say(f"  round {number + 1}\n{base_run.line('minimal aiohttp handler')}")
            for tree in bench.alternate(number):
                server = servers[bench.trees.index(tree)]
                run = measure(bench, [server], [(server.port, o.connections)], o.seconds)
                ratios[tree.label].append(run.rps / base_run.rps if base_run.rps else 0.0)
                errors[tree.label] += run.errors
                say(run.line(tree.label) + f"\n  {'':<32} ratio to the baseline {ratios[tree.label][-1]:.2f}")
    finally:
        for child in [base, *servers]:
            bench.children.stop(child)
    values = {}
    for label, each in ratios.items():
        median = statistics.median(each)
        rounds = ", ".join(f"{r:.2f}" for r in each)
        ok = median >= HEARTBEAT_RATIO and not errors[label]
        values[label] = (f"{median:.2f} (rounds {rounds}; {errors[label]} errors)", ok)
    return [Figure("heartbeat throughput / minimal aiohttp, median", f">= {HEARTBEAT_RATIO:g}", values)]


# -- fan-out ----------------------------------------------------------------------------------------


class Feed:
    """One bench.fanout_client process: its JSON-line events (read by a thread, so every wait has a
    time limit) and its command pipe."""

    def __init__(self, child: Child) -> None:
        self.child = child
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.child.proc.stdout or ():
            with contextlib.suppress(orjson.JSONDecodeError):
                self.events.put(orjson.loads(line))
        self.events.put({"event": "exit"})

    def next(self, kind: str, limit: float = 60.0) -> dict[str, Any]:
        try:
            event = self.events.get(timeout=limit)
        except queue.Empty:
            raise RuntimeError(f"{self.child.name}: no {kind!r} event within {limit:.0f} s") from None
        if event.get("event") != kind:
            raise RuntimeError(f"{self.child.name}: {event} while waiting for {kind!r}\n{self.child.tail()}")
        return event

    def send(self, command: str) -> None:
        with contextlib.suppress(OSError):
            assert self.child.proc.stdin is not None
            self.child.proc.stdin.write(f"{command}\n".encode())
            self.child.proc.stdin.flush()

    def stats(self) -> dict[str, Any]:
        self.send("stats")
        return self.next("stats", 30)


@dataclasses.dataclass
class Round:
    latencies: list[float]  # ms, every subscriber's delivery
    last: float  # s, publish sent -> the last delivery arrived
    reheld: float  # s, publish sent -> every subscriber held again
    generator_cpu: list[float]  # s per generator process over that span
    generator_lag_ms: float  # the longest event-loop stall of any generator
    read_delay_ms: float  # the longest an answer waited in a generator before it was read
    target_cpu: float
    redis_cpu: float
    machine_cpu: float
    commands: Counter[str]  # Redis commands run over the span

    def line(self, number: int) -> str:
        lat = self.latencies
        return (
            f"  round {number:>2}: p50 {pct(lat, 0.5):6.1f}  p99 {pct(lat, 0.99):6.1f}  max {max(lat):6.1f} ms | "
            f"last at {1000 * self.last:4.0f} ms, all held again at {1000 * self.reheld:4.0f} ms | CPU s: target "
            f"{self.target_cpu:.2f}, redis {self.redis_cpu:.2f}, generators "
            + "+".join(f"{c:.2f}" for c in self.generator_cpu)
            + f" | generator lag {self.generator_lag_ms:.1f} ms, read delay {self.read_delay_ms:.1f} ms"
        )


def publish_path(number: int, sent: float) -> str:
    message = urllib.parse.quote(orjson.dumps({"r": number, "t": sent}).decode(), safe="")
    return f"/publish/bench-pub/{SUB_KEY}/0/{FANOUT_CHANNEL}/0/{message}?uuid=bench-publisher"


def fanout_round(bench: Bench, number: int, feeds: list[Feed], conn: Http, target: Child) -> Round:
    before = [feed.stats() for feed in feeds]  # also empties each generator's records
    cpu, redis_cpu, busy, commands = target.cpu(), bench.redis_cpu(), machine_busy(), bench.commands()
    sent = time.time()  # the generators' arrivals are kernel timestamps: CLOCK_REALTIME
    status, body = conn.get(publish_path(number, sent))
    if status != 200 or not body.startswith(b'[1,"Sent"'):
        raise RuntimeError(f"publish answered {status}: {body[:200]!r}")
    last = max(float(feed.next("round")["last"]) for feed in feeds)
    conn.wait_held(bench.opts.subscribers)
    reheld = time.time() - sent
    target_cpu, redis_cpu, busy = target.cpu() - cpu, bench.redis_cpu() - redis_cpu, machine_busy() - busy
    commands = bench.commands() - commands
    after = [feed.stats() for feed in feeds]
    latencies = [ms for stats in after for r, ms in stats["latencies"] if r == number]
    if len(latencies) != bench.opts.subscribers:
        raise RuntimeError(f"round {number}: {len(latencies)} deliveries, expected {bench.opts.subscribers}")
    return Round(
        latencies,
        last - sent,
        reheld,
        [a["cpu"] - b["cpu"] for a, b in zip(after, before, strict=True)],
        max(a["lag_ms"] for a in after),
        max(a["read_delay_ms"] for a in after),
        target_cpu,
        redis_cpu,
        busy,
        commands,
    )


def fanout_run(bench: Bench, target: Child) -> tuple[list[Round], dict[str, Any]]:
    """Subscribers in generator processes, one warm-up round that puts them on one cursor, then the
    publishes; returns the measured rounds and the generators' trouble counts."""
    o, total = bench.opts, bench.opts.subscribers
    sizes = [total // o.generators + (i < total % o.generators) for i in range(o.generators)]
    feeds = []
    for i, size in enumerate(sizes):
        argv = [sys.executable, "-m", "bench.fanout_client", "--port", str(target.port), "--channel", FANOUT_CHANNEL]
        argv += ["--sub-key", SUB_KEY, "--first", str(sum(sizes[:i])), "--count", str(size)]
        feeds.append(Feed(bench.children.start(f"{target.name}-gen{i}", argv, pipes=True)))
    conn = Http(target.port)
    try:
        started = time.monotonic()
        for feed in feeds:
            feed.next("ready", 90)
        conn.wait_held(total)
        say(f"  {target.name}: {total} subscribers handshaken and held after {time.monotonic() - started:.1f} s")
        rounds = []
        for number in range(o.publishes + 1):
            time.sleep(o.spacing)
            rounds.append(fanout_round(bench, number, feeds, conn, target))
            say(rounds[-1].line(number) + ("   (warm-up, not counted)" if number == 0 else ""))
        finals = [feed.stats() for feed in feeds]
    finally:
        conn.close()
        for feed in feeds:
            feed.send("quit")
            bench.children.stop(feed.child)
    trouble: dict[str, Any] = {k: sum(f[k] for f in finals) for k in ("errors", "lost", "duplicates", "empty")}
    trouble["sample"] = next((f["error_sample"] for f in finals if f["error_sample"]), "")
    trouble["stamps"] = all(f["kernel_stamps"] for f in finals)
    return rounds[1:], trouble


def summarise_fanout(label: str, rounds: list[Round], trouble: dict[str, Any]) -> tuple[float, float, bool]:
    pooled = sorted(ms for r in rounds for ms in r.latencies)
    p50, p99 = pct(pooled, 0.5), pct(pooled, 0.99)
    clean = trouble["errors"] == trouble["lost"] == trouble["duplicates"] == 0
    span = mean([r.reheld for r in rounds])
    busiest = mean([max(r.generator_cpu) for r in rounds])
    calls: Counter[str] = sum((r.commands for r in rounds), Counter())
    say(
        f"  {label}: {len(pooled)} deliveries in {len(rounds)} rounds, p50 {p50:.1f} ms  p99 {p99:.1f} ms  "
        f"max {pooled[-1]:.1f} ms; {trouble['errors']} error answers, {trouble['lost']} connections lost, "
        f"{trouble['duplicates']} duplicates, {trouble['empty']} holds ran out {trouble['sample']}"
    )
    say(
        f"    per round: all held again after {1000 * span:.0f} ms; the process under test "
        f"{100 * mean([r.target_cpu for r in rounds]) / span:.0f} % of a core, Redis "
        f"{mean([r.redis_cpu for r in rounds]):.2f} s, the busiest generator {100 * busiest / span:.0f} % of a core "
        f"(arrivals from {'kernel timestamps' if trouble['stamps'] else 'the reads'}), the machine "
        f"{mean([r.machine_cpu for r in rounds]) / span:.2f} cores"
    )
    if calls:
        say(
            "    Redis commands per round: "
            + ", ".join(f"{name} {n / len(rounds):.0f}" for name, n in calls.most_common(8))
        )
    return p50, p99, clean


def fanout(bench: Bench) -> list[Figure]:
    o = bench.opts
    say(
        f"\n== 2. fan-out: {o.subscribers} long-polls on one channel in {o.generators} generator processes, "
        f"1 warm-up round then {o.publishes} publishes, each {o.spacing:g} s after all are held again; "
        f"{o.fanout_runs} run(s) per server"
    )
    base = bench.baseline()
    try:
        base_rounds, base_trouble = fanout_run(bench, base)
    finally:
        bench.children.stop(base)
    _, base_p99, _ = summarise_fanout("minimal aiohttp long-poll (one Event, no store)", base_rounds, base_trouble)
    results: dict[str, list[tuple[list[Round], dict[str, Any]]]] = {tree.label: [] for tree in bench.trees}
    for repeat in range(o.fanout_runs):
        for tree in bench.alternate(repeat):
            bench.rcli.flushall()  # every run starts from nobody present
            server = bench.server(tree, f"fanout-{bench.trees.index(tree)}-{repeat}")
            try:
                results[tree.label].append(fanout_run(bench, server))
            finally:
                bench.children.stop(server)
            summarise_fanout(f"{tree.label}, run {repeat + 1}", *results[tree.label][-1])
    values = {}
    for label, runs in results.items():
        trouble = {k: sum(t[k] for _, t in runs) for k in ("errors", "lost", "duplicates", "empty")}
        p50, p99, clean = summarise_fanout(
            f"{label}, all runs", [r for rs, _ in runs for r in rs], runs[0][1] | trouble
        )
        text = f"p99 {p99:.1f} ms (p50 {p50:.1f}; baseline p99 {base_p99:.1f}, x{p99 / base_p99:.1f})"
        values[label] = (text, p99 < FANOUT_P99_MS and clean)
    return [Figure(f"fan-out to {o.subscribers} long-polls", f"p99 < {FANOUT_P99_MS:g} ms", values)]


# -- presence event latency -------------------------------------------------------------------------


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

    async def held(self, expected: int, limit: float = 10.0) -> None:
        deadline = time.monotonic() + limit
        while True:
            found = HELD.search((await self.get("/metrics"))[1])
            if found is None:
                raise RuntimeError("presence_longpolls_held is missing from /metrics")
            if int(float(found.group(1))) == expected:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{found.group(1)!r} long-polls held after {limit:.0f} s, expected {expected}")
            await asyncio.sleep(0.002)


class PresenceProbe:
    """A listener holds a poll on ``<channel>-pnpres``; another connection makes a new uuid join, then
    leave, so occupancy stays at 0 or 1 and every event is announced."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.events: asyncio.Queue[tuple[str, str, float]] = asyncio.Queue()
        self.presence = f"/v2/presence/sub-key/{SUB_KEY}/channel/{PRESENCE_CHANNEL}"
        self.join_ms: list[float] = []
        self.leave_ms: list[float] = []
        self.heartbeat_ms: list[float] = []
        self.early = 0

    async def listen(self, listener: Conn) -> None:
        path = f"/v2/subscribe/{SUB_KEY}/{PRESENCE_CHANNEL}-pnpres/0?uuid=presence-listener&tt="
        status, body, received = await listener.get(path + "0")
        while status == 200:
            reply = orjson.loads(body)
            for envelope in reply["m"]:
                self.events.put_nowait((envelope["d"].get("action"), envelope["d"].get("uuid"), received))
            status, body, received = await listener.get(f"{path}{reply['t']['t']}&tr=1")
        raise RuntimeError(f"the listener's poll answered {status}: {body[:200]!r}")

    async def event(self, listening: asyncio.Task[None], action: str, uuid: str) -> float:
        getter = asyncio.ensure_future(self.events.get())
        await asyncio.wait({getter, listening}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if not getter.done():
            getter.cancel()
            if listening.done():
                listening.result()  # the listener's error
            raise RuntimeError(f"no {action} event for {uuid} within 10 s")
        got_action, got_uuid, received = getter.result()
        if (got_action, got_uuid) != (action, uuid):
            raise RuntimeError(f"expected {action} of {uuid}, the listener got {got_action} of {got_uuid}")
        return received

    async def sample(self, i: int, listening: asyncio.Task[None], joiner: Conn, scrape: Conn) -> None:
        uuid = f"watch-{i:08d}-0000-4000-8000-000000000000"
        await scrape.held(1)
        sent = time.monotonic()
        _, _, answered = await joiner.get(f"{self.presence}/heartbeat?uuid={uuid}&heartbeat=60")
        joined = await self.event(listening, "join", uuid)
        await scrape.held(1)
        _, _, left_answer = await joiner.get(f"{self.presence}/leave?uuid={uuid}")
        left = await self.event(listening, "leave", uuid)
        self.join_ms.append(1000 * (joined - answered))
        self.leave_ms.append(1000 * (left - left_answer))
        self.heartbeat_ms.append(1000 * (answered - sent))
        self.early += joined < answered

    async def run(self, samples: int, warmup: int = 3) -> PresenceProbe:
        listener, joiner, scrape = [await Conn.open(self.port) for _ in range(3)]
        listening = asyncio.create_task(self.listen(listener))
        try:
            for i in range(warmup + samples):
                await self.sample(i, listening, joiner, scrape)
                if i < warmup:
                    self.join_ms, self.leave_ms, self.heartbeat_ms, self.early = [], [], [], 0
        finally:
            listening.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listening
            for conn in (listener, joiner, scrape):
                conn.writer.close()
        return self


def presence(bench: Bench) -> list[Figure]:
    say(
        f"\n== 3. presence event latency: a listener holds a poll on {PRESENCE_CHANNEL}-pnpres, another "
        f"connection joins a new uuid, then leaves; {bench.opts.samples} samples after 3 unmeasured"
    )
    values = {}
    for tree in bench.trees:
        server = bench.server(tree, f"presence-{bench.trees.index(tree)}")
        try:
            probe = asyncio.run(PresenceProbe(server.port).run(bench.opts.samples))
        finally:
            bench.children.stop(server)
        join, median = probe.join_ms, statistics.median(probe.join_ms)
        say(
            f"  {tree.label}: heartbeat answer -> join event median {median:.2f} ms, p99 {pct(join, 0.99):.2f}, max "
            f"{max(join):.2f} ({probe.early} of {len(join)} events read before the heartbeat's own answer); "
            f"leave -> event median {statistics.median(probe.leave_ms):.2f} ms; the heartbeat's own round trip "
            f"median {statistics.median(probe.heartbeat_ms):.2f} ms"
        )
        values[tree.label] = (f"median {median:.2f} ms", median < PRESENCE_MEDIAN_MS)
    return [Figure("presence event latency (join)", f"median < {PRESENCE_MEDIAN_MS:g} ms", values)]


# -- one process against two --------------------------------------------------------------------------


def pair(bench: Bench, a: Child, b: Child) -> tuple[Run, Run]:
    """wrk on A alone, then split over A and B: the same connections and duration."""
    o, half = bench.opts, bench.opts.connections // 2
    if o.warmup > 0:
        measure(bench, [a], [(a.port, o.connections)], o.warmup)
    one = measure(bench, [a, b], [(a.port, o.connections)], o.pair_seconds)
    if o.warmup > 0:
        measure(bench, [a, b], [(a.port, half), (b.port, half)], o.warmup)
    two = measure(bench, [a, b], [(a.port, half), (b.port, half)], o.pair_seconds)
    say(one.line("one process (A)") + "\n" + two.line(f"two processes (A and B, -c{half} each)"))
    return one, two


def judge(label: str, pairs: list[tuple[Run, Run]]) -> tuple[str, bool]:
    """The ratio of the mean rates and what the machine allowed: with c cores and t CPU seconds per
    heartbeat in all (server + Redis + wrk), no number of processes gets far past c / t."""
    cores = os.cpu_count() or 1
    ones, twos = [one for one, _ in pairs], [two for _, two in pairs]
    ratio = mean([t.rps for t in twos]) / max(1e-9, mean([o.rps for o in ones]))
    errors = sum(r.errors for r in ones + twos)
    requests = max(1, sum(r.requests for r in ones))
    parts = [sum(sum(r.server_cpu) for r in ones), sum(r.redis_cpu for r in ones), sum(r.wrk_cpu for r in ones)]
    per_request = sum(parts) / requests
    ceiling = cores / per_request / mean([o.rps for o in ones]) if per_request else 0.0
    busy = sum(t.machine_cpu for t in twos) / sum(t.seconds for t in twos)
    text = f"{ratio:.2f}x (pairs {', '.join(f'{t.rps / o.rps:.2f}' for o, t in pairs)}; {errors} errors)"
    say(
        f"  {label}: two / one {text}; one process costs {1e6 * per_request:.0f} µs of CPU per heartbeat in all "
        f"(server {1e6 * parts[0] / requests:.0f}, redis {1e6 * parts[1] / requests:.0f}, wrk "
        f"{1e6 * parts[2] / requests:.0f}), so {cores} cores allow about {ceiling:.2f}x; the machine was busy "
        f"{busy:.2f} of {cores} cores in the two-process runs" + (" (saturated)" if busy > 0.9 * cores else "")
    )
    return text, ratio >= TWO_PROCESS_RATIO and errors == 0


def server_share(opts: Options, cores: int) -> float:
    """Each server's share of a core in the capped runs: a quarter of the machine below 4 cores, which
    leaves about half of it for Redis and wrk while both run flat out; 1 (no capped runs) from 4 up."""
    if opts.server_cpu is not None:
        return opts.server_cpu
    return 1.0 if cores >= 4 else cores / 4


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
    share = server_share(o, cores)
    say(
        f"\n== 4. heartbeats, one server process against two on one Redis: wrk -c{o.connections} in all, "
        f"{o.warmup:g} s warm-up then {o.pair_seconds:g} s, one then two, {o.repeats} times per server tree"
        + (f"; each pair also with every server held to {share:g} of a core (cgroup quota)" if share < 1 else "")
    )
    servers = {t.label: [bench.server(t, f"process-{bench.trees.index(t)}{x}") for x in "ab"] for t in bench.trees}
    plain: dict[str, list[tuple[Run, Run]]] = {tree.label: [] for tree in bench.trees}
    capped: dict[str, list[tuple[Run, Run]]] = {tree.label: [] for tree in bench.trees}
    try:
        for tree in bench.trees:
            present(bench, servers[tree.label][0])
        for repeat in range(o.repeats):
            for tree in bench.alternate(repeat):
                a, b = servers[tree.label]
                say(f"  -- {tree.label}, pair {repeat + 1}, uncapped")
                plain[tree.label].append(pair(bench, a, b))
                if share < 1 and (repeat == 0 or capped[tree.label]):
                    say(f"  -- {tree.label}, pair {repeat + 1}, each server held to {share:g} of a core")
                    runs = capped_pair(bench, a, b, share)
                    capped[tree.label] += [runs] if runs else []
    finally:
        for child in [c for pair_ in servers.values() for c in pair_]:
            bench.children.stop(child)
    name = "two processes / one (heartbeats)"
    figures = [Figure(f"{name}, uncapped", f">= {TWO_PROCESS_RATIO:g}", {})]
    for label in plain:
        figures[0].values[label] = judge(f"{label}, uncapped", plain[label])
    if any(capped.values()):
        figures.append(Figure(f"{name}, each held to {share:g} of a core", f">= {TWO_PROCESS_RATIO:g}", {}))
        for label in capped:
            figures[1].values[label] = judge(f"{label}, capped", capped[label])
        say(f"  below 4 cores the capped ratio is the verdict ({cores} here); the uncapped one is bounded by them")
    return figures


# -- main ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Options:
    phases: list[str]
    compare: str | None
    engine: str
    seconds: float
    rounds: int
    warmup: float
    connections: int
    users: int
    channels: int
    subscribers: int
    generators: int
    publishes: int
    fanout_runs: int
    spacing: float
    hold: float
    samples: int
    pair_seconds: float
    repeats: int
    server_cpu: float | None
    redis_server: str


def parse_args(argv: Sequence[str] | None) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench.live", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--phases", default=",".join(PHASES), help=f"comma list of {', '.join(PHASES)} (default all)")
    p.add_argument("--compare", metavar="REV", help="also measure a server from REV, taking turns with this tree's")
    p.add_argument("--engine", choices=["redis", "memory"], default="redis", help="the servers' store (memory://)")
    p.add_argument("--seconds", type=float, default=5.0, help="each heartbeat throughput run (default 5)")
    p.add_argument("--rounds", type=int, default=3, help="heartbeat rounds of baseline and server(s) (default 3)")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured wrk run before each figure (default 2)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections in all (default 64)")
    p.add_argument("--users", type=int, default=10_000, help="uuids heartbeating (default 10000)")
    p.add_argument("--channels", type=int, default=4, help="channels they heartbeat (default 4)")
    p.add_argument("--subscribers", type=int, default=2000, help="long-polls on the fan-out channel (default 2000)")
    p.add_argument("--generators", type=int, default=2, help="processes holding them (default 2)")
    p.add_argument("--publishes", type=int, default=10, help="measured fan-out rounds per run (default 10)")
    p.add_argument("--fanout-runs", type=int, help="fan-out runs per server (default 1, 2 with --compare)")
    p.add_argument("--spacing", type=float, default=1.0, help="pause before each publish, s (default 1)")
    p.add_argument("--hold", type=float, default=60.0, help="PRESENCE_LONGPOLL_HOLD of the servers (default 60)")
    p.add_argument("--samples", type=int, default=50, help="presence event samples (default 50)")
    p.add_argument("--pair-seconds", type=float, default=10.0, help="each one/two-process run (default 10)")
    p.add_argument("--repeats", type=int, default=3, help="one-then-two pairs per server tree (default 3)")
    p.add_argument("--server-cpu", type=float, metavar="SHARE", help="core share per server in the capped pairs")
    p.add_argument("--redis-server", default="redis-server", help="redis-server binary")
    args = p.parse_args(argv)
    args.phases = [x for x in args.phases.split(",") if x]
    if not args.phases or not set(args.phases) <= set(PHASES):
        p.error(f"--phases takes {', '.join(PHASES)}")
    if args.fanout_runs is None:
        args.fanout_runs = 2 if args.compare else 1
    counts = (args.rounds, args.subscribers, args.generators, args.publishes, args.samples, args.repeats)
    if min(*counts, args.fanout_runs) < 1 or args.connections < 2 or (args.server_cpu or 1) <= 0:
        p.error("counts must be positive, --connections at least 2, --server-cpu above 0")
    return Options(**vars(args))


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


def describe(bench: Bench) -> None:
    say(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} "
        f"(other work skews every figure); Python {platform.python_version()}, aiohttp {aiohttp.__version__}, "
        f"redis-py {redis.__version__}, redis-server {bench.rcli.info('server')['redis_version']}"
    )
    for tree in bench.trees:
        code = f"import {tree.package}; print({tree.package}.__file__)"
        where = subprocess.run(
            [sys.executable, "-c", code], cwd=tree.path, env=bench.env(tree, ""), capture_output=True, text=True
        ).stdout.strip()
        say(f"server {tree.label!r}: python -m {tree.package}, code from {where}; store {bench.url}")


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    if {"heartbeat", "processes"} & set(opts.phases) and not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install -y wrk); or leave out heartbeat and processes")
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
        for phase in opts.phases:
            figures += {"heartbeat": heartbeat, "fanout": fanout, "presence": presence, "processes": processes}[phase](
                bench
            )
    say(f"\n#### summary ({time.monotonic() - started:.0f} s, load average now {os.getloadavg()[0]:.2f})")
    for figure in figures:
        say(f"  {figure.name} (target {figure.target})")
        for label, (text, ok) in figure.values.items():
            say(f"    {verdict(ok)}  {label:<28} {text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
