"""Driving the real Python SDK (``pubnub==7.2.0``, the last MIT release, asyncio flavour) against the
live server: configuration, a factory that stops every client it made, and envelope checks."""

from __future__ import annotations

from typing import Any

from pubnub.endpoints.presence.leave import Leave
from pubnub.pnconfiguration import PNConfiguration
from pubnub.pubnub_asyncio import PubNubAsyncio

SUB_KEY = "demo"
PUB_KEY = "demo"


def make_config(origin: str, uuid: str, *, presence_timeout: int | None = None) -> Any:
    config = PNConfiguration()
    config.subscribe_key = SUB_KEY
    config.publish_key = PUB_KEY
    config.uuid = uuid
    config.origin = origin
    config.ssl = False
    if presence_timeout is not None:
        # 7.2.0 sends this value as ``heartbeat=`` on every /heartbeat call.
        config.set_presence_timeout(presence_timeout)
    return config


class Clients:
    """Makes ``PubNubAsyncio`` clients in the running test loop; ``stop_all`` closes each one."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self._made: list[Any] = []

    def __call__(self, uuid: str, *, presence_timeout: int | None = None) -> Any:
        client = PubNubAsyncio(make_config(self.origin, uuid, presence_timeout=presence_timeout))
        self._made.append(client)
        return client

    async def stop_all(self) -> None:
        while self._made:
            await self._made.pop().stop()


def leave(client: Any) -> Any:
    """7.2.0 has no public ``leave()``: its subscription manager builds the ``Leave`` endpoint itself."""
    return Leave(client)


def describe(status: Any) -> str:
    return f"category={status.category} code={status.status_code} body={status.original_response!r}"


async def ok(call: Any) -> Any:
    """Send an endpoint call the server must accept; returns the SDK's envelope."""
    envelope = await call.future()
    assert not envelope.status.is_error(), describe(envelope.status)
    return envelope


async def refused(call: Any) -> Any:
    """Send an endpoint call the server must refuse; returns the SDK's error status."""
    envelope = await call.future()
    assert envelope.status.is_error(), f"accepted: {describe(envelope.status)}"
    return envelope.status
