"""Issue 10, item 8: requests aiohttp refuses while parsing, before any handler runs (a request line
or header too long, characters they may not hold, a bad method or version), get PubNub's JSON error
shape with a JSON content type from a server run as the command line runs it (http.AppRunner)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest
import redis.asyncio as aioredis

from presence_server.app import create_app
from presence_server.config import Settings
from tests.helpers.app import FakeClock, listening
from tests.helpers.http import ERROR_KEYS, exchange


@pytest.fixture
async def port(redis_client: aioredis.Redis, settings: Settings, clock: FakeClock) -> AsyncIterator[int]:
    async with listening(create_app(settings, redis=redis_client, clock=clock, sweeper=False)) as chosen:
        yield chosen


REFUSED_BY_THE_PARSER = {
    "request line over 128 KiB": b"GET /time/0?x=" + b"a" * (129 * 1024) + b" HTTP/1.1\r\nHost: h\r\n\r\n",
    "header over 8 KiB": b"GET /time/0 HTTP/1.1\r\nHost: h\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n",
    "control character in the target": b"GET /time/0\x01x HTTP/1.1\r\nHost: h\r\n\r\n",
    "bad method": b"G@T /time/0 HTTP/1.1\r\nHost: h\r\n\r\n",
    "unknown HTTP version": b"GET /time/0 HTTP/9.9\r\nHost: h\r\n\r\n",
    "not HTTP at all": b"hello there\r\n\r\n",
    "bad header line": b"GET /time/0 HTTP/1.1\r\nHost: h\r\nno colon here\r\n\r\n",
    "bad chunked body": (
        b"POST /publish/demo/demo/0/ch1/0 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
    ),
    "content length and chunked": (
        b"POST /publish/demo/demo/0/ch1/0 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
}


@pytest.mark.parametrize("raw", REFUSED_BY_THE_PARSER.values(), ids=REFUSED_BY_THE_PARSER.keys())
async def test_what_the_parser_refuses_is_answered_in_json(port: int, raw: bytes) -> None:
    status, headers, body = await exchange(port, raw)
    assert 400 <= status < 600, status
    content_type = headers.get("content-type", "")
    assert "json" in content_type or "javascript" in content_type, (status, headers, body[:200])
    parsed = orjson.loads(body)
    assert set(parsed) == ERROR_KEYS and parsed["status"] == status and parsed["error"] is True, parsed
    # and the connection was closed (exchange read to its end), as aiohttp does after these


async def test_a_good_request_on_the_same_server_is_served(port: int) -> None:
    status, _, body = await exchange(port, b"GET /health HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert (status, orjson.loads(body)) == (200, {"status": "ok"})
