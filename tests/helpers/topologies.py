"""Throw-away Redis Cluster and Redis Sentinel topologies on loopback, from Debian's ``redis-server`` and
``redis-cli`` on PATH: started lazily by the session fixtures in tests/conftest.py, by tests that need one of
their own to break, and once for a whole CI run by ``python -m tests.helpers.topologies serve`` (.ci/run).

Nothing persists (``--save ''``, no AOF); each node has a directory of its own in one temporary directory,
so a replica's full-sync RDB is never loaded by another node. Every process is stopped and reaped when the
``with`` block ends, however it ends.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import redis

from tests.helpers.redis import free_port
from tests.helpers.wait import wait_until_blocking

HOST = "127.0.0.1"
SLOTS = 16384
MASTER_NAME = "presence"
# Bounds on real-time waits. Creating a 6-node cluster takes a few seconds on a loaded 2-core machine;
# a failover with a 1 s node timeout takes 2-4 s.
START_WITHIN = 30.0
FAILOVER_WITHIN = 20.0
# Masters wait 5 s by default before a diskless full sync, for more replicas to share it: every replica's
# first sync (and every rejoin) would take that long. Masters ping replicas every 10 s by default; every
# second, a fresh cluster's replicas are counted as in sync (see _online) within a second or two.
_DATA_ARGS = (
    *("--bind", HOST, "--save", "", "--appendonly", "no"),
    *("--repl-diskless-sync-delay", "0", "--repl-ping-replica-period", "1"),
)
_FAILED = frozenset({"fail", "fail?", "noaddr", "handshake"})


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (free_port alone may hand out one twice in a row)."""
    ports: list[int] = []
    while len(ports) < count:
        if (port := free_port()) not in ports:
            ports.append(port)
    return ports


# The shared topologies (the session's, and CI's) detect a lost node in 5 s, not 1: nothing breaks them
# on purpose, and a busy 2-core machine must not make a replica take over (a switch would fail requests
# of unrelated tests). Tests that kill a master start a topology of their own with 1 s.
SHARED = {"node_timeout_ms": 5000}
SHARED_SENTINEL = {"down_after_ms": 5000}


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not on PATH: apt-get install redis-server redis-tools")
    return found


def _ask(port: int, *command: str) -> Any:
    """One node's reply to one command, or None if it does not answer. The command's words go as separate
    arguments, so redis-py applies none of its reply parsers (keyed on ``"CLUSTER NODES"`` and the like) but
    INFO's; RESP2 (redis-py 8 speaks RESP3 by default), so SENTINEL's replies are flat lists."""
    try:
        with redis.Redis(
            HOST, port, socket_timeout=2, socket_connect_timeout=2, decode_responses=True, protocol=2
        ) as client:
            return client.execute_command(*command)
    except (redis.RedisError, OSError):
        return None


def _fields(text: object) -> dict[str, str]:
    """``key:value`` lines (CLUSTER INFO; INFO, which redis-py parses already) as a dict; empty for no answer."""
    if isinstance(text, dict):
        return {str(key): str(value) for key, value in text.items()}
    if not isinstance(text, str):
        return {}
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))
    return {key: value.strip() for key, value in pairs}


def _pairs(entry: list[Any]) -> dict[str, Any]:
    """A flat RESP2 ``[key, value, ...]`` list (SENTINEL replicas and sentinels, CLUSTER SHARDS) as a dict."""
    return dict(zip(entry[::2], entry[1::2], strict=True))


class _Processes:
    """redis-server processes by port, each killable and startable again; stdout goes to ``<port>.log``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._running: dict[int, subprocess.Popen[bytes]] = {}

    def node_dir(self, port: int) -> Path:
        path = self.workdir / str(port)
        path.mkdir(exist_ok=True)
        return path

    def start(self, port: int, args: list[str]) -> None:
        """Start ``redis-server args`` and return once it answers PING on ``port``."""
        if self.running(port):
            raise RuntimeError(f"redis-server on port {port} is running already")
        with (self.workdir / f"{port}.log").open("ab") as log:
            proc = subprocess.Popen(
                [_binary("redis-server"), *args], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        self._running[port] = proc

        def answers() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"redis-server on port {port} exited with {proc.returncode}: {self.log(port)}")
            return bool(_ask(port, "PING"))

        wait_until_blocking(answers, 10, what=lambda: f"redis-server answering on port {port}: {self.log(port)}")

    def kill(self, port: int) -> None:
        """SIGKILL (like ``kill -9``): no shutdown, no goodbye to the other nodes."""
        proc = self._running.pop(port)
        proc.kill()
        proc.wait(timeout=10)

    def running(self, port: int) -> bool:
        proc = self._running.get(port)
        return proc is not None and proc.poll() is None

    def alive(self) -> list[int]:
        return sorted(port for port in self._running if self.running(port))

    def log(self, port: int, lines: int = 8) -> str:
        path = self.workdir / f"{port}.log"
        tail = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []
        return " | ".join(tail)

    def stop_all(self) -> None:
        for proc in self._running.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self._running.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self._running.clear()


@contextlib.contextmanager
def _processes() -> Iterator[_Processes]:
    with tempfile.TemporaryDirectory(prefix="presence-redis-") as workdir:
        processes = _Processes(Path(workdir))
        try:
            yield processes
        finally:
            processes.stop_all()


# --- Redis Cluster ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeEntry:
    """One line of ``CLUSTER NODES``, as one node sees another (or itself)."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str  # "-" for a master
    slots: tuple[tuple[int, int], ...]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failed(self) -> bool:
        return bool(self.flags & _FAILED)

    @classmethod
    def parse(cls, line: str) -> NodeEntry:
        node_id, address, flags, master_id, _ping, _pong, _epoch, _link, *slots = line.split()
        port = int(address.split("@", 1)[0].rsplit(":", 1)[1])
        ranges = []
        for item in slots:
            if item.startswith("["):  # a slot being imported or migrated: still served by its owner
                continue
            start, _, end = item.partition("-")
            ranges.append((int(start), int(end or start)))
        return cls(node_id, port, frozenset(flags.split(",")), master_id, tuple(ranges))


def cluster_view(port: int) -> list[NodeEntry] | None:
    """The cluster as the node on ``port`` sees it, or None if it does not answer."""
    reply = _ask(port, "CLUSTER", "NODES")
    if not isinstance(reply, str):
        return None
    return [NodeEntry.parse(line) for line in reply.splitlines() if line.strip()]


def _slot_map(view: list[NodeEntry], live: list[int]) -> tuple[tuple[int, int, int], ...] | None:
    """``(first, last, master port)`` for every slot range, if live masters not flagged as failed serve all
    16384 slots exactly once in this view; None otherwise."""
    ranges = sorted(
        (first, last, node.port)
        for node in view
        if node.is_master and not node.failed and node.port in live
        for first, last in node.slots
    )
    covered = 0
    for first, last, _port in ranges:
        if first != covered:
            return None
        covered = last + 1
    return tuple(ranges) if covered == SLOTS else None


def _replicas_attached(view: list[NodeEntry], live: list[int], replicas: int | None) -> bool:
    """Every live node is known and not failed in this view, every replica follows a serving master, and
    (if ``replicas`` is given) every master has that many replicas."""
    known = {node.port: node for node in view if not node.failed}
    if any(port not in known for port in live):
        return False
    masters = {node.node_id for node in known.values() if node.is_master and node.slots}
    followers = [node.master_id for node in known.values() if not node.is_master]
    if any(master_id not in masters for master_id in followers):
        return False
    return replicas is None or all(followers.count(master_id) == replicas for master_id in masters)


def _online(port: int, live: list[int]) -> bool:
    """Every live node is ``online`` in CLUSTER SHARDS as the node on ``port`` sees it. Redis 7.0 calls a
    replica ``loading`` until its replication offset, gossiped over the cluster bus, is above 0, and leaves
    it out of CLUSTER SLOTS meanwhile: a client that maps the cluster then (redis-py does) sees no replicas.
    The offset grows with the master's pings to its replicas (``repl-ping-replica-period``) or a write."""
    shards = _ask(port, "CLUSTER", "SHARDS")
    if not isinstance(shards, list):
        return False
    health = {int(node["port"]): node["health"] for shard in shards for node in map(_pairs, _pairs(shard)["nodes"])}
    return all(health.get(node) == "online" for node in live)


def _link_up(port: int) -> bool:
    info = _fields(_ask(port, "INFO", "replication"))
    return info.get("role") == "master" or info.get("master_link_status") == "up"


class Cluster:
    """A running local Redis Cluster: its seed URL, and the means to break it and mend it."""

    def __init__(
        self, processes: _Processes, ports: list[int], bus_ports: dict[int, int], node_timeout_ms: int
    ) -> None:
        self._processes = processes
        self.ports = ports
        self._bus_ports = bus_ports
        self._node_timeout_ms = node_timeout_ms
        self.url = ""  # set once the cluster is formed: its masters are the seed list

    def node_args(self, port: int) -> list[str]:
        workdir = self._processes.node_dir(port)
        return [
            *("--port", str(port), *_DATA_ARGS, "--dir", str(workdir)),
            *("--cluster-enabled", "yes", "--cluster-config-file", str(workdir / f"nodes-{port}.conf")),
            *("--cluster-port", str(self._bus_ports[port]), "--cluster-node-timeout", str(self._node_timeout_ms)),
        ]

    def view(self) -> list[NodeEntry]:
        """The cluster as the first live node that answers sees it."""
        for port in self._processes.alive():
            view = cluster_view(port)
            if view is not None:
                return view
        raise RuntimeError("no cluster node answers")

    def masters(self) -> list[int]:
        """Ports of the masters that serve slots and are not flagged as failed, as one live node sees it."""
        return sorted(node.port for node in self.view() if node.is_master and node.slots and not node.failed)

    def master_of_slot(self, slot: int) -> int:
        """The port of the master that owns ``slot`` as one live node sees it: a killed master still owns its
        slots until its replica has taken over."""
        for node in self.view():
            if node.is_master and any(first <= slot <= last for first, last in node.slots):
                return node.port
        raise LookupError(f"no master serves slot {slot}")

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port`` and reap it."""
        self._processes.kill(port)

    def restart(self, port: int, within: float = START_WITHIN) -> None:
        """Start a killed node again with its port and nodes.conf: it rejoins, as a replica if its slots
        moved meanwhile; returns once the cluster is healthy with it."""
        self._processes.start(port, self.node_args(port))
        self.wait_healthy(within)

    def healthy(self, replicas: int | None = None) -> bool:
        """Every live node says cluster_state:ok, knows every other live node, and agrees with all the others
        on which live master serves each of the 16384 slots; every live replica's link to its master is up
        and every node counts it as online; with ``replicas``, every master has that many."""
        live = self._processes.alive()
        maps = set()
        for port in live:
            view = cluster_view(port)
            if _fields(_ask(port, "CLUSTER", "INFO")).get("cluster_state") != "ok" or view is None:
                return False
            slot_map = _slot_map(view, live)
            if slot_map is None or not _replicas_attached(view, live, replicas) or not _link_up(port):
                return False
            if not _online(port, live):
                return False
            maps.add(slot_map)
        return len(maps) == 1

    def wait_healthy(self, within: float = START_WITHIN, replicas: int | None = None) -> None:
        wait_until_blocking(lambda: self.healthy(replicas), within, what=self._describe, interval=0.1)

    def _describe(self) -> str:
        views = {port: cluster_view(port) for port in self._processes.alive()}
        lines = [f"{port}: {[(n.port, sorted(n.flags), n.slots) for n in view or []]}" for port, view in views.items()]
        return "a healthy cluster; views: " + "; ".join(lines)


@contextlib.contextmanager
def redis_cluster(masters: int = 3, replicas: int = 1, node_timeout_ms: int = 1000) -> Iterator[Cluster]:
    """A Redis Cluster of ``masters`` masters with ``replicas`` replicas each, formed by ``redis-cli --cluster
    create``; yields once every node agrees that all slots are served and every replica is attached."""
    if masters < 3:
        raise ValueError("redis-cli --cluster create needs at least 3 masters")
    count = masters * (1 + replicas)
    # The bus port is set (cluster-port, Redis 7) rather than left at port + 10000, which may be taken or
    # beyond 65535 for a port from the ephemeral range.
    every_port = _free_ports(2 * count)
    ports, bus_ports = every_port[:count], dict(zip(every_port[:count], every_port[count:], strict=True))
    with _processes() as processes:
        cluster = Cluster(processes, ports, bus_ports, node_timeout_ms)
        for port in ports:
            processes.start(port, cluster.node_args(port))
        _create(ports, replicas)
        cluster.wait_healthy(START_WITHIN, replicas=replicas)
        cluster.url = "redis+cluster://" + ",".join(f"{HOST}:{port}" for port in cluster.masters())
        yield cluster


def _create(ports: list[int], replicas: int) -> None:
    command = [_binary("redis-cli"), "--cluster", "create", *(f"{HOST}:{port}" for port in ports)]
    command += ["--cluster-replicas", str(replicas), "--cluster-yes"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=START_WITHIN, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"redis-cli --cluster create failed ({done.returncode}): {done.stdout}{done.stderr}")


# --- Redis Sentinel --------------------------------------------------------------------------------------

_DOWN = frozenset({"s_down", "o_down", "disconnected"})


def _up(entry: dict[str, str]) -> bool:
    return not set(entry.get("flags", "").split(",")) & _DOWN


class SentinelSet:
    """One master, its replicas and the sentinels watching them, under the master name ``presence``."""

    def __init__(self, processes: _Processes, data_ports: list[int], sentinel_ports: list[int]) -> None:
        self._processes = processes
        self.ports = data_ports  # the first one is the master at the start
        self.sentinel_ports = sentinel_ports
        self.name = MASTER_NAME
        self.url = "redis+sentinel://" + ",".join(f"{HOST}:{port}" for port in sentinel_ports) + f"/{self.name}/0"

    def data_args(self, port: int, replica_of: int | None) -> list[str]:
        workdir = self._processes.node_dir(port)
        args = ["--port", str(port), *_DATA_ARGS, "--dir", str(workdir)]
        return args if replica_of is None else [*args, "--replicaof", HOST, str(replica_of)]

    def named_master(self, sentinel: int) -> int | None:
        """The master port the sentinel on ``sentinel`` names, or None if it does not answer."""
        reply = _ask(sentinel, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name)
        return int(reply[1]) if isinstance(reply, list) and len(reply) == 2 else None

    def master_port(self) -> int:
        """The master's port, asked of the first sentinel that answers."""
        for sentinel in self._processes.alive():
            if sentinel in self.sentinel_ports and (port := self.named_master(sentinel)) is not None:
                return port
        raise RuntimeError("no sentinel answers")

    def kill_master(self) -> int:
        """SIGKILL the current master; returns its port."""
        port = self.master_port()
        self._processes.kill(port)
        return port

    def kill(self, port: int) -> None:
        self._processes.kill(port)

    def failed_over(self, old_port: int) -> bool:
        live = [port for port in self.sentinel_ports if self._processes.running(port)]
        named = {self.named_master(sentinel) for sentinel in live}
        if len(named) != 1 or None in named or old_port in named:
            return False
        (port,) = named
        return port is not None and _fields(_ask(port, "INFO", "replication")).get("role") == "master"

    def wait_failed_over(self, old_port: int, within: float = FAILOVER_WITHIN) -> int:
        """Wait until every live sentinel names the same new master and it answers as a master; its port."""
        wait_until_blocking(lambda: self.failed_over(old_port), within, what=self._describe, interval=0.05)
        return self.master_port()

    def restart(self, port: int, within: float = START_WITHIN) -> None:
        """Start a killed data node again on its port, as a replica of the current master unless it is the
        master still; returns once its link is up and every sentinel knows it as a replica that is up."""
        master = self.master_port()
        self._processes.start(port, self.data_args(port, None if port == master else master))
        wait_until_blocking(lambda: self.ready(master), within, what=self._describe, interval=0.1)

    def ready(self, master: int) -> bool:
        """Every live sentinel names ``master``, knows every other live data node as a replica that is up and
        every other live sentinel; every live replica's link is up."""
        live = self._processes.alive()
        replicas = [port for port in self.ports if port in live and port != master]
        sentinels = [port for port in self.sentinel_ports if port in live]
        if not all(_link_up(port) for port in replicas):
            return False
        return all(self._sees(sentinel, master, replicas, len(sentinels) - 1) for sentinel in sentinels)

    def _sees(self, sentinel: int, master: int, replicas: list[int], others: int) -> bool:
        if self.named_master(sentinel) != master:
            return False
        known = _ask(sentinel, "SENTINEL", "REPLICAS", self.name)
        peers = _ask(sentinel, "SENTINEL", "SENTINELS", self.name)
        if not isinstance(known, list) or not isinstance(peers, list):
            return False
        up = {int(entry["port"]) for entry in map(_pairs, known) if _up(entry)}
        return set(replicas) <= up and sum(_up(_pairs(entry)) for entry in peers) == others

    def _describe(self) -> str:
        named = {sentinel: self.named_master(sentinel) for sentinel in self.sentinel_ports}
        roles = {port: _fields(_ask(port, "INFO", "replication")).get("role") for port in self.ports}
        return f"sentinels naming the master: {named}; roles: {roles}"


def _sentinel_conf(port: int, workdir: Path, master: int, quorum: int, down_after_ms: int, timeout_ms: int) -> Path:
    path = workdir / "sentinel.conf"  # the sentinel rewrites it: one per sentinel
    lines = [
        f"port {port}",
        f"bind {HOST}",
        f"dir {workdir}",
        "sentinel resolve-hostnames no",
        f"sentinel monitor {MASTER_NAME} {HOST} {master} {quorum}",
        f"sentinel down-after-milliseconds {MASTER_NAME} {down_after_ms}",
        f"sentinel failover-timeout {MASTER_NAME} {timeout_ms}",
        f"sentinel parallel-syncs {MASTER_NAME} 1",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@contextlib.contextmanager
def redis_sentinel(
    replicas: int = 1, sentinels: int = 3, down_after_ms: int = 1000, failover_timeout_ms: int = 3000
) -> Iterator[SentinelSet]:
    """One master, ``replicas`` replicas and ``sentinels`` sentinels (quorum: a majority); yields once every
    sentinel names the master and knows each replica and each other sentinel, and every replica is in sync."""
    every_port = _free_ports(1 + replicas + sentinels)
    data_ports, sentinel_ports = every_port[: 1 + replicas], every_port[1 + replicas :]
    master = data_ports[0]
    with _processes() as processes:
        topology = SentinelSet(processes, data_ports, sentinel_ports)
        for port in data_ports:
            processes.start(port, topology.data_args(port, None if port == master else master))
        # Replicas in sync before the sentinels start: a sentinel learns of replicas from the master's INFO,
        # which it asks at once and then only every 10 s.
        wait_until_blocking(lambda: all(map(_link_up, data_ports)), START_WITHIN, what="replicas in sync")
        quorum = sentinels // 2 + 1
        for port in sentinel_ports:
            workdir = processes.node_dir(port)
            conf = _sentinel_conf(port, workdir, master, quorum, down_after_ms, failover_timeout_ms)
            processes.start(port, [str(conf), "--sentinel"])
        wait_until_blocking(lambda: topology.ready(master), START_WITHIN, what=topology._describe, interval=0.1)
        yield topology


# --- one of each for a whole CI run ----------------------------------------------------------------------


def _stop(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def serve(env_file: Path, *, parent_alive: Callable[[], bool]) -> None:
    """Start a cluster and a sentinel set, write their URLs to ``env_file`` as shell ``export`` lines once
    both are ready, and keep them until SIGTERM or SIGINT, or until the parent process is gone."""
    with redis_cluster(**SHARED) as cluster, redis_sentinel(**SHARED_SENTINEL) as sentinel:
        lines = [f"export PRESENCE_TEST_CLUSTER_URL={cluster.url}", f"export PRESENCE_TEST_SENTINEL_URL={sentinel.url}"]
        partial = env_file.with_name(env_file.name + ".partial")
        partial.write_text("\n".join(lines) + "\n")
        partial.replace(env_file)  # whoever waits for the file never reads half of it
        print("\n".join(lines), flush=True)
        while parent_alive():
            time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.helpers.topologies", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serving = commands.add_parser("serve", help="run a 3+3 cluster and a 1+1+3 sentinel set until stopped")
    serving.add_argument("--env-file", type=Path, required=True, help="where to write the two export lines")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    parent = os.getppid()
    try:
        serve(args.env_file, parent_alive=lambda: os.getppid() == parent)
    except SystemExit as stopped:
        return 0 if stopped.code == 128 + signal.SIGTERM else 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
