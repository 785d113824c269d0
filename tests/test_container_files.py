"""The container files (Dockerfile, .dockerignore, docker-compose.yml) hold what issue 4 asks of them.

No Docker engine runs here, so these read the files as text: a small Dockerfile reader (instructions,
stages) and an indentation reader for the YAML subset docker-compose.yml uses (PyYAML is not a
dependency). Every check is also run against a copy of its file with the property taken out, so each
check is shown to fail when the property goes. The image's HEALTHCHECK command itself runs against the
real server. .ci/check-container does the heavier checks (compose schema, hadolint, wheel install).
"""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import json
import os
import re
import shlex
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from presence_server.app import RUNNER_OPTIONS, create_app
from presence_server.config import Settings
from presence_server.store import open_redis
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()
DOCKERIGNORE = (ROOT / ".dockerignore").read_text()
COMPOSE = (ROOT / "docker-compose.yml").read_text()


# --- reading a Dockerfile -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str

    def exec_form(self) -> list[str]:
        """The JSON (exec) form of CMD/ENTRYPOINT/HEALTHCHECK CMD arguments."""
        args = self.args
        if self.keyword == "HEALTHCHECK":  # [--option=value ...] CMD <command>
            match = re.search(r"(?:^|\s)CMD\s+(.*)$", args)
            assert match, f"HEALTHCHECK without CMD: {args!r}"
            args = match.group(1)
        assert args.startswith("["), f"{self.keyword} is not in exec (JSON) form: {self.args!r}"
        form = json.loads(args)
        assert isinstance(form, list) and all(isinstance(part, str) for part in form)
        return form


def instructions(text: str) -> list[Instruction]:
    """Logical instructions: comment lines dropped, backslash continuations joined."""
    result: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        logical = pending + line
        pending = ""
        keyword, _, args = logical.partition(" ")
        result.append(Instruction(keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return result


def stages(text: str) -> list[list[Instruction]]:
    """One list per FROM, starting with that FROM."""
    result: list[list[Instruction]] = []
    for ins in instructions(text):
        if ins.keyword == "FROM":
            result.append([])
        assert result, f"{ins.keyword} before the first FROM"
        result[-1].append(ins)
    return result


def final_stage(text: str) -> list[Instruction]:
    all_stages = stages(text)
    assert all_stages, "no FROM"
    return all_stages[-1]


def only(stage: list[Instruction], keyword: str) -> list[Instruction]:
    return [ins for ins in stage if ins.keyword == keyword]


def env_of(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in only(stage, "ENV"):
        for pair in shlex.split(ins.args):
            name, sep, value = pair.partition("=")
            assert sep, f"ENV in the legacy 'ENV name value' form: {ins.args!r}"
            env[name] = value
    return env


# --- the Dockerfile's properties ------------------------------------------------------------------


def check_multi_stage_on_pinned_slim_base(text: str) -> None:
    froms = [stage[0].args.split() for stage in stages(text)]
    assert len(froms) >= 2, "not a multi-stage build"
    images = {parts[0] for parts in froms}
    assert len(images) == 1, f"the stages use different base images: {images}"
    image = images.pop()
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-[a-z]+)?", image), (
        f"base {image!r} is not a slim Python 3.11 image pinned to a patch release"
    )


def check_build_stage_makes_a_wheel(text: str) -> None:
    runs = " ".join(ins.args for ins in only(stages(text)[0], "RUN"))
    assert "pip wheel" in runs or "-m build" in runs, "the first stage builds no wheel"


def check_final_stage_installs_only_wheels_without_cache(text: str) -> None:
    stage = final_stage(text)
    assert env_of(stage).get("PIP_NO_CACHE_DIR") in ("1", "true", "on"), "PIP_NO_CACHE_DIR is not set"
    installs = [ins.args for ins in only(stage, "RUN") if "pip" in ins.args and " install " in ins.args]
    assert installs, "the final stage installs nothing with pip"
    for command in installs:
        assert "--no-cache-dir" in command, f"pip install without --no-cache-dir: {command}"
        assert "--no-index" in command and "/wheels" in command, f"not an install of the built wheels: {command}"
        assert "/opt/venv" in command, f"not an install into the venv: {command}"
    copied = " ".join(ins.args for ins in only(stage, "COPY") + only(stage, "ADD"))
    assert "presence_server" not in copied and "pyproject" not in copied, "the final stage copies the source tree"
    runs = " ".join(ins.args for ins in only(stage, "RUN"))
    for tool in ("apt-get", "gcc", "build-essential"):
        assert tool not in runs, f"the final stage installs build tools ({tool})"


def check_final_stage_runs_as_non_root(text: str) -> None:
    users = only(final_stage(text), "USER")
    assert users, "the final stage has no USER: it would run as root"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0", ""), f"the final stage runs as {users[-1].args!r}"


def check_healthcheck_uses_python_on_health(text: str) -> None:
    checks = only(final_stage(text), "HEALTHCHECK")
    assert checks, "no HEALTHCHECK in the final stage"
    assert checks[-1].args.split()[0] != "NONE", "HEALTHCHECK NONE"
    command = checks[-1].exec_form()
    assert command[:2] == ["python", "-c"], f"the health check is not a python one-liner: {command}"
    assert "urllib" in command[2] and "/health" in command[2], f"the health check does not ask /health: {command}"


def check_exposes_8090(text: str) -> None:
    ports = " ".join(ins.args for ins in only(final_stage(text), "EXPOSE")).split()
    assert "8090" in ports or "8090/tcp" in ports, f"EXPOSE is {ports}"


def check_entry_point_is_presence_server(text: str) -> None:
    entries = only(final_stage(text), "ENTRYPOINT") or only(final_stage(text), "CMD")
    assert entries, "no ENTRYPOINT"
    assert entries[-1].exec_form()[0] == "presence-server", f"the entry point is {entries[-1].args}"


def check_listens_on_all_interfaces_on_8090(text: str) -> None:
    env = env_of(final_stage(text))
    assert env.get("PRESENCE_HOST") == "0.0.0.0", f"PRESENCE_HOST is {env.get('PRESENCE_HOST')!r}"
    assert env.get("PRESENCE_PORT", "8090") == "8090", f"PRESENCE_PORT is {env.get('PRESENCE_PORT')!r}"


# --- .dockerignore --------------------------------------------------------------------------------

MUST_IGNORE = (".git", ".venv", "node_modules", "__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache", "tests")


def ignore_patterns(text: str) -> list[str]:
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def ignores(patterns: list[str], name: str) -> bool:
    """Whether a top-level (or, for **/ patterns, any-level) name is excluded; later ! lines re-include."""
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        bare = pattern.lstrip("!").removeprefix("**/").rstrip("/")
        if fnmatch.fnmatchcase(name, bare):
            excluded = not negate
    return excluded


def check_dockerignore(text: str) -> None:
    patterns = ignore_patterns(text)
    missing = [name for name in MUST_IGNORE if not ignores(patterns, name)]
    assert not missing, f".dockerignore lets these into the build context: {missing}"
    sources = [part for ins in only(stages(DOCKERFILE)[0], "COPY") for part in ins.args.split()[:-1]]
    assert sources, "the build stage copies nothing"
    dropped = [source for source in sources if ignores(patterns, source.rstrip("/"))]
    assert not dropped, f".dockerignore drops what the Dockerfile copies: {dropped}"


# --- reading docker-compose.yml -------------------------------------------------------------------


Lines = list[tuple[int, str]]


def yaml_lines(text: str) -> Lines:
    """(indent, content) of each line that holds YAML: blank and comment lines (the example) dropped."""
    result: Lines = []
    for raw in text.splitlines():
        content = raw.strip()
        if not content or content.startswith("#"):
            continue
        if not re.search(r"[\"'].*\s#", content):  # a trailing comment, unless a quoted string may hold the #
            content = re.sub(r"\s+#.*$", "", content)
        result.append((len(raw) - len(raw.lstrip(" ")), content))
    return result


def block(lines: Lines, key: str) -> Lines:
    """The lines nested under ``key:`` at the outermost level of ``lines``; empty when it is absent."""
    if not lines:
        return []
    top = min(indent for indent, _ in lines)
    for index, (indent, content) in enumerate(lines):
        if indent == top and (content == f"{key}:" or content.startswith(f"{key}: ")):
            children = []
            for child in lines[index + 1 :]:
                if child[0] <= indent:
                    break
                children.append(child)
            return children
    return []


def scalar(lines: Lines, key: str) -> str | None:
    if not lines:
        return None
    top = min(indent for indent, _ in lines)
    for indent, content in lines:
        if indent == top and (content == f"{key}:" or content.startswith(f"{key}: ")):
            return content[len(key) + 1 :].strip().strip("\"'") or None
    return None


def path(lines: Lines, *keys: str) -> Lines:
    for key in keys:
        lines = block(lines, key)
    return lines


def items(lines: Lines) -> list[str]:
    """A block sequence's items (``- x``) or a flow sequence's (``[a, b]``), unquoted."""
    if len(lines) == 1 and lines[0][1].startswith("["):
        return [part.strip().strip("\"'") for part in lines[0][1].strip("[]").split(",")]
    return [content[1:].strip().strip("\"'") for _, content in lines if content.startswith("-")]


def flow_list(lines: Lines, key: str) -> list[str]:
    value = scalar(lines, key)
    if value is not None and value.startswith("["):
        return [part.strip().strip("\"'") for part in value.strip("[]").split(",")]
    return items(block(lines, key))


# --- docker-compose.yml's properties --------------------------------------------------------------


def check_redis_service(text: str) -> None:
    redis = path(yaml_lines(text), "services", "redis")
    assert redis, "no redis service"
    assert scalar(redis, "image") == "redis:7", f"redis image is {scalar(redis, 'image')!r}"
    test = flow_list(block(redis, "healthcheck"), "test")
    assert test[-2:] == ["redis-cli", "ping"], f"redis health check is {test}"


def check_presence_service(text: str) -> None:
    presence = path(yaml_lines(text), "services", "presence")
    assert presence, "no presence service"
    assert scalar(presence, "build") == ".", "presence is not built from this directory"
    assert "8090:8090" in items(block(presence, "ports")), "port 8090 is not published"
    env = block(presence, "environment")
    assert scalar(env, "PRESENCE_REDIS_URL") == "redis://redis:6379/0", "presence is not pointed at the redis service"
    assert scalar(presence, "restart") == "unless-stopped", "presence has no restart policy"


def check_presence_waits_for_healthy_redis(text: str) -> None:
    condition = scalar(path(yaml_lines(text), "services", "presence", "depends_on", "redis"), "condition")
    assert condition == "service_healthy", f"presence depends on redis with condition {condition!r}"


def scaled_example(text: str) -> str:
    match = re.search(r"^# BEGIN scaled example\n(.*?)^# END scaled example$", text, re.M | re.S)
    assert match, "no scaled example between '# BEGIN scaled example' and '# END scaled example'"
    return "".join(re.sub(r"^# ?", "", line) for line in match.group(1).splitlines(keepends=True))


def check_scaled_example(text: str) -> None:
    example = yaml_lines(scaled_example(text))
    services = block(example, "services")
    top = min(indent for indent, _ in services)
    aliases = [content for indent, content in services if indent == top and content.endswith(": *presence")]
    assert len(aliases) >= 2, f"the example runs {len(aliases)} presence servers"
    assert scalar(block(example, "x-presence"), "build") == ".", "the example's servers are not this image"
    env = block(block(example, "x-presence"), "environment")
    assert scalar(env, "PRESENCE_REDIS_URL") == "redis://redis:6379/0", "the example's servers do not share the redis"
    names = [content.split(":")[0] for indent, content in services if indent == top]
    published = [name for name in names if block(block(services, name), "ports")]
    assert published == ["proxy"], f"services publishing a port: {published}"
    hold = re.search(r"proxy_read_timeout (\d+)s;", scaled_example(text))
    assert hold and int(hold.group(1)) > 280, "the proxy would cut held subscribe long-polls (280 s)"


# --- the checks, and the same checks on files with the property taken out ------------------------

CHECKS: list[tuple[Callable[[str], None], str]] = [
    (check_multi_stage_on_pinned_slim_base, DOCKERFILE),
    (check_build_stage_makes_a_wheel, DOCKERFILE),
    (check_final_stage_installs_only_wheels_without_cache, DOCKERFILE),
    (check_final_stage_runs_as_non_root, DOCKERFILE),
    (check_healthcheck_uses_python_on_health, DOCKERFILE),
    (check_exposes_8090, DOCKERFILE),
    (check_entry_point_is_presence_server, DOCKERFILE),
    (check_listens_on_all_interfaces_on_8090, DOCKERFILE),
    (check_dockerignore, DOCKERIGNORE),
    (check_redis_service, COMPOSE),
    (check_presence_service, COMPOSE),
    (check_presence_waits_for_healthy_redis, COMPOSE),
    (check_scaled_example, COMPOSE),
]


@pytest.mark.parametrize(("check", "text"), CHECKS, ids=[check.__name__ for check, _ in CHECKS])
def test_container_file_property(check: Callable[[str], None], text: str) -> None:
    check(text)


def drop_instruction(text: str, keyword: str) -> str:
    """The Dockerfile without every instruction starting with ``keyword`` (continuation lines included)."""
    out: list[str] = []
    dropping = False
    for line in text.splitlines(keepends=True):
        if not dropping and line.startswith(keyword + " "):
            dropping = True
        if dropping:
            dropping = line.rstrip("\n").endswith("\\")
            continue
        out.append(line)
    return "".join(out)


def replace(text: str, old: str, new: str) -> str:
    assert old in text, f"the mutation's target {old!r} is not in the file"
    return text.replace(old, new)


def final_of(text: str) -> str:
    """Only the final stage's text (its FROM line onwards)."""
    return text[text.rindex("\nFROM ") + 1 :]


def remove_yaml_block(text: str, header: str) -> str:
    """``text`` without the line ``header`` (exact, with its indent) and the lines nested under it."""
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.rstrip("\n") == header)
    indent = len(header) - len(header.lstrip(" "))
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip(" ")) > indent):
        end += 1
    return "".join(lines[:start] + lines[end:])


FROM_LINE = re.search(r"^FROM (\S+)", DOCKERFILE, re.M)
BASE = FROM_LINE.group(1) if FROM_LINE else "python:?"

MUTANTS: list[tuple[str, Callable[[str], None], str]] = [
    ("single stage", check_multi_stage_on_pinned_slim_base, final_of(DOCKERFILE)),
    ("floating tag", check_multi_stage_on_pinned_slim_base, DOCKERFILE.replace(BASE, "python:3.11-slim")),
    ("latest tag", check_multi_stage_on_pinned_slim_base, DOCKERFILE.replace(BASE, "python:latest")),
    ("full image", check_multi_stage_on_pinned_slim_base, DOCKERFILE.replace(BASE, BASE.replace("-slim", ""))),
    ("two bases", check_multi_stage_on_pinned_slim_base, DOCKERFILE.replace(BASE, "python:3.11.9-slim", 1)),
    ("no wheel", check_build_stage_makes_a_wheel, replace(DOCKERFILE, "pip wheel", "pip install")),
    ("pip cache", check_final_stage_installs_only_wheels_without_cache, replace(DOCKERFILE, "--no-cache-dir", "")),
    (
        "no PIP_NO_CACHE_DIR",
        check_final_stage_installs_only_wheels_without_cache,
        replace(DOCKERFILE, "PIP_NO_CACHE_DIR=1", "PIP_NO_CACHE_DIR="),
    ),
    ("from the index", check_final_stage_installs_only_wheels_without_cache, replace(DOCKERFILE, "--no-index ", "")),
    (
        "source copied",
        check_final_stage_installs_only_wheels_without_cache,
        replace(DOCKERFILE, "\nEXPOSE", "\nCOPY presence_server /app/presence_server\nEXPOSE"),
    ),
    (
        "build tools",
        check_final_stage_installs_only_wheels_without_cache,
        replace(DOCKERFILE, "\nUSER", "\nRUN apt-get install -y --no-install-recommends gcc\nUSER"),
    ),
    ("no USER", check_final_stage_runs_as_non_root, drop_instruction(DOCKERFILE, "USER")),
    ("USER root", check_final_stage_runs_as_non_root, replace(DOCKERFILE, "USER 10001:10001", "USER root")),
    ("USER 0", check_final_stage_runs_as_non_root, replace(DOCKERFILE, "USER 10001:10001", "USER 0:0")),
    (
        "non-root only while building",
        check_final_stage_runs_as_non_root,
        replace(drop_instruction(DOCKERFILE, "USER"), "WORKDIR /src", "WORKDIR /src\nUSER 10001"),
    ),
    ("no HEALTHCHECK", check_healthcheck_uses_python_on_health, drop_instruction(DOCKERFILE, "HEALTHCHECK")),
    (
        "HEALTHCHECK NONE",
        check_healthcheck_uses_python_on_health,
        drop_instruction(DOCKERFILE, "HEALTHCHECK") + "HEALTHCHECK NONE\n",
    ),
    (
        "curl",
        check_healthcheck_uses_python_on_health,
        drop_instruction(DOCKERFILE, "HEALTHCHECK")
        + 'HEALTHCHECK CMD ["curl", "-f", "http://127.0.0.1:8090/health"]\n',
    ),
    ("other path", check_healthcheck_uses_python_on_health, replace(DOCKERFILE, "/health'", "/time/0'")),
    ("no EXPOSE", check_exposes_8090, drop_instruction(DOCKERFILE, "EXPOSE")),
    ("EXPOSE 8080", check_exposes_8090, replace(DOCKERFILE, "EXPOSE 8090", "EXPOSE 8080")),
    ("no ENTRYPOINT", check_entry_point_is_presence_server, drop_instruction(DOCKERFILE, "ENTRYPOINT")),
    (
        "other ENTRYPOINT",
        check_entry_point_is_presence_server,
        replace(DOCKERFILE, 'ENTRYPOINT ["presence-server"]', 'ENTRYPOINT ["python", "-m", "http.server"]'),
    ),
    (
        "loopback only",
        check_listens_on_all_interfaces_on_8090,
        replace(DOCKERFILE, "PRESENCE_HOST=0.0.0.0", "PRESENCE_HOST=127.0.0.1"),
    ),
    (
        "no PRESENCE_HOST",
        check_listens_on_all_interfaces_on_8090,
        replace(DOCKERFILE, "PRESENCE_HOST=0.0.0.0", "UNRELATED=1"),
    ),
    (
        "other port",
        check_listens_on_all_interfaces_on_8090,
        replace(DOCKERFILE, "PRESENCE_PORT=8090", "PRESENCE_PORT=9000"),
    ),
    (".git kept", check_dockerignore, replace(DOCKERIGNORE, "\n.git\n", "\n")),
    ("tests kept", check_dockerignore, replace(DOCKERIGNORE, "\ntests\n", "\n")),
    ("node_modules kept", check_dockerignore, replace(DOCKERIGNORE, "\n**/node_modules\n", "\n")),
    ("caches kept", check_dockerignore, replace(DOCKERIGNORE, "\n**/__pycache__\n", "\n")),
    ("tests re-included", check_dockerignore, DOCKERIGNORE + "!tests\n"),
    ("server dropped", check_dockerignore, DOCKERIGNORE + "presence_server\n"),
    ("README dropped", check_dockerignore, DOCKERIGNORE + "*.md\n"),
    ("redis 6", check_redis_service, replace(COMPOSE, "    image: redis:7\n", "    image: redis:6\n")),
    ("no redis", check_redis_service, remove_yaml_block(COMPOSE, "  redis:")),
    ("no redis healthcheck", check_redis_service, remove_yaml_block(COMPOSE, "    healthcheck:")),
    ("no build", check_presence_service, replace(COMPOSE, "    build: .\n", "")),
    ("no ports", check_presence_service, remove_yaml_block(COMPOSE, "    ports:")),
    (
        "memory store",
        check_presence_service,
        replace(COMPOSE, "PRESENCE_REDIS_URL: redis://redis:6379/0\n", "PRESENCE_REDIS_URL: memory://\n"),
    ),
    ("no restart", check_presence_service, replace(COMPOSE, "    restart: unless-stopped\n\n# ---", "\n# ---")),
    ("no depends_on", check_presence_waits_for_healthy_redis, remove_yaml_block(COMPOSE, "    depends_on:")),
    (
        "service_started",
        check_presence_waits_for_healthy_redis,
        replace(COMPOSE, "condition: service_healthy\n    #", "condition: service_started\n    #"),
    ),
    ("no example", check_scaled_example, replace(COMPOSE, "# BEGIN scaled example", "# scaled example")),
    ("one server", check_scaled_example, replace(COMPOSE, "#   presence-2: *presence\n", "")),
    (
        "short proxy timeout",
        check_scaled_example,
        replace(COMPOSE, "proxy_read_timeout 310s", "proxy_read_timeout 60s"),
    ),
    (
        "servers published",
        check_scaled_example,
        replace(
            COMPOSE, "#   presence-1: *presence\n", '#   presence-1:\n#     <<: *presence\n#     ports: ["8091:8090"]\n'
        ),
    ),
]


@pytest.mark.parametrize(
    ("check", "text"), [(check, text) for _, check, text in MUTANTS], ids=[name for name, _, _ in MUTANTS]
)
def test_check_fails_without_the_property(check: Callable[[str], None], text: str) -> None:
    with pytest.raises(AssertionError):
        check(text)


# --- the HEALTHCHECK command, run against the real server -----------------------------------------


async def run_healthcheck(port: int) -> int:
    """Run the Dockerfile's HEALTHCHECK command (with this interpreter for ``python``) against ``port``."""
    command = only(final_stage(DOCKERFILE), "HEALTHCHECK")[-1].exec_form()
    assert command[0] == "python"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *command[1:],
        env={**os.environ, "PRESENCE_PORT": str(port)},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await asyncio.wait_for(proc.wait(), timeout=30)


async def test_healthcheck_passes_while_the_store_answers(client: TestClient) -> None:  # type: ignore[type-arg]
    assert client.server.port is not None
    assert await run_healthcheck(client.server.port) == 0


async def test_healthcheck_fails_while_redis_is_unreachable(
    aiohttp_client: Callable[..., Awaitable[TestClient]],  # type: ignore[type-arg]
    prefix: str,
) -> None:
    # A real client of a port where no Redis listens: /health answers 503, and the check must fail.
    dead = open_redis(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    app: web.Application = create_app(Settings(key_prefix=prefix), redis=dead, sweeper=False)
    test_client = await aiohttp_client(app, server_kwargs=RUNNER_OPTIONS)
    try:
        assert (await test_client.get("/health")).status == 503
        assert test_client.server.port is not None
        assert await run_healthcheck(test_client.server.port) == 1
    finally:
        await test_client.close()  # the app first: its wake-up listener uses the client
        await dead.aclose()


async def test_healthcheck_fails_when_nothing_listens() -> None:
    assert await run_healthcheck(free_port()) == 1
