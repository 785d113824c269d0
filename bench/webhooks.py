"""The presence webhooks bench (issue 14): what webhooks cost heartbeats, and how fast events reach a receiver.

``python -m bench.webhooks`` (``--help`` for the knobs). It starts its own redis-server and two server
processes (``python -m presence_server``) on loopback, on one Redis with different key prefixes: one with
``PRESENCE_WEBHOOK_URL`` pointing at a receiver in this process, one without (the baseline, in the same
run). Each server gets the same load, one after the other: ``--users`` joins (a heartbeat of a new uuid,
spread over ``--channels`` channels), then as many refreshes (the same heartbeats again, which change
nothing), ``--concurrency`` requests at a time. Printed per server: joins and refreshes per second, and
Redis CPU per request (``INFO`` ``used_cpu_sys`` + ``used_cpu_user`` over the phase, the sender's reads
included); for the webhook server: how many events the receiver got (each once, or the figure FAILs),
from the first join to the last event, and the lag from each join's request to its event's arrival
(median, p99). Nothing here runs in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import orjson
import redis
from aiohttp import web

from bench.live import Children, free_port, pct, redis_server, say

SUB_KEY = "bench"


class Receiver:
    """The receiver, in a process of its own (so the load generator never starves it): counts each event
    and keeps when it first arrived (``time.time()``, comparable across processes); ``GET /stats``."""

    def __init__(self) -> None:
        self.seen: dict[str, list[float]] = {}  # "action channel uuid" -> [count, first arrival]

    async def handle(self, request: web.Request) -> web.Response:
        event = orjson.loads(await request.read())
        key = f"{event['action']} {event['channel']} {event.get('uuid', '')}"
        entry = self.seen.setdefault(key, [0, time.time()])
        entry[0] += 1
        return web.Response(status=204)

    async def stats(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.seen), content_type="application/json")


def receive(port: int) -> None:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/hooks", found.handle)
    app.router.add_get("/stats", found.stats)
    app.router.add_get("/health", lambda request: asyncio.sleep(0, web.Response(text="ok")))
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


async def seen_by(session: aiohttp.ClientSession, port: int) -> dict[str, list[float]]:
    async with session.get(f"http://127.0.0.1:{port}/stats") as reply:
        return orjson.loads(await reply.read())  # type: ignore[no-any-return]


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def load(port: int, users: int, channels: int, concurrency: int, sent: dict[str, float] | None) -> float:
    """Heartbeats of ``users`` uuids, ``concurrency`` at a time; returns the seconds it took."""
    base = f"http://127.0.0.1:{port}/v2/presence/sub-key/{SUB_KEY}/channel"
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(users):
        queue.put_nowait(n)

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            n = queue.get_nowait()
            uuid = f"user-{n:06d}"
            if sent is not None:
                sent[uuid] = time.time()
            async with session.get(f"{base}/room-{n % channels}/heartbeat?uuid={uuid}&heartbeat=600") as reply:
                if reply.status != 200:
                    raise RuntimeError(f"heartbeat answered {reply.status}: {await reply.text()}")
                await reply.read()

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        return time.perf_counter() - started


async def phase(
    name: str, port: int, client: redis.Redis, args: argparse.Namespace, sent: dict[str, float] | None
) -> None:
    for label, joins in (("joins", sent), ("refreshes", None)):
        cpu = redis_cpu(client)
        seconds = await load(port, args.users, args.channels, args.concurrency, joins)
        used = redis_cpu(client) - cpu
        say(
            f"  {name:>13} {label:>9}: {args.users / seconds:8.0f} /s, "
            f"Redis CPU {used / args.users * 1e6:6.1f} µs per request"
        )


async def run(args: argparse.Namespace, workdir: Path) -> int:
    children = Children(workdir)
    hook_port = free_port()
    children.start("receiver", [sys.executable, "-m", "bench.webhooks", "--receive", str(hook_port)], hook_port)
    try:
        children.running[-1].wait_up()
        with redis_server(args.redis_server, workdir, children) as client:
            url = f"redis://127.0.0.1:{client.connection_pool.connection_kwargs['port']}/0"

            def server(name: str, **env: str) -> int:
                port = free_port()
                argv = [sys.executable, "-m", "presence_server", "--port", str(port), "--redis-url", url]
                # Every join announced (no interval mode), so that each is its own webhook.
                environ = {"PRESENCE_KEY_PREFIX": f"wbench-{name}", "PRESENCE_ANNOUNCE_MAX": "1000000"}
                environ.update(PATH="/usr/bin:/bin", **env)
                children.start(name, argv, port, env=environ).wait_up()
                return port

            on = server("on", PRESENCE_WEBHOOK_URL=f"http://127.0.0.1:{hook_port}/hooks")
            off = server("off")
            say(f"{args.users} users on {args.channels} channels, {args.concurrency} requests at a time")
            await phase("webhooks off", off, client, args, None)
            sent: dict[str, float] = {}
            first = time.time()
            await phase("webhooks on", on, client, args, sent)
            outcome = await delivered(args, hook_port, sent, first)
            return await paced(args, on, hook_port) or outcome
    finally:
        children.stop_all()


async def delivered(args: argparse.Namespace, hook_port: int, sent: dict[str, float], first: float) -> int:
    expected = args.users + args.channels  # a join each, and each channel's active notice
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + 120
        seen = await seen_by(session, hook_port)
        while sum(int(n) for n, _ in seen.values()) < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            seen = await seen_by(session, hook_port)
        await asyncio.sleep(1.0)  # a duplicate, if any, would arrive meanwhile
        seen = await seen_by(session, hook_port)
    twice = sorted(key for key, (n, _) in seen.items() if n > 1)
    last = max((at for _, at in seen.values()), default=first)
    lags = []
    for n in range(args.users):
        uuid = f"user-{n:06d}"
        arrival = seen.get(f"join room-{n % args.channels} {uuid}")
        if arrival is not None:
            lags.append((arrival[1] - sent[uuid]) * 1000)
    ok = len(seen) == expected and not twice
    say(
        f"  delivered: {len(seen)} of {expected} events, {len(twice)} more than once: {'PASS' if ok else 'FAIL'}; "
        f"the last {last - first:.2f} s after the first join"
    )
    if twice and args.verbose:
        say(f"  more than once: {twice[:10]}")
    if lags:
        median, p99 = statistics.median(lags), pct(lags, 0.99)
        say(f"  lag, join request to its webhook: median {median:.1f} ms, p99 {p99:.1f} ms")
    return 0 if ok else 1


async def paced(args: argparse.Namespace, port: int, hook_port: int) -> int:
    """Joins one at a time, 20 a second (a server with time to spare): the lag a receiver usually sees."""
    sent: dict[str, float] = {}
    base = f"http://127.0.0.1:{port}/v2/presence/sub-key/{SUB_KEY}/channel/paced/heartbeat"
    async with aiohttp.ClientSession() as session:
        for n in range(args.paced):
            uuid = f"paced-{n:04d}"
            sent[uuid] = time.time()
            async with session.get(f"{base}?uuid={uuid}&heartbeat=600") as reply:
                await reply.read()
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        seen = await seen_by(session, hook_port)
    lags = [(seen[f"join paced {u}"][1] - at) * 1000 for u, at in sent.items() if f"join paced {u}" in seen]
    if len(lags) < args.paced:
        say(f"  paced joins: {len(lags)} of {args.paced} webhooks arrived: FAIL")
        return 1
    median, p99 = statistics.median(lags), pct(lags, 0.99)
    say(f"  lag, {args.paced} joins one at a time (20/s): median {median:.1f} ms, p99 {p99:.1f} ms")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.webhooks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=5000, help="joins (then refreshes) per server (default 5000)")
    parser.add_argument("--channels", type=int, default=20, help="channels the users spread over (default 20)")
    parser.add_argument("--concurrency", type=int, default=50, help="requests in flight (default 50)")
    parser.add_argument("--paced", type=int, default=100, help="joins sent one at a time for the lag (default 100)")
    parser.add_argument("--verbose", action="store_true", help="list events received more than once")
    parser.add_argument("--redis-server", default="redis-server", help="the redis-server binary")
    parser.add_argument("--receive", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.receive:
        receive(args.receive)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-webhooks-") as workdir, contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run(args, Path(workdir)))
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
