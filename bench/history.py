"""The history bench (issue 12): fetch latency from a channel of 100,000 messages, message counts over
100 channels, publish throughput with storage on against storage off, and Redis bytes per stored
message, each figure beside its target (PASS/FAIL) and, where one applies, a baseline measured in the
same run.

``python -m bench.history`` (``--help`` for the knobs; bench/README.md says what each figure means).
It starts its own redis-server and server processes (``python -m presence_server``) on loopback: one
with history on that serves the reads, then two fresh ones for the publish figure, one with history
on (the default retention) and one with ``PRESENCE_HISTORY_RETENTION=0``; it stops them all on the
way out. The channels read are filled in this process through the store's own
``publish`` (the server's code, on the same Redis and key prefix), many calls at once. Nothing here
runs in CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis

from bench.live import Child, Children, Conn, Figure, free_port, given_options, knob, pct, redis_server, say
from presence_server.store import PresenceStore, open_redis
from presence_server.store.fields import MESSAGE_EXPIRES, MESSAGE_KIND, MESSAGE_LIVE_ONLY
from presence_server.store.history import MAX_COUNT, Walk

ROOT = Path(__file__).resolve().parent.parent
PUB_KEY, SUB_KEY = "bench-pub", "bench"
# Each server's PRESENCE_KEY_PREFIX: the reads server's (which the bench fills), and the publish pair's.
STORED_PREFIX, ON_PREFIX, OFF_PREFIX = "hbench", "hbench-on", "hbench-off"
RETENTION = 604_800.0  # the server's default, which the history-on server runs with
BIG = "big"  # the channel of --messages messages
PUBLISHER = "4f1b3c2e-9d8a-4e6f-b5a7-0c1d2e3f4a5b"  # a uuid as an SDK sends it
# The targets (issue 12).
FETCH_MEDIAN_MS = 2.0
COUNTS_MEDIAN_MS = 5.0
PUBLISH_RATIO = 0.9
BYTES_PER_MESSAGE = 250.0


def message(n: int, size: int = 100) -> str:
    """JSON text of exactly ``size`` bytes (at least 20), different for every ``n``."""
    head = f'{{"n":{n},"text":"'
    return head + "x" * (size - len(head) - 2) + '"}'


def median_ms(seconds: Sequence[float]) -> float:
    return 1000 * statistics.median(seconds)


def spread(seconds: Sequence[float]) -> str:
    """Median, p90 and p99 of durations in seconds, as milliseconds."""
    return (
        f"median {median_ms(seconds):.3f} ms, p90 {1000 * pct(seconds, 0.9):.3f}, "
        f"p99 {1000 * pct(seconds, 0.99):.3f} ({len(seconds)} samples)"
    )


@dataclasses.dataclass
class Bench:
    opts: Options
    children: Children
    rcli: redis.Redis
    url: str
    stored: Child | None = None  # history on: the reads are served by this one

    def server(self, name: str, prefix: str, retention: float | None) -> Child:
        port = free_port()
        argv = [sys.executable, "-m", "presence_server", "--host", "127.0.0.1", "--port", str(port)]
        env = dict(os.environ, PYTHONPATH=str(ROOT), PRESENCE_KEY_PREFIX=prefix)
        if retention is not None:
            env["PRESENCE_HISTORY_RETENTION"] = f"{retention:g}"
        return self.children.start(name, [*argv, "--redis-url", self.url], port, env=env).wait_up()

    def redis_cpu(self) -> float:
        info = self.rcli.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def redis_usec(self) -> Counter[str]:
        """Redis's time so far per command (INFO commandstats: the commands inside scripts too), µs."""
        stats = self.rcli.info("commandstats")
        return Counter({k.removeprefix("cmdstat_"): int(v["usec"]) for k, v in stats.items() if "info" not in k})


# -- filling the channels, in this process through the store ------------------------------------------


def open_store(url: str) -> PresenceStore:
    """A store configured as the history-on server's is (its key prefix, the default retention)."""
    return PresenceStore(open_redis(url), prefix=STORED_PREFIX, history_retention=RETENTION)


async def fill(store: PresenceStore, channels: Sequence[str], per_channel: int, concurrency: int) -> list[str]:
    """Publish ``per_channel`` messages of 100 bytes to each channel, round by round (every channel
    gets its n-th message before any gets its n+1-th), ``concurrency`` calls in flight; returns the
    last timetoken of each round."""
    ends: list[str] = []
    jobs = [(r, ch) for r in range(per_channel) for ch in channels]
    for start in range(0, len(jobs), concurrency):
        batch = jobs[start : start + concurrency]
        tts = await asyncio.gather(
            *(store.publish(SUB_KEY, ch, message(r), now=time.time(), publisher=PUBLISHER) for r, ch in batch)
        )
        for (r, _), tt in zip(batch, tts, strict=True):
            if r == len(ends):
                ends.append(tt)
            else:
                ends[r] = max(ends[r], tt)
    return ends


# -- latency over one keep-alive connection -----------------------------------------------------------


async def timed(call: Callable[[], Awaitable[Any]], samples: int, warmup: int = 20) -> list[float]:
    for _ in range(warmup):
        await call()
    took = []
    for _ in range(samples):
        started = time.perf_counter()
        await call()
        took.append(time.perf_counter() - started)
    return took


def getter(conn: Conn, path: str, check: Callable[[bytes], bool]) -> Callable[[], Awaitable[None]]:
    async def get() -> None:
        status, body, _ = await conn.get(path)
        if status != 200 or not check(body):
            raise RuntimeError(f"GET {path} answered {status}: {body[:300]!r}")

    return get


def fetched(expected: int) -> Callable[[bytes], bool]:
    def check(body: bytes) -> bool:
        return sum(len(items) for items in orjson.loads(body)["channels"].values()) == expected

    return check


def v2_fetched(expected: int) -> Callable[[bytes], bool]:
    def check(body: bytes) -> bool:
        return len(orjson.loads(body)[0]) == expected

    return check


def counted(expected: dict[str, int]) -> Callable[[bytes], bool]:
    def check(body: bytes) -> bool:
        return bool(orjson.loads(body)["channels"] == expected)

    return check


async def fetch_phase(bench: Bench, store: PresenceStore) -> list[Figure]:
    o, server = bench.opts, bench.stored
    assert server is not None
    say(f"\n### fetch_messages: {o.fetch} messages from a channel of {o.messages}, through {server.name}")
    started = time.perf_counter()
    await fill(store, [BIG], o.messages, o.concurrency)
    filled = time.perf_counter() - started
    length = int(bench.rcli.xlen(store.keys(SUB_KEY).messages(BIG)))
    say(f"  filled through PresenceStore.publish in this process: {o.messages / filled:.0f} messages/s, XLEN {length}")
    if length != o.messages:
        raise RuntimeError(f"the channel holds {length} messages, not {o.messages}: raise PRESENCE_HISTORY_MAX?")
    conn = await Conn.open(server.port)
    base = f"/v3/history/sub-key/{SUB_KEY}/channel/{BIG}"
    v3 = await timed(getter(conn, f"{base}?max={o.fetch}&include_uuid=true", fetched(o.fetch)), o.samples)
    v2_path = f"/v2/history/sub-key/{SUB_KEY}/channel/{BIG}?count={o.fetch}&include_token=true"
    v2 = await timed(getter(conn, v2_path, v2_fetched(o.fetch)), o.samples)
    floor = await timed(getter(conn, "/time/0", lambda body: body.startswith(b"[")), o.samples)
    conn.writer.close()
    key, now = store.keys(SUB_KEY).messages(BIG), time.time()
    call = await timed(lambda: store.history(SUB_KEY, BIG, Walk(), o.fetch, now=now), o.samples)
    raw = await timed(lambda: store.redis.xrevrange(key, count=o.fetch + 16), o.samples)
    say(f"  v3 fetch   GET {base}?max={o.fetch}: {spread(v3)}")
    say(f"  v2 history GET ...?count={o.fetch}: {spread(v2)}")
    say(f"  baselines: GET /time/0 on the same connection {spread(floor)}")
    say(f"             store.history() in this process {spread(call)}")
    say(f"             XREVRANGE COUNT {o.fetch + 16} from redis-py in this process {spread(raw)}")
    target = f"median < {FETCH_MEDIAN_MS:g} ms"
    return [
        Figure(f"fetch_messages max={o.fetch} from {o.messages} (v3)", target, {"HTTP": pass_ms(v3, FETCH_MEDIAN_MS)}),
        Figure(f"history count={o.fetch} from {o.messages} (v2)", target, {"HTTP": pass_ms(v2, FETCH_MEDIAN_MS)}),
    ]


def pass_ms(seconds: Sequence[float], limit_ms: float) -> tuple[str, bool]:
    return spread(seconds), median_ms(seconds) < limit_ms


# A prototype of counting inside Redis (not the server's code: the proposal the breakdown measures).
# KEYS: the logs; ARGV: now (ms), the cap, the field names of kind, live-only and expiry, then each
# log's lowest entry id (XRANGE syntax). Counts what history shows, as History._shown does: no kind,
# not live-only, not past its own expiry.
FILTERED = (MESSAGE_KIND, MESSAGE_LIVE_ONLY, MESSAGE_EXPIRES)
COUNT_LUA = """
local now_ms, cap, out = tonumber(ARGV[1]), tonumber(ARGV[2]), {}
local kind, live, expires = ARGV[3], ARGV[4], ARGV[5]
for i, key in ipairs(KEYS) do
  local n = 0
  for _, entry in ipairs(redis.call('XRANGE', key, ARGV[5 + i], '+', 'COUNT', cap)) do
    local fields, shown = entry[2], true
    for j = 1, #fields, 2 do
      local name = fields[j]
      if name == kind or name == live or (name == expires and tonumber(fields[j + 1]) <= now_ms) then
        shown = false
        break
      end
    end
    if shown then n = n + 1 end
  end
  out[i] = n
end
return out
"""


async def counts_costs(store: PresenceStore, channels: Sequence[str], tt: str, samples: int) -> None:
    """Where a message_counts call's time goes: the store call alone, and three ways to read the same."""
    keys, low = [store.keys(SUB_KEY).messages(ch) for ch in channels], f"({tt}-0"
    script = store.redis.register_script(COUNT_LUA)
    now = time.time()

    async def sequential() -> None:
        for key in keys:
            await store.redis.xrange(key, min=low, max="+", count=1000)

    async def pipelined() -> None:
        async with store.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.xrange(key, min=low, max="+", count=1000)
            await pipe.execute()

    async def in_redis() -> None:
        await script(keys=keys, args=[int(now * 1000), MAX_COUNT, *FILTERED, *[low] * len(keys)])

    async def xlens() -> None:
        async with store.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.xlen(key)
            await pipe.execute()

    after = [(ch, int(tt)) for ch in channels]
    ways: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("store.history_counts() in this process", lambda: store.history_counts(SUB_KEY, after, now=now)),
        (f"{len(keys)} XRANGE one after another (what it sends)", sequential),
        (f"{len(keys)} XRANGE in one pipeline", pipelined),
        ("one Lua script counting in Redis (prototype)", in_redis),
        (f"baseline: {len(keys)} XLEN in one pipeline", xlens),
    ]
    for label, way in ways:
        say(f"    {label:<48} {spread(await timed(way, samples, warmup=3))}")


async def counts_phase(bench: Bench, store: PresenceStore) -> list[Figure]:
    o, server = bench.opts, bench.stored
    assert server is not None
    channels = [f"count-{n}" for n in range(o.count_channels)]
    say(f"\n### message_counts over {o.count_channels} channels of {o.count_held} messages each")
    ends = await fill(store, channels, o.count_held, o.concurrency)
    unread = min(o.count_unread, o.count_held)
    path = f"/v3/history/sub-key/{SUB_KEY}/message-counts/{','.join(channels)}?timetoken="
    conn = await Conn.open(server.port)
    figures = Figure(f"message_counts over {o.count_channels} channels", f"median < {COUNTS_MEDIAN_MS:g} ms")
    cases = [(f"all {o.count_held} newer than timetoken", "0", o.count_held)]
    if unread < o.count_held:
        cases.append((f"{unread} of {o.count_held} newer", ends[o.count_held - unread - 1], unread))
    for label, tt, expected in cases:
        check = counted(dict.fromkeys(channels, expected))
        took = await timed(getter(conn, path + tt, check), o.count_samples, warmup=3)
        say(f"  {label}, HTTP: {spread(took)}")
        figures.values[label] = pass_ms(took, COUNTS_MEDIAN_MS)
        await counts_costs(store, channels, tt, max(10, o.count_samples // 4))
    conn.writer.close()
    return [figures]


# -- publish throughput with wrk ------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    rps: float
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    server_cpu: float
    redis_cpu: float
    redis_usec: Counter[str] = dataclasses.field(default_factory=Counter)  # per command, scripts' included

    def line(self, label: str) -> str:
        return (
            f"    {label:<22} {self.rps:7.0f} req/s, {self.errors} errors, p50 {self.p50_ms:.2f} ms, p99 "
            f"{self.p99_ms:.2f} ms; CPU per publish: server {1e6 * self.server_cpu / max(1, self.requests):.0f} µs, "
            f"redis {1e6 * self.redis_cpu / max(1, self.requests):.0f} µs"
        )


def _ms(text: str) -> float:
    found = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    return float(found.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)] if found else 0.0


def wrk(bench: Bench, server: Child, seconds: float) -> Run:
    o = bench.opts
    body = urllib.parse.quote(message(0, o.message_bytes), safe="")
    argv = ["wrk", "-t1", f"-c{o.connections}", f"-d{max(1, round(seconds))}s", "--timeout", "5s", "--latency"]
    argv += ["-s", "bench/publish.lua", f"http://127.0.0.1:{server.port}", "--", PUB_KEY, SUB_KEY]
    argv += [str(o.publish_channels), body]
    cpu, redis_cpu, usec = server.cpu(), bench.redis_cpu(), bench.redis_usec()
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False).stdout
    cpu, redis_cpu, usec = server.cpu() - cpu, bench.redis_cpu() - redis_cpu, bench.redis_usec() - usec
    done = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m),", out)
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.MULTILINE))
    if not done or len(latency) != 2:
        raise RuntimeError(f"wrk gave no report:\n{out}")
    elapsed = float(done.group(2)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[done.group(3)]
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors += sum(int(n) for n in sockets.groups()) if sockets else 0
    requests = int(done.group(1))
    return Run(requests / elapsed, requests, errors, _ms(latency["50"]), _ms(latency["99"]), cpu, redis_cpu, usec)


def publish_phase(bench: Bench) -> list[Figure]:
    """Two fresh servers (neither served the reads), history on and off; with --control both off."""
    o = bench.opts
    on = bench.server("server-history-on", ON_PREFIX, 0.0 if o.control else None)
    off = bench.server("server-history-off", OFF_PREFIX, 0.0)
    what = "CONTROL RUN, both with PRESENCE_HISTORY_RETENTION=0" if o.control else "history on / retention 0"
    say(
        f"\n### publish throughput: {on.name} / {off.name} ({what}), wrk -t1 -c{o.connections}, "
        f"GET publishes of {o.message_bytes} bytes of JSON to {o.publish_channels} channels"
    )
    for server in (on, off):
        wrk(bench, server, o.warmup)
    ratios, errors = [], 0
    cost: dict[str, list[float]] = {on.name: [], off.name: []}
    requests: Counter[str] = Counter()
    usec: dict[str, Counter[str]] = {on.name: Counter(), off.name: Counter()}
    for number in range(o.rounds):
        pair = (on, off) if number % 2 == 0 else (off, on)
        runs = {server.name: wrk(bench, server, o.seconds) for server in pair}
        ratio = runs[on.name].rps / max(1.0, runs[off.name].rps)
        ratios.append(ratio)
        errors += sum(run.errors for run in runs.values())
        say(f"  round {number + 1}: on / off {ratio:.2f}")
        for name, run in runs.items():
            say(run.line(name))
            cost[name].append(1e6 * (run.server_cpu + run.redis_cpu) / max(1, run.requests))
            requests[name] += run.requests
            usec[name] += run.redis_usec
    say("  Redis time per publish by command, every round (commandstats; a script's commands beside it):")
    for name in (on.name, off.name):
        top = ", ".join(f"{cmd} {n / requests[name]:.1f}" for cmd, n in usec[name].most_common(8))
        say(f"    {name:<22} {top} (µs)")
    median = statistics.median(ratios)
    text = f"median ratio {median:.2f} (rounds {', '.join(f'{r:.2f}' for r in ratios)}), {errors} errors"
    text += f"; CPU per publish (server + redis) on {statistics.median(cost[on.name]):.0f} µs"
    text += f", off {statistics.median(cost[off.name]):.0f} µs"
    target = f"median ratio ≥ {PUBLISH_RATIO:g}, no errors"
    bench.children.stop(on, off)
    return [
        Figure(
            "publish throughput, history on / off" + (" (CONTROL: both off)" if o.control else ""),
            target,
            {"wrk": (text, median >= PUBLISH_RATIO and not errors)},
        )
    ]


def memory_phase(bench: Bench, store: PresenceStore) -> list[Figure]:
    key = store.keys(SUB_KEY).messages(BIG)
    used, length = int(bench.rcli.memory_usage(key, samples=0) or 0), int(bench.rcli.xlen(key))
    info = bench.rcli.xinfo_stream(key)
    per = used / max(1, length)
    sample = bench.rcli.xrevrange(key, count=1)
    say(f"\n### memory: MEMORY USAGE {key} SAMPLES 0 = {used} B over XLEN {length}: {per:.1f} B per message")
    say(f"  one entry as stored: {sample[0] if sample else None}")
    nodes = int(info.get("radix-tree-keys") or 1)
    say(f"  stream nodes (radix tree keys): {nodes}, {length / nodes:.1f} entries each")
    target = f"< {BYTES_PER_MESSAGE:g} B"
    return [
        Figure(
            "Redis bytes per stored 100-byte message",
            target,
            {"MEMORY USAGE": (f"{per:.1f} B", per < BYTES_PER_MESSAGE)},
        )
    ]


# -- main ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Options:
    messages: int = knob(100_000, "messages in the channel fetched from (at most PRESENCE_HISTORY_MAX, 100,000)")
    fetch: int = knob(100, "messages per fetch (max=, count=; 100 is the cap)")
    samples: int = knob(2000, "latency samples per figure, one request at a time on a keep-alive connection")
    count_channels: int = knob(100, "channels of message_counts (100 is the cap)")
    count_held: int = knob(100, "messages each of them holds")
    count_samples: int = knob(100, "latency samples per message_counts case (its breakdown takes a quarter)")
    count_unread: int = knob(10, "messages newer than the timetoken in the second counts case")
    concurrency: int = knob(256, "store.publish calls in flight while filling")
    rounds: int = knob(5, "publish rounds of each server, in alternating order")
    seconds: float = knob(5.0, "each publish run, s")
    warmup: float = knob(2.0, "unmeasured publish run of each server first, s")
    connections: int = knob(32, "wrk connections")
    publish_channels: int = knob(10, "channels wrk publishes to")
    message_bytes: int = knob(100, "bytes of JSON per published message")
    control: int = knob(0, "1: an A/A run, both publish servers with history off (the ratio's own noise)")
    redis_server: str = knob("redis-server", "the redis-server binary")


def parse_args(argv: Sequence[str] | None) -> Options:
    parser, given = given_options("python -m bench.history", Options, argv)
    opts = Options(**given)
    counts = [
        opts.messages,
        opts.samples,
        opts.count_samples,
        opts.count_held,
        opts.concurrency,
        opts.rounds,
        opts.connections,
    ]
    if min(counts) < 1 or not 1 <= opts.fetch <= 100 or not 1 <= opts.count_channels <= 100:
        parser.error("counts must be positive; --fetch and --count-channels at most 100")
    if opts.fetch > opts.messages or opts.message_bytes < 20 or opts.publish_channels < 1:
        parser.error("--fetch at most --messages, --message-bytes at least 20, --publish-channels positive")
    return opts


async def reads(bench: Bench) -> list[Figure]:
    store = open_store(bench.url)
    try:
        figures = await fetch_phase(bench, store)
        figures += await counts_phase(bench, store)
        return figures + memory_phase(bench, store)
    finally:
        await store.aclose()
        await store.redis.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="history-bench-") as workdir, contextlib.ExitStack() as stack:
        children = Children(Path(workdir))
        stack.callback(children.stop_all)
        rcli = stack.enter_context(redis_server(opts.redis_server, Path(workdir), children))
        url = f"redis://127.0.0.1:{rcli.connection_pool.connection_kwargs['port']}/0"
        bench = Bench(opts, children, rcli, url)
        bench.stored = bench.server("server-reads", STORED_PREFIX, None)
        say(
            f"machine: {platform.platform()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} "
            f"(other work skews every figure); Python {platform.python_version()}, aiohttp {aiohttp.__version__}, "
            f"redis-py {redis.__version__}, redis-server {rcli.info('server')['redis_version']}; {url}"
        )
        figures = asyncio.run(reads(bench))
        bench.children.stop(bench.stored)
        figures += publish_phase(bench)
    say(f"\n#### summary ({time.monotonic() - started:.0f} s, load average now {os.getloadavg()[0]:.2f})")
    for figure in figures:
        say(f"  {figure.name} (target {figure.target})")
        for label, (text, ok) in figure.values.items():
            say(f"    {'PASS' if ok else 'FAIL'}  {label:<30} {text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
