"""The container files, where a test can show what they do without a Docker engine.

.ci/check-container covers the rest, also without Docker: docker-compose.yml and its scaled example
against the Compose Specification, hadolint on the Dockerfile, and the image's steps run outside Docker
(the build stage's COPY lines and ``pip wheel``, a venv holding only the wheels, the ENTRYPOINT serving, a
presence round trip, a SIGTERM stop). Here: the Dockerfile's HEALTHCHECK command run against the real
server, the build context keeping what the build stage copies, and the scaled example's proxy letting a
held long-poll finish. What the files merely say (image tags, ports, a USER line) is not repeated here.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import re
import sys
from pathlib import Path

import pytest
from aiohttp import web

from presence_server.app import create_app
from presence_server.config import Settings
from presence_server.store import open_redis
from tests.helpers.app import AiohttpClient, AiohttpServer, Client, serve
from tests.helpers.redis import free_port

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
