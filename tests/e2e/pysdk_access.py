"""Driving Access Manager through the real Python SDK, ``pubnub==7.2.0`` (asyncio): the keysets of a
live server with one Access Manager keyset (and a second one, for tokens of another keyset) beside an
open one, server-side clients (with the secret, so every request is signed), token and auth-key
clients, a listener for subscribe loops, and the 403 bodies of docs/protocol.md (access 4.3).

What 7.2.0 does, read in its source and checked here: ``grant_token``, ``revoke_token``, ``grant`` and
``audit`` are endpoints that refuse to run without ``secret_key``; ``parse_token`` and ``set_token``
are local (no request). A refused call's ``future()`` resolves to a ``PubNubAsyncioException`` whose
``status`` has the category (403: ``PNAccessDeniedCategory``, 400: ``PNBadRequestCategory``), the
code, the parsed body (``original_response``) and aiohttp's response (``client_response``)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from pubnub.enums import PNStatusCategory
from pubnub.pnconfiguration import PNConfiguration
from pubnub.pubnub_asyncio import PubNubAsyncio

from tests.e2e.pysdk import WAIT, Hearing, describe, ok, wind_down

AM = ("pub-c-am", "sub-c-am", "sec-c-am")
OTHER_AM = ("pub-c-am2", "sub-c-am2", "sec-c-am2")
OPEN = ("pub-c-open", "sub-c-open")
KEYSETS = ",".join(":".join(keyset) for keyset in (AM, OTHER_AM, OPEN))

# Above the live server's 2 s hold, so that an idle poll is answered by the server, never timed out.
SUBSCRIBE_TIMEOUT = 10
ACCESS_CONTENT_TYPE = 'text/javascript; charset="UTF-8"'


def make_config(
    origin: str,
    uuid: str,
    keyset: tuple[str, ...],
    *,
    secret: str | None = None,
    auth_key: str | None = None,
) -> Any:
    config = PNConfiguration()
    config.publish_key, config.subscribe_key = keyset[0], keyset[1]
    config.uuid = uuid
    config.origin = origin
    config.ssl = False
    config.secret_key = secret
    config.auth_key = auth_key
    config.subscribe_request_timeout = SUBSCRIBE_TIMEOUT
    config.set_presence_timeout(60)
    return config


class Listener(Hearing):
    """Everything a subscribed client hears, in order; error statuses are heard too (as ``error``)."""

    async def next_of(self, kind: str) -> Any:
        heard_kind, event = await self.next()
        detail = describe(event) if heard_kind == "error" else repr(vars(event))
        assert heard_kind == kind, f"expected a {kind}, heard a {heard_kind}: {detail}"
        return event

    async def connection(self) -> None:
        try:
            await asyncio.wait_for(self.connected.wait(), timeout=WAIT)
        except TimeoutError:
            raise AssertionError(f"not connected within {WAIT} s; heard {self._pending()}") from None

    def _pending(self) -> list[str]:
        pending = []
        while not self.heard.empty():
            kind, event = self.heard.get_nowait()
            pending.append(f"{kind}: {describe(event) if kind == 'error' else vars(event)}")
        return pending


class AccessClients:
    """Makes ``PubNubAsyncio`` clients in the running test loop; ``stop_all`` winds down their
    subscribe loops (a poll cancelled while it connects would be accepted late) and closes each one."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self._made: list[Any] = []
        self._subscribed: list[Any] = []

    def _make(self, config: Any) -> Any:
        client = PubNubAsyncio(config)
        self._made.append(client)
        return client

    def server(self, uuid: str = "backend", keyset: tuple[str, ...] = AM, *, secret: str | None = None) -> Any:
        """A server-side client: every request it sends is signed with the keyset's secret (or ``secret``)."""
        return self._make(make_config(self.origin, uuid, keyset, secret=secret or keyset[2]))

    def client(
        self, uuid: str, keyset: tuple[str, ...] = AM, *, token: str | None = None, auth_key: str | None = None
    ) -> Any:
        """A client without the secret, holding ``token`` (set_token) and/or a v2 ``auth_key``."""
        client = self._make(make_config(self.origin, uuid, keyset, auth_key=auth_key))
        if token is not None:
            client.set_token(token)
        return client

    def subscribe(
        self, client: Any, channels: Iterable[str] = (), *, groups: Iterable[str] = (), presence: bool = True
    ) -> Listener:
        """Start ``client``'s subscribe loop; the listener hears what comes (``connection()`` waits for it)."""
        listener = Listener()
        client.add_listener(listener)
        self._subscribed.append(client)
        builder = client.subscribe().channels(list(channels)).channel_groups(list(groups))
        if presence:
            builder = builder.with_presence()
        builder.execute()
        return listener

    async def stop_all(self) -> None:
        await wind_down(self._subscribed)
        while self._made:
            await self._made.pop().stop()


async def grant_token(
    backend: Any,
    *,
    ttl: int = 60,
    channels: Iterable[Any] = (),
    groups: Iterable[Any] = (),
    uuids: Iterable[Any] = (),
    authorized_uuid: str | None = None,
    meta: dict[str, Any] | None = None,
) -> str:
    """A token from the server (``backend`` holds the secret); resources are the SDK's Channel/Group/UUID."""
    call = backend.grant_token().ttl(ttl).channels(list(channels)).groups(list(groups)).uuids(list(uuids))
    if authorized_uuid is not None:
        call = call.authorized_uuid(authorized_uuid)
    if meta is not None:
        call = call.meta(meta)
    envelope = await ok(call)
    token: str = envelope.result.token
    return token


def access_body(message: str, payload: dict[str, list[str]] | None = None, status: int = 403) -> dict[str, Any]:
    """The Access Manager error body (access 4.3): ``payload`` names what was denied."""
    body: dict[str, Any] = {"message": message, "error": True, "service": "Access Manager", "status": status}
    if payload is not None:
        body["payload"] = payload
    return body


def assert_denied(status: Any, message: str = "Forbidden", payload: dict[str, list[str]] | None = None) -> None:
    """``status`` is the SDK's report of a 403 with this message and denied names (in any order)."""
    assert status.category == PNStatusCategory.PNAccessDeniedCategory, describe(status)
    assert status.status_code == 403, describe(status)
    body = status.original_response
    assert isinstance(body, dict), describe(status)
    if isinstance(body.get("payload"), dict):
        body = {**body, "payload": {key: sorted(names) for key, names in body["payload"].items()}}
    expected = access_body(message, None if payload is None else {k: sorted(v) for k, v in payload.items()})
    assert body == expected, describe(status)
    assert status.client_response.headers["Content-Type"] == ACCESS_CONTENT_TYPE
