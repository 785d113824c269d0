from __future__ import annotations

from aiohttp.test_utils import TestClient


async def test_heartbeat_then_here_now(client: TestClient) -> None:  # type: ignore[type-arg]
    resp = await client.get("/v2/presence/sub-key/demo/channel/a/heartbeat", params={"uuid": "u1", "heartbeat": "60"})
    assert resp.status == 200
    resp = await client.get("/v2/presence/sub-key/demo/channel/a")
    assert await resp.json(content_type=None) == {
        "status": 200,
        "message": "OK",
        "service": "Presence",
        "uuids": ["u1"],
        "occupancy": 1,
    }
