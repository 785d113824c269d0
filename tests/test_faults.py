"""Fault tests on a real Redis and real server processes (issue 10, "Kept fixed"), in real time with
short presence timeouts: Redis killed with -9 and restarted under load, with and without persistence;
one of two server processes killed with -9. Nothing the store accepted is lost (when Redis persists),
each timeout is reported once, and sweeping is back within a second of Redis answering again."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from presence_server.store import PresenceStore, open_redis
from tests.helpers.http import get_url
from tests.helpers.process import server_env, server_process, wait_answering
from tests.helpers.redis import free_port
from tests.helpers.wait import wait_until, wait_until_blocking

P = "/v2/presence/sub-key/demo"
STEADY, LEAVING = 20, 10


class RedisProcess:
    """A redis-server that a test kills with -9 and starts again on the same port and data directory."""

    def __init__(self, workdir: Path, *, persistent: bool) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is not on PATH"
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", ""]
        # Persistent: every write is on disk before Redis answers it (what "accepted" means here).
        self.args += ["--appendonly", "yes", "--appendfsync", "always"] if persistent else ["--appendonly", "no"]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start it; returns the (wall-clock) time at which it answered PING."""
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL)
        wait_until_blocking(self._answering, 10, what="redis-server answering PING", interval=0.005)
        return time.time()

    def _answering(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, "redis-server exited"
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@contextlib.contextmanager
def redis_process(workdir: Path, *, persistent: bool) -> Iterator[RedisProcess]:
    redis = RedisProcess(workdir, persistent=persistent)
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()


def env_for(redis: RedisProcess, prefix: str, **more: str) -> dict[str, str]:
    return server_env(
        PRESENCE_REDIS_URL=redis.url,
        PRESENCE_KEY_PREFIX=prefix,
        PRESENCE_MIN_TIMEOUT="1",
        PRESENCE_LONGPOLL_HOLD="1",
        **more,
    )


async def timeouts(store: PresenceStore, channel: str) -> list[tuple[str, float]]:
    """(uuid, server time in seconds) of each timeout event logged on ``channel``."""
    return [(e.uuid, int(e.timetoken) / 1e7) for e in await store.read_log("demo", channel) if e.action == "timeout"]


async def heartbeat_steadily(
    session: aiohttp.ClientSession, base: str, uuid: str, statuses: list[int], stop: asyncio.Event
) -> None:
    while not stop.is_set():
        with contextlib.suppress(aiohttp.ClientError):
            reply = await get_url(session, base, f"{P}/channel/steady/heartbeat", {"uuid": uuid, "heartbeat": 6})
            statuses.append(reply.status)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


async def occupants(session: aiohttp.ClientSession, base: str, channel: str) -> list[str]:
    reply = await get_url(session, base, f"{P}/channel/{channel}")
    assert reply.status == 200, reply.body
    return sorted(reply.body["uuids"])


@pytest.mark.parametrize("persistent", [True, False], ids=["persistent", "not-persistent"])
async def test_redis_killed_and_restarted_under_load(tmp_path: Path, prefix: str, persistent: bool) -> None:
    log = tmp_path / "server.log"
    with redis_process(tmp_path, persistent=persistent) as redis:
        env = env_for(redis, prefix)
        base = f"http://127.0.0.1:{env['PRESENCE_PORT']}"
        client = open_redis(redis.url)
        store = PresenceStore(client, prefix=prefix)
        stop = asyncio.Event()
        statuses: list[int] = []
        async with server_process(env, stderr=log) as proc, aiohttp.ClientSession() as session:
            await wait_answering(base, "/health", 200, proc, log=log)
            steady = [
                asyncio.create_task(heartbeat_steadily(session, base, f"s{i}", statuses, stop)) for i in range(STEADY)
            ]
            try:
                # Users who heartbeat once, accepted before the kill; their deadline passes during the outage.
                for i in range(LEAVING):
                    reply = await get_url(
                        session, base, f"{P}/channel/leaving/heartbeat", {"uuid": f"l{i}", "heartbeat": 2}
                    )
                    assert reply.status == 200, reply.body
                await wait_until(lambda: len(statuses) >= 2 * STEADY, 10, what="steady heartbeats answered")
                redis.kill()
                await asyncio.sleep(2.5)
                down = await get_url(session, base, f"{P}/channel/steady")
                assert down.status == 503 and down.body["error"] is True, down.body
                back = redis.start()
                await wait_answering(base, "/health", 200, proc, log=log)
                answering = time.time() - back
                if persistent:
                    await wait_until(
                        lambda: _count(store, "leaving", LEAVING), 5, what="every leaver timed out after the restart"
                    )
                    found = await timeouts(store, "leaving")
                    assert sorted(uuid for uuid, _ in found) == sorted(f"l{i}" for i in range(LEAVING))
                    # The server's time of each timeout (its timetoken) against Redis's return.
                    late = max(at for _, at in found) - back
                    assert late < 1.0, f"timeouts swept {late:.2f} s after Redis answered again"
                # The steady users are present again (persistent: they never left), with no timeout.
                expected = sorted(f"s{i}" for i in range(STEADY))
                await wait_until(
                    lambda: _listed(session, base, "steady", expected), 5, what="every steady user present"
                )
                await asyncio.sleep(1.0)  # a little more load after the return
            finally:
                stop.set()
                await asyncio.gather(*steady)
            assert await timeouts(store, "steady") == []
            assert set(statuses) <= {200, 503}, sorted(set(statuses))
            assert statuses[-1] == 200
            assert answering < 1.0, f"/health answered 200 {answering:.2f} s after Redis answered"
            if persistent:
                # Once each, even after more sweeps.
                assert len(await timeouts(store, "leaving")) == LEAVING
        await client.aclose()
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text
    said = [
        "lost" if "redis lost" in line else "back"
        for line in text.splitlines()
        if "redis lost" in line or "redis back" in line
    ]
    # Once each for the one outage: a batch whose connection is found lost before any reply is sent
    # again at once on a checked connection (store/batch.py), so no second short outage is seen.
    assert said == ["lost", "back"], said


async def _count(store: PresenceStore, channel: str, wanted: int) -> bool:
    with contextlib.suppress(Exception):
        return len(await timeouts(store, channel)) >= wanted
    return False


async def _listed(session: aiohttp.ClientSession, base: str, channel: str, expected: list[str]) -> bool:
    with contextlib.suppress(AssertionError, aiohttp.ClientError):
        return await occupants(session, base, channel) == expected
    return False


async def test_one_of_two_server_processes_killed(tmp_path: Path, prefix: str, real_redis_url: str) -> None:
    users = 30
    # Announced one by one (no interval mode), so that each timeout is an event of its own.
    settings = {"PRESENCE_MIN_TIMEOUT": "1", "PRESENCE_ANNOUNCE_MAX": "1000"}
    env_a = server_env(PRESENCE_REDIS_URL=real_redis_url, PRESENCE_KEY_PREFIX=prefix, **settings)
    env_b = server_env(PRESENCE_REDIS_URL=real_redis_url, PRESENCE_KEY_PREFIX=prefix, **settings)
    base_a, base_b = (f"http://127.0.0.1:{env['PRESENCE_PORT']}" for env in (env_a, env_b))
    client: aioredis.Redis = open_redis(real_redis_url)
    store = PresenceStore(client, prefix=prefix)
    stop = asyncio.Event()
    statuses: list[int] = []
    async with (
        server_process(env_a, stderr=tmp_path / "a.log") as proc_a,
        server_process(env_b, stderr=tmp_path / "b.log") as proc_b,
        aiohttp.ClientSession() as session,
    ):
        await wait_answering(base_a, "/health", 200, proc_a)
        await wait_answering(base_b, "/health", 200, proc_b)
        steady = [asyncio.create_task(heartbeat_steadily(session, base_b, f"s{i}", statuses, stop)) for i in range(5)]
        try:
            for i in range(users):
                reply = await get_url(session, base_a, f"{P}/channel/ch-a/heartbeat", {"uuid": f"a{i}", "heartbeat": 2})
                assert reply.status == 200, reply.body
            proc_a.send_signal(signal.SIGKILL)
            await proc_a.wait()
            # B sweeps alone: each of A's users times out once, about two seconds later.
            await wait_until(lambda: _count(store, "ch-a", users), 10, what="A's users timed out")
            await asyncio.sleep(1.5)  # more sweeps: still once each
            found = await timeouts(store, "ch-a")
            assert sorted(uuid for uuid, _ in found) == sorted(f"a{i}" for i in range(users))
            assert await occupants(session, base_b, "ch-a") == []
            assert await occupants(session, base_b, "steady") == sorted(f"s{i}" for i in range(5))
        finally:
            stop.set()
            await asyncio.gather(*steady)
    assert set(statuses) == {200}
    assert await timeouts(store, "steady") == []
    await client.aclose()
