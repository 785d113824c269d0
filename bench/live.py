"""Speed figures of live presence (subscribe, publish, presence events, several processes), each
printed beside its target (issue 3).

Run from the checkout: ``python -m bench.live`` (``--help`` for the knobs). It starts its own
redis-server and the server as subprocesses on loopback, with the load in processes of their own
(bench/fanout_client.py for the long-polls, wrk for heartbeats), prints every figure with the
baseline measured in the same run and PASS/FAIL per target, and stops everything it started.
This is a measurement, not a test: nothing here runs in CI. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import http.client
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import orjson
import redis

from bench import cpucap
from bench.presence import (
    ROOT,
    SUB_KEY,
    Child,
    Children,
    Load,
    LoadPlan,
    command_calls,
    commands_between,
    cpu_seconds,
    describe_machine,
    drive,
    free_port,
    load_average,
    members_of,
    percentile,
    populate_store,
    redis_cpu,
    say,
    start_redis,
    start_server,
    verdict,
    wait_http,
    with_store,
    workspace,
)
from bench.rawhttp import HttpClient, connect, raise_fd_limit
from presence_server.store import open_redis

# Targets of issue 3.
FANOUT_P99_MS = 250.0
PRESENCE_MEDIAN_MS = 20.0
TWO_PROCESS_RATIO = 1.4

FANOUT_CHANNEL = "fanout"
PRESENCE_CHANNEL = "presence-watch"
PUB_KEY = "bench-pub"
HELD = re.compile(rb"^presence_longpolls_held (\S+)$", re.MULTILINE)


# -- talking to the server from this process --------------------------------------------------------


class Http:
    """A keep-alive HTTP connection to one server, for the few requests this process makes itself."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            return self._get(path)
        except (http.client.HTTPException, OSError):
            self.close()  # a connection the server closed while idle: once more on a new one
            return self._get(path)

    def _get(self, path: str) -> tuple[int, bytes]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        self.conn.request("GET", path)
        response = self.conn.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def held_in(metrics_body: bytes) -> int:
    found = HELD.search(metrics_body)
    if found is None:
        raise RuntimeError("presence_longpolls_held is missing from /metrics")
    return int(float(found.group(1)))


def wait_held(conn: Http, expected: int, limit: float) -> float:
    """Poll /metrics until exactly ``expected`` long-polls are held; returns the seconds it took."""
    started = time.monotonic()
    held = -1
    while time.monotonic() - started < limit:
        status, body = conn.get("/metrics")
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        held = held_in(body)
        if held == expected:
            return time.monotonic() - started
        time.sleep(0.02)  # each scrape costs the server a few hundred microseconds
    raise RuntimeError(f"{held} long-polls held after {limit:.0f} s, expected {expected}")


# -- fan-out generators -----------------------------------------------------------------------------


class Feed:
    """One bench.fanout_client process: its JSON-line events (read by a thread, so waits have a time
    limit) and its command pipe."""

    def __init__(self, child: Child) -> None:
        self.child = child
        self.events: dict[str, queue.Queue[dict[str, Any]]] = {
            kind: queue.Queue() for kind in ("ready", "round", "stats", "error")
        }
        self.thread = threading.Thread(target=self._read, name=f"{child.name}-events", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        stdout = self.child.proc.stdout
        if stdout is None:
            return
        for line in stdout:
            with contextlib.suppress(orjson.JSONDecodeError):
                event = orjson.loads(line)
                self.events.get(event.get("event"), self.events["error"]).put(event)

    def next(self, kind: str, limit: float) -> dict[str, Any]:
        deadline = time.monotonic() + limit
        while True:
            with contextlib.suppress(queue.Empty):
                error = self.events["error"].get_nowait()
                raise RuntimeError(f"{self.child.name}: {error}\n{self.child.log_tail()}")
            try:
                return self.events[kind].get(timeout=0.05)
            except queue.Empty:
                if self.child.proc.poll() is not None:
                    raise RuntimeError(
                        f"{self.child.name} exited with {self.child.proc.returncode}:\n{self.child.log_tail()}"
                    ) from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.child.name}: no {kind!r} event within {limit:.0f} s") from None

    def command(self, text: str) -> None:
        stdin = self.child.proc.stdin
        if stdin is not None:
            stdin.write(f"{text}\n".encode())
            stdin.flush()

    def stats(self) -> dict[str, Any]:
        self.command("stats")
        return self.next("stats", 30)


def start_feed(children: Children, name: str, argv: Sequence[str]) -> Feed:
    """Start a generator with pipes, registered with ``children`` so it is stopped on the way out."""
    log_path = children.workdir / f"{name}.log"
    log_file: IO[bytes] = log_path.open("wb")
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file, cwd=ROOT, start_new_session=True
    )
    child = Child(name, proc, log_path, log_file)
    children.running.append(child)
    return Feed(child)


@dataclasses.dataclass
class Target:
    """What a fan-out run drives: the server (with its Redis) or the minimal long-poll app."""

    label: str
    port: int
    child: Child
    rcli: redis.Redis | None


@dataclasses.dataclass
class Round:
    number: int
    latencies: list[float]  # ms, sorted
    window: float  # s, publish sent -> last subscriber got it
    reheld: float  # s, publish sent -> every subscriber held again
    publish_ms: float  # the publish request's own round trip
    generator_cpu: list[float]  # s, per generator process, publish sent -> all held again
    generator_lag_ms: list[float]  # longest event-loop stall per generator in the same span
    read_delay_ms: list[float]  # per generator, the longest wait between an answer's arrival and its read
    target_cpu: float
    redis_cpu: float
    machine_cpu: float  # s, every process on the machine in the same span
    commands: dict[str, int]  # Redis commands run in the same span (INFO commandstats)

    def line(self) -> str:
        lat = self.latencies
        return (
            f"  round {self.number:>2}: p50 {percentile(lat, 0.5):6.1f}  p99 {percentile(lat, 0.99):6.1f}  "
            f"max {lat[-1]:6.1f} ms | last at {1000 * self.window:5.0f} ms, all held again at "
            f"{1000 * self.reheld:5.0f} ms, publish answered in {self.publish_ms:5.1f} ms | CPU s: "
            f"target {self.target_cpu:.2f}, redis {self.redis_cpu:.2f}, generators "
            + "+".join(f"{c:.2f}" for c in self.generator_cpu)
            + " | generator loop lag max "
            + "/".join(f"{lag:.1f}" for lag in self.generator_lag_ms)
            + " ms, read delay max "
            + "/".join(f"{d:.1f}" for d in self.read_delay_ms)
            + " ms"
        )


@dataclasses.dataclass
class FanoutRun:
    rounds: list[Round]  # measured rounds, the warm-up left out
    finals: list[dict[str, Any]]  # each generator's last stats

    @property
    def pooled(self) -> list[float]:
        return sorted(ms for r in self.rounds for ms in r.latencies)

    @property
    def trouble(self) -> dict[str, int]:
        return {key: sum(int(f[key]) for f in self.finals) for key in ("errors", "lost", "duplicates", "empty")}

    @property
    def clean(self) -> bool:
        trouble = self.trouble
        return trouble["errors"] == trouble["lost"] == trouble["duplicates"] == 0


def publish_path(channel: str, round_no: int, sent: float) -> str:
    message = orjson.dumps({"r": round_no, "t": sent}).decode()
    return f"/publish/{PUB_KEY}/{SUB_KEY}/0/{channel}/0/{urllib.parse.quote(message, safe='')}?uuid=bench-publisher"


def fanout(children: Children, opts: Options, port: int, server: Child, rcli: redis.Redis) -> list[tuple[str, bool]]:
    total = opts.subscribers
    say(
        f"\n== 1. fan-out: {total} long-polling subscribers on one channel ({opts.generators} generator processes "
        f"of raw asyncio connections, each subscriber a uuid of its own re-polling at once with the cursor it "
        f"got), 1 warm-up round then {opts.rounds} publishes, each {opts.spacing:g} s after all are held again"
    )
    baseline_port = free_port()
    baseline_child = children.start(
        "baseline-longpoll",
        [sys.executable, "-m", "bench.baseline_longpoll", "--port", str(baseline_port), "--hold", f"{opts.hold:g}"],
    )
    try:
        wait_http(baseline_child, baseline_port)
        say(
            "  -- baseline: minimal aiohttp long-poll app (bench/baseline_longpoll.py: one asyncio.Event, the "
            "answer encoded once per publish, no store)"
        )
        base = fanout_run(children, opts, Target("baseline", baseline_port, baseline_child, None))
    finally:
        children.stop(baseline_child)
    base_p99 = percentile(base.pooled, 0.99)
    summarise_fanout(base, total, None)
    say("  -- the server on Redis")
    run = fanout_run(children, opts, Target("server", port, server, rcli))
    ok = summarise_fanout(run, total, FANOUT_P99_MS)
    p99 = percentile(run.pooled, 0.99)
    say(
        f"  server p99 / baseline p99: {p99 / base_p99 if base_p99 else 0:.1f}x  (baseline p99 {base_p99:.1f} ms: "
        "what aiohttp alone costs on this machine for the same fan-out)"
    )
    return [("fan-out to 2,000 long-polls p99 < 250 ms", ok)]


def fanout_run(children: Children, opts: Options, target: Target) -> FanoutRun:
    total = opts.subscribers
    sizes = [total // opts.generators + (1 if i < total % opts.generators else 0) for i in range(opts.generators)]
    feeds: list[Feed] = []
    first = 0
    for i, size in enumerate(sizes):
        feeds.append(
            start_feed(
                children,
                f"fanout-{target.label}-{i}",
                [
                    sys.executable,
                    "-m",
                    "bench.fanout_client",
                    "--port",
                    str(target.port),
                    "--sub-key",
                    SUB_KEY,
                    "--channel",
                    FANOUT_CHANNEL,
                    "--first",
                    str(first),
                    "--count",
                    str(size),
                ],
            )
        )
        first += size
    conn = Http(target.port)
    try:
        started = time.monotonic()
        for feed in feeds:
            feed.next("ready", 90)
        waited = wait_held(conn, total, 60)
        say(
            f"  {total} connections ({'+'.join(map(str, sizes))}), handshakes answered and first polls held after "
            f"{time.monotonic() - started:.1f} s (the last {1000 * waited:.0f} ms waiting for /metrics to show all)"
        )
        rounds: list[Round] = []
        with py_spy(opts.py_spy, f"fanout-{target.label}", [target.child.proc.pid]):
            for number in range(opts.rounds + 1):
                time.sleep(opts.spacing)
                rounds.append(fanout_round(number, feeds, conn, total, target))
                say(rounds[-1].line() + ("   (warm-up, not counted)" if number == 0 else ""))
        finals = [feed.stats() for feed in feeds]
    finally:
        conn.close()
        for feed in feeds:
            feed.command("quit")
        for feed in feeds:
            children.stop(feed.child)
    return FanoutRun(rounds[1:], finals)


def fanout_round(number: int, feeds: list[Feed], conn: Http, total: int, target: Target) -> Round:
    rcli = target.rcli
    before = [feed.stats() for feed in feeds]  # also empties each generator's lag record
    target_before = cpu_seconds(target.child.proc.pid)
    redis_before = 0.0 if rcli is None else redis_cpu(rcli)
    commands_before = {} if rcli is None else command_calls(rcli)
    machine_before = machine_busy()
    started = time.monotonic()
    sent = time.time()  # the generators' arrival times are kernel timestamps: CLOCK_REALTIME
    status, body = conn.get(publish_path(FANOUT_CHANNEL, number, sent))
    publish_ms = 1000 * (time.monotonic() - started)
    if status != 200 or not body.startswith(b'[1,"Sent"'):
        raise RuntimeError(f"publish answered {status}: {body[:200]!r}")
    last = sent
    for feed in feeds:
        done = feed.next("round", 60)
        if done["r"] != number:
            raise RuntimeError(f"{feed.child.name} completed round {done['r']} while waiting for {number}")
        last = max(last, float(done["last"]))
    wait_held(conn, total, 60)
    reheld = time.monotonic() - started
    machine = machine_busy() - machine_before
    target_cpu = cpu_seconds(target.child.proc.pid) - target_before
    spent_redis = 0.0 if rcli is None else redis_cpu(rcli) - redis_before
    commands = {} if rcli is None else commands_between(commands_before, command_calls(rcli))
    after = [feed.stats() for feed in feeds]
    latencies = sorted(ms for stats in after for r, ms in stats["latencies"] if r == number)
    if len(latencies) != total:
        raise RuntimeError(f"round {number}: {len(latencies)} deliveries recorded, expected {total}")
    return Round(
        number,
        latencies,
        last - sent,
        reheld,
        publish_ms,
        [a["cpu"] - b["cpu"] for a, b in zip(after, before, strict=True)],
        [a["lag_ms"]["max"] for a in after],
        [a["read_delay_ms"]["max"] for a in after],
        target_cpu,
        spent_redis,
        machine,
        commands,
    )


def summarise_fanout(run: FanoutRun, total: int, target_ms: float | None) -> bool:
    rounds, pooled = run.rounds, run.pooled
    p50, p99, worst = percentile(pooled, 0.5), percentile(pooled, 0.99), pooled[-1]
    ok = target_ms is not None and p99 < target_ms and run.clean
    tail = "" if target_ms is None else f"   target p99 < {target_ms:g} ms  {verdict(ok)}"
    say(
        f"  delivery latency, publish sent -> answer arrived, {len(pooled)} deliveries ({len(rounds)} rounds x "
        f"{total}): p50 {p50:.1f} ms  p99 {p99:.1f} ms  max {worst:.1f} ms{tail}"
    )
    trouble = run.trouble
    sample = next((f["error_sample"] for f in run.finals if f["error_sample"]), "")
    say(
        f"  generator trouble: {trouble['errors']} error answers, {trouble['lost']} connections lost, "
        f"{trouble['duplicates']} duplicate deliveries, {trouble['empty']} empty answers (holds that ran out)"
        + (f"; first error: {sample}" if sample else "")
    )

    # Is the generator the bottleneck? Its CPU share of the round, and how long its event loop was
    # ever busy: a response waits in the socket at most that long before it is timestamped.
    window = statistics_mean([r.window for r in rounds])
    generator_cpu = statistics_mean([sum(r.generator_cpu) for r in rounds])
    per_process = statistics_mean([max(r.generator_cpu) for r in rounds])
    span = statistics_mean([r.reheld for r in rounds])
    lag = max(max(r.generator_lag_ms) for r in rounds)
    target_cpu = statistics_mean([r.target_cpu for r in rounds])
    redis_spent = statistics_mean([r.redis_cpu for r in rounds])
    machine = statistics_mean([r.machine_cpu for r in rounds])
    other = machine - target_cpu - redis_spent - generator_cpu
    say(
        f"  per round (mean): last delivery {1000 * window:.0f} ms after the publish, all held again after "
        f"{1000 * span:.0f} ms; over that span the process under test used {target_cpu:.2f} CPU s "
        f"({100 * target_cpu / span:.0f} % of one core), Redis {redis_spent:.2f} s, the generators "
        f"{generator_cpu:.3f} s in all (busiest process {per_process:.3f} s = {100 * per_process / span:.0f} % "
        f"of one core); the whole machine was busy {machine / span:.2f} cores, {max(0.0, other) / span:.2f} of them "
        "with other work (this bench process included)"
    )
    calls: Counter[str] = Counter()
    for r in rounds:
        calls.update(r.commands)
    if calls:
        say(
            "  Redis commands per round (mean, INFO commandstats, commands inside scripts included): "
            + ", ".join(f"{name} {count / len(rounds):.0f}" for name, count in calls.most_common(8))
        )
    delay = max(max(r.read_delay_ms) for r in rounds)
    stamps = all(f.get("kernel_stamps") for f in run.finals)
    say(
        f"  generators: event-loop lag (5 ms timer) at most {lag:.1f} ms; answers read at most {delay:.1f} ms after "
        f"they arrived; arrival times from {'kernel receive timestamps' if stamps else 'the reads (no kernel stamps)'}"
    )
    if stamps and per_process < 0.5 * span:
        say(
            f"  -> the generators were not the bottleneck: the latencies use the kernel's arrival time of each "
            f"answer, which a busy generator cannot delay (its reads lagged by up to {delay:.1f} ms, which only "
            f"delays its next poll), and each generator process used at most {100 * per_process / span:.0f} % of a "
            f"core; the process under test, at {100 * target_cpu / span:.0f} % of a core, is what this latency "
            "measures"
        )
    elif not stamps and delay < 0.1 * p99 and per_process < 0.5 * span:
        say(
            f"  -> the generators were not the bottleneck: no answer waited more than {lag:.1f} ms in a generator "
            f"before being read ({100 * lag / p99:.0f} % of the p99), each used at most "
            f"{100 * per_process / span:.0f} % of a core"
        )
    else:
        say(
            f"  -> the generators may have weighed on these figures: busiest at {100 * per_process / span:.0f} % of a "
            f"core (they share the machine's cores with the process under test), reads up to {delay:.1f} ms late"
        )
    return ok


def statistics_mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


# -- presence event latency -------------------------------------------------------------------------


@dataclasses.dataclass
class PresenceFigures:
    join_ms: list[float]  # sorted; heartbeat answer read -> join event read
    leave_ms: list[float]  # sorted; leave answer read -> leave event read
    heartbeat_ms: list[float]  # sorted; the heartbeat request's own round trip
    early: int  # join events read before the heartbeat's own answer (negative latencies)


async def held_async(client: HttpClient) -> int:
    response = await client.get("/metrics")
    if response.status != 200:
        raise RuntimeError(f"/metrics answered {response.status}")
    return held_in(response.body)


async def wait_held_async(client: HttpClient, expected: int, limit: float) -> None:
    deadline = time.monotonic() + limit
    held = await held_async(client)
    while held != expected:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{held} long-polls held after {limit:.0f} s, expected {expected}")
        await asyncio.sleep(0.002)
        held = await held_async(client)


async def presence_latency(port: int, samples: int, warmup: int, limit: float = 10.0) -> PresenceFigures:  # noqa: C901 (to be split)
    """A listener holds a poll on ``<ch>-pnpres``; another connection sends a join heartbeat (a new uuid
    each time), then a leave, so occupancy stays at 0 or 1 and every event is announced."""
    listener, joiner, scrape = await connect(port), await connect(port), await connect(port)
    events: asyncio.Queue[tuple[str, str, float]] = asyncio.Queue()
    base = f"/v2/subscribe/{SUB_KEY}/{PRESENCE_CHANNEL}-pnpres/0?uuid=presence-listener"
    presence = f"/v2/presence/sub-key/{SUB_KEY}/channel/{PRESENCE_CHANNEL}"

    async def listen() -> None:
        answer = await listener.get(f"{base}&tt=0")
        while True:
            if answer.status != 200:
                raise RuntimeError(f"the listener's poll answered {answer.status}: {answer.body[:200]!r}")
            reply = orjson.loads(answer.body)
            for envelope in reply["m"]:
                data = envelope["d"]
                events.put_nowait((str(data.get("action")), str(data.get("uuid")), answer.received))
            answer = await listener.get(f"{base}&tt={reply['t']['t']}&tr=1")

    async def event(task: asyncio.Task[None], action: str, uuid: str) -> float:
        getter = asyncio.ensure_future(events.get())
        done, _ = await asyncio.wait({getter, task}, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
        if getter not in done:
            getter.cancel()
            if task in done:
                task.result()  # the listener's error
            raise RuntimeError(f"no {action} event for {uuid} within {limit:.0f} s")
        got_action, got_uuid, received = getter.result()
        if (got_action, got_uuid) != (action, uuid):
            raise RuntimeError(f"expected {action} of {uuid}, the listener got {got_action} of {got_uuid}")
        return received

    async def send(path: str) -> tuple[float, float]:
        sent = time.monotonic()
        answer = await joiner.get(path)
        if answer.status != 200:
            raise RuntimeError(f"{path} answered {answer.status}: {answer.body[:200]!r}")
        return sent, answer.received

    # The fan-out's subscribers may still be going away: start from no held poll at all.
    await wait_held_async(scrape, 0, limit)
    already = 0
    task = asyncio.create_task(listen())
    figures = PresenceFigures([], [], [], 0)
    try:
        for i in range(warmup + samples):
            uuid = f"watch-{i:08d}-0000-4000-8000-000000000000"
            await wait_held_async(scrape, already + 1, limit)
            sent, answered = await send(f"{presence}/heartbeat?uuid={uuid}&heartbeat=60")
            joined = await event(task, "join", uuid)
            await wait_held_async(scrape, already + 1, limit)
            _, left_answer = await send(f"{presence}/leave?uuid={uuid}")
            left = await event(task, "leave", uuid)
            if i >= warmup:
                figures.join_ms.append(1000 * (joined - answered))
                figures.leave_ms.append(1000 * (left - left_answer))
                figures.heartbeat_ms.append(1000 * (answered - sent))
                figures.early += joined < answered
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        for client in (listener, joiner, scrape):
            client.close()
    for values in (figures.join_ms, figures.leave_ms, figures.heartbeat_ms):
        values.sort()
    return figures


def presence(opts: Options, port: int) -> list[tuple[str, bool]]:
    say(
        f"\n== 2. presence event latency: a listener holds a poll on {PRESENCE_CHANNEL}-pnpres; another connection "
        f"sends a join heartbeat (new uuid each time) then a leave; {opts.samples} samples after 3 unmeasured, "
        "all from this process"
    )
    figures = asyncio.run(presence_latency(port, opts.samples, warmup=3))
    join = figures.join_ms
    median = percentile(join, 0.5)
    ok = median < PRESENCE_MEDIAN_MS
    say(
        f"  join: heartbeat answer read -> join event read   median {median:6.2f} ms  p99 {percentile(join, 0.99):6.2f}"
        f" ms  max {join[-1]:6.2f} ms   target median < {PRESENCE_MEDIAN_MS:g} ms  {verdict(ok)}"
    )
    say(
        f"    ({figures.early} of {len(join)} join events were read before the heartbeat's own answer: the wake-up "
        "and the answer race, both after one script call)"
    )
    leave = figures.leave_ms
    say(
        f"  leave: leave answer read -> leave event read     median {percentile(leave, 0.5):6.2f} ms  "
        f"p99 {percentile(leave, 0.99):6.2f} ms"
    )
    beat = figures.heartbeat_ms
    say(
        f"  the heartbeat request itself (send -> answer)     median {percentile(beat, 0.5):6.2f} ms  "
        f"p99 {percentile(beat, 0.99):6.2f} ms"
    )
    return [("presence event latency median < 20 ms", ok)]


# -- one process against two ------------------------------------------------------------------------


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (all cores, every process), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def drive_both(plan: LoadPlan, ports: Sequence[int], servers: Sequence[Child], seconds: float) -> list[Load]:
    """One wrk per server, all at once (threads only wait on the wrk processes)."""
    with concurrent.futures.ThreadPoolExecutor(len(ports)) as pool:
        runs = [
            pool.submit(drive, plan, port, seconds, server, None) for port, server in zip(ports, servers, strict=True)
        ]
        return [run.result() for run in runs]


@dataclasses.dataclass
class Spent:
    """One throughput run: the wrk reports (one per server process) and the CPU around them."""

    loads: list[Load]
    redis_cpu: float
    machine_cpu: float
    idle_cpu: float = 0.0  # server B while only A is loaded

    @property
    def requests(self) -> int:
        return sum(load.requests for load in self.loads)

    @property
    def seconds(self) -> float:
        return max(load.seconds for load in self.loads)

    @property
    def rps(self) -> float:
        return sum(load.rps for load in self.loads)

    @property
    def errors(self) -> int:
        return sum(load.errors for load in self.loads)

    @property
    def server_cpu(self) -> float:
        return sum(load.target_cpu for load in self.loads)

    @property
    def wrk_cpu(self) -> float:
        return sum(load.generator_cpu for load in self.loads)

    def line(self, label: str) -> str:
        loads = self.loads
        return (
            f"  {label:<44} {self.rps:6.0f} req/s ({'+'.join(f'{x.rps:.0f}' for x in loads)}), "
            f"{self.errors} errors, p50 {'/'.join(f'{x.p50_ms:.1f}' for x in loads)} ms, "
            f"p99 {'/'.join(f'{x.p99_ms:.1f}' for x in loads)} ms\n"
            f"  {'':<44} CPU s: server {'+'.join(f'{x.target_cpu:.1f}' for x in loads)}"
            + (f" (B idle {self.idle_cpu:.1f})" if len(loads) == 1 else "")
            + f", redis {self.redis_cpu:.1f}, wrk {self.wrk_cpu:.1f}; server CPU per heartbeat "
            f"{1e6 * self.server_cpu / max(1, self.requests):.0f} µs; machine busy "
            f"{self.machine_cpu / self.seconds:.2f} cores"
        )


def run_spent(rcli: redis.Redis, work: Callable[[], list[Load]], idle: Child | None = None) -> Spent:
    idle_before = 0.0 if idle is None else cpu_seconds(idle.proc.pid)
    redis_before, busy_before = redis_cpu(rcli), machine_busy()
    loads = work()
    spent = Spent(loads, redis_cpu(rcli) - redis_before, machine_busy() - busy_before)
    if idle is not None:
        spent.idle_cpu = cpu_seconds(idle.proc.pid) - idle_before
    return spent


def server_share(opts: Options, cores: int) -> float:
    """The share of a core each server is held to in the capped runs (1 = no capped runs).

    Two servers, Redis and wrk need about four cores to run side by side without taking CPU from each
    other; on fewer, each server gets a quarter of the machine, which leaves about half of it for Redis
    and wrk while both servers run flat out.
    """
    if opts.server_cpu is not None:
        return opts.server_cpu
    return 1.0 if cores >= 4 else cores / 4


def throughput_pairs(
    opts: Options, rcli: redis.Redis, servers: tuple[Child, Child], ports: tuple[int, int], tag: str
) -> tuple[list[Spent], list[Spent]]:
    """``opts.repeats`` times: wrk on A alone, then wrk split over A and B, the same connections in all."""
    (server_a, server_b), (port_a, port_b) = servers, ports
    half = opts.connections // 2
    plan = LoadPlan("wrk", opts.seconds, opts.warmup, opts.connections, opts.users, opts.channels, opts.repeats)
    halves = dataclasses.replace(plan, connections=half)
    ones: list[Spent] = []
    twos: list[Spent] = []
    for repeat in range(opts.repeats):
        if opts.warmup > 0:
            drive(plan, port_a, opts.warmup, server_a, None)
        with py_spy(opts.py_spy if repeat == 0 else None, f"one-process{tag}", [server_a.proc.pid]):
            ones.append(run_spent(rcli, lambda: [drive(plan, port_a, opts.seconds, server_a, None)], server_b))
        say(ones[-1].line(f"one process (wrk -c{opts.connections} on A)"))
        if opts.warmup > 0:
            drive_both(halves, [port_a, port_b], [server_a, server_b], opts.warmup)
        with py_spy(
            opts.py_spy if repeat == 0 else None, f"two-processes{tag}", [server_a.proc.pid, server_b.proc.pid]
        ):
            twos.append(
                run_spent(rcli, lambda: drive_both(halves, [port_a, port_b], [server_a, server_b], opts.seconds))
            )
        say(twos[-1].line(f"two processes (wrk -c{half} on A, -c{half} on B)"))
    return ones, twos


def judge_pairs(ones: list[Spent], twos: list[Spent], cores: int) -> tuple[bool, bool]:
    """Prints the ratio of the pairs and what the machine allowed; returns (passed, saturated)."""
    one_rps = statistics_mean([x.rps for x in ones])
    two_rps = statistics_mean([x.rps for x in twos])
    errors = sum(x.errors for x in ones + twos)
    ratio = two_rps / one_rps if one_rps else 0.0
    ok = ratio >= TWO_PROCESS_RATIO and errors == 0
    each = ", ".join(f"{t.rps / o.rps:.2f}" for o, t in zip(ones, twos, strict=True) if o.rps)
    say(
        f"  mean: one process {one_rps:.0f} req/s, two processes {two_rps:.0f} req/s, {errors} errors; "
        f"ratio two / one: {ratio:.2f} (each pair: {each})   target >= {TWO_PROCESS_RATIO:g}  {verdict(ok)}"
    )

    # What this machine allows: every request costs CPU in a server, in Redis and in wrk. With
    # `cores` cores and nothing else running, no number of server processes gets much past cores / that.
    requests = max(1, sum(x.requests for x in ones))
    server_us = 1e6 * sum(x.server_cpu for x in ones) / requests
    redis_us = 1e6 * sum(x.redis_cpu for x in ones) / requests
    wrk_us = 1e6 * sum(x.wrk_cpu for x in ones) / requests
    per_request = (server_us + redis_us + wrk_us) / 1e6
    ceiling = cores / per_request if per_request else 0.0
    busy_one = statistics_mean([x.server_cpu / x.seconds for x in ones])
    two_seconds = sum(x.seconds for x in twos) or 1.0
    machine = sum(x.machine_cpu for x in twos) / two_seconds
    ours = sum(x.server_cpu + x.redis_cpu + x.wrk_cpu for x in twos) / two_seconds
    say(
        f"  machine: {cores} cores. One process: {1e6 * per_request:.0f} µs of CPU per heartbeat in all (server "
        f"{server_us:.0f}, redis {redis_us:.0f}, wrk {wrk_us:.0f}), the server busy {100 * busy_one:.0f} % of a core"
    )
    say(
        f"    at that cost {cores} cores serve about {ceiling:.0f} req/s however many processes (a ratio of "
        f"~{ceiling / one_rps if one_rps else 0:.2f}). During the two-process runs the machine was busy "
        f"{machine:.2f} of {cores} cores: {ours:.2f} for these processes, {max(0.0, machine - ours):.2f} for other "
        f"work (this bench and py-spy included; load average now {load_average()})"
    )
    saturated = machine > 0.9 * cores
    if saturated:
        say(
            f"    -> the machine was saturated: two server processes, Redis and wrk (and any other work) shared "
            f"{cores} cores, so this ratio is bounded by the machine, not by the server"
        )
    else:
        say(f"    -> the machine had CPU to spare ({cores - machine:.2f} cores idle): the ratio is the servers' own")
    return ok, saturated


def two_processes(
    children: Children, opts: Options, url: str, rcli: redis.Redis, server_a: Child, port_a: int
) -> list[tuple[str, bool]]:
    cores = os.cpu_count() or 1
    share = server_share(opts, cores)
    name = "two server processes >= 1.4x one (heartbeats)"
    say(
        f"\n== 3. heartbeat throughput, one server process against two on the same Redis (wrk, "
        f"{opts.connections} connections in all, each run {opts.warmup:g} s warm-up then {opts.seconds:g} s, one "
        f"then two, {opts.repeats} times; {opts.users} uuids on {opts.channels} channels, all already present)"
    )
    members = members_of(0, opts.users, None, opts.channels)
    asyncio.run(with_store(open_redis(url), lambda store: populate_store(store, members, time.time())))
    server_b, port_b = start_server(children, "server-b", url)
    servers, ports = (server_a, server_b), (port_a, port_b)
    try:
        say("  3a. each server may use a whole core")
        ok, saturated = judge_pairs(*throughput_pairs(opts, rcli, servers, ports, ""), cores)
        if share >= 1:
            return [(name, ok)]
        say(
            f"\n  3b. each server held to {share:g} of a core (a cgroup CPU quota), in the one-process runs and "
            f"the two-process runs alike, so that two servers, Redis and wrk fit in {cores} cores: the ratio then "
            "shows how the servers scale on one Redis, not how much CPU 3a left over"
        )
        try:
            with cpucap.capped([server_a.proc.pid, server_b.proc.pid], share):
                ones, twos = throughput_pairs(opts, rcli, servers, ports, "-capped")
        except cpucap.CapUnavailable as error:
            say(
                f"  !! no capped runs: {error}. Run as root (or in a delegated cgroup) for them; the verdict is "
                f"3a's{', which the machine bounded' if saturated else ''}"
            )
            return [(name, ok)]
        for spent in ones + twos:
            for load in spent.loads:
                if load.target_cpu > 1.05 * share * load.seconds:
                    say(f"  !! a server used {load.target_cpu / load.seconds:.2f} of a core, over its quota")
        capped_ok, _ = judge_pairs(ones, twos, cores)
        say(f"  verdict from 3b: 3a {'was bounded by the machine' if saturated else 'is printed beside it'}")
        return [(f"{name}, each held to {share:g} of a core", capped_ok)]
    finally:
        children.stop(server_b)


# -- a look inside the server -----------------------------------------------------------------------


@contextlib.contextmanager
def py_spy(directory: Path | None, name: str, pids: Sequence[int]) -> Iterator[None]:
    """With --py-spy DIR: sample ``pids`` while the block runs, then print where they spent their time."""
    if directory is None:
        yield
        return
    binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    directory.mkdir(parents=True, exist_ok=True)
    outputs = [directory / f"{name}-{pid}.txt" for pid in pids]
    spies = [
        subprocess.Popen(
            [
                binary,
                "record",
                "--pid",
                str(pid),
                "--rate",
                "100",
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid, out in zip(pids, outputs, strict=True)
    ]
    started = time.monotonic()
    try:
        yield
    finally:
        seconds = time.monotonic() - started
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
    for pid, out in zip(pids, outputs, strict=True):
        if out.exists():
            print_profile(out, pid, seconds)


def print_profile(path: Path, pid: int, seconds: float, top: int = 10) -> None:
    """From py-spy's raw (collapsed) stacks: the busy share, the functions with the most own time, and
    the server's own functions with the most time spent in them and below (inclusive)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, weight = line.rpartition(" ")
        if not stack or not weight.isdigit():
            continue
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        own[frames[-1]] += int(weight)
        for frame in set(frames):
            if (
                "(presence_server/" in frame
                and "(presence_server/cli.py)" not in frame
                and "(presence_server/__main__.py)" not in frame
            ):
                inclusive[frame] += int(weight)
        samples += int(weight)
    say(
        f"  py-spy, pid {pid}, {seconds:.1f} s: {samples} busy samples at 100 Hz = ~{samples / max(1, seconds):.0f} % "
        f"of a core ({path})"
    )
    say(
        "    own time: "
        + "; ".join(f"{100 * hits / max(1, samples):.1f} % {frame}" for frame, hits in own.most_common(top))
    )
    if inclusive:
        say(
            "    inclusive, server code: "
            + "; ".join(f"{100 * hits / max(1, samples):.1f} % {frame}" for frame, hits in inclusive.most_common(top))
        )


# -- main -------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Options:
    subscribers: int
    generators: int
    rounds: int
    spacing: float
    hold: float
    samples: int
    seconds: float
    warmup: float
    connections: int
    repeats: int
    users: int
    channels: int
    phases: list[str]
    redis_server: str
    py_spy: Path | None
    server_cpu: float | None


PHASES = ("fanout", "presence", "processes")


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.live", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=2000, help="long-polls on the fan-out channel")
    parser.add_argument("--generators", type=int, default=2, help="processes holding them (default 2)")
    parser.add_argument("--rounds", type=int, default=10, help="measured publishes (default 10)")
    parser.add_argument("--spacing", type=float, default=1.0, help="pause before each publish, s (default 1)")
    parser.add_argument("--hold", type=float, default=60.0, help="PRESENCE_LONGPOLL_HOLD of the server (default 60)")
    parser.add_argument("--samples", type=int, default=50, help="presence event samples (default 50)")
    parser.add_argument("--seconds", type=float, default=10.0, help="each throughput run (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured run before each (default 2)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections in all (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="one-then-two throughput pairs (default 3)")
    parser.add_argument(
        "--server-cpu",
        type=float,
        metavar="SHARE",
        help="share of a core each server gets in the capped throughput runs (default: a quarter "
        "of the machine's cores below 4 cores, else no capped runs; 1 = none)",
    )
    parser.add_argument("--users", type=int, default=10_000, help="uuids heartbeating (default 10000)")
    parser.add_argument("--channels", type=int, default=4, help="channels they heartbeat (default 4)")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma list of {', '.join(PHASES)}")
    parser.add_argument("--redis-server", default="redis-server", help="redis-server binary")
    parser.add_argument(
        "--py-spy",
        type=Path,
        metavar="DIR",
        help="sample the server with py-spy during fan-out and throughput; raw stacks go to DIR",
    )
    args = parser.parse_args(argv)
    phases = [p for p in args.phases.split(",") if p]
    if not phases or not set(phases) <= set(PHASES):
        parser.error(f"--phases takes {', '.join(PHASES)}")
    if min(args.subscribers, args.generators, args.rounds, args.samples, args.repeats) < 1 or args.connections < 2:
        parser.error(
            "--subscribers, --generators, --rounds, --samples and --repeats must be positive, --connections at least 2"
        )
    if args.server_cpu is not None and args.server_cpu <= 0:
        parser.error("--server-cpu must be positive")
    return Options(
        args.subscribers,
        args.generators,
        args.rounds,
        args.spacing,
        args.hold,
        args.samples,
        args.seconds,
        args.warmup,
        args.connections,
        args.repeats,
        args.users,
        args.channels,
        phases,
        args.redis_server,
        args.py_spy,
        args.server_cpu,
    )


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    if "processes" in opts.phases and not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (Debian/Ubuntu: apt-get install -y wrk), or leave out phase processes")
    # Every long-poll is a socket in the server: children inherit this process's raised limit.
    fd_limit = raise_fd_limit(opts.subscribers + 1024)
    # The server reads PRESENCE_* from the environment bench.presence.start_server passes on.
    os.environ["PRESENCE_LONGPOLL_HOLD"] = f"{opts.hold:g}"
    describe_machine("wrk")
    say(f"open-file limit {fd_limit}; PRESENCE_LONGPOLL_HOLD={opts.hold:g}; phases: {', '.join(opts.phases)}")
    started = time.monotonic()
    results: list[tuple[str, bool]] = []
    with workspace() as children:
        _, redis_port, rcli = start_redis(children, opts.redis_server)
        url = f"redis://127.0.0.1:{redis_port}/0"
        say(f"redis-server {rcli.info('server')['redis_version']} at {url}")
        server_a, port_a = start_server(children, "server-a", url)
        if "fanout" in opts.phases:
            results += fanout(children, opts, port_a, server_a, rcli)
        if "presence" in opts.phases:
            results += presence(opts, port_a)
        if "processes" in opts.phases:
            results += two_processes(children, opts, url, rcli, server_a, port_a)
    say(
        f"\n#### summary ({time.monotonic() - started:.0f} s in all, load average now {load_average()}; "
        "the machine may be shared with other work)"
    )
    for name, ok in results:
        say(f"  {verdict(ok)}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
