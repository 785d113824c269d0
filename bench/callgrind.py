"""Instructions per request of one server process under callgrind: stable where wall times are not.

``python -m bench.callgrind --phase heartbeat|wake --target server|baseline|deferred [--tree PATH]``

The process runs under ``valgrind --tool=callgrind --instr-atstart=no`` (apt-get install -y valgrind):
uninstrumented until the load is warm, then instrumented, its counts zeroed, the measured load sent,
and the counts dumped. Only that process is counted (not Redis, not the load generator, not the
kernel), so the figure is the Python (and C extension) cost of a request, the same from one run to the
next on a busy machine. The baseline is bench/baseline.py, the minimal aiohttp app of bench.live;
``deferred`` is the same app with its heartbeats waiting for a batch resolved at the next loop
iteration (``--defer``): the floor of a handler that waits for a reply, as the server's do.

- **heartbeat**: ``--users`` uuids on ``--channels`` channels made present first (through the store,
  from this process), then heartbeats as bench/heartbeat.lua walks them, ``--connections`` keep-alive
  connections at once; instructions over ``--requests`` heartbeats after as many unmeasured.
- **wake**: ``--subscribers`` connections each hold a poll on one channel; a publish wakes them and the
  figure is the instructions from just before the publish to the last answer, per woken poll, no
  re-polls in the window (the part of a fan-out that the last delivery waits for). ``--rounds`` rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson

from bench.live import free_port

ROOT = Path(__file__).resolve().parent.parent
SUB_KEY = "bench"
TOTALS = re.compile(r"^(?:summary|totals):\s*(\d+)", re.MULTILINE)
HELD = re.compile(rb"^presence_longpolls_held (\S+)$", re.MULTILINE)
LENGTH = re.compile(rb"(?i)content-length: *(\d+)")


def wait_listening(port: int, proc: subprocess.Popen[bytes], seconds: float, failure: Callable[[], str]) -> None:
    """Until something accepts on ``port``; ``failure()`` is the exit message should ``proc`` end first
    or ``seconds`` pass (a process under valgrind takes a while to start)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(failure()) from None
            time.sleep(0.3)


def uuid_of(n: int) -> str:
    return f"{n:08x}-0000-4000-8000-{n:012x}"  # as bench/heartbeat.lua builds it


class Conn:
    """One keep-alive connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Conn:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def get(self, path: str) -> tuple[bytes, bytes]:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        found = LENGTH.search(head)
        return head, await self.reader.readexactly(int(found.group(1)) if found else 0)


class Server:
    """The process under callgrind, and the control of its counts."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, out: Path) -> None:
        self.proc, self.port, self.out = proc, port, out

    def control(self, *flags: str) -> None:
        subprocess.run(["callgrind_control", *flags, str(self.proc.pid)], check=True, capture_output=True)

    def dumped(self) -> list[int]:
        """Instructions of each dump so far, in order."""
        time.sleep(1)  # the dump is written by the process itself
        dumps = sorted(self.out.parent.glob(self.out.name + ".*"), key=lambda f: int(f.suffix[1:]))
        return [int(m.group(1)) for f in dumps if (m := TOTALS.search(f.read_text(errors="replace")))]

    async def held(self, expected: int) -> None:
        """Until /metrics shows ``expected`` polls held, asked once a second (each scrape is counted too)."""
        conn = await Conn.open(self.port)
        try:
            for _ in range(600):
                found = HELD.search((await conn.get("/metrics"))[1])
                if found is not None and int(float(found[1])) == expected:
                    return
                await asyncio.sleep(1.0)
            raise RuntimeError(f"{expected} polls not held after 600 s")
        finally:
            conn.writer.close()


@contextmanager
def processes(args: argparse.Namespace) -> Iterator[tuple[Server, str]]:
    work = Path(tempfile.mkdtemp(prefix="bench-callgrind-"))
    redis_port, port = free_port(), free_port()
    argv = ["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no", "--dir", str(work)]
    started = [subprocess.Popen(argv, stdout=subprocess.DEVNULL)]
    try:
        url = f"redis://127.0.0.1:{redis_port}/0"
        if args.target == "server":
            cmd = ["-m", "presence_server", "--host", "127.0.0.1", "--port", str(port), "--redis-url", url]
        else:
            cmd = ["-m", "bench.baseline", "--port", str(port), "--hold", "280"]
            cmd += ["--defer"] if args.target == "deferred" else []
        out = work / "callgrind.out"
        valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
        tree = str(Path(args.tree).resolve())
        env = dict(os.environ, PYTHONPATH=tree, PRESENCE_KEY_PREFIX="cg", PRESENCE_LONGPOLL_HOLD="280")
        with (work / "server.log").open("wb") as log:
            proc = subprocess.Popen([*valgrind, sys.executable, *cmd], cwd=tree, env=env, stdout=log, stderr=log)
        started.append(proc)
        wait_listening(port, proc, 300, lambda: (work / "server.log").read_text()[-3000:])
        yield Server(proc, port, out), url
    finally:
        for child in reversed(started):
            child.terminate()
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()


async def populate(url: str, users: int, channels: int) -> None:
    """The uuids made present through the store (the tree of this checkout), 64 calls at a time."""
    import redis.asyncio as aioredis

    from presence_server.store import PresenceStore

    client = aioredis.Redis.from_url(url, decode_responses=True)
    store = PresenceStore(client, prefix="cg")
    pending, now = iter(range(users)), time.time()

    async def worker() -> None:
        for n in pending:
            await store.heartbeat(SUB_KEY, uuid_of(n), [f"room-{n % channels}"], now=now, timeout=300.0)

    try:
        await asyncio.gather(*(worker() for _ in range(64)))
    finally:
        await store.aclose()
        await client.aclose()


async def heartbeats(args: argparse.Namespace, port: int, first: int, count: int) -> None:
    pending = iter(range(first, first + count))

    async def worker() -> None:
        conn = await Conn.open(port)
        for i in pending:
            u = (i * 7919) % args.users
            path = f"/v2/presence/sub-key/{SUB_KEY}/channel/room-{u % args.channels}/heartbeat"
            head, body = await conn.get(f"{path}?heartbeat=300&uuid={uuid_of(u)}")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"a heartbeat answered {head[:12]!r}: {body[:200]!r}")
        conn.writer.close()

    await asyncio.gather(*(worker() for _ in range(args.connections)))


async def heartbeat_phase(args: argparse.Namespace, server: Server) -> list[int]:
    await heartbeats(args, server.port, 0, args.requests)  # warm, uninstrumented
    server.control("-i", "on")
    await heartbeats(args, server.port, args.requests, args.requests)  # warm, instrumented
    server.control("-z")
    await heartbeats(args, server.port, 2 * args.requests, args.requests)
    server.control("-d")
    return [total // args.requests for total in server.dumped()[-1:]]


async def wake_phase(args: argparse.Namespace, server: Server) -> list[int]:
    subscribers = [await Conn.open(server.port) for _ in range(args.subscribers)]
    base = f"/v2/subscribe/{SUB_KEY}/fanout/0"
    query = [f"uuid=cg-{i:08d}-0000-4000-8000-000000000000&heartbeat=300" for i in range(args.subscribers)]
    cursors = [
        orjson.loads((await s.get(f"{base}?{q}&tt=0"))[1])["t"]["t"] for s, q in zip(subscribers, query, strict=True)
    ]
    publisher = await Conn.open(server.port)
    figures = []
    for number in range(2 + args.rounds):
        measured = number >= 2  # round 0 uninstrumented, round 1 instrumented: both warm
        polls = [
            asyncio.ensure_future(s.get(f"{base}?{q}&tt={c}"))
            for s, q, c in zip(subscribers, query, cursors, strict=True)
        ]
        await server.held(args.subscribers)
        await asyncio.sleep(args.settle)  # a poll is counted held before its first read is done
        if number == 1:
            server.control("-i", "on")
        if measured:
            server.control("-z")
        message = urllib.parse.quote(orjson.dumps({"r": number}).decode(), safe="")
        await publisher.get(f"/publish/bench-pub/{SUB_KEY}/0/fanout/0/{message}?uuid=cg-publisher")
        answers = [orjson.loads(body) for _, body in await asyncio.gather(*polls)]
        if measured:
            server.control("-d")
            figures.append(server.dumped()[-1] // args.subscribers)
        if not all(answer["m"] for answer in answers):
            raise RuntimeError(f"round {number}: an answer without the message")
        cursors = [answer["t"]["t"] for answer in answers]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.callgrind", description=__doc__.splitlines()[0])
    parser.add_argument("--phase", choices=("heartbeat", "wake"), default="heartbeat")
    parser.add_argument("--target", choices=("server", "baseline", "deferred"), default="server")
    parser.add_argument("--tree", default=str(ROOT), help="the checkout whose server runs (default this one)")
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--requests", type=int, default=3000, help="heartbeats measured (and twice as many before)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--subscribers", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=8.0, help="s after every poll is held (wake phase)")
    args = parser.parse_args()
    with processes(args) as (server, url):
        if args.phase == "heartbeat":
            if args.target == "server":
                asyncio.run(populate(url, args.users, args.channels))
            figures = asyncio.run(heartbeat_phase(args, server))
            what = f"instructions per heartbeat ({args.users} uuids, {args.channels} channels)"
        else:
            figures = asyncio.run(wake_phase(args, server))
            what = f"instructions per woken poll, publish to the last answer ({args.subscribers} polls)"
    print(f"{args.target} ({args.tree}): {what}: {', '.join(f'{n:,}' for n in figures)}")


if __name__ == "__main__":
    main()
