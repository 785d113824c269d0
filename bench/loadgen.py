"""Fallback load generator when wrk is not installed: aiohttp workers sending the same heartbeats.

On a small machine this generator, not the server, usually limits the figures. It prints one JSON
object: requests, errors, seconds, p50_ms, p99_ms. Run as ``python -m bench.loadgen --origin ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import aiohttp
import orjson

STEP = 7919  # the same scattered walk over the uuids as bench/heartbeat.lua


def heartbeat_path(n: int, sub_key: str, users: int, channels: int, timeout: int) -> str:
    step = 1 if users % STEP == 0 else STEP
    u = (n * step) % users
    return (
        f"/v2/presence/sub-key/{sub_key}/channel/room-{u % channels}/heartbeat"
        f"?heartbeat={timeout}&uuid={u:08x}-0000-4000-8000-{u:012x}"
    )


async def run(
    origin: str, seconds: float, connections: int, sub_key: str, users: int, channels: int, presence_timeout: int
) -> dict[str, float]:
    counter = 0
    errors = 0
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal counter, errors
        while time.perf_counter() < deadline:
            counter += 1
            path = heartbeat_path(counter, sub_key, users, channels, presence_timeout)
            started = time.perf_counter()
            try:
                async with session.get(origin + path) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
            except aiohttp.ClientError:
                errors += 1
            latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=connections)
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(connections)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else 0.0,
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen")
    parser.add_argument("--origin", required=True, help="http://127.0.0.1:PORT")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--sub-key", default="bench")
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--timeout", type=int, default=300)
    args = parser.parse_args()
    result = asyncio.run(
        run(args.origin, args.seconds, args.connections, args.sub_key, args.users, args.channels, args.timeout)
    )
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
