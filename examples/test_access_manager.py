"""Access Manager with the ``presence_server`` fixture: a server-side client (it holds the secret key) grants a
token, and a client holding the token may do what it grants and nothing else.

Copy this file into your own suite, as test_with_presence_server.py. CI runs it as a separate suite.
"""

from __future__ import annotations

from typing import Any

import pytest
from pubnub.enums import PNStatusCategory
from pubnub.models.consumer.v3.channel import Channel
from pubnub.pnconfiguration import PNConfiguration
from pubnub.pubnub_asyncio import PubNubAsyncio

from presence_server.pytest_plugin import PresenceServer

PUB, SUB, SECRET = "pub-c-app", "sub-c-app", "sec-c-app-secret"


@pytest.fixture
def presence_server_settings() -> dict[str, Any]:
    # A keyset listed with its secret key has Access Manager on.
    return {"keysets": f"{PUB}:{SUB}:{SECRET}"}


def client(server: PresenceServer, user: str, secret_key: str | None = None) -> PubNubAsyncio:
    config = PNConfiguration()
    config.subscribe_key, config.publish_key, config.uuid = SUB, PUB, user
    config.origin, config.ssl = server.origin, False
    if secret_key is not None:
        config.secret_key = secret_key  # a server-side client: it signs every request
    return PubNubAsyncio(config)


async def test_a_token_grants_what_it_says(presence_server: PresenceServer) -> None:
    admin = client(presence_server, "backend", secret_key=SECRET)
    alice = client(presence_server, "alice")
    try:
        granted = await (
            admin.grant_token()
            .channels([Channel.id("lobby").read().write()])
            .ttl(15)  # minutes
            .authorized_uuid("alice")
            .future()
        )
        alice.set_token(granted.result.token)

        assert not (await alice.heartbeat().channels(["lobby"]).future()).status.is_error()
        sent = await alice.publish().channel("lobby").message({"text": "hi"}).future()
        assert sent.result.timetoken > 0

        denied = await alice.publish().channel("admins").message("hi").future()
        assert denied.status.category == PNStatusCategory.PNAccessDeniedCategory

        presence_server.advance(15 * 60)  # the token expires with the server's clock: no waiting
        expired = await alice.publish().channel("lobby").message("hi").future()
        assert expired.status.category == PNStatusCategory.PNAccessDeniedCategory
    finally:
        await alice.stop()
        await admin.stop()
