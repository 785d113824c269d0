"""Heartbeat throughput of several keysets over a local Redis Cluster (3 masters, each with a replica)
against the same load on one Redis, in the same run, with each Redis's CPU per heartbeat.

``python -m bench.cluster`` (``--help`` for the knobs; bench/README.md says what each figure means).
It starts one redis-server and a cluster (tests/helpers/topologies.py: ``redis-cli --cluster create``),
picks keyset names by the slot of their hash tag so that every master owns the same number of them,
starts server processes (``python -m presence_server``) on each topology, makes the uuids present in
every keyset, then runs wrk (bench/heartbeat.lua given a comma list of keysets: every keyset in turn)
on the one Redis and on the cluster in turn, the order reversed every other round. It stops everything
on the way out. Nothing here runs in CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import redis
from redis.crc import key_slot

from bench import live
from bench.live import Child, Children, free_port, given_options, knob, listed, machine_busy, say
from presence_server.store.keys import KeysetKeys
from tests.helpers.topologies import Cluster, NodeEntry, redis_cluster

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "clbench"
SCRIPT = "bench/heartbeat.lua"
SLOTS = 16384

# (first slot, last slot, port of the master serving them)
SlotRange = tuple[int, int, int]


def keyset_slot(sub_key: str, prefix: str = PREFIX) -> int:
    """The cluster slot of every key of a keyset (they share its hash tag)."""
    return key_slot(KeysetKeys(prefix, sub_key).timetoken.encode())


def owner(slot: int, ranges: Sequence[SlotRange]) -> int:
    for first, last, port in ranges:
        if first <= slot <= last:
            return port
    raise LookupError(f"no master serves slot {slot}")


def pick_keysets(ranges: Sequence[SlotRange], per_master: int, stem: str = "ks", prefix: str = PREFIX) -> list[str]:
    """The first names ``<stem>-<n>`` that give every master ``per_master`` keysets, in the order found."""
    masters = sorted({port for _, _, port in ranges})
    taken: dict[int, list[str]] = {port: [] for port in masters}
    n = 0
    while any(len(names) < per_master for names in taken.values()):
        if n > 100 * SLOTS:
            raise RuntimeError(f"no {per_master} keysets per master found among {n} names")
        name = f"{stem}-{n}"
        names = taken[owner(keyset_slot(name, prefix), ranges)]
        if len(names) < per_master:
            names.append(name)
        n += 1
    return sorted((name for names in taken.values() for name in names), key=lambda name: int(name.rsplit("-")[1]))


def master_ranges(view: Sequence[NodeEntry]) -> list[SlotRange]:
    return sorted((first, last, node.port) for node in view if node.is_master for first, last in node.slots)


# -- one topology's Redis nodes and server processes ------------------------------------------------------


@dataclasses.dataclass
class Node:
    """One redis-server, read through INFO: its CPU (user + system) and the scripts it ran."""

    label: str
    port: int
    client: redis.Redis

    def read(self) -> tuple[float, int]:
        cpu = self.client.info("cpu")
        evalsha = self.client.info("commandstats").get("cmdstat_evalsha", {})
        return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), int(evalsha.get("calls", 0))


@dataclasses.dataclass
class Spent:
    """What one node spent over a run."""

    cpu: float  # s
    scripts: int  # EVALSHA calls: the heartbeats it served (and a sweep now and then)


@dataclasses.dataclass
class Run:
    topology: str
    rps: float
    requests: int
    errors: int
    seconds: float
    p50_ms: list[float]
    p99_ms: list[float]
    server_cpu: float
    wrk_cpu: float
    machine_cpu: float
    nodes: dict[str, Spent]

    def redis_us(self, label: str) -> float:
        return 1e6 * self.nodes[label].cpu / max(1, self.requests)

    def lines(self) -> str:
        per = 1e6 / max(1, self.requests)
        head = (
            f"  {self.topology:<24} {self.rps:7.0f} heartbeats/s, {self.errors} errors, p50 {listed(self.p50_ms)} "
            f"ms, p99 {listed(self.p99_ms)} ms; CPU per heartbeat: servers {per * self.server_cpu:.0f} µs, wrk "
            f"{per * self.wrk_cpu:.0f} µs; machine busy {self.machine_cpu / self.seconds:.2f} cores"
        )
        nodes = [
            f"{label} {self.redis_us(label):.1f} µs ({spent.cpu / self.seconds:.2f} core, "
            f"{spent.scripts / max(1, self.requests):.0%} of the scripts)"
            for label, spent in self.nodes.items()
        ]
        return head + f"\n  {'':<24} Redis CPU per heartbeat (of all): " + ", ".join(nodes)


@dataclasses.dataclass
class Topology:
    name: str
    url: str
    nodes: list[Node]
    servers: list[Child] = dataclasses.field(default_factory=list)

    def masters(self) -> list[Node]:
        return [node for node in self.nodes if not node.label.startswith("replica")]


def start_servers(children: Children, topology: Topology, count: int) -> None:
    for i in range(count):
        port = free_port()
        argv = [sys.executable, "-m", "presence_server", "--host", "127.0.0.1", "--port", str(port)]
        env = dict(os.environ, PYTHONPATH=str(ROOT), PRESENCE_KEY_PREFIX=PREFIX, PRESENCE_REDIS_URL=topology.url)
        child = children.start(f"{topology.name.split()[0]}-server-{i}", argv, port, env=env)
        topology.servers.append(child.wait_up(60))


def measure(topology: Topology, keysets: Sequence[str], seconds: float, opts: Options) -> Run:
    per_server = max(1, opts.connections // len(topology.servers))
    jobs = [(server.port, per_server) for server in topology.servers]
    wrk_opts = live.Options(users=opts.users, channels=opts.channels)
    servers, busy = [s.cpu() for s in topology.servers], machine_busy()
    nodes = {node.label: node.read() for node in topology.nodes}
    run = live.wrk(jobs, seconds, wrk_opts, sub_key=",".join(keysets), script=SCRIPT)
    spent = {}
    for node in topology.nodes:
        cpu, scripts = node.read()
        spent[node.label] = Spent(cpu - nodes[node.label][0], scripts - nodes[node.label][1])
    return Run(
        topology.name,
        sum(run.rps),
        run.requests,
        run.errors,
        run.seconds,
        run.p50_ms,
        run.p99_ms,
        sum(s.cpu() for s in topology.servers) - sum(servers),
        run.wrk_cpu,
        machine_busy() - busy,
        spent,
    )


def populate(topology: Topology, keysets: Sequence[str], opts: Options) -> None:
    port = topology.servers[0].port

    async def every() -> list[float]:
        return await asyncio.gather(
            *(live.populate(port, opts.users, opts.channels, concurrency=8, sub_key=ks) for ks in keysets)
        )

    started = time.perf_counter()
    asyncio.run(every())
    rate = len(keysets) * opts.users / (time.perf_counter() - started)
    say(f"  {topology.name}: {opts.users} uuids on {opts.channels} channels of each keyset made present ({rate:.0f}/s)")


# -- the verdict ------------------------------------------------------------------------------------------


def summary(runs: dict[str, list[Run]], single: Topology, cluster: Topology) -> list[live.Figure]:
    cores = os.cpu_count() or 1
    rates = {name: [run.rps for run in each] for name, each in runs.items()}
    one, many = statistics.median(rates[single.name]), statistics.median(rates[cluster.name])
    # Each round's two runs are side by side in time: their ratio moves less with the machine's other load.
    ratios = [c / s for s, c in zip(rates[single.name], rates[cluster.name], strict=True)]
    errors = sum(run.errors for each in runs.values() for run in each)
    say("\n#### summary")
    figure = live.Figure(f"heartbeat throughput, {cluster.name} / {single.name}", "printed beside it, no errors")
    text = (
        f"median ratio {statistics.median(ratios):.2f} (rounds {listed(ratios, ', ', 2)}; medians {many:.0f} "
        f"against {one:.0f} heartbeats/s; {errors} errors)"
    )
    figure.values["throughput"] = (text, errors == 0)
    for topology in (single, cluster):
        each = runs[topology.name]
        requests = sum(run.requests for run in each)
        seconds = sum(run.seconds for run in each)
        per_node = {n.label: 1e6 * sum(run.nodes[n.label].cpu for run in each) / requests for n in topology.nodes}
        busy = {n.label: sum(run.nodes[n.label].cpu for run in each) / seconds for n in topology.nodes}
        masters = [n.label for n in topology.masters()]
        served = {
            label: 1e6
            * sum(run.nodes[label].cpu for run in each)
            / max(1, sum(run.nodes[label].scripts for run in each))
            for label in masters
        }
        rate = requests / seconds
        # Keysets load the masters evenly: the busiest one reaches a whole core first.
        redis_ceiling = rate / max(busy[label] for label in masters)
        total_us = 1e6 * sum(r.server_cpu + r.wrk_cpu + sum(s.cpu for s in r.nodes.values()) for r in each) / requests
        machine = sum(run.machine_cpu for run in each) / seconds
        say(
            f"  {topology.name}: {rate:.0f} heartbeats/s over every round; Redis CPU per heartbeat (of all): "
            + ", ".join(f"{label} {us:.1f} µs" for label, us in per_node.items())
            + f" = {sum(per_node.values()):.1f} µs in all; per heartbeat a master served: "
            + ", ".join(f"{label} {us:.1f} µs" for label, us in served.items())
            + f"\n  {'':<4} busiest master {max(busy[label] for label in masters):.2f} of a core; the machine "
            f"{machine:.2f} of {cores} cores (every process: {total_us:.0f} µs per heartbeat, so {cores} cores "
            f"allow about {cores * 1e6 / total_us:.0f}/s); were Redis the only limit, about {redis_ceiling:.0f}/s"
        )
        figure.values[topology.name] = (
            f"Redis CPU per heartbeat {listed(list(per_node.values()), '+')} µs; busiest master "
            f"{max(busy[label] for label in masters):.2f} core; Redis-bound ceiling ~{redis_ceiling:.0f}/s",
            True,
        )
    return [figure]


@dataclasses.dataclass
class Options:
    masters: int = knob(3, "cluster masters")
    replicas: int = knob(1, "replicas per cluster master")
    keysets_per_master: int = knob(2, "keysets each master owns (picked by slot)")
    servers: int = knob(2, "server processes per topology")
    users: int = knob(2000, "uuids present per keyset")
    channels: int = knob(4, "channels per keyset")
    connections: int = knob(64, "wrk connections in all (split over the server processes)")
    seconds: float = knob(5.0, "each run, s")
    warmup: float = knob(2.0, "unmeasured run of each topology first, s")
    rounds: int = knob(3, "runs of each topology, in alternating order")
    redis_server: str = knob("redis-server", "the redis-server binary of the single Redis")


def parse_args(argv: Sequence[str] | None) -> Options:
    parser, given = given_options("python -m bench.cluster", Options, argv)
    opts = Options(**given)
    counts = [opts.keysets_per_master, opts.servers, opts.users, opts.channels, opts.rounds]
    if min(counts) < 1 or opts.masters < 3 or opts.replicas < 0 or opts.connections < opts.servers:
        parser.error("counts must be positive, at least 3 masters, --connections at least --servers")
    return opts


def open_topologies(
    stack: contextlib.ExitStack, opts: Options, children: Children, workdir: Path
) -> tuple[Topology, Topology, list[str]]:
    rcli = stack.enter_context(live.redis_server(opts.redis_server, workdir, children))
    port = int(rcli.connection_pool.connection_kwargs["port"])
    single = Topology("one Redis", f"redis://127.0.0.1:{port}/0", [Node("redis", port, rcli)])
    made: Cluster = stack.enter_context(redis_cluster(opts.masters, opts.replicas))
    view = made.view()
    ranges = master_ranges(view)
    keysets = pick_keysets(ranges, opts.keysets_per_master)
    nodes = []
    for i, port in enumerate(made.masters()):
        mine = [ks for ks in keysets if owner(keyset_slot(ks), ranges) == port]
        nodes.append(Node(f"master{i + 1}", port, stack.enter_context(redis.Redis(port=port))))
        say(f"  cluster master{i + 1} (port {port}): keysets {', '.join(mine)} (slots {keyset_slots(mine)})")
    replicas = sorted(node.port for node in view if not node.is_master)
    for i, port in enumerate(replicas):
        nodes.append(Node(f"replica{i + 1}", port, stack.enter_context(redis.Redis(port=port))))
    cluster = Topology(f"cluster of {opts.masters}", made.url, nodes)
    return single, cluster, keysets


def keyset_slots(names: Sequence[str]) -> str:
    return ", ".join(str(keyset_slot(name)) for name in names)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as workdir, contextlib.ExitStack() as stack:
        children = Children(Path(workdir))
        stack.callback(children.stop_all)
        single, cluster, keysets = open_topologies(stack, opts, children, Path(workdir))
        stack.callback(children.stop_all)  # the servers, before the cluster goes (the stack unwinds in reverse)
        redis_version = single.nodes[0].client.info("server")["redis_version"]
        say(
            f"machine: {platform.platform()}, {os.cpu_count()} CPUs shared with other work, load average "
            f"{os.getloadavg()[0]:.2f}; Python {platform.python_version()}, redis-server {redis_version}; "
            f"{len(keysets)} keysets, {opts.servers} server processes per topology, wrk -t1 -c{opts.connections}"
            f" in all, {opts.replicas} replica(s) per master"
        )
        for topology in (single, cluster):
            start_servers(children, topology, opts.servers)
            populate(topology, keysets, opts)
        for topology in (single, cluster) if opts.warmup > 0 else ():
            measure(topology, keysets, opts.warmup, opts)
        runs: dict[str, list[Run]] = {single.name: [], cluster.name: []}
        for number in range(opts.rounds):
            say(f"  round {number + 1}")
            for topology in (single, cluster) if number % 2 == 0 else (cluster, single):
                run = measure(topology, keysets, opts.seconds, opts)
                runs[topology.name].append(run)
                say(run.lines())
        figures = summary(runs, single, cluster)
    say(f"\n#### ({time.monotonic() - started:.0f} s, load average now {os.getloadavg()[0]:.2f})")
    for figure in figures:
        say(f"  {figure.name} (target {figure.target})")
        for label, (text, ok) in figure.values.items():
            say(f"    {'PASS' if ok else 'FAIL'}  {label:<16} {text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
