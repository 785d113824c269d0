"""Driving the real Python SDK (``pubnub==7.2.0``, the last MIT release, asyncio flavour) against the
live server: configuration, a factory that stops every client it made, a listener base that queues
what a subscribed client hears, and envelope checks."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Self

from pubnub.callbacks import SubscribeCallback
from pubnub.endpoints.presence.leave import Leave
from pubnub.enums import PNStatusCategory
from pubnub.pnconfiguration import PNConfiguration
from pubnub.pubnub_asyncio import PubNubAsyncio

SUB_KEY = "demo"
PUB_KEY = "demo"
WAIT = 5.0

Heard = tuple[str, Any]


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

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop_all()


class Hearing(SubscribeCallback):  # type: ignore[misc]
    """Queues everything a subscribed client hears, in order, as ``(kind, event)``: messages, presence
    events, signals, and error statuses (as ``error``); the connected status sets ``connected``."""

    def __init__(self) -> None:
        self.heard: asyncio.Queue[Heard] = asyncio.Queue()
        self.connected = asyncio.Event()

    def status(self, pubnub: Any, status: Any) -> None:
        if status.category == PNStatusCategory.PNConnectedCategory:
            self.connected.set()
        elif status.is_error():
            self.heard.put_nowait(("error", status))

    def message(self, pubnub: Any, message: Any) -> None:
        self.heard.put_nowait(("message", message))

    def presence(self, pubnub: Any, presence: Any) -> None:
        self.heard.put_nowait(("presence", presence))

    def signal(self, pubnub: Any, signal: Any) -> None:
        self.heard.put_nowait(("signal", signal))

    async def next(self) -> Heard:
        """The next thing heard, whatever its kind (an error too), within ``WAIT`` seconds."""
        try:
            return await asyncio.wait_for(self.heard.get(), timeout=WAIT)
        except TimeoutError:
            raise AssertionError(f"nothing heard within {WAIT} s") from None


async def wind_down(subscribed: Iterable[Any]) -> None:
    """Stop the subscribe loops of ``subscribed`` and let their polls end, before the clients stop: a
    poll cancelled while it connects leaves a connection the server accepts late, and one accepted
    while the server shuts down is never closed (asyncio reports it as an unclosed transport)."""
    for client in subscribed:
        manager = client._subscription_manager
        manager.stop()
        if manager._subscribe_request_task is not None:
            await asyncio.wait({manager._subscribe_request_task}, timeout=WAIT)
    # Real time for the sockets only (presence time is the injected clock): the server takes in
    # whatever the cancelled polls opened before the test shuts it down.
    await asyncio.sleep(0.05)


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
