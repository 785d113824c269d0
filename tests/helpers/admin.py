"""Apps with the admin API on, as tests of the admin API and of the inspector build them: each has its own
admin ``Clock`` over the test's FakeClock (like server processes on one machine), and may make every
request seem to come from another address."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from presence_server.clock import Clock
from presence_server.context import STORE
from presence_server.store import PresenceStore
from tests.helpers.http import Client


@dataclasses.dataclass
class AdminServer:
    client: Client
    clock: Clock

    @property
    def store(self) -> PresenceStore:
        assert self.client.app is not None
        return self.client.app[STORE]

    @property
    def base(self) -> str:
        return str(self.client.make_url("")).rstrip("/")


# new_server(remote=None, **settings): the conftest fixture of that name.
NewServer = Callable[..., Awaitable[AdminServer]]


def remote_address(address: str) -> Middleware:
    """A middleware that makes every request look as if it came from ``address`` (the TCP peer is
    loopback in tests; aiohttp's ``Request.clone(remote=...)`` changes what ``request.remote`` says)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await handler(request.clone(remote=address))

    return middleware
