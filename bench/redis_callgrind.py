"""Instructions Redis executes per plain refresh, counted by callgrind: stable where CPU times are not.

``python -m bench.redis_callgrind [--tree PATH ...] [--users N] [--channels N] [--batch B] [--rounds R] [--held]``

A redis-server of its own runs under ``valgrind --tool=callgrind --instr-atstart=no`` (apt-get install
-y valgrind). The store of each tree (this checkout unless ``--tree`` names others, e.g. a ``git worktree``
of another revision) makes ``--users`` uuids present on ``--channels`` channels, uninstrumented; then
Redis is instrumented and the store sends ``--rounds`` rounds of ``--batch`` heartbeats at once, each a
refresh of a present uuid that sends its presence timeout (``--timeout``; one renew.lua call per
round, as a busy server process sends them; with ``--held`` they send none, and go to refresh.lua).
The figure is Redis's instructions over those refreshes, per refresh: the script, its commands, and
reading the requests and writing the replies. One Redis per tree, the trees in turn.

The uuids join 0.5 ms apart, as heartbeats arrive (about two per ms), and each round is one ms: a
skiplist whose members all share one score compares their names at every step of every update,
which no live keyset does. ``--redis-server`` runs another binary (one built with symbols, for
``callgrind_annotate``: Debian's is stripped).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOTALS = re.compile(r"^(?:summary|totals):\s*(\d+)", re.MULTILINE)


def uuid_of(n: int) -> str:
    return f"{n:08x}-0000-4000-8000-{n:012x}"


def control(pid: int, *flags: str) -> None:
    subprocess.run(["callgrind_control", *flags, str(pid)], check=True, capture_output=True)


async def drive(args: argparse.Namespace, port: int, redis_pid: int) -> None:
    """The driver, run with the tree's code first on the path."""
    from presence_server.store import PresenceStore
    from presence_server.store.connect import open_redis

    client = open_redis(f"redis://127.0.0.1:{port}/0", decode_responses=True)
    store = PresenceStore(client, prefix="rc")
    now = time.time()

    async def beat(n: int, at: float, length: float | None) -> int:
        return await store.heartbeat("bench", uuid_of(n), [f"room-{n % args.channels}"], now=at, timeout=length)

    try:
        for start in range(0, args.users, 64):
            joining = range(start, min(args.users, start + 64))
            await asyncio.gather(*(beat(n, now + n * 0.0005, args.timeout) for n in joining))
        await asyncio.to_thread(control, redis_pid, "-i", "on")
        await asyncio.to_thread(control, redis_pid, "-z")
        sent, joined = 0, now + args.users * 0.0005
        for number in range(args.rounds):
            at = joined + 0.001 * (number + 1)
            users = [(sent + i) * 7919 % args.users for i in range(args.batch)]
            joins = await asyncio.gather(*(beat(n, at, None if args.held else args.timeout) for n in users))
            if any(joins):
                raise RuntimeError("a refresh joined: the uuids were not all present")
            sent += args.batch
        await asyncio.to_thread(control, redis_pid, "-d")
    finally:
        await store.aclose()
        await client.aclose()


def measure(args: argparse.Namespace, tree: Path) -> int:
    """Redis's instructions per refresh with ``tree``'s store."""
    # Imported here, not at the top: the driver runs this file with another tree's code on the path.
    from bench.callgrind import wait_listening
    from bench.live import free_port

    work = Path(tempfile.mkdtemp(prefix="bench-redis-callgrind-"))
    out, port = work / "callgrind.out", free_port()
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    argv = [args.redis_server, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(work)]
    redis = subprocess.Popen([*valgrind, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, redis, 120, lambda: "redis-server under valgrind did not start")
        knobs = [f"--{k}={getattr(args, k)}" for k in ("users", "channels", "batch", "rounds", "timeout")]
        knobs += ["--held"] if args.held else []
        # Run as a script from an empty folder, so that presence_server comes from the tree alone.
        env = dict(os.environ, PYTHONPATH=str(tree))
        driver = [sys.executable, str(Path(__file__).resolve()), "--drive", str(port), str(redis.pid), *knobs]
        subprocess.run(driver, cwd=work, env=env, check=True)
    finally:
        redis.terminate()
        redis.wait(60)
    dumps = sorted(work.glob("callgrind.out.*"))
    if not dumps:
        raise SystemExit(f"no callgrind dump in {work}")
    found = TOTALS.search(dumps[-1].read_text(errors="replace"))
    if found is None:
        raise SystemExit(f"no totals in {dumps[-1]}")
    refreshes: int = args.batch * args.rounds
    return int(found[1]) // refreshes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", default=[], help="a checkout whose store runs (repeatable)")
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32, help="heartbeats sent at once (one script call)")
    parser.add_argument("--held", action="store_true", help="refreshes that send no timeout (refresh.lua)")
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--timeout", type=float, default=300.0, help="the presence timeout sent (s; 300 the default)")
    parser.add_argument("--redis-server", default="redis-server", help="the redis-server binary")
    parser.add_argument("--drive", nargs=2, type=int, metavar=("PORT", "PID"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        asyncio.run(drive(args, *args.drive))
        return
    for tree in [Path(t).resolve() for t in args.tree] or [ROOT]:
        figure = measure(args, tree)
        print(
            f"{tree}: Redis instructions per refresh ({args.users} uuids on {args.channels} channels, "
            f"{args.batch} per call, {'no timeout sent' if args.held else f'heartbeat={args.timeout:g}'}): {figure:,}",
            flush=True,
        )


if __name__ == "__main__":
    main()
