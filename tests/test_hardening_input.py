"""Issue 10, items 2, 3 and 9: deeply nested JSON, huge numbers, an oversized publish body and a huge
``pnsdk`` version get a PubNub-shaped 400 (publish: 413 array) and change nothing; whatever nests
within the bound is accepted and readable back by every read."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import orjson
import pytest
import redis.asyncio as aioredis

from presence_server.params import MAX_JSON_DEPTH, MAX_QUERY_JSON
from tests.helpers.app import Client
from tests.helpers.http import assert_error, send, stored

P = "/v2/presence/sub-key/demo"
PUB = "/publish/demo/demo/0"


def nested(depth: int, leaf: Any = 1) -> dict[str, Any]:
    """An object nesting ``depth`` levels: {"a": {"a": ... leaf}}."""
    value: Any = leaf
    for _ in range(depth):
        value = {"a": value}
    return value  # type: ignore[no-any-return]


def deep_text(depth: int) -> str:
    """The JSON text of nested(depth), written out: orjson itself writes at most 254 levels."""
    return '{"a":' * depth + "1" + "}" * depth


def enc(value: Any) -> str:
    return quote(value if isinstance(value, str) else orjson.dumps(value).decode(), safe="")


async def ok(client: Client, path: str) -> Any:
    status, body = await send(client, path)
    assert status == 200, body
    return body


def assert_publish_error(status: int, body: Any, expected: int = 400) -> None:
    # Publish answers errors as [0, "<message>", "<timetoken>"] (docs/protocol.md 2.9).
    assert status == expected, body
    assert isinstance(body, list) and body[0] == 0 and isinstance(body[1], str) and len(body[2]) == 17, body


TOO_DEEP = MAX_JSON_DEPTH + 1


def deep_requests(depth: int) -> dict[str, tuple[str, str, bytes | None, bool]]:
    """(method, path, body, answered like publish) of every request carrying client JSON, at ``depth``."""
    state = enc(deep_text(depth))
    by_channel = enc('{"ch1":' + deep_text(depth - 1) + "}")
    lists = enc("[" * depth + "]" * depth)
    return {
        "heartbeat flat state": ("GET", f"{P}/channel/ch1/heartbeat?uuid=u9&state={state}", None, False),
        "heartbeat state by channel": ("GET", f"{P}/channel/ch1/heartbeat?uuid=u9&state={by_channel}", None, False),
        "set state": ("GET", f"{P}/channel/ch1/uuid/u9/data?state={state}", None, False),
        "subscribe handshake state": ("GET", f"/v2/subscribe/demo/ch1/0?uuid=u9&tt=0&state={state}", None, False),
        "publish message in the path": ("GET", f"{PUB}/ch1/0/{state}?uuid=u9", None, True),
        "publish message in a body": ("POST", f"{PUB}/ch1/0?uuid=u9", deep_text(depth).encode(), True),
        "publish nested lists": ("GET", f"{PUB}/ch1/0/{lists}?uuid=u9", None, True),
        "publish meta": ("GET", f"{PUB}/ch1/0/%22hi%22?uuid=u9&meta={state}", None, True),
        "signal": ("GET", f"/signal/demo/demo/0/ch1/0/{state}?uuid=u9", None, True),
    }


@pytest.fixture
async def seeded(client: Client) -> Client:
    await ok(client, f"{P}/channel/ch1/heartbeat?uuid=u0&heartbeat=60&state={enc({'k': 1})}")
    return client


@pytest.mark.parametrize("depth", [TOO_DEEP, 250, 254, 300, 1000, 2000])
@pytest.mark.parametrize("name", list(deep_requests(TOO_DEEP)))
async def test_json_nested_past_the_bound_is_a_400_and_changes_nothing(
    seeded: Client, redis_client: aioredis.Redis, prefix: str, name: str, depth: int
) -> None:
    before = await stored(redis_client, prefix)
    method, path, body, publish_like = deep_requests(depth)[name]
    status, answer = await send(seeded, path, method, body)
    (assert_publish_error if publish_like else assert_error)(status, answer)
    assert await stored(redis_client, prefix) == before


async def test_json_nested_to_the_bound_is_accepted_and_every_read_can_answer(client: Client) -> None:
    deepest = nested(MAX_JSON_DEPTH)
    handshake = await ok(client, "/v2/subscribe/demo/ch1,ch1-pnpres,ch2/0?uuid=watcher&tt=0")
    cursor = handshake["t"]["t"]
    await ok(client, f"{P}/channel/ch1/heartbeat?uuid=u1&state={enc(deepest)}")
    await ok(client, f"{P}/channel/ch2/heartbeat?uuid=u1&state={enc({'ch2': nested(MAX_JSON_DEPTH - 1)})}")
    await ok(client, f"{P}/channel/ch1/heartbeat?uuid=u2")
    await ok(client, f"{P}/channel/ch1/uuid/u2/data?state={enc(deepest)}")
    await ok(client, f"/v2/subscribe/demo/ch2/0?uuid=u3&tt=0&state={enc(deepest)}")
    for method, path, body, _ in deep_requests(MAX_JSON_DEPTH).values():
        if path.startswith(("/publish", "/signal")):
            status, answer = await send(client, path, method, body)
            assert status == 200 and answer[0] == 1, answer
    # Every read that echoes a state or a message, wrapped in its own levels.
    single = await ok(client, f"{P}/channel/ch1?state=1")
    assert {"uuid": "u1", "state": deepest} in single["uuids"]
    multi = await ok(client, f"{P}/channel/ch1,ch2?state=1")
    assert {"uuid": "u1", "state": deepest} in multi["payload"]["channels"]["ch1"]["uuids"]
    everywhere = await ok(client, f"{P}?state=1")
    assert everywhere["payload"]["total_occupancy"] == 6
    assert (await ok(client, f"{P}/channel/ch1/uuid/u1"))["payload"] == deepest
    assert (await ok(client, f"{P}/channel/ch1,ch2/uuid/u1"))["payload"]["channels"]["ch1"] == deepest
    assert sorted((await ok(client, f"{P}/uuid/u1"))["payload"]["channels"]) == ["ch1", "ch2"]
    polled = await ok(client, f"/v2/subscribe/demo/ch1,ch1-pnpres,ch2/0?uuid=watcher&tt={cursor}")
    messages = [m["d"] for m in polled["m"] if m["c"] == "ch1"]
    assert deepest in messages
    assert {"uuid": "u2", "data": deepest} in [
        {"uuid": m["d"].get("uuid"), "data": m["d"].get("data")}
        for m in polled["m"]
        if m["c"] == "ch1-pnpres" and m["d"]["action"] == "state-change"
    ]


HUGE = "9" * 5000  # past int()'s 4,300-digit limit


@pytest.mark.parametrize(
    "path",
    [
        f"{P}/channel/ch1?limit={HUGE}",
        f"{P}/channel/ch1?offset={HUGE}",
        f"{P}?limit={HUGE}",
        f"{P}?offset=-{HUGE}",
        f"{P}/channel/ch1/heartbeat?uuid=u1&heartbeat={HUGE}.5e99999",
        f"{P}/channel/ch1/heartbeat?uuid=u1&heartbeat={HUGE}",
        f"/v2/subscribe/demo/ch1/0?uuid=u1&tt={HUGE}",
        f"/v2/subscribe/demo/ch1/0?uuid=u1&tt=1&heartbeat={HUGE}",
        f"{P}/channel/ch1/heartbeat?uuid=u1&heartbeat=1_0",
        f"{P}/channel/ch1/heartbeat?uuid=u1&heartbeat=%2010",
        f"{P}/channel/ch1/heartbeat?uuid=u1&heartbeat=infinity",
        f"{P}/channel/ch1/heartbeat?uuid=u1&heartbeat=%C2%B2",  # a superscript two: isdigit, not float
        f"{P}/channel/ch1/heartbeat?uuid=u1&heartbeat=%D9%A3%D9%A0",  # Arabic-Indic thirty
        f"{P}/channel/ch1/heartbeat?uuid=u1&heartbeat=0",
    ],
)
async def test_huge_or_odd_numbers_are_a_400_and_change_nothing(
    seeded: Client, redis_client: aioredis.Redis, prefix: str, path: str
) -> None:
    before = await stored(redis_client, prefix)
    status, body = await send(seeded, path)
    assert_error(status, body)
    assert len(body["message"]) < 200, "the refused value is not echoed whole"
    assert await stored(redis_client, prefix) == before


async def test_numbers_with_many_digits_below_the_limit_are_brought_down_to_the_bound(seeded: Client) -> None:
    assert (await ok(seeded, f"{P}/channel/ch1?offset={'9' * 100}"))["uuids"] == []
    assert (await ok(seeded, f"{P}/channel/ch1?limit={'9' * 100}"))["uuids"] == ["u0"]
    assert_error(*await send(seeded, f"{P}/channel/ch1?limit={'9' * 101}"))


@pytest.mark.parametrize("pnsdk", [f"PubNub-JS-Web/{HUGE}.0.0", f"PubNub-JS-Nodejs/7{HUGE}.1", "PubNub-JS-Web/7.3.3"])
async def test_a_huge_js_version_in_pnsdk_is_just_a_new_client(client: Client, pnsdk: str) -> None:
    # Before JS 8 a channel list came encoded as one string (params.whole_list_encoded); a version
    # too long to be one is read as a new client, whose "a%2Cb" is one channel named "a,b".
    await ok(client, f"{P}/channel/a%2Cb/heartbeat?uuid=u1&pnsdk={quote(pnsdk, safe='')}")
    occupied = (await ok(client, P))["payload"]["channels"]
    assert sorted(occupied) == (["a", "b"] if pnsdk.endswith("7.3.3") else ["a,b"])


async def test_a_publish_body_over_aiohttps_limit_gets_publishs_413_array(
    seeded: Client, redis_client: aioredis.Redis, prefix: str
) -> None:
    before = await stored(redis_client, prefix)
    big = b'"' + b"x" * (1024 * 1024 + 10) + b'"'
    assert_publish_error(*await send(seeded, f"{PUB}/ch1/0?uuid=u1", "POST", big), 413)
    # Within aiohttp's limit but over the message bound: the same answer.
    assert_publish_error(*await send(seeded, f"{PUB}/ch1/0?uuid=u1", "POST", b'"' + b"x" * 40_000 + b'"'), 413)
    assert await stored(redis_client, prefix) == before


@pytest.mark.parametrize(
    "path",
    [
        f"{P}/channel/ch1/heartbeat?uuid=u1&state=",
        f"{P}/channel/ch1/uuid/u0/data?state=",
        "/v2/subscribe/demo/ch1/0?uuid=u1&tt=0&state=",
        f"{PUB}/ch1/0/1?uuid=u1&meta=",
    ],
)
async def test_state_and_meta_are_bounded_in_size(
    seeded: Client, redis_client: aioredis.Redis, prefix: str, path: str
) -> None:
    # 64 KiB of JSON (MAX_QUERY_JSON) is accepted, a byte more is not.
    def sized(size: int) -> str:
        return enc('{"k":"' + "x" * (size - 8) + '"}')

    before = await stored(redis_client, prefix)
    status, body = await send(seeded, path + sized(MAX_QUERY_JSON + 1))
    (assert_publish_error if path.startswith(PUB) else assert_error)(status, body)
    assert await stored(redis_client, prefix) == before
    status, body = await send(seeded, path + sized(MAX_QUERY_JSON))
    assert status == 200, body
