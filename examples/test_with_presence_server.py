"""How a user's suite uses the plugin: no conftest, no project fixtures, just ``presence_server``.

Copy this file into your own suite. It imports nothing from our tests; the fixture comes from the installed
package's ``pytest11`` entry point (``pip install pubnub-presence-server``). CI runs it as a separate suite.
"""

from __future__ import annotations

from typing import Any

import pytest
from pubnub.pnconfiguration import PNConfiguration
from pubnub.pubnub_asyncio import PubNubAsyncio

from presence_server.pytest_plugin import PresenceServer


def client(server: PresenceServer, user: str) -> PubNubAsyncio:
    config = PNConfiguration()
    config.subscribe_key = "demo"
    config.publish_key = "demo"
    config.uuid = user
    config.origin = server.origin
    config.ssl = False
    config.set_presence_timeout(20)
    return PubNubAsyncio(config)


async def test_user_is_here_then_times_out(presence_server: PresenceServer) -> None:
    pubnub = client(presence_server, "alice")
    try:
        hb = await pubnub.heartbeat().channels(["lobby"]).future()
        assert not hb.status.is_error()
        here = await pubnub.here_now().channels(["lobby"]).future()
        assert here.result.total_occupancy == 1
        assert [o.uuid for o in here.result.channels[0].occupants] == ["alice"]

        # No waiting: the server's clock moves, and the timeout happens at once.
        assert presence_server.advance(21) == 1
        here = await pubnub.here_now().channels(["lobby"]).future()
        assert here.result.total_occupancy == 0
    finally:
        await pubnub.stop()


@pytest.fixture
def presence_server_settings() -> dict[str, Any]:
    return {"default_timeout": 42.0}


async def test_settings_can_be_overridden(presence_server: PresenceServer) -> None:
    assert presence_server.settings.default_timeout == 42.0
    pubnub = client(presence_server, "bob")
    try:
        await pubnub.set_state().channels(["room"]).state({"mood": "fine"}).future()
        snapshot = presence_server.snapshot("demo")
        assert snapshot["channels"] == {}  # state alone does not make anyone present
    finally:
        await pubnub.stop()
