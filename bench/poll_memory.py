"""Memory per held long-poll: the server's beside the minimal aiohttp long-poll's (bench/baseline.py).

``python -m bench.poll_memory [--polls N]``. Each app runs in this process on a port of its own (the
server on a redis-server this command starts), ``--polls`` keep-alive connections handshake on one
channel, and then poll with the cursor they got; once every poll is held, tracemalloc's growth over
that last step, divided by the polls, is what one held poll keeps alive in Python objects: its
request, its coroutines and what it waits on. The connections and the handshakes come before the
first snapshot, so they are not counted. Printed for both apps with the largest allocation sites.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import re
import socket
import subprocess
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
from aiohttp import web

from bench.baseline import STATE
from bench.baseline import create_app as create_baseline
from bench.live import free_port
from presence_server.app import RUNNER_OPTIONS, create_app
from presence_server.config import Settings
from presence_server.context import LONGPOLLS

LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")
WAVE = 50  # polls sent at once
POLL = "/v2/subscribe/bench/fanout/0?uuid=poll-{:08d}-0000-4000-8000-000000000000&heartbeat=300&tt={}"


async def get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> bytes:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    found = LENGTH.search(head)
    return await reader.readexactly(int(found.group(1)) if found else 0)


def where(trace: tracemalloc.Traceback) -> str:
    """The allocating line, and the innermost line of this project's code above it."""
    frames = list(trace)
    text = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}"
    own = next((f for f in reversed(frames) if "presence_server" in f.filename or "baseline" in f.filename), None)
    if own is not None and own is not frames[-1]:
        text += f" (from {Path(own.filename).parent.name}/{Path(own.filename).name}:{own.lineno})"
    return text


async def measure(label: str, app: web.Application, held: Callable[[], int], polls: int, top: int) -> float:
    runner = web.AppRunner(app, access_log=None, **RUNNER_OPTIONS)  # type: ignore[arg-type]
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(polls)]
    try:
        cursors = [orjson.loads(await get(r, w, POLL.format(i, 0)))["t"]["t"] for i, (r, w) in enumerate(conns)]
        await asyncio.sleep(0.5)
        gc.collect()
        tracemalloc.start(16)
        before = tracemalloc.take_snapshot()
        # In waves: a thousand polls at once would queue for the Redis pool's connections, slowed down
        # as everything is under tracemalloc, until some time out.
        for first in range(0, polls, WAVE):
            for i in range(first, min(first + WAVE, polls)):
                conns[i][1].write(f"GET {POLL.format(i, cursors[i])} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
            for _ in range(600):
                await asyncio.sleep(0.02)
                if held() >= min(first + WAVE, polls):
                    break
            else:
                raise RuntimeError(f"{label}: {held()} of {min(first + WAVE, polls)} polls held after 12 s")
        await asyncio.sleep(0.5)  # a poll is counted held before its first read is done
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        sizes: Counter[str] = Counter()
        for stat in after.compare_to(before, "traceback"):
            sizes[where(stat.traceback)] += stat.size_diff
        per_poll = sum(sizes.values()) / polls
        print(f"{label}: {per_poll:,.0f} B per held poll ({polls} held)")
        for site, size in sizes.most_common(top):
            print(f"  {size / polls:7,.0f} B  {site}")
        return per_poll
    finally:
        for _, writer in conns:
            writer.close()
        await runner.shutdown()
        await runner.cleanup()


async def compare(redis_url: str, args: argparse.Namespace) -> None:
    server = create_app(Settings.from_env(redis_url=redis_url, key_prefix="pm"))
    ours = await measure("server", server, lambda: server[LONGPOLLS].waiting, args.polls, args.top)
    baseline = create_baseline(280.0)
    base = await measure("minimal aiohttp long-poll", baseline, lambda: baseline[STATE].held, args.polls, args.top)
    print(f"server / minimal aiohttp long-poll: x{ours / base:.2f}")


def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-poll-memory-") as work:
        port = free_port()
        argv = ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", work]
        redis = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        try:
            for _ in range(100):  # until it listens
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            asyncio.run(compare(f"redis://127.0.0.1:{port}/0", args))
        finally:
            redis.terminate()
            redis.wait(10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.poll_memory", description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=1000, help="held polls (each a connection: mind ulimit -n)")
    parser.add_argument("--top", type=int, default=12, help="allocation sites printed per app")
    main(parser.parse_args())
