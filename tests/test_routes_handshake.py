"""The subscriber's own join reaches it even when its join heartbeat beat the handshake (JS sends
both in parallel, docs/protocol.md 3), and only its own recent join moves the cursor back."""

from __future__ import annotations

from typing import Any

from tests.helpers.app import Client, FakeClock
from tests.helpers.http import P, ok_body


async def get(client: Client, path: str, **params: str) -> Any:
    return await ok_body(client, path, params)


async def test_own_join_before_the_handshake_is_delivered(client: Client) -> None:
    await get(client, f"{P}/channel/lobby/heartbeat", uuid="js-user", heartbeat="300")
    hand = await get(client, "/v2/subscribe/demo/lobby,lobby-pnpres/0", uuid="js-user")
    first = await get(client, "/v2/subscribe/demo/lobby,lobby-pnpres/0", uuid="js-user", tt=hand["t"]["t"], tr="1")
    assert [(m["c"], m["d"]["action"], m["d"]["uuid"]) for m in first["m"]] == [("lobby-pnpres", "join", "js-user")]


async def test_an_old_join_or_someone_elses_does_not_move_the_cursor(client: Client, clock: FakeClock) -> None:
    await get(client, f"{P}/channel/lobby/heartbeat", uuid="js-user", heartbeat="300")
    clock.advance(10)  # older than the window: the subscriber joined long ago, nothing to replay
    await get(client, f"{P}/channel/lobby/heartbeat", uuid="other", heartbeat="300")
    hand = await get(client, "/v2/subscribe/demo/lobby,lobby-pnpres/0", uuid="js-user")
    await get(client, "/publish/demo/demo/0/lobby/0/%22after%22", uuid="pub")
    first = await get(client, "/v2/subscribe/demo/lobby,lobby-pnpres/0", uuid="js-user", tt=hand["t"]["t"], tr="1")
    assert [m["d"] for m in first["m"]] == ["after"]
