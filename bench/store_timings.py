"""Micro-timings of store calls and here_now requests (pytest-benchmark), with the targets of issue 2.

Run: ``python -m pytest -p no:cacheprovider bench/store_timings.py`` (not part of the plain ``pytest``
run: testpaths is tests/). Both engines: a redis-server of its own, and ``memory://``. The app is
built as the server builds it and called in this process: the HTTP figures include the aiohttp
client's own cost, so they are upper bounds of the server's. Sizes: BENCH_CROWD (occupants of the
paged channel and of the sweep, default 10000) and BENCH_HUGE (occupants for the count-only read,
default 100000; memory:// uses BENCH_CROWD, being populated at a few thousand a second).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import tempfile
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from pytest_benchmark.fixture import BenchmarkFixture

from bench.live import Children, redis_server
from presence_server.app import create_app
from presence_server.config import Settings
from presence_server.context import STORE
from presence_server.store import PresenceStore, open_redis

T = TypeVar("T")
CROWD = int(os.environ.get("BENCH_CROWD", "10000"))
HUGE = int(os.environ.get("BENCH_HUGE", "100000"))
SUB_KEY = "bench"
TIMEOUT = 300.0
# Targets of issue 2.
HERE_NOW_PAGE_MS = 10.0
HERE_NOW_COUNT_MS = 2.0
SWEEP_SECONDS = 1.0

pytestmark = pytest.mark.timeout(1800)


@dataclasses.dataclass
class Served:
    engine: str
    loop: asyncio.AbstractEventLoop
    store: PresenceStore
    http: TestClient[Any, Any]
    rcli: redis.Redis | None
    huge: int

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(work)

    def populate(self, channel: str, users: int, first: int = 0, now: float | None = None) -> None:
        async def heartbeats() -> None:
            at = time.time() if now is None else now
            for start in range(first, first + users, 64):
                await asyncio.gather(
                    *(
                        self.store.heartbeat(SUB_KEY, f"{n:08x}-0000-4000-8000-{n:012x}", [channel], now=at)
                        for n in range(start, min(first + users, start + 64))
                    )
                )

        self.run(heartbeats())


async def started(app: Any) -> TestClient[Any, Any]:
    http: TestClient[Any, Any] = TestClient(TestServer(app))
    await http.start_server()
    return http


@pytest.fixture(scope="module", params=["redis", "memory"])
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    with contextlib.ExitStack() as stack:
        rcli = None
        url = "memory://"
        if request.param == "redis":
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="presence-timings-")))
            children = Children(workdir)
            stack.callback(children.stop_all)
            rcli = stack.enter_context(redis_server("redis-server", workdir, children))
            url = f"redis://127.0.0.1:{rcli.connection_pool.connection_kwargs['port']}/0"
        loop = asyncio.new_event_loop()
        stack.callback(loop.close)
        client: aioredis.Redis = open_redis(url)
        app = create_app(Settings.from_env(key_prefix=SUB_KEY, host="127.0.0.1"), redis=client, sweeper=False)
        http = loop.run_until_complete(started(app))
        stack.callback(lambda: loop.run_until_complete(client.aclose()))
        stack.callback(lambda: loop.run_until_complete(http.close()))
        served = Served(request.param, loop, app[STORE], http, rcli, HUGE if rcli else CROWD)
        served.populate("crowd", CROWD)
        served.populate("huge", served.huge, first=1_000_000)
        yield served


def seconds(benchmark: BenchmarkFixture, figure: str) -> float:
    stats = benchmark.stats
    assert stats is not None and stats.stats is not None
    return float(getattr(stats.stats, figure))


def check(served: Served, benchmark: BenchmarkFixture, target_ms: float) -> None:
    """The target holds on Redis; memory:// is printed without one."""
    if served.rcli is not None and not benchmark.disabled:
        median = 1000 * seconds(benchmark, "median")
        assert median < target_ms, f"median {median:.2f} ms, target < {target_ms} ms"


def test_heartbeat_refresh(served: Served, benchmark: BenchmarkFixture) -> None:
    benchmark(
        lambda: served.run(
            served.store.heartbeat(SUB_KEY, "00000000-0000-4000-8000-000000000000", ["crowd"], now=time.time())
        )
    )


def test_here_now_page_of_1000(served: Served, benchmark: BenchmarkFixture) -> None:
    found = benchmark(lambda: served.run(served.store.here_now(SUB_KEY, ["crowd"], now=time.time(), limit=1000)))
    assert found[0].occupancy == CROWD and len(found[0].uuids) == 1000


def test_here_now_count_only(served: Served, benchmark: BenchmarkFixture) -> None:
    found = benchmark(lambda: served.run(served.store.here_now(SUB_KEY, ["huge"], now=time.time(), with_uuids=False)))
    assert found[0].occupancy == served.huge


def http_here_now(served: Served, channel: str, query: str) -> int:
    async def get() -> int:
        response = await served.http.get(f"/v2/presence/sub-key/{SUB_KEY}/channel/{channel}?{query}")
        assert response.status == 200
        return int((await response.json(content_type=None))["occupancy"])

    return served.run(get())


def test_http_here_now_page_of_1000_under_10_ms(served: Served, benchmark: BenchmarkFixture) -> None:
    assert benchmark(http_here_now, served, "crowd", "limit=1000") == CROWD
    check(served, benchmark, HERE_NOW_PAGE_MS)


def test_http_here_now_count_only_under_2_ms(served: Served, benchmark: BenchmarkFixture) -> None:
    assert benchmark(http_here_now, served, "huge", "disable_uuids=1") == served.huge
    check(served, benchmark, HERE_NOW_COUNT_MS)


def test_sweep_with_nothing_due(served: Served, benchmark: BenchmarkFixture) -> None:
    assert benchmark(lambda: served.run(served.store.sweep(now=time.time()))) == 0


def test_sweep_expiring_the_crowd_under_1_s(served: Served, benchmark: BenchmarkFixture) -> None:
    """CROWD users of one channel expire in one sweep; on Redis also the sweep script calls, their
    mean Redis time and the longest (SLOWLOG): Redis serves nobody else while a script runs."""
    start = time.time() - 2 * TIMEOUT  # their deadlines are past, the crowd's are not

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        served.populate("sweep", CROWD, first=2_000_000, now=start)
        if served.rcli is not None:
            served.rcli.config_set("slowlog-log-slower-than", 1000)
            served.rcli.slowlog_reset()
            served.rcli.config_resetstat()
        return (), {}

    removed = benchmark.pedantic(lambda: served.run(served.store.sweep(now=time.time())), setup=setup, rounds=3)  # type: ignore[no-untyped-call]
    assert removed == CROWD
    if served.rcli is not None:
        script = served.rcli.info("commandstats")["cmdstat_evalsha"]
        longest = max((int(entry["duration"]) for entry in served.rcli.slowlog_get(128)), default=0) / 1000
        each, calls = script["usec_per_call"] / 1000, script["calls"]
        benchmark.extra_info.update(script_calls=calls, script_ms=each, longest_script_ms=longest)
        print(f"\nlast sweep: {calls} script calls, {each:.1f} ms of Redis time each, the longest {longest:.1f} ms")
        assert seconds(benchmark, "max") < SWEEP_SECONDS, f"slowest sweep {seconds(benchmark, 'max'):.2f} s"
