"""Issue 10, item 1: an absolute-form request target (``GET http://host:port/path HTTP/1.1``, which
HTTP/1.1 servers must accept) is served exactly as its origin form, by every route family, and the
keyset allow-list sees the same names as the handlers: nothing slips into an unlisted keyset."""

from __future__ import annotations

import asyncio
import dataclasses
import zlib
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from presence_server.app import create_app
from presence_server.config import Settings
from tests.helpers.app import TEST_SERVER_OPTIONS, AiohttpServer, FakeClock


async def raw_request(server: TestServer, target: str, method: str = "GET", body: bytes = b"") -> tuple[int, Any]:
    """Send one request with ``target`` written verbatim into the request line; the answer must be
    JSON with a JSON/JavaScript content type (docs/protocol.md 1.4)."""
    assert server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    head = f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nConnection: close\r\n"
    if body or method == "POST":
        head += f"Content-Length: {len(body)}\r\n"
    writer.write(head.encode() + b"\r\n" + body)
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    header, _, payload = data.partition(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    content_type = headers.get("content-type", "")
    assert "json" in content_type or "javascript" in content_type, (status, headers, payload[:200])
    return status, orjson.loads(payload)


@pytest.fixture
async def listed(
    aiohttp_server: AiohttpServer, redis_client: aioredis.Redis, settings: Settings, clock: FakeClock
) -> TestServer:
    app = create_app(
        dataclasses.replace(settings, keysets="pk1:sk1,pk2:sk2"), redis=redis_client, clock=clock, sweeper=False
    )
    return await aiohttp_server(app, **TEST_SERVER_OPTIONS)


async def keys_of(redis: aioredis.Redis, prefix: str) -> set[str]:
    return {key async for key in redis.scan_iter(match=f"{prefix}:*", count=1000)}


def absolute(server: TestServer, path: str) -> str:
    return f"http://127.0.0.1:{server.port}{path}"


def keysets_in(keys: set[str], prefix: str) -> set[str]:
    """The keysets a set of keys belongs to: the hash tag right after the prefix."""
    return {key[len(prefix) + 2 :].partition("}")[0] for key in keys if key.startswith(prefix + ":{")}


async def test_the_reported_heartbeat_lands_in_its_own_keyset(
    listed: TestServer, redis_client: aioredis.Redis, prefix: str
) -> None:
    # The request of the report: before, a 200 that wrote into keyset "presence", channel "sk1".
    hb = "/v2/presence/sub-key/sk1/channel/victim-ch/heartbeat?uuid=intruder&heartbeat=60"
    assert (await raw_request(listed, absolute(listed, hb)))[0] == 200
    assert keysets_in(await keys_of(redis_client, prefix), prefix) == {"sk1"}
    status, body = await raw_request(listed, "/v2/presence/sub-key/sk1/channel/victim-ch")
    assert (status, body["uuids"]) == (200, ["intruder"])


# One request of each route family, on an unlisted keyset: refused, nothing written.
UNLISTED = {
    "heartbeat": ("GET", "/v2/presence/sub-key/sk9/channel/ch1/heartbeat?uuid=u1", 400),
    "leave": ("GET", "/v2/presence/sub-key/sk9/channel/ch1/leave?uuid=u1", 400),
    "set state": ("GET", "/v2/presence/sub-key/sk9/channel/ch1/uuid/u1/data?state=%7B%22a%22%3A1%7D", 400),
    "get state": ("GET", "/v2/presence/sub-key/sk9/channel/ch1/uuid/u1", 400),
    "here now": ("GET", "/v2/presence/sub-key/sk9/channel/ch1", 400),
    "global here now": ("GET", "/v2/presence/sub-key/sk9", 400),
    "where now": ("GET", "/v2/presence/sub-key/sk9/uuid/u1", 400),
    "subscribe": ("GET", "/v2/subscribe/sk9/ch1/0?uuid=u1&tt=0", 400),
    "publish": ("GET", "/publish/pk1/sk9/0/ch1/0/%22hi%22?uuid=u1", 400),
    "signal": ("GET", "/signal/pk1/sk9/0/ch1/0/%22hi%22?uuid=u1", 400),
    "publish with a foreign publish key": ("GET", "/publish/pk2/sk1/0/ch1/0/%22hi%22?uuid=u1", 400),
    "group add": ("GET", "/v1/channel-registration/sub-key/sk9/channel-group/g1?add=ch1", 400),
    "group delete": ("GET", "/v1/channel-registration/sub-key/sk9/channel-group/g1/remove", 400),
}


@pytest.mark.parametrize(("method", "path", "status"), UNLISTED.values(), ids=UNLISTED.keys())
@pytest.mark.parametrize("form", ["origin", "absolute"])
async def test_an_unlisted_keyset_is_refused_in_either_form(
    listed: TestServer, redis_client: aioredis.Redis, prefix: str, form: str, method: str, path: str, status: int
) -> None:
    target = path if form == "origin" else absolute(listed, path)
    got, body = await raw_request(listed, target, method)
    assert got == status, body
    assert await keys_of(redis_client, prefix) == set()


async def test_every_route_family_reads_an_absolute_form_as_its_origin_form(
    listed: TestServer, redis_client: aioredis.Redis, prefix: str
) -> None:
    async def via_absolute(path: str, method: str = "GET", body: bytes = b"") -> tuple[int, Any]:
        return await raw_request(listed, absolute(listed, path), method, body)

    async def read(path: str) -> Any:
        status, body = await raw_request(listed, path)
        assert status == 200, body
        return body

    p = "/v2/presence/sub-key/sk1"
    # presence: a channel named "a,b" (an encoded comma) and "c", a uuid with an encoded slash
    assert (await via_absolute(f"{p}/channel/a%2Cb,c/heartbeat?uuid=u%2F1&heartbeat=60"))[0] == 200
    assert (await read(f"{p}/channel/a%2Cb,c"))["payload"]["channels"] == {
        "a,b": {"uuids": ["u/1"], "occupancy": 1},
        "c": {"uuids": ["u/1"], "occupancy": 1},
    }
    assert sorted((await read(f"{p}/uuid/u%2F1"))["payload"]["channels"]) == ["a,b", "c"]
    assert (await via_absolute(f"{p}/channel/c/uuid/u%2F1/data?state=%7B%22k%22%3A1%7D"))[0] == 200
    assert (await read(f"{p}/channel/c/uuid/u%2F1"))["payload"] == {"k": 1}
    status, body = await via_absolute(f"{p}/channel/c/uuid/u%2F1")
    assert (status, body["payload"]) == (200, {"k": 1})
    status, body = await via_absolute(f"{p}/channel/a%2Cb")
    assert (status, body["uuids"]) == (200, ["u/1"])
    status, body = await via_absolute(p)
    assert (status, sorted(body["payload"]["channels"])) == (200, ["a,b", "c"])
    assert (await via_absolute(f"{p}/channel/a%2Cb/leave?uuid=u%2F1"))[0] == 200
    assert (await read(f"{p}/channel/a%2Cb"))["occupancy"] == 0
    # subscribe: the handshake joins the subscriber on its channel of keyset sk1
    status, body = await via_absolute("/v2/subscribe/sk1/sub-ch/0?uuid=s1&tt=0")
    assert status == 200 and len(body["t"]["t"]) == 17, body
    assert (await read(f"{p}/channel/sub-ch"))["uuids"] == ["s1"]
    cursor = body["t"]["t"]
    # publish, GET and POST, and signal: the messages reach a poll on keyset sk1's channel
    assert (await via_absolute("/publish/pk1/sk1/0/sub-ch/0/%22one%22?uuid=p1"))[0] == 200
    assert (await via_absolute("/publish/pk1/sk1/0/sub-ch/0?uuid=p1", "POST", b'"two"'))[0] == 200
    assert (await via_absolute("/publish/pk1/sk1/0/sub-ch/0?uuid=p1", "POST", zlib.compress(b'"three"')))[0] == 200
    assert (await via_absolute("/signal/pk1/sk1/0/sub-ch/0/%22four%22?uuid=p1"))[0] == 200
    polled = await read(f"/v2/subscribe/sk1/sub-ch/0?uuid=s1&tt={cursor}")
    assert [m["d"] for m in polled["m"] if m["c"] == "sub-ch"] == ["one", "two", "three", "four"]
    # channel groups
    g = "/v1/channel-registration/sub-key/sk1/channel-group"
    assert (await via_absolute(f"{g}/g%2F1?add=x,y"))[0] == 200
    assert (await read(f"{g}/g%2F1"))["payload"]["channels"] == ["x", "y"]
    status, body = await via_absolute(f"{g}/g%2F1")
    assert (status, body["payload"]["channels"]) == (200, ["x", "y"])
    status, body = await via_absolute(g)
    assert (status, body["payload"]["groups"]) == (200, ["g/1"])
    assert (await via_absolute(f"{g}/g%2F1/remove"))[0] == 200
    assert (await read(g))["payload"]["groups"] == []
    # time and health need no keyset
    status, body = await via_absolute("/time/0")
    assert status == 200 and isinstance(body[0], int)
    assert await via_absolute("/health") == (200, {"status": "ok"})
    # and nothing anywhere but in keyset sk1
    assert keysets_in(await keys_of(redis_client, prefix), prefix) == {"sk1"}
