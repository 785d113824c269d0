"""The local Redis Cluster and Redis Sentinel launchers (tests/helpers/topologies.py), checked with plain
redis-py rather than with the launchers' own readiness checks: the session topologies are what they claim,
a killed master's replica takes over, and nothing is left running afterwards. Anything destructive runs on a
topology of its own, never on the session's."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.sentinel import Sentinel

from tests.helpers.topologies import (
    HOST,
    MASTER_NAME,
    SLOTS,
    cluster_view,
    redis_cluster,
    redis_sentinel,
)
from tests.helpers.wait import wait_until_blocking

# With a node timeout (cluster) or down-after (sentinel) of 1 s, a failover takes 2-4 s on this machine;
# the bound leaves room for a loaded CI runner.
FAILED_OVER_WITHIN = 15.0


def _seeds(url: str) -> list[tuple[str, int]]:
    hosts = urlsplit(url).netloc.split(",")
    return [(host, int(port)) for host, _, port in (item.rpartition(":") for item in hosts)]


def _refused(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def _cluster_client(ports: list[int]) -> RedisCluster:
    nodes = [ClusterNode(HOST, port) for port in ports]  # type: ignore[no-untyped-call]
    return RedisCluster(startup_nodes=nodes, decode_responses=True)


def _sentinel(ports: list[int]) -> Sentinel:
    return Sentinel([(HOST, port) for port in ports], socket_timeout=2, decode_responses=True)  # type: ignore[no-untyped-call]


def _discover(sentinel: Sentinel) -> tuple[int, list[int]]:
    """The master's port and the replicas' ports, as redis-py's Sentinel client finds them."""
    host, port = sentinel.discover_master(MASTER_NAME)  # type: ignore[no-untyped-call]
    replicas = sentinel.discover_slaves(MASTER_NAME)  # type: ignore[no-untyped-call]
    assert host == HOST
    return int(port), sorted(int(replica_port) for _, replica_port in replicas)


def _master(sentinel: Sentinel) -> redis.Redis:
    client: redis.Redis = sentinel.master_for(MASTER_NAME)  # type: ignore[no-untyped-call]
    return client


def _replica(sentinel: Sentinel) -> redis.Redis:
    client: redis.Redis = sentinel.slave_for(MASTER_NAME)  # type: ignore[no-untyped-call]
    return client


def _key_per_master(primaries: dict[tuple[int, int], int], masters: int) -> dict[int, str]:
    """One key for each master (port -> key), found by hashing tags until every master has one."""
    by_port: dict[int, str] = {}
    tag = uuid.uuid4().hex[:8]
    for i in range(1000):
        key = f"{{{tag}-{i}}}:probe"
        slot = key_slot(key.encode())
        (port,) = (port for (first, last), port in primaries.items() if first <= slot <= last)
        by_port.setdefault(port, key)
        if len(by_port) == masters:
            return by_port
    raise AssertionError(f"1000 keys did not reach {masters} masters: {sorted(by_port)}")


def test_the_session_cluster_has_three_masters_each_with_a_replica_and_every_slot_served(cluster_url: str) -> None:
    assert cluster_url.startswith("redis+cluster://")
    seeds = [port for host, port in _seeds(cluster_url) if host == HOST]
    client = _cluster_client(seeds)
    try:
        info = client.cluster_info(target_nodes=RedisCluster.RANDOM)
        assert (info["cluster_state"], int(info["cluster_slots_ok"]), int(info["cluster_size"])) == ("ok", SLOTS, 3)
        assert int(info["cluster_known_nodes"]) == 6
        ranges: dict[tuple[int, int], dict[str, Any]] = dict(client.cluster_slots(target_nodes=RedisCluster.RANDOM))
        assert sum(last - first + 1 for first, last in ranges) == SLOTS
        assert all(len(served["replicas"]) == 1 for served in ranges.values())
        primaries = {slots: int(served["primary"][1]) for slots, served in ranges.items()}
        assert sorted(set(primaries.values())) == sorted(seeds)
        # Each write lands on the master the slot table names: the client routes by slot.
        for port, key in _key_per_master(primaries, 3).items():
            assert client.set(key, str(port))
            with redis.Redis(HOST, port, decode_responses=True) as owner:
                assert owner.get(key) == str(port)
            client.delete(key)
    finally:
        client.close()


def test_the_session_sentinels_name_a_master_whose_replica_follows_it(sentinel_url: str) -> None:
    parts = urlsplit(sentinel_url)
    assert parts.scheme == "redis+sentinel"
    assert parts.path == f"/{MASTER_NAME}/0"
    sentinel = _sentinel([port for _, port in _seeds(sentinel_url)])
    port, replicas = _discover(sentinel)
    assert len(replicas) == 1
    master, replica = _master(sentinel), _replica(sentinel)
    key = "probe:" + uuid.uuid4().hex
    try:
        assert master.set(key, "written")
        assert master.wait(1, 2000) == 1
        assert replica.get(key) == "written"
        assert master.info("replication")["role"] == "master"
        assert master.config_get("port")["port"] == str(port)
        assert replica.config_get("port")["port"] == str(replicas[0])
    finally:
        master.delete(key)
        master.close()
        replica.close()


def test_a_killed_master_s_replica_takes_over_and_the_old_master_rejoins_as_a_replica() -> None:
    with redis_cluster(node_timeout_ms=1000) as cluster:
        key = "{failover}:" + uuid.uuid4().hex
        slot = key_slot(key.encode())
        old = cluster.master_of_slot(slot)
        with redis.Redis(HOST, old, decode_responses=True) as owner:
            assert owner.execute_command("CLUSTER", "KEYSLOT", key) == slot
            owner.set(key, "kept")
            assert owner.wait(1, 2000) == 1
        view = cluster_view(old)
        assert view is not None
        (me,) = (node for node in view if node.port == old)
        (heir,) = (node.port for node in view if node.master_id == me.node_id)

        started = time.monotonic()
        cluster.kill(old)
        cluster.wait_healthy(FAILED_OVER_WITHIN)
        assert time.monotonic() - started < FAILED_OVER_WITHIN
        assert cluster.master_of_slot(slot) == heir
        assert old not in cluster.masters()
        with redis.Redis(HOST, heir, decode_responses=True) as promoted:
            assert promoted.get(key) == "kept"

        cluster.restart(old)
        assert old not in cluster.masters()
        with redis.Redis(HOST, old, decode_responses=True) as rejoined:
            replication = rejoined.info("replication")
        assert (replication["role"], replication["master_port"]) == ("slave", heir)
        ports = cluster.ports
    assert all(_refused(port) for port in ports)


def test_the_sentinels_fail_over_to_the_replica_when_the_master_is_killed() -> None:
    with redis_sentinel(replicas=1, sentinels=3, down_after_ms=1000, failover_timeout_ms=3000) as topology:
        sentinel = _sentinel(topology.sentinel_ports)
        old, heir = topology.ports
        assert topology.master_port() == old
        assert _discover(sentinel) == (old, [heir])
        with _master(sentinel) as master:
            master.set("failover", "kept")
            assert master.wait(1, 2000) == 1

        started = time.monotonic()
        assert topology.kill_master() == old
        assert topology.wait_failed_over(old, FAILED_OVER_WITHIN) == heir
        assert time.monotonic() - started < FAILED_OVER_WITHIN
        assert _discover(sentinel)[0] == heir
        with _master(sentinel) as master:
            assert master.get("failover") == "kept"

        topology.restart(old)
        assert _discover(sentinel) == (heir, [old])
        with redis.Redis(HOST, old, decode_responses=True) as rejoined:
            replication = rejoined.info("replication")
        assert (replication["role"], replication["master_port"]) == ("slave", heir)
        ports = [*topology.ports, *topology.sentinel_ports]
    assert all(_refused(port) for port in ports)


def test_a_block_that_fails_still_stops_every_process() -> None:
    ports: list[int] = []
    with pytest.raises(RuntimeError, match="the test fails"), redis_sentinel(replicas=0, sentinels=1) as topology:
        ports = [*topology.ports, *topology.sentinel_ports]
        assert not any(_refused(port) for port in ports)
        raise RuntimeError("the test fails")
    assert len(ports) == 2
    assert all(_refused(port) for port in ports)


def test_serve_writes_both_urls_and_stops_everything_on_sigterm(tmp_path: Path) -> None:
    env_file = tmp_path / "topologies.env"
    command = [sys.executable, "-m", "tests.helpers.topologies", "serve", "--env-file", str(env_file)]
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(command, cwd=root, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(root)})
    try:
        wait_until_blocking(lambda: env_file.exists() or proc.poll() is not None, 60, what="the env file")
        assert proc.poll() is None, f"serve exited with {proc.returncode}"
        exports = dict(line.removeprefix("export ").split("=", 1) for line in env_file.read_text().splitlines())
        assert sorted(exports) == ["PRESENCE_TEST_CLUSTER_URL", "PRESENCE_TEST_SENTINEL_URL"]
        cluster_ports = [port for _, port in _seeds(exports["PRESENCE_TEST_CLUSTER_URL"])]
        sentinel_ports = [port for _, port in _seeds(exports["PRESENCE_TEST_SENTINEL_URL"])]
        views = [cluster_view(port) for port in cluster_ports]
        assert all(view is not None and len(view) == 6 for view in views)
        master_port, replica_ports = _discover(_sentinel(sentinel_ports))
        assert len(replica_ports) == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    every_node = [node.port for view in views if view for node in view]
    assert all(_refused(port) for port in {*every_node, *sentinel_ports, master_port, *replica_ports})
