"""Raw HTTP calls to the server, the way the SDKs make them, and the checks every answer must pass.

Paths are sent byte for byte as written (already percent-encoded, names joined with literal commas);
``params`` are encoded the JS way (every value percent-encoded, ``%20`` for spaces). Every answer must
be JSON with a json/javascript Content-Type (docs/protocol.md 1.4). Subscribe answers are checked for the wire
shape the SDKs need (``t.t`` a 17-digit string, non-zero ``t.r``, envelopes with ``a f k c d p``, no
``e`` on messages and presence), so each test that polls also guards those crash traps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import orjson
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

# What the route tests call ``client``: aiohttp's test client of one app.
Client = TestClient[web.Request, web.Application]

SUB = "/v2/subscribe/demo"
P = "/v2/presence/sub-key/demo"
PUB = "/publish/pub-key/demo/0"
REGISTRY = "/v1/channel-registration/sub-key/demo/channel-group"
OK = {"status": 200, "message": "OK", "service": "Presence"}
ERROR_KEYS = {"status", "error", "message", "service"}

# Long-poll holds, in real time (presence time is injected): an idle poll is held HOLD seconds by the
# route tests' servers, LONG_HOLD where a test shows that an answer came early, and an answer that was
# not held comes back in less than EARLY.
HOLD = 0.2
LONG_HOLD = 5.0
EARLY = 2.0


@dataclasses.dataclass(frozen=True)
class Reply:
    status: int
    body: Any
    content_type: str


def target(path: str, params: Mapping[str, object] | None = None) -> URL:
    """``path`` exactly as written (already percent-encoded), with ``params`` encoded the JS way."""
    if params:
        path += ("&" if "?" in path else "?") + urlencode(
            {k: str(v) for k, v in params.items()}, quote_via=quote, safe=""
        )
    return URL(path, encoded=True)


def check_json(status: int, content_type: str, raw: bytes) -> Reply:
    # Every answer, success or error, is JSON with a json/javascript Content-Type (docs/protocol.md 1.4).
    assert "json" in content_type or "javascript" in content_type, content_type
    return Reply(status, orjson.loads(raw), content_type)


async def get(client: Client, path: str, params: Mapping[str, object] | None = None) -> Reply:
    resp = await client.get(target(path, params))
    return check_json(resp.status, resp.headers.get("Content-Type", ""), await resp.read())


async def request(
    client: Client, path: str, method: str = "GET", data: bytes | None = None, headers: Mapping[str, str] | None = None
) -> tuple[int, Any, Mapping[str, str]]:
    """Send ``path`` byte for byte (already percent-encoded) with ``method``; the answer must be JSON
    whatever its status. Returns the status, the parsed body and the response headers."""
    body = None if data is None else io.BytesIO(data)  # aiohttp warns about large raw bytes
    resp = await client.request(method, URL(path, encoded=True), data=body, headers=headers)
    reply = check_json(resp.status, resp.headers.get("Content-Type", ""), await resp.read())
    return reply.status, reply.body, resp.headers


async def send(client: Client, path: str, method: str = "GET", data: bytes | None = None) -> tuple[int, Any]:
    """``request`` without the headers: the status and the parsed body."""
    status, body, _ = await request(client, path, method, data)
    return status, body


def assert_error(status: int, body: Any, expected: int = 400, service: str | None = None) -> None:
    """PubNub's error object: JS reads one only when all four keys are there, and then takes the status
    from the body (docs/protocol.md 1.5); Python reads ``error``."""
    assert status == expected, body
    assert set(body) == ERROR_KEYS, body
    assert body["status"] == expected and body["error"] is True, body
    assert isinstance(body["message"], str) and body["message"], body
    if service is not None:
        assert body["service"] == service, body


async def stored(redis: aioredis.Redis, prefix: str) -> dict[str, Any]:
    """Every key of a test's prefix with its whole value (DUMP, whatever its type): equal before and
    after a refused request when it changed nothing."""
    keys = [key async for key in redis.scan_iter(match=f"{prefix}:*", count=1000)]
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.dump(key)
        values = await pipe.execute()
    return dict(zip(keys, values, strict=True))


async def exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw`` bytes as they are to a server on a loopback port and read until it closes: the
    status, the headers (names lower-cased) and the body, for requests no HTTP client would send."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


async def get_url(
    session: aiohttp.ClientSession, base: str, path: str, params: Mapping[str, object] | None = None
) -> Reply:
    """``get`` for a server at ``base`` (a process of its own) through a client session of the test's."""
    async with session.get(URL(base + str(target(path, params)), encoded=True)) as resp:
        return check_json(resp.status, resp.headers.get("Content-Type", ""), await resp.read())


async def ok_body(client: Client, path: str, params: Mapping[str, object] | None = None) -> Any:
    reply = await get(client, path, params)
    assert reply.status == 200, reply.body
    return reply.body


def is_timetoken(value: object) -> bool:
    return isinstance(value, str) and len(value) == 17 and value.isdigit()


def check_presence_payload(d: Any) -> None:
    # Python's subscribe loop dies on a string timestamp or a missing occupancy (docs/protocol.md 2.2.5).
    assert isinstance(d, dict), d
    assert type(d["action"]) is str
    assert type(d["timestamp"]) is int
    assert type(d["occupancy"]) is int
    if d["action"] == "interval":
        assert "uuid" not in d
    else:
        assert type(d["uuid"]) is str
    if "data" in d:
        assert isinstance(d["data"], dict)
    if d["action"] == "state-change":
        assert "data" in d


def check_envelope(env: dict[str, Any], sub_key: str = "demo") -> None:
    """The envelope fields of docs/protocol.md 2.2.3 whose absence or wrong type crashes an SDK."""
    assert {"a", "f", "k", "c", "d", "p"} <= env.keys(), env
    assert type(env["f"]) is int
    assert env["k"] == sub_key
    assert isinstance(env["c"], str)
    assert is_timetoken(env["p"]["t"]), env["p"]
    assert type(env["p"]["r"]) is int
    if env["c"].endswith("-pnpres"):
        # Presence: no `e` at all, or JS takes it for a file event (docs/protocol.md 2.2.4).
        assert "e" not in env, env
        check_presence_payload(env["d"])
    else:
        assert env.get("e") in (None, 1), env  # absent for messages, 1 for signals
    if "b" in env:
        assert isinstance(env["b"], str)


async def poll_reply(client: Client, channels: str, tt: str | None, uuid: str = "u1", **params: object) -> Any:
    """One subscribe request, checked for the success shape of docs/protocol.md 2.2.2; ``tt=None`` sends
    no ``tt`` at all (the JS handshake)."""
    query: dict[str, object] = {"uuid": uuid, **params}
    if tt is not None:
        query["tt"] = tt
    reply = await get(client, f"{SUB}/{channels}/0", query)
    assert reply.status == 200, reply.body
    body = reply.body
    assert set(body) == {"t", "m"}
    assert is_timetoken(body["t"]["t"]), body["t"]
    assert type(body["t"]["r"]) is int and body["t"]["r"] != 0
    assert isinstance(body["m"], list)
    stamps = [int(env["p"]["t"]) for env in body["m"]]
    for env in body["m"]:
        check_envelope(env)
    # Strictly increasing, all after the request's cursor, and the next cursor past every one.
    assert stamps == sorted(set(stamps)), stamps
    if stamps:
        assert tt is not None and stamps[0] > int(tt)
        assert int(body["t"]["t"]) >= stamps[-1]
    return body


async def poll(client: Client, channels: str, tt: str, uuid: str = "u1", **params: object) -> tuple[list[Any], str]:
    """A receive poll: the envelopes and the next cursor."""
    body = await poll_reply(client, channels, tt, uuid, **params)
    return body["m"], body["t"]["t"]


async def handshake(client: Client, channels: str, uuid: str = "u1", **params: object) -> str:
    body = await poll_reply(client, channels, "0", uuid, **params)
    assert body["m"] == []
    cursor: str = body["t"]["t"]
    return cursor


async def drain(client: Client, channels: str, tt: str, uuid: str = "u1", **params: object) -> tuple[list[Any], str]:
    """Poll until a poll comes back empty (after the hold): everything pending, and the last cursor."""
    found: list[Any] = []
    while True:
        batch, next_tt = await poll(client, channels, tt, uuid, **params)
        if not batch:
            assert next_tt == tt
            return found, tt
        found += batch
        tt = next_tt


async def publish(client: Client, channel: str, message: Any, **params: object) -> str:
    """GET publish of a JSON message; returns its timetoken."""
    encoded = quote(orjson.dumps(message).decode(), safe="")
    reply = await get(client, f"{PUB}/{channel}/0/{encoded}", {"uuid": "publisher", **params})
    assert reply.status == 200, reply.body
    assert reply.body[:2] == [1, "Sent"] and is_timetoken(reply.body[2]), reply.body
    tt: str = reply.body[2]
    return tt


async def heartbeat(client: Client, channels: str, uuid: str, **params: object) -> None:
    body = await ok_body(client, f"{P}/channel/{channels}/heartbeat", {"uuid": uuid, **params})
    assert body == OK


async def occupants(client: Client, channel: str) -> list[str]:
    """Who is on one channel, sorted by name (here now lists them in deadline order)."""
    body = await ok_body(client, f"{P}/channel/{channel}")
    uuids: list[str] = body["uuids"]
    assert body["occupancy"] == len(uuids)
    return sorted(uuids)


async def where(client: Client, uuid: str) -> list[str]:
    return sorted((await ok_body(client, f"{P}/uuid/{uuid}"))["payload"]["channels"])


async def state_of(client: Client, channel: str, uuid: str) -> Any:
    return (await ok_body(client, f"{P}/channel/{channel}/uuid/{uuid}"))["payload"]


async def add_to_group(client: Client, group: str, channels: str) -> None:
    await ok_body(client, f"{REGISTRY}/{group}", {"add": channels})


def messages(envelopes: list[Any]) -> list[Any]:
    return [env["d"] for env in envelopes]


def presence(envelopes: list[Any]) -> list[tuple[str, str | None, int]]:
    """(action, uuid, occupancy) of each presence envelope."""
    return [(e["d"]["action"], e["d"].get("uuid"), e["d"]["occupancy"]) for e in envelopes]


# -- /metrics ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Scrape:
    """One /metrics answer, parsed: families by name, and every sample by (name, labels)."""

    types: dict[str, str]
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    def value(self, name: str, **labels: str) -> float:
        """A sample that must be there."""
        return self.samples[(name, frozenset(labels.items()))]

    def count(self, name: str, **labels: str) -> float:
        """A counter child that may not exist yet (prometheus-client creates children on first use)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)


def parse_metrics(text: str) -> Scrape:
    """The text format, read by prometheus-client's own parser (the way Prometheus reads it)."""
    types: dict[str, str] = {}
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return Scrape(types, samples)


async def held_polls(session: aiohttp.ClientSession, base: str) -> float:
    """How many long-polls the server at ``base`` says it holds (``presence_longpolls_held``)."""
    async with session.get(f"{base}/metrics") as resp:
        return parse_metrics(await resp.text()).value("presence_longpolls_held")
