"""A seeded fuzz run against an Access Manager keyset (docs/protocol.md 11.5), on both stores: every route
called with forged, truncated, mutated, foreign or random tokens and auth keys, bad signatures and
timestamps. Every answer must be a JSON refusal (never a 5xx), and nothing may change in the store."""

from __future__ import annotations

import base64
import os
import random
import time
from urllib.parse import quote

import redis.asyncio as aioredis

from presence_server.access.signing import canonical_query, sign_v2
from presence_server.access.tokens import CHANNELS, READ, WRITE, looks_like_token, mint
from tests.helpers.app import NewClient
from tests.helpers.http import send, stored

REQUESTS = int(os.environ.get("PRESENCE_FUZZ_REQUESTS", "600")) // 2
SEED = int(os.environ.get("PRESENCE_FUZZ_SEED", "20261201"))
PUB, SUB, SECRET = "pub-c-f", "sub-c-f", "sec-c-fuzz-secret"
P = f"/v2/presence/sub-key/{SUB}"
REG = f"/v1/channel-registration/sub-key/{SUB}/channel-group"
TARGETS = [
    ("GET", P + "/channel/{ch}/heartbeat"),
    ("GET", P + "/channel/{ch}/leave"),
    ("GET", P + "/channel/{ch}"),
    ("GET", P),
    ("GET", P + "/channel/{ch}/uuid/u1/data?state=%7B%22a%22%3A1%7D"),
    ("GET", P + "/channel/{ch}/uuid/u1"),
    ("GET", f"/v2/subscribe/{SUB}/{{ch}}/0"),
    ("GET", f"/publish/{PUB}/{SUB}/0/{{ch}}/0/%22m%22"),
    ("POST", f"/publish/{PUB}/{SUB}/0/{{ch}}/0"),
    ("GET", f"/signal/{PUB}/{SUB}/0/{{ch}}/0/%22m%22"),
    ("GET", REG + "/{ch}?add=x"),
    ("GET", REG + "/{ch}/remove"),
    ("GET", REG),
    ("POST", f"/v3/pam/{SUB}/grant"),
    ("DELETE", f"/v3/pam/{SUB}/grant/{{token}}"),
    ("GET", f"/v2/auth/grant/sub-key/{SUB}?r=1&w=1&channel={{ch}}"),
    ("GET", f"/v2/auth/audit/sub-key/{SUB}"),
]


def token(secret: str = SECRET, sub_key: str = SUB, issued: int = 1_800_000_000) -> str:
    # Grants only a channel the fuzz never names (and with a uuid it never sends).
    return mint(
        secret,
        sub_key,
        issued=issued,
        ttl=60,
        resources={CHANNELS: {"granted-only": READ | WRITE}},
        patterns={CHANNELS: {"^granted-only$": READ}},
        meta={},
        uuid="owner",
    )


class Auths:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.valid = token()

    def __call__(self) -> str:
        rng, valid = self.rng, self.valid
        raw = bytearray(base64.urlsafe_b64decode(valid))
        choice = rng.randrange(9)
        if choice == 0:  # one byte flipped anywhere
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
            return base64.urlsafe_b64encode(bytes(raw)).decode()
        if choice == 1:  # cut short
            return valid[: rng.randrange(1, len(valid))]
        if choice == 2:  # a token header followed by random bytes (a CBOR bomb, unsigned)
            junk = bytes(rng.randrange(256) for _ in range(rng.randrange(40, 400)))
            return base64.urlsafe_b64encode(b"\xa8\x41v\x02" + junk).decode()
        if choice == 3:
            return token(secret="sec-c-other")
        if choice == 4:
            return token(sub_key="sub-c-other")
        if choice == 5:
            return token(issued=1_000_000_000)  # expired long ago
        if choice == 6:
            return "".join(rng.choice("abcXYZ019+/=-_%~ é") for _ in range(rng.randrange(0, 60)))
        if choice == 7:
            return valid  # valid, but not for this uuid, nor these channels
        return ""


def signature(rng: random.Random, method: str, path: str, raw_query: str) -> str:
    choice = rng.randrange(5)
    if choice == 0:
        return ""
    if choice == 1:  # the right form and the wrong secret
        return "&signature=" + sign_v2("wrong", method, PUB, path, canonical_query(raw_query))
    if choice == 2:  # right secret, stale timestamp
        stale = raw_query.replace(f"timestamp={int(time.time())}", "timestamp=1000")
        return "&signature=" + sign_v2(SECRET, method, PUB, path, canonical_query(stale)) + "&timestamp=1000"
    if choice == 3:
        return "&signature=v2." + "".join(rng.choice("abAB01-_") for _ in range(rng.randrange(0, 50)))
    return "&signature=" + quote("".join(rng.choice("ab=+/%") for _ in range(rng.randrange(0, 20))), safe="%")


async def test_forged_tokens_and_signatures_are_refused_and_change_nothing(
    new_client: NewClient, redis_client: aioredis.Redis, prefix: str
) -> None:
    client = await new_client(keysets=f"{PUB}:{SUB}:{SECRET}")
    rng = random.Random(SEED)
    auths = Auths(rng)
    before = await stored(redis_client, prefix)
    statuses: dict[int, int] = {}
    for _ in range(REQUESTS):
        method, shape = rng.choice(TARGETS)
        auth = auths()
        path_and_query = shape.format(
            ch=rng.choice(["room-1", "a%20b", "granted-onl", "x.*", "c-pnpres"]), token=quote(auth, safe="")
        )
        path, _, query = path_and_query.partition("?")
        params = [query] if query else []
        params += [f"uuid={rng.choice(['u1', 'owner2', ''])}", f"auth={quote(auth, safe='')}"]
        if rng.random() < 0.5:
            params.append(f"timestamp={int(time.time())}")
        raw_query = "&".join(p for p in params if p)
        signed = signature(rng, method, path, raw_query)
        target = f"{path}?{raw_query}{signed}"
        body = b'{"ttl":15,"permissions":{"resources":{"channels":{"a":1}}}}' if method == "POST" else None
        status, answer = await send(client, target, method, body)
        statuses[status] = statuses.get(status, 0) + 1
        # A leave needs no permission (docs/protocol.md 11.6): without a token (an auth key, or none) or
        # a signature, it goes on (and, as nobody is present, changes nothing).
        free = path.endswith("/leave") and not looks_like_token(auth) and not signed
        allowed: tuple[int, ...] = (200, 400) if free else (400, 403)
        if path.endswith("/"):  # revoke with an empty token: no route
            allowed = (404,)
        assert status in allowed, (method, target, status, answer)
    assert await stored(redis_client, prefix) == before
    # The run reached both kinds of refusal.
    assert statuses.get(403, 0) > REQUESTS // 4 and statuses.get(400, 0) > 0, statuses
