"""Message history over raw HTTP (docs/protocol.md 12), on both engines: what is stored, every bound of the
walk (start exclusive, end inclusive, reverse), caps, shapes, counts, deletes, retention and ttl by the
server's clock, errors that change nothing, history off, Access Manager, and two processes on one Redis."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
import redis.asyncio as aioredis

from tests.helpers.app import Client, FakeClock, NewClient
from tests.helpers.http import send, stored

H2 = "/v2/history/sub-key/demo/channel/{}"
H3 = "/v3/history/sub-key/demo/channel/{}"
ACTIONS = "/v3/history-with-actions/sub-key/demo/channel/{}"
COUNTS = "/v3/history/sub-key/demo/message-counts/{}"
OK3 = {"status": 200, "error": False, "error_message": ""}


async def publish(client: Client, channel: str, message: Any, **params: str) -> int:
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in {"uuid": "alice", **params}.items())
    path = f"/publish/demo/demo/0/{quote(channel, safe='')}/0/{quote(json.dumps(message), safe='')}?{query}"
    status, body = await send(client, path)
    assert status == 200, body
    return int(body[2])


async def fill(client: Client, channel: str = "ch", n: int = 10) -> list[int]:
    return [await publish(client, channel, f"m{i}") for i in range(n)]


async def v2(client: Client, channel: str = "ch", **params: object) -> tuple[list[Any], Any, Any]:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    status, body = await send(client, H2.format(channel) + ("?" + query if query else ""))
    assert status == 200, body
    assert isinstance(body, list) and len(body) == 3, body
    return body[0], body[1], body[2]


def texts(items: list[Any]) -> list[Any]:
    return [item["message"] if isinstance(item, dict) else item for item in items]


async def test_what_was_published_comes_back_oldest_first_with_its_timetokens(client: Client) -> None:
    tts = await fill(client, n=5)
    items, first, last = await v2(client, include_token="true")
    assert [item["timetoken"] for item in items] == tts and (first, last) == (tts[0], tts[-1])
    assert texts(items) == [f"m{i}" for i in range(5)]
    # No flags: bare messages; with string_message_token, strings.
    assert (await v2(client))[0] == [f"m{i}" for i in range(5)]
    items, first, _ = await v2(client, include_token="true", string_message_token="true")
    assert items[0]["timetoken"] == str(tts[0]) and first == str(tts[0])
    assert await v2(client, "empty") == ([], 0, 0)


@pytest.mark.parametrize(
    ("bounds", "expected"),
    [
        ({}, [7, 8, 9]),
        ({"reverse": "true"}, [0, 1, 2]),
        ({"start": 5}, [2, 3, 4]),  # start exclusive, walking back
        ({"start": 5, "reverse": "true"}, [6, 7, 8]),
        ({"end": 5}, [7, 8, 9]),  # newest three with tt >= end
        ({"end": 8}, [8, 9]),
        ({"end": 5, "reverse": "true"}, [5, 6, 7]),  # end inclusive
        ({"start": 8, "end": 5}, [5, 6, 7]),
        ({"start": 8, "end": 6}, [6, 7]),
        ({"start": 2, "end": 5}, [3, 4, 5]),
        ({"start": 2, "end": 4, "reverse": "true"}, [3, 4]),
        ({"start": 5, "end": 5}, []),
    ],
)
async def test_the_walk_from_start_exclusive_to_end_inclusive(
    client: Client, bounds: dict[str, Any], expected: list[int]
) -> None:
    tts = await fill(client)
    params = {k: (tts[v] if k in ("start", "end") else v) for k, v in bounds.items()}
    items, _, _ = await v2(client, count=3, **params)
    assert items == [f"m{i}" for i in expected]
    # v3 walks alike.
    query = "&".join(f"{k}={v}" for k, v in params.items())
    _, body = await send(client, H3.format("ch") + f"?max=3&{query}")
    assert [item["message"] for item in body["channels"].get("ch", [])] == [f"m{i}" for i in expected]


async def test_paging_back_by_start_reads_every_message_once(client: Client) -> None:
    tts = await fill(client, n=23)
    seen: list[Any] = []
    start = ""
    while True:
        items, first, _ = await v2(client, count=5, include_token="true", **({"start": start} if start else {}))
        if not items:
            break
        seen = texts(items) + seen
        start = first
    assert seen == [f"m{i}" for i in range(23)] and len(tts) == 23


async def test_caps_lower_and_defaults(client: Client) -> None:
    await fill(client, "a", 120)
    await fill(client, "b", 30)
    assert len((await v2(client, "a", count=500))[0]) == 100
    assert len((await v2(client, "a", count=0))[0]) == 100
    _, body = await send(client, H3.format("a") + "?max=1000")
    assert len(body["channels"]["a"]) == 100
    _, body = await send(client, H3.format("a,b,none") + "?max=1000")
    assert {k: len(v) for k, v in body["channels"].items()} == {"a": 25, "b": 25}  # an empty channel is left out
    _, body = await send(client, ACTIONS.format("a") + "?max=1000")
    assert len(body["channels"]["a"]) == 25 and all(item["actions"] == {} for item in body["channels"]["a"])


async def test_v3_items_carry_what_is_asked(client: Client) -> None:
    await publish(client, "ch", {"text": "é ✓"}, meta='{"k":1}', custom_message_type="chat-msg")
    await publish(client, "ch", "plain")
    _, body = await send(client, H3.format("ch"))
    assert body == {
        **OK3,
        "channels": {
            "ch": [
                {"message": {"text": "é ✓"}, "timetoken": body["channels"]["ch"][0]["timetoken"]},
                {"message": "plain", "timetoken": body["channels"]["ch"][1]["timetoken"]},
            ]
        },
    }
    assert all(isinstance(item["timetoken"], str) and len(item["timetoken"]) == 17 for item in body["channels"]["ch"])
    flags = "include_uuid=true&include_meta=true&include_message_type=true&include_custom_message_type=true"
    _, body = await send(client, H3.format("ch") + "?" + flags)
    first, second = body["channels"]["ch"]
    assert (first["uuid"], first["meta"], first["message_type"], first["custom_message_type"]) == (
        "alice",
        {"k": 1},
        None,
        "chat-msg",
    )
    assert second["meta"] == "" and "custom_message_type" not in second


async def test_channel_keys_are_percent_encoded_unless_asked_not_to(client: Client) -> None:
    await publish(client, "a|b::1", "x")
    _, body = await send(client, H3.format(quote("a|b::1", safe="")))
    assert list(body["channels"]) == ["a%7Cb%3A%3A1"]
    _, body = await send(client, H3.format(quote("a|b::1", safe="")) + "?encode_channels=false")
    assert list(body["channels"]) == ["a|b::1"]


async def test_signals_store_0_and_fire_are_not_kept(client: Client) -> None:
    await publish(client, "ch", "kept")
    await publish(client, "ch", "live only", store="0")
    await publish(client, "ch", "fired", store="0", norep="true")
    status, _ = await send(client, "/signal/demo/demo/0/ch/0/%22sig%22")
    assert status == 200
    assert (await v2(client))[0] == ["kept"]
    _, body = await send(client, COUNTS.format("ch") + "?timetoken=0")
    assert body["channels"] == {"ch": 1}


async def test_counts_are_exclusive_and_list_every_channel(client: Client) -> None:
    a = await fill(client, "a", 5)
    await fill(client, "b", 2)
    _, body = await send(client, COUNTS.format("a,b,c") + f"?channelsTimetoken={a[1]},0,0")
    assert body == {**OK3, "channels": {"a": 3, "b": 2, "c": 0}}
    _, body = await send(client, COUNTS.format("a") + f"?timetoken={a[-1]}")
    assert body["channels"] == {"a": 0}


@pytest.mark.parametrize(
    ("bounds", "left"),
    [
        ({}, []),
        ({"start": 5}, [5, 6, 7, 8, 9]),
        ({"end": 5}, [0, 1, 2, 3, 4]),
        ({"start": 7, "end": 4}, [0, 1, 2, 3, 7, 8, 9]),
        ({"start": 4, "end": 7}, [0, 1, 2, 3, 4, 8, 9]),
        ({"start": 5, "end": 5}, list(range(10))),
    ],
)
async def test_delete_removes_from_start_exclusive_to_end_inclusive(
    client: Client, bounds: dict[str, int], left: list[int]
) -> None:
    tts = await fill(client)
    query = "&".join(f"{k}={tts[v]}" for k, v in bounds.items())
    status, body = await send(client, H3.format("ch") + ("?" + query if query else ""), "DELETE")
    assert (status, body) == (200, OK3)
    assert (await v2(client, count=100))[0] == [f"m{i}" for i in left]


async def test_a_delete_takes_no_reverse(client: Client) -> None:
    tts = await fill(client, n=4)
    status, _ = await send(client, H3.format("ch") + f"?start={tts[2]}&reverse=true", "DELETE")
    assert status == 200
    assert (await v2(client))[0] == ["m2", "m3"]  # tt < start went, whatever reverse says


async def test_retention_and_ttl_follow_the_servers_clock(new_client: NewClient, clock: FakeClock) -> None:
    client = await new_client(history_retention=3600.0)
    await publish(client, "ch", "hour", ttl="1")  # a ttl as long as retention: retention decides
    await publish(client, "ch", "half", ttl="0.5")
    await publish(client, "ch", "kept")
    clock.advance(1801)
    assert (await v2(client))[0] == ["hour", "kept"]
    clock.advance(1800)
    assert (await v2(client))[0] == []
    await publish(client, "ch", "new")  # and the trim on write drops the old ones for good
    assert (await v2(client))[0] == ["new"]


@pytest.mark.parametrize(
    "path",
    [
        H2.format("ch") + "?count=-1",
        H2.format("ch") + "?count=abc",
        H2.format("ch") + "?count=-0",
        H2.format("ch") + "?start=12x",
        H2.format("ch") + "?end=-5",
        H3.format("ch") + "?max=-1",
        H3.format(",".join(f"c{i}" for i in range(501))),
        COUNTS.format("a,b") + "?channelsTimetoken=1",
        COUNTS.format("a") + "?timetoken=x",
        COUNTS.format("a"),
        COUNTS.format("a") + "?timetoken=1&channelsTimetoken=1",
        COUNTS.format(",".join(f"c{i}" for i in range(101))) + "?timetoken=1",
        ACTIONS.format("ch") + "?max=x",
    ],
)
async def test_bad_input_gets_historys_400_and_changes_nothing(
    client: Client, redis_client: aioredis.Redis, prefix: str, path: str
) -> None:
    await fill(client, n=2)
    before = await stored(redis_client, prefix)
    status, body = await send(client, path)
    assert status == 400, body
    assert body["status"] == 400 and body["error"] is True and body["error_message"] and body["channels"] == {}, body
    status, body = await send(client, H3.format("ch") + "?start=nope", "DELETE")
    assert status == 400 and body["error"] is True, body
    assert await stored(redis_client, prefix) == before


async def test_history_off_answers_403_and_keeps_nothing(new_client: NewClient) -> None:
    client = await new_client(history_retention=0.0)
    await publish(client, "ch", "x")
    for method, path in [
        ("GET", H2.format("ch")),
        ("GET", H3.format("ch")),
        ("GET", COUNTS.format("ch") + "?timetoken=0"),
        ("GET", ACTIONS.format("ch")),
        ("DELETE", H3.format("ch")),
    ]:
        status, body = await send(client, path, method)
        assert status == 403 and body["error"] is True and "Storage" in body["error_message"], body
    # Turned on again over the same Redis: nothing was kept meanwhile.
    on = await new_client()
    assert (await v2(on))[0] == []


async def test_two_processes_agree_and_a_restart_keeps_history(client: Client, new_client: NewClient) -> None:
    await fill(client, n=3)
    other = await new_client()
    await publish(other, "ch", "m3")
    assert (await v2(client))[0] == (await v2(other))[0] == ["m0", "m1", "m2", "m3"]
    restarted = await new_client()  # a new server on the same store
    assert (await v2(restarted))[0] == ["m0", "m1", "m2", "m3"]


async def test_subscribe_catch_up_and_history_read_the_same_messages(client: Client) -> None:
    await publish(client, "ch", "before")
    tts = await fill(client, n=3)
    await send(client, H3.format("ch") + f"?start={tts[1]}&end={tts[1]}", "DELETE")  # S = E: nothing
    await send(client, H3.format("ch") + f"?start={tts[1] + 1}&end={tts[1]}", "DELETE")  # just m1
    status, body = await send(client, f"/v2/subscribe/demo/ch/0?uuid=bob&tt={tts[0] - 1}")
    assert status == 200, body
    assert [env["d"] for env in body["m"]] == ["m0", "m2"] == (await v2(client, start=tts[-1] + 1, end=tts[0]))[0]


async def test_access_manager_needs_read_for_history_and_delete_for_delete(new_client: NewClient) -> None:
    from presence_server.access.tokens import CHANNELS, DELETE, READ, mint
    from tests.helpers.app import START

    client = await new_client(keysets="demo:demo:sec-c-history-secret")
    token = mint(
        "sec-c-history-secret",
        "demo",
        issued=int(START),
        ttl=60,
        resources={CHANNELS: {"ch": READ, "gone": DELETE}},
        patterns={},
        meta={},
    )
    auth = "auth=" + quote(token, safe="")
    assert (await send(client, H2.format("ch") + "?" + auth))[0] == 200
    assert (await send(client, H3.format("ch") + "?" + auth))[0] == 200
    assert (await send(client, COUNTS.format("ch") + "?timetoken=0&" + auth))[0] == 200
    status, body = await send(client, H3.format("ch,other") + "?" + auth)
    assert status == 403 and body["payload"] == {"channels": ["other"]}, body
    status, body = await send(client, H3.format("ch") + "?" + auth, "DELETE")
    assert status == 403 and body["payload"] == {"channels": ["ch"]}, body
    assert (await send(client, H3.format("gone") + "?" + auth, "DELETE"))[0] == 200
