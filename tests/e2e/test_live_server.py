from __future__ import annotations

import aiohttp

from tests.e2e.live import LiveServer


async def test_live_server_answers_time(live_server: LiveServer) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"http://{live_server.origin}/time/0") as resp:
        assert resp.status == 200
        body = await resp.json(content_type=None)
    assert isinstance(body, list) and len(str(body[0])) == 17
