"""The one launcher of a throw-away redis-server (from PATH: Debian package ``redis-server``), for the
session's real engine and for tests that need a Redis of their own to stop and start again."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator

from tests.helpers.wait import wait_until_blocking


def free_port() -> int:
    """A loopback TCP port nothing listens on (for redis-server and for server processes)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _accepting(port: int, proc: subprocess.Popen[bytes]) -> bool:
    assert proc.poll() is None, f"redis-server exited with {proc.returncode}"
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def redis_server(port: int | None = None) -> Iterator[str]:
    """A redis-server on ``port`` (a free one by default), without persistence; yields its URL once it
    accepts connections, and stops it when the block ends."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "redis-server is not on PATH: install it (apt-get install redis-server) or set PRESENCE_TEST_REDIS_URL"
        )
    port = free_port() if port is None else port
    with tempfile.TemporaryDirectory() as workdir:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
            stdout=subprocess.DEVNULL,
        )
        try:
            wait_until_blocking(lambda: _accepting(port, proc), 10, what=f"redis-server accepting on port {port}")
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)
