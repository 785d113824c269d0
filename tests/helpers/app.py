"""The app under test, as test modules and fixtures build and drive it: aiohttp's fixture types, an
injected clock, and small accessors (conftest.py holds only fixtures, and test modules import from here,
never from one another)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from aiohttp.test_utils import TestServer

from presence_server.app import RUNNER_OPTIONS, SWEEPER
from presence_server.context import LONGPOLLS
from presence_server.http import AppRunner
from presence_server.sweeper import Sweeper
from tests.helpers.http import Client as Client

# The types of aiohttp's test fixtures, as the test modules annotate them.
AiohttpClient = Callable[..., Awaitable[Client]]
AiohttpServer = Callable[..., Awaitable[TestServer]]
MakeApp = Callable[..., web.Application]
NewClient = Callable[..., Awaitable[Client]]

START = 1_800_000_000.0

# The runner options the server runs with, for aiohttp_server(app, **TEST_SERVER_OPTIONS): TestServer's
# constructor drops options it is handed, and start_server sets handler_cancellation itself.
TEST_SERVER_OPTIONS = {k: v for k, v in RUNNER_OPTIONS.items() if k != "handler_cancellation"}


class FakeClock:
    """Time that moves only when a test says so."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def sweeper_of(client: Client) -> Sweeper:
    app = client.app
    assert app is not None
    sweeper: Sweeper = app[SWEEPER]
    return sweeper


def waiting(client: Client) -> int:
    """How many long-polls the client's server holds right now."""
    assert client.app is not None
    return client.app[LONGPOLLS].waiting


async def serve(aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, app: web.Application) -> Client:
    """A test client for ``app``, served with the options every way of running the server uses."""
    return await aiohttp_client(await aiohttp_server(app, **TEST_SERVER_OPTIONS))


@contextlib.asynccontextmanager
async def listening(app: web.Application) -> AsyncIterator[int]:
    """``app`` served as the command line serves it (http.AppRunner, the runner options) on a free
    loopback port, which it yields; cleaned up when the block ends."""
    runner = AppRunner(app, access_log=None, shutdown_timeout=1.0, **RUNNER_OPTIONS)  # type: ignore[arg-type]
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()
