"""A seeded fuzz run over the route table, on both stores (issue 10, "Kept fixed").

Each generated request is a well-formed call of one route with at least one defect that must get it
refused (a name too long or not UTF-8, a missing uuid, a bad number, bad or too deep JSON, too many
names, a wrong method, an unknown path...), on top of random but valid names. Valid calls (heartbeat,
leave, state, groups) are mixed in so that there is state to damage. The run fails on any 5xx, any
answer that is not JSON with a JSON content type, any refused request that changed the store, and any
broken invariant afterwards (occupancy equals the listed uuids; where now agrees with here now).

A second part sends mangled request lines and headers (and absolute-form targets) to the app served as
the command line serves it (http.AppRunner): aiohttp's parser refuses those before any handler runs,
and the answer must still be JSON.

In CI: ``FUZZ_REQUESTS`` (default 1,500) bad requests on each store, and a fifth as many mangled
lines. The longer run (about 15 minutes) is a command:

    PRESENCE_FUZZ_REQUESTS=100000 PRESENCE_FUZZ_SEED=7 python -m pytest -p no:cacheprovider tests/test_fuzz.py

(about 100,000 requests per store; add ``-k redis`` or ``-k fakeredis`` for one store only).
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote

import orjson
import pytest
import redis.asyncio as aioredis
from yarl import URL

from presence_server.app import create_app
from presence_server.config import Settings
from tests.helpers.app import FakeClock
from tests.helpers.app import listening as serve_listening
from tests.helpers.http import Client, exchange, stored

FUZZ_REQUESTS = int(os.environ.get("PRESENCE_FUZZ_REQUESTS", "1500"))
SEED = int(os.environ.get("PRESENCE_FUZZ_SEED", "20261201"))
CHECK_EVERY = 250  # requests between invariant checks

P = "/v2/presence/sub-key/{sub}"
REG = "/v1/channel-registration/sub-key/{sub}/channel-group"
# Every route: (method, path with {placeholders}, query parameters it takes, kind).
ROUTES: list[tuple[str, str, tuple[str, ...], str]] = [
    ("GET", P + "/channel/{channels}/heartbeat", ("uuid", "heartbeat", "state", "channel-group"), "presence"),
    ("GET", P + "/channel/{channels}/leave", ("uuid", "channel-group"), "presence"),
    ("GET", P + "/channel/{channels}", ("channel-group", "state", "disable_uuids", "limit", "offset"), "presence"),
    ("GET", P, ("state", "disable_uuids", "limit", "offset"), "global"),
    ("GET", P + "/channel/{channels}/uuid/{uuid}", ("channel-group",), "presence"),
    ("GET", P + "/channel/{channels}/uuid/{uuid}/data", ("state", "channel-group"), "presence"),
    ("GET", P + "/uuid/{uuid}", (), "where"),
    ("GET", "/v2/subscribe/{sub}/{channels}/0", ("uuid", "tt", "heartbeat", "state", "channel-group"), "subscribe"),
    ("GET", "/publish/{pub}/{sub}/0/{channel}/0/{message}", ("uuid", "meta", "norep"), "publish"),
    ("POST", "/publish/{pub}/{sub}/0/{channel}/0", ("uuid", "meta"), "publish"),
    ("GET", "/signal/{pub}/{sub}/0/{channel}/0/{message}", ("uuid",), "publish"),
    ("GET", REG + "/{group}", ("add", "remove"), "group"),
    ("GET", REG + "/{group}/remove", (), "group-delete"),
    ("GET", REG, (), "group-list"),
    ("GET", "/time/0", (), "meta"),
    ("GET", "/v2/history/sub-key/{sub}/channel/{channel}", ("count", "start", "end", "reverse"), "history"),
    ("GET", "/v3/history/sub-key/{sub}/channel/{channels}", ("max", "start", "end", "include_meta"), "history"),
    ("DELETE", "/v3/history/sub-key/{sub}/channel/{channel}", ("start", "end"), "history"),
    ("GET", "/v3/history-with-actions/sub-key/{sub}/channel/{channel}", ("max", "start", "end"), "history"),
    ("GET", "/v3/history/sub-key/{sub}/message-counts/{channels}", ("timetoken",), "history"),
]

CHANNELS = ["ch0", "ch1", "ch2", "a%2Cb", "caf%C3%A9", "x%7By%7D", "sl%2Fash", "sp%20ace"]
UUIDS = ["u0", "u1", "u2", "u%2F3", "%C3%BC4"]
GROUPS = ["g0", "g1", "g%7B2%7D"]


def enc(text: str) -> str:
    return quote(text, safe="")


def deep(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


class Call:
    """One request being generated: what the defects change."""

    def __init__(self, route: tuple[str, str, tuple[str, ...], str], fill: dict[str, str]) -> None:
        self.method, self.path, self.params, self.kind = route
        self.fill = fill
        self.query: dict[str, str] = {}
        self.body: bytes | None = None

    def target(self) -> str:
        target = self.path.format(**self.fill)
        if self.query:
            target += "?" + "&".join(f"{k}={v}" for k, v in self.query.items())
        return target


Defect = Callable[[Call], None]


class Generator:
    """Bad requests, each with a defect its route must refuse, and valid calls that make state."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def name(self, pool: list[str]) -> str:
        return self.rng.choice(pool)

    def names(self, pool: list[str]) -> str:
        return ",".join(self.rng.sample(pool, self.rng.randint(1, 3)))

    def long_name(self) -> str:
        return self.rng.choice(["x" * 93, "%C3%A9" * 93, "y" * self.rng.randint(93, 3000)])

    def broken_name(self) -> str:
        return self.rng.choice(["%FF", "ok%C3", "%E2%82", "a%C3%28b", "%ED%A0%80"])

    def bad_number(self) -> str:
        huge = "9" * self.rng.randint(101, 6000)
        return self.rng.choice(["abc", "-1", "1.5e", "nan", "inf", "-inf", "1_0", "%205", huge, "0x10", "1e99999"])

    def bad_json(self) -> str:
        depth = self.rng.choice([33, 60, 254, 255, 300, 1100])
        texts = ["{nope", deep(depth), "[" * self.rng.randint(33, 2000) + "]" * 5, '{"a":' * 40, "[1,]", "{}}"]
        return enc(self.rng.choice(texts))

    def bad(self) -> tuple[str, str, bytes | None]:
        """(method, target, body) of a request that must be refused."""
        route = self.rng.choice(ROUTES)
        call = Call(
            route,
            {
                "sub": "demo",
                "pub": "demo",
                "channels": self.names(CHANNELS),
                "channel": self.name(CHANNELS[:4]),
                "uuid": self.name(UUIDS),
                "group": self.name(GROUPS),
                "message": enc('"hello"'),
            },
        )
        if "uuid" in call.params:
            call.query["uuid"] = self.name(UUIDS)
        if "channel-group" in call.params and call.kind != "global" and self.rng.random() < 0.3:
            call.query["channel-group"] = self.names(GROUPS)
        if call.method == "POST":
            call.body = b'"hi"'
        defects = [*self.name_defects(call), *self.param_defects(call), *self.route_defects(call)]
        for defect in self.rng.sample(defects, min(len(defects), self.rng.randint(1, 2))):
            defect(call)
        return call.method, call.target(), call.body

    def slot(self, place: str, value: Callable[[], str]) -> Defect:
        def apply(call: Call) -> None:
            call.fill[place] = value()

        return apply

    def param(self, key: str, value: Callable[[], str]) -> Defect:
        def apply(call: Call) -> None:
            call.query[key] = value()

        return apply

    def without(self, key: str) -> Defect:
        def apply(call: Call) -> None:
            call.query.pop(key, None)

        return apply

    def name_defects(self, call: Call) -> list[Defect]:
        found = [
            defect
            for place in ("sub", "uuid", "group", "channel")
            if "{" + place + "}" in call.path
            for defect in (self.slot(place, self.long_name), self.slot(place, self.broken_name))
        ]
        if "{channels}" in call.path:
            found += [
                self.slot("channels", lambda: self.names(CHANNELS) + "," + self.long_name()),
                self.slot("channels", lambda: self.broken_name() + "," + self.names(CHANNELS)),
                self.slot("channels", lambda: ",".join(f"c{i}" for i in range(self.rng.choice([501, 800])))),
            ]
        if "channel-group" in call.params and call.kind != "global":
            found += [
                self.param("channel-group", self.long_name),
                self.param("channel-group", lambda: ",".join(f"g{i}" for i in range(11))),
            ]
        if "uuid" in call.params and call.kind in ("presence", "subscribe"):
            found += [self.without("uuid"), self.param("uuid", self.long_name), self.param("uuid", self.broken_name)]
        return found

    def param_defects(self, call: Call) -> list[Defect]:
        rng = self.rng
        numbers = ("limit", "offset", "heartbeat", "count", "max", "start", "end", "timetoken")
        found = [self.param(key, self.bad_number) for key in numbers if key in call.params]
        if "tt" in call.params:
            found.append(self.param("tt", lambda: rng.choice(["-1", "abc", "9" * rng.randint(20, 6000), "1.5"])))
        if "state" in call.params and call.kind == "presence" and not call.path.endswith("}"):
            found.append(self.param("state", self.bad_json))
        if "state" in call.params and call.kind == "subscribe":
            found.append(self.param("state", self.bad_json))
        if "meta" in call.params:
            found.append(self.param("meta", self.bad_json))
        if call.path.endswith("/data"):
            found.append(self.without("state"))
        return found

    def route_defects(self, call: Call) -> list[Defect]:
        rng = self.rng
        found: list[Defect] = []
        if "{message}" in call.path:
            found.append(self.slot("message", self.bad_json))
        if call.method == "POST":

            def bad_body(call: Call) -> None:
                call.body = rng.choice([deep(40).encode(), b"{bad", b"", b'"' + b"x" * 40_000 + b'"'])

            found.append(bad_body)
        if call.kind == "publish":
            found.append(self.slot("channel", lambda: rng.choice(["wc.%2A", "ch1-pnpres", "a.b.c.%2A"])))
        if call.kind == "group":
            many = ",".join(f"c{i}" for i in range(201))
            found += [
                self.param("add", lambda: rng.choice(["", ",,", many, self.long_name()])),
                self.param("remove", lambda: rng.choice(["", self.broken_name()])),
            ]

        def wrong_method(call: Call) -> None:
            # The v3 history path takes GET (fetch) and DELETE (delete): neither is a wrong method there.
            if "/v3/history/" in call.path:
                call.method = rng.choice(["PUT", "PATCH", "OPTIONS", "POST"])
                return
            call.method = rng.choice(["PUT", "DELETE", "PATCH", "OPTIONS", "POST" if call.method == "GET" else "GET"])

        def unknown_path(call: Call) -> None:
            tail = rng.choice(["x", "%2E%2E", "channel", "heartbeat", "0/extra"])
            call.path = rng.choice(["", "/v2", "/v1/channel-registration"]) + "/" + tail + call.path

        return [*found, wrong_method, unknown_path]

    def good(self) -> tuple[str, str]:
        """A valid call that changes state: heartbeat, leave, set state, group add/remove."""
        rng = self.rng
        uuid, channels = self.name(UUIDS), self.names(CHANNELS)
        p = "/v2/presence/sub-key/demo/channel"
        choice = rng.random()
        if choice < 0.5:
            state = "" if rng.random() < 0.5 else "&state=" + enc(orjson.dumps({"k": rng.randint(0, 9)}).decode())
            return "GET", f"{p}/{channels}/heartbeat?uuid={uuid}&heartbeat=60{state}"
        if choice < 0.7:
            return "GET", f"{p}/{channels}/leave?uuid={uuid}"
        if choice < 0.85:
            state = enc(orjson.dumps({"s": rng.randint(0, 9)}).decode())
            return "GET", f"{p}/{channels}/uuid/{uuid}/data?state={state}"
        verb = rng.choice(["add", "remove"])
        return "GET", f"/v1/channel-registration/sub-key/demo/channel-group/{self.name(GROUPS)}?{verb}={channels}"


async def answer(client: Client, method: str, target: str, body: bytes | None = None) -> tuple[int, Any]:
    resp = await client.request(method, URL(target, encoded=True), data=body)
    raw = await resp.read()
    content_type = resp.headers.get("Content-Type", "")
    assert resp.status < 500, (method, target[:300], resp.status, raw[:300])
    assert "json" in content_type or "javascript" in content_type, (method, target[:300], resp.status, raw[:300])
    return resp.status, orjson.loads(raw)


async def check_invariants(client: Client) -> None:
    status, everywhere = await answer(client, "GET", "/v2/presence/sub-key/demo")
    assert status == 200, everywhere
    listed: dict[str, set[str]] = {}
    for channel, entry in everywhere["payload"]["channels"].items():
        assert entry["occupancy"] == len(entry["uuids"]) == len(set(entry["uuids"])), (channel, entry)
        for uuid in entry["uuids"]:
            listed.setdefault(uuid, set()).add(channel)
    for uuid in UUIDS:
        status, where = await answer(client, "GET", f"/v2/presence/sub-key/demo/uuid/{uuid}")
        assert status == 200, where
        decoded = URL(f"/{uuid}", encoded=True).path[1:]
        assert set(where["payload"]["channels"]) == listed.get(decoded, set()), (uuid, where, listed)


@pytest.fixture
async def fuzzed(new_client: Callable[..., Any]) -> Client:
    client: Client = await new_client(longpoll_hold=0.05)
    return client


async def test_generated_bad_requests_are_refused_and_change_nothing(
    fuzzed: Client, redis_client: aioredis.Redis, prefix: str
) -> None:
    rng = random.Random(SEED)
    generator = Generator(rng)
    before = await stored(redis_client, prefix)
    sent = 0
    while sent < FUZZ_REQUESTS:
        if rng.random() < 0.1:
            method, target = generator.good()
            status, body = await answer(fuzzed, method, target)
            assert status == 200, (target, body)
            before = await stored(redis_client, prefix)
            continue
        method, target, payload = generator.bad()
        status, body = await answer(fuzzed, method, target, payload)
        sent += 1
        assert 400 <= status < 500, (method, target[:300], status, body)
        after = await stored(redis_client, prefix)
        assert after == before, f"a refused request changed the store: {method} {target[:300]}"
        if sent % CHECK_EVERY == 0:
            await check_invariants(fuzzed)
    await check_invariants(fuzzed)


# -- below the router: request lines and headers aiohttp's parser sees first ------------------------

LINE_REQUESTS = max(200, FUZZ_REQUESTS // 5)


@pytest.fixture
async def listening(redis_client: aioredis.Redis, settings: Settings, clock: FakeClock) -> AsyncIterator[int]:
    """The app served as the command line serves it (http.AppRunner), on a port of its own."""
    app = create_app(dataclasses.replace(settings, longpoll_hold=0.05), redis=redis_client, clock=clock, sweeper=False)
    async with serve_listening(app) as port:
        yield port


def mangled_request(rng: random.Random, port: int) -> bytes:
    """A request whose line or headers are broken in one of the ways clients and scanners break them,
    or a valid one in absolute form (RFC 9112 3.2.2)."""
    method, target, _ = Generator(rng).bad()
    if rng.random() < 0.5:
        target = f"http://127.0.0.1:{port}{target}"
    line = f"{method} {target} HTTP/1.1".encode()
    headers = [b"Host: 127.0.0.1", b"Connection: close"]
    choice = rng.randrange(7)
    if choice == 0:  # a byte a request line may not hold, somewhere
        at = rng.randrange(len(line))
        line = line[:at] + bytes([rng.choice([0, 1, 0x7F, 0x80, 0xFF, 0x09, 0x0B])]) + line[at:]
    elif choice == 1:  # over the 128 KiB line limit
        line = line.replace(b" HTTP", b"&pad=" + b"p" * (129 * 1024) + b" HTTP")
    elif choice == 2:  # a header over 8 KiB, or without a colon
        headers.append(rng.choice([b"X-Big: " + b"b" * 9000, b"no colon here"]))
    elif choice == 3:  # a version or method aiohttp does not take
        line = line.replace(b"HTTP/1.1", rng.choice([b"HTTP/9.9", b"HTTP/1", b"HTTQ/1.1", b""]))
    elif choice == 4:
        line = rng.choice([b"G\x00T", b"GET\t", b"get", b"\xc3\xa9"]) + line[line.index(b" ") :]
    body = b""
    if method == "POST":
        body = b'"hi"'
        headers.append(rng.choice([b"Content-Length: 4", b"Transfer-Encoding: chunked", b"Content-Length: x"]))
    return line + b"\r\n" + b"\r\n".join(headers) + b"\r\n\r\n" + body


async def test_mangled_request_lines_and_headers_get_json(
    listening: int, redis_client: aioredis.Redis, prefix: str
) -> None:
    rng = random.Random(SEED + 1)
    before = await stored(redis_client, prefix)
    for _ in range(LINE_REQUESTS):
        raw = mangled_request(rng, listening)
        status, headers, payload = await exchange(listening, raw)
        assert status < 500, (raw[:300], status, headers, payload[:300])
        content_type = headers.get("content-type", "")
        assert "json" in content_type or "javascript" in content_type, (raw[:300], status, headers, payload[:300])
        if headers.get("transfer-encoding") != "chunked":
            orjson.loads(payload)
        assert status >= 400, (raw[:300], status, headers, payload[:300])
    assert await stored(redis_client, prefix) == before
