"""Real ``python -m presence_server`` processes, run as an operator runs them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from tests.helpers.redis import free_port
from tests.helpers.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]


def server_env(**variables: str) -> dict[str, str]:
    """The environment without any PRESENCE_* of the caller's, plus ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
    return {**env, "PRESENCE_PORT": str(free_port()), **variables}


@contextlib.asynccontextmanager
async def server_process(
    env: Mapping[str, str],
    stderr: int | Path = subprocess.PIPE,
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``python -m presence_server`` as an operator runs it; terminated (SIGTERM) when the block ends."""
    async with contextlib.AsyncExitStack() as stack:
        sink = stack.enter_context(stderr.open("wb")) if isinstance(stderr, Path) else stderr
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "presence_server",
            cwd=ROOT,
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=sink,
        )
        try:
            yield proc
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


async def wait_answering(
    base: str, path: str, status: int, proc: asyncio.subprocess.Process, within: float = 20.0, log: Path | None = None
) -> Any:
    """Poll ``base + path`` until it answers ``status``; returns the JSON body. ``log`` (the server's
    stderr) goes into the failure message."""
    answer: list[Any] = []

    def tail() -> str:
        return log.read_text(errors="replace") if log is not None else ""

    async def answered(session: aiohttp.ClientSession) -> bool:
        assert proc.returncode is None, f"the server exited with {proc.returncode} {tail()}"
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(base + path) as resp:
                if resp.status == status:
                    answer.append(orjson.loads(await resp.read()))
                    return True
        return False

    async with aiohttp.ClientSession() as session:
        await wait_until(
            lambda: answered(session), within, what=lambda: f"{path} never answered {status} {tail()}", interval=0.05
        )
    return answer[0]
