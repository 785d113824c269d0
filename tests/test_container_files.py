"""The container files, where a test can show what they do without a Docker engine.

.ci/check-container covers the rest, also without Docker: docker-compose.yml and its two examples
against the Compose Specification, hadolint on the Dockerfile, and the image's steps run outside Docker
(the build stage's COPY lines and ``pip wheel``, a venv holding only the wheels, the ENTRYPOINT serving, a
presence round trip, a SIGTERM stop). Here: the Dockerfile's HEALTHCHECK command run against the real
server, the build context keeping what the build stage copies, the scaled example's proxy letting a
held long-poll finish, and the cluster example's nodes, config and cluster-create script forming (outside
Docker) a cluster that the servers' URL reaches by the names the nodes announce. What the files merely say
(image tags, ports, a USER line) is not repeated here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fnmatch
import functools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp import web
from redis.asyncio import RedisCluster

from presence_server.app import create_app
from presence_server.config import Settings
from presence_server.store import open_redis
from tests.helpers.app import AiohttpClient, AiohttpServer, Client, serve
from tests.helpers.redis import free_port
from tests.helpers.wait import wait_until_blocking

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()
DOCKERIGNORE = (ROOT / ".dockerignore").read_text()
COMPOSE = (ROOT / "docker-compose.yml").read_text()

Instruction = tuple[str, str]  # keyword (upper case), arguments


def stages(dockerfile: str) -> list[list[Instruction]]:
    """The logical instructions of each stage (comments dropped, backslash continuations joined)."""
    result: list[list[Instruction]] = []
    pending = ""
    for raw in dockerfile.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        pending = ""
        if keyword.upper() == "FROM":
            result.append([])
        assert result, f"{keyword} before the first FROM"
        result[-1].append((keyword.upper(), args.strip()))
    return result


# -- the HEALTHCHECK command, run against the real server -----------------------------------------


def healthcheck_command() -> list[str]:
    """The final stage's HEALTHCHECK command, in exec form."""
    checks = [args for keyword, args in stages(DOCKERFILE)[-1] if keyword == "HEALTHCHECK"]
    assert checks, "no HEALTHCHECK in the final stage"
    match = re.search(r"(?:^|\s)CMD\s+(\[.*\])$", checks[-1])
    assert match, f"HEALTHCHECK is not CMD in exec form: {checks[-1]!r}"
    command: list[str] = json.loads(match.group(1))
    return command


async def run_healthcheck(port: int) -> int:
    """Run the Dockerfile's HEALTHCHECK command (with this interpreter for ``python``) against ``port``."""
    command = healthcheck_command()
    assert command[0] == "python"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *command[1:],
        env={**os.environ, "PRESENCE_PORT": str(port)},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await asyncio.wait_for(proc.wait(), timeout=30)


async def test_healthcheck_passes_while_the_store_answers(client: Client) -> None:
    assert client.server.port is not None
    assert await run_healthcheck(client.server.port) == 0


async def test_healthcheck_fails_while_redis_is_unreachable(
    aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, prefix: str
) -> None:
    # A real client of a port where no Redis listens: /health answers 503, and the check must fail.
    dead = open_redis(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    app: web.Application = create_app(Settings(key_prefix=prefix), redis=dead, sweeper=False)
    test_client = await serve(aiohttp_server, aiohttp_client, app)
    try:
        assert (await test_client.get("/health")).status == 503
        assert test_client.server.port is not None
        assert await run_healthcheck(test_client.server.port) == 1
    finally:
        await test_client.close()  # the app first: its wake-up listener uses the client
        await dead.aclose()


async def test_healthcheck_fails_when_nothing_listens() -> None:
    assert await run_healthcheck(free_port()) == 1


# -- the build context keeps what the build stage copies ------------------------------------------


def ignored(dockerignore: str, name: str) -> bool:
    """Whether .dockerignore leaves ``name`` (a path the Dockerfile copies) out of the build context.
    Docker's rules for these: patterns match from the context root, ``**/`` at any depth, ``!`` re-includes,
    the last matching line wins, and a directory left out takes everything under it along."""
    excluded = False
    parts = Path(name).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in dockerignore.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        bare = pattern.removeprefix("**/")
        if any(
            fnmatch.fnmatchcase(prefix, pattern) or (bare != pattern and fnmatch.fnmatchcase(Path(prefix).name, bare))
            for prefix in prefixes
        ):
            excluded = not negate
    return excluded


def dropped_sources(dockerfile: str, dockerignore: str) -> list[str]:
    """What the build stage's COPY lines name that the build context would not hold."""
    copied = [part for keyword, args in stages(dockerfile)[0] if keyword == "COPY" for part in args.split()[:-1]]
    assert copied, "the build stage copies nothing"
    return [source for source in copied if ignored(dockerignore, source.rstrip("/"))]


def test_the_build_context_keeps_what_the_build_stage_copies() -> None:
    # A Docker build fails on a COPY of something .dockerignore left out; .ci/check-container copies the
    # sources itself and cannot see it.
    assert dropped_sources(DOCKERFILE, DOCKERIGNORE) == []


@pytest.mark.parametrize(
    "extra", ["presence_server", "requirements/", "**/README.md", "*.toml"], ids=["dir", "parent", "any-depth", "glob"]
)
def test_an_ignore_line_that_drops_a_copied_source_is_caught(extra: str) -> None:
    assert dropped_sources(DOCKERFILE, DOCKERIGNORE + f"\n{extra}\n") != []


def test_a_re_included_source_is_kept() -> None:
    assert dropped_sources(DOCKERFILE, DOCKERIGNORE + "\npresence_server\n!presence_server\n") == []


# -- the scaled example's proxy lets a held long-poll finish --------------------------------------


def proxy_read_timeout(compose: str) -> float:
    """The nginx ``proxy_read_timeout`` (seconds) in the scaled example of docker-compose.yml's comments."""
    example = re.search(r"^# BEGIN scaled example\n(.*?)^# END scaled example$", compose, re.M | re.S)
    assert example, "no scaled example between '# BEGIN scaled example' and '# END scaled example'"
    timeout = re.search(r"proxy_read_timeout (\d+)s;", example.group(1))
    assert timeout, "the scaled example's proxy sets no proxy_read_timeout: nginx's default (60 s) would apply"
    return float(timeout.group(1))


def test_the_scaled_examples_proxy_outlasts_the_long_poll_hold() -> None:
    # nginx answers 504 to a subscribe poll it waited on longer than this; the server holds one this long.
    assert proxy_read_timeout(COMPOSE) > Settings().longpoll_hold


def test_a_proxy_timeout_below_the_hold_is_caught() -> None:
    shorter = re.sub(r"proxy_read_timeout \d+s;", "proxy_read_timeout 60s;", COMPOSE)
    assert shorter != COMPOSE
    assert not proxy_read_timeout(shorter) > Settings().longpoll_hold


# -- the cluster example forms a cluster the servers' URL reaches ---------------------------------


def example(compose: str, name: str) -> str:
    """The lines between ``# BEGIN <name> example`` and ``# END <name> example`` without their leading "# ",
    as .ci/check-container and the README extract them."""
    found = re.search(rf"^# BEGIN {name} example\n(.*?)^# END {name} example$", compose, re.M | re.S)
    assert found, f"no {name} example between '# BEGIN {name} example' and '# END {name} example'"
    return re.sub(r"^# ?", "", found.group(1), flags=re.M)


def entries(yaml: str, section: str) -> dict[str, str]:
    """The entries of a top-level mapping (``services:``) of a plain YAML text: name -> the lines under it.
    Enough for the example, which the Compose Specification check has seen already; no YAML parser is
    among the test dependencies."""
    found = re.search(rf"^{section}:\n(.*?)(?=^\S|\Z)", yaml, re.M | re.S)
    assert found, f"no {section}: section"
    parts = re.split(r"^  ([\w.-]+):.*\n", found.group(1), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def literal(block: str, opener: str) -> str:
    """The text of the literal block scalar (``|``) that follows the line ending in ``opener``, dedented."""
    found = re.search(rf"^( *){re.escape(opener)}\n((?:\1 +\S.*\n|\n)+)", block, re.M)
    assert found, f"no literal block after {opener!r}"
    lines = found.group(2).splitlines()
    depth = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
    return "".join(f"{line[depth:]}\n" for line in lines)


@dataclasses.dataclass(frozen=True)
class ClusterExample:
    nodes: dict[str, list[str]]  # service -> redis-server's arguments after the config file
    config: str  # the nodes' shared config file
    create: str  # cluster-create's shell script, as compose hands it to sh ("$$" is a literal "$")
    urls: dict[str, str]  # presence service -> its PRESENCE_REDIS_URL


def cluster_example(compose: str) -> ClusterExample:
    text = example(compose, "cluster")
    services = entries(text, "services")
    nodes: dict[str, list[str]] = {}
    for name, block in services.items():
        command = re.search(r"^    command: \[redis-server, (\S+), (.*)\]$", block, re.M)
        if command:
            assert command.group(1) == "/usr/local/etc/redis/cluster.conf", f"{name} runs another config file"
            nodes[name] = command.group(2).split(", ")
    anchors = dict(re.findall(r"^x-([\w-]+): &\S+\n((?:(?: .*)?\n)+)", text, re.M))
    urls = {}
    for name, block in services.items():
        merged = "".join(anchors.get(ref, "") for ref in re.findall(r"<<: \*([\w-]+)", block)) + block
        if url := re.search(r"PRESENCE_REDIS_URL: (\S+)", merged):
            urls[name] = url.group(1)
    config = literal(entries(text, "configs")["redis-cluster"], "content: |")
    return ClusterExample(nodes, config, literal(services["cluster-create"], "- |").replace("$$", "$"), urls)


def named_nodes(url: str) -> list[str]:
    """The host names of a ``redis+cluster://host:port,...`` URL."""
    scheme, _, hosts = url.partition("://")
    assert scheme == "redis+cluster", url
    return [item.rpartition(":")[0] for item in hosts.split(",")]


def misnamed(found: ClusterExample) -> list[str]:
    """What keeps the example's servers from reaching its nodes by name: a client follows CLUSTER SLOTS and
    MOVED to the names the nodes announce, so each node must announce its own service name, as the
    preferred endpoint, and the servers' URLs must name nodes that cluster-create puts in the cluster."""
    problems = [
        f"{name} announces no hostname of its own"
        for name, args in found.nodes.items()
        if dict(zip(args[::2], args[1::2], strict=False)).get("--cluster-announce-hostname") != name
    ]
    if "cluster-preferred-endpoint-type hostname" not in found.config.splitlines():
        problems.append("the nodes send clients to their addresses, not their names")
    created = re.findall(r"\b([\w-]+):6379\b", found.create)
    problems += [f"cluster-create leaves {name} out" for name in found.nodes if name not in created]
    if not found.urls:
        problems.append("no server has a PRESENCE_REDIS_URL")
    for server, url in found.urls.items():
        problems += [f"{server} names {host}, not a node" for host in named_nodes(url) if host not in found.nodes]
    return problems


def test_the_cluster_examples_servers_reach_its_nodes_by_the_names_they_announce() -> None:
    found = cluster_example(COMPOSE)
    assert len(found.nodes) == 6, found.nodes
    assert sorted(found.urls) == ["presence-1", "presence-2"]
    assert misnamed(found) == []


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("redis+cluster://node1:6379,", "redis+cluster://redis:6379,"),
        ("--cluster-announce-hostname, node2]", "--cluster-announce-hostname, node1]"),
        ("cluster-preferred-endpoint-type hostname", "cluster-preferred-endpoint-type ip"),
        ("node5:6379 node6:6379", "node5:6379"),
    ],
    ids=["url", "announce", "endpoint-type", "create"],
)
def test_a_misnamed_cluster_example_is_caught(old: str, new: str) -> None:
    changed = COMPOSE.replace(old, new)
    assert changed != COMPOSE
    assert misnamed(cluster_example(changed)) != []


def ask(port: int, *command: str) -> Any:
    """One node's reply (RESP2, no reply parsing), or None if it does not answer."""
    try:
        with redis.Redis("127.0.0.1", port, decode_responses=True, protocol=2, socket_timeout=5) as client:
            return client.execute_command(*command)
    except (redis.RedisError, OSError):
        return None


def answers(port: int, proc: subprocess.Popen[bytes], log: Path) -> bool:
    assert proc.poll() is None, f"redis-server exited with {proc.returncode}: {log.read_text(errors='replace')}"
    return ask(port, "PING") is not None


@contextlib.contextmanager
def example_nodes(found: ClusterExample, workdir: Path) -> Iterator[dict[str, int]]:
    """The example's nodes on loopback: its config file and each node's command, with the node's service name
    announced as "localhost" instead (not the address the nodes gossip, so CLUSTER SLOTS shows which of the
    two clients are sent to) and a port of its own. Yields service name -> port once every node answers
    PING, as the nodes' health check asks."""
    for tool in ("redis-server", "redis-cli"):
        assert shutil.which(tool), f"{tool} is not on PATH: apt-get install redis-server redis-tools"
    config = workdir / "cluster.conf"
    config.write_text(found.config)
    ports: list[int] = []
    while len(ports) < 2 * len(found.nodes):  # a data port and a cluster bus port each, all distinct
        if (port := free_port()) not in ports:
            ports.append(port)
    port_of = dict(zip(found.nodes, ports, strict=False))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for (name, args), bus in zip(found.nodes.items(), ports[len(found.nodes) :], strict=True):
            (workdir / name).mkdir()
            local = ["--port", str(port_of[name]), "--cluster-port", str(bus), "--bind", "127.0.0.1"]
            with (workdir / f"{name}.log").open("wb") as log:
                command = ["redis-server", str(config), *("localhost" if arg == name else arg for arg in args), *local]
                processes.append(subprocess.Popen(command, cwd=workdir / name, stdout=log, stderr=subprocess.STDOUT))
        for (name, port), proc in zip(port_of.items(), processes, strict=True):
            started = functools.partial(answers, port, proc, workdir / f"{name}.log")
            wait_until_blocking(started, 10, what=f"{name} answering PING")
        yield port_of
    finally:
        for proc in processes:
            proc.terminate()
        for proc in processes:
            proc.wait(timeout=10)


async def run_script(script: str) -> tuple[int, str]:
    """Exit status and output of ``sh -c script`` (cluster-create's command)."""
    proc = await asyncio.create_subprocess_exec(
        "sh", "-c", script, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return proc.returncode, output.decode(errors="replace")


@pytest.mark.timeout(180)
async def test_the_cluster_examples_nodes_and_cluster_create_form_a_cluster_the_servers_reach(
    tmp_path: Path, aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, prefix: str
) -> None:
    # The example outside Docker, each service name replaced by a loopback port: the schema check cannot
    # see inside the config file or the script, and a typo there fails only on a Docker engine.
    found = cluster_example(COMPOSE)
    with example_nodes(found, tmp_path) as port_of:

        def local(text: str) -> str:
            return re.sub(r"\b([\w-]+):6379\b", lambda m: f"127.0.0.1:{port_of[m.group(1)]}", text)

        code, output = await run_script(local(found.create))
        assert code == 0, output
        assert "hash slots allocation" in output  # it created the cluster
        # At once, with no waiting here: the servers start when the script ends, so it ends on a whole cluster.
        assert [ask(port, "CLUSTER", "INFO").split()[0] for port in port_of.values()] == ["cluster_state:ok"] * 6
        slots = ask(port_of["node1"], "CLUSTER", "SLOTS")
        assert {str(master[0]) for _first, _last, master, *_replicas in slots} == {"localhost"}

        code, output = await run_script(local(found.create))  # compose's next `up`: nothing to create
        assert code == 0, output
        assert "hash slots allocation" not in output

        for url in found.urls.values():
            client = open_redis(local(url), socket_connect_timeout=2)
            app: web.Application = create_app(Settings(key_prefix=prefix), redis=client, sweeper=False)
            test_client = await serve(aiohttp_server, aiohttp_client, app)
            try:
                assert (await test_client.get("/health")).status == 200
                assert isinstance(client, RedisCluster)
                assert len(client.get_primaries()) == 3
            finally:
                await test_client.close()
                await client.aclose()
