"""Publish, fire and signal over raw HTTP through the real store (docs/protocol.md 1.4, 2.2.3, 2.2.4, 2.9).

Success is ``[1, "Sent", "<17-digit tt>"]``; errors are arrays ``[0, "<message>", "<tt>"]`` with a
JSON Content-Type. What was accepted is checked by a subscriber's poll on the same server.
"""

from __future__ import annotations

import gzip
import zlib
from typing import Any
from urllib.parse import quote

import orjson
import pytest

from tests.helpers.app import AiohttpClient, AiohttpServer, Client, MakeApp, serve
from tests.helpers.http import (
    HOLD,
    PUB,
    Reply,
    check_json,
    get,
    handshake,
    is_timetoken,
    messages,
    poll,
    publish,
)

MAX_MESSAGE = 32 * 1024


@pytest.fixture
async def client(make_app: MakeApp, aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient) -> Client:
    """The app with the server options it runs with in production, and a short long-poll hold."""
    return await serve(aiohttp_server, aiohttp_client, make_app(longpoll_hold=HOLD))


def path_json(message: Any) -> str:
    return quote(orjson.dumps(message).decode(), safe="")


async def post(
    client: Client, channel: str, body: bytes, headers: dict[str, str] | None = None, **params: str
) -> Reply:
    resp = await client.post(
        f"{PUB}/{channel}/0",
        data=body,
        params={"uuid": "poster", **params},
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    return check_json(resp.status, resp.headers.get("Content-Type", ""), await resp.read())


def assert_sent(reply: Reply) -> str:
    assert reply.status == 200, reply.body
    assert reply.body[:2] == [1, "Sent"] and len(reply.body) == 3, reply.body
    assert is_timetoken(reply.body[2]), reply.body
    tt: str = reply.body[2]
    return tt


def assert_refused(reply: Reply, status: int, message: str) -> None:
    assert reply.status == status, reply.body
    assert isinstance(reply.body, list) and len(reply.body) == 3, reply.body
    assert reply.body[0] == 0
    assert isinstance(reply.body[1], str) and message in reply.body[1], reply.body
    assert is_timetoken(reply.body[2]), reply.body


async def nothing_delivered(client: Client, cursor: str, channels: str = "ch1") -> None:
    found, same = await poll(client, channels, cursor)
    assert found == [] and same == cursor


# -- accepted --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [{"text": "hi", "n": [1, 2.5, None, True]}, "just a string", 42, ["a", {"b": "c"}], None, "ünïcödé ✓"],
    ids=["object", "string", "number", "array", "null", "unicode"],
)
async def test_get_publish_delivers_any_json(client: Client, message: Any) -> None:
    cursor = await handshake(client, "ch1")
    tt = await publish(client, "ch1", message)
    found, next_tt = await poll(client, "ch1", cursor)
    assert messages(found) == [message]
    assert found[0]["p"]["t"] == tt == next_tt
    assert found[0]["i"] == "publisher"


async def test_get_publish_to_a_channel_name_with_encoded_characters(client: Client) -> None:
    cursor = await handshake(client, "ch%201%2Fx%2Cy")
    await publish(client, "ch%201%2Fx%2Cy", "odd name")
    found, _ = await poll(client, "ch%201%2Fx%2Cy", cursor)
    assert [(env["c"], env["d"]) for env in found] == [("ch 1/x,y", "odd name")]


async def test_get_publish_of_a_large_message(client: Client) -> None:
    # Python publishes with GET by default; a message of a few KiB is ordinary (the limit is 32 KiB).
    message = {"blob": "x" * 12_000}
    cursor = await handshake(client, "ch1")
    await publish(client, "ch1", message)
    found, _ = await poll(client, "ch1", cursor)
    assert messages(found) == [message]


async def test_post_publish_plain_body(client: Client) -> None:
    cursor = await handshake(client, "ch1")
    tt = assert_sent(await post(client, "ch1", b'{"text": "posted"}'))
    found, _ = await poll(client, "ch1", cursor)
    assert messages(found) == [{"text": "posted"}]
    assert found[0]["p"]["t"] == tt and found[0]["i"] == "poster"


@pytest.mark.parametrize(
    ("label", "compress"),
    [
        ("deflate", zlib.compress),  # JS sendByPost: a zlib stream labelled deflate
        ("gzip", zlib.compress),  # Python should_compress: a zlib stream labelled gzip
        ("gzip", gzip.compress),  # a real gzip stream
        ("", zlib.compress),  # unlabelled
    ],
    ids=["zlib-as-deflate", "zlib-as-gzip", "gzip", "zlib-unlabelled"],
)
async def test_post_publish_compressed_bodies(client: Client, label: str, compress: Any) -> None:
    message = {"text": "squeezed", "pad": "y" * 2000}
    cursor = await handshake(client, "ch1")
    headers = {"Content-Encoding": label} if label else {}
    assert_sent(await post(client, "ch1", compress(orjson.dumps(message)), headers))
    found, _ = await poll(client, "ch1", cursor)
    assert messages(found) == [message]


async def test_meta_and_custom_message_type(client: Client) -> None:
    cursor = await handshake(client, "ch1")
    await publish(client, "ch1", "with meta", meta='{"lang": "en", "n": 1}', custom_message_type="chat_msg-1")
    assert_sent(await post(client, "ch1", b'"posted meta"', meta='{"via":"post"}'))
    found, _ = await poll(client, "ch1", cursor)
    assert [(env["d"], env.get("u"), env.get("cmt")) for env in found] == [
        ("with meta", {"lang": "en", "n": 1}, "chat_msg-1"),
        ("posted meta", {"via": "post"}, None),
    ]


@pytest.mark.parametrize("custom_type", ["abc", "x" * 50])
async def test_custom_message_type_bounds_accepted(client: Client, custom_type: str) -> None:
    cursor = await handshake(client, "ch1")
    await publish(client, "ch1", 1, custom_message_type=custom_type)
    [env], _ = await poll(client, "ch1", cursor)
    assert env["cmt"] == custom_type


async def test_signal(client: Client) -> None:
    cursor = await handshake(client, "ch1")
    reply = await get(
        client,
        f"/signal/pub-key/demo/0/ch1/0/{path_json({'typing': True})}",
        {"uuid": "bob", "custom_message_type": "typing-on"},
    )
    tt = assert_sent(reply)
    [env], _ = await poll(client, "ch1", cursor)
    assert env["e"] == 1 and type(env["e"]) is int
    assert (env["d"], env["i"], env["cmt"], env["p"]["t"]) == ({"typing": True}, "bob", "typing-on", tt)


@pytest.mark.parametrize("norep", ["true", "1"], ids=["js-fire", "python-fire"])
async def test_fire_is_accepted_but_not_delivered(client: Client, norep: str) -> None:
    cursor = await handshake(client, "ch1")
    assert_sent(await get(client, f"{PUB}/ch1/0/{path_json('fired')}", {"uuid": "p", "store": "0", "norep": norep}))
    await nothing_delivered(client, cursor)
    # The channel still works: a normal publish after it is delivered, alone.
    await publish(client, "ch1", "normal")
    found, _ = await poll(client, "ch1", cursor)
    assert messages(found) == ["normal"]


@pytest.mark.parametrize("norep", ["false", "0"])
async def test_norep_false_is_an_ordinary_publish(client: Client, norep: str) -> None:
    cursor = await handshake(client, "ch1")
    await publish(client, "ch1", "replicated", norep=norep)
    found, _ = await poll(client, "ch1", cursor)
    assert messages(found) == ["replicated"]


async def test_store_0_and_ttl_are_accepted_and_delivered(client: Client) -> None:
    cursor = await handshake(client, "ch1")
    await publish(client, "ch1", "not stored", store="0", ttl="1")
    found, _ = await poll(client, "ch1", cursor)
    assert messages(found) == ["not stored"]


async def test_publish_timetokens_increase(client: Client) -> None:
    stamps = [int(await publish(client, f"ch{i % 3}", i)) for i in range(10)]
    assert stamps == sorted(set(stamps))


# -- refused ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "status", "message"),
    [
        (f"{PUB}/ch1/0/%7Bbad", {}, 400, "Invalid JSON"),
        (f"{PUB}/ch1/0/%FF%FE", {}, 400, "Invalid"),
        (f"{PUB}/a.%2A/0/%22x%22", {}, 400, "wildcard"),
        (f"{PUB}/a.b.c.%2A/0/%22x%22", {}, 400, "wildcard"),
        (f"{PUB}/ch1-pnpres/0/%22x%22", {}, 400, "presence"),
        (f"{PUB}/ch1/0/%22x%22", {"meta": "{not json"}, 400, "meta"),
        (f"{PUB}/ch1/0/%22x%22", {"meta": "[1, 2]"}, 400, "meta"),
        (f"{PUB}/ch1/0/%22x%22", {"meta": '"text"'}, 400, "meta"),
        (f"{PUB}/ch1/0/%22x%22", {"custom_message_type": "ab"}, 400, "custom_message_type"),
        (f"{PUB}/ch1/0/%22x%22", {"custom_message_type": "x" * 51}, 400, "custom_message_type"),
        ("/signal/pub-key/demo/0/ch1-pnpres/0/%22x%22", {}, 400, "presence"),
        ("/signal/pub-key/demo/0/ch1/0/nope", {}, 400, "Invalid JSON"),
    ],
    ids=[
        "bad-json",
        "not-utf8",
        "wildcard",
        "deep-wildcard",
        "pnpres",
        "meta-not-json",
        "meta-array",
        "meta-string",
        "cmt-short",
        "cmt-long",
        "signal-pnpres",
        "signal-bad-json",
    ],
)
async def test_refused_get(client: Client, path: str, params: dict[str, str], status: int, message: str) -> None:
    cursor = await handshake(client, "ch1,a.%2A")
    reply = await get(client, path, {"uuid": "p", **params})
    assert_refused(reply, status, message)
    await nothing_delivered(client, cursor, "ch1,a.%2A")


async def test_refused_post_invalid_json(client: Client) -> None:
    cursor = await handshake(client, "ch1")
    assert_refused(await post(client, "ch1", b"{not json"), 400, "Invalid JSON")
    assert_refused(
        await post(client, "ch1", zlib.compress(b"{not json"), {"Content-Encoding": "deflate"}), 400, "Invalid JSON"
    )
    assert_refused(await post(client, "ch1", b""), 400, "Invalid JSON")
    await nothing_delivered(client, cursor)


async def test_refused_post_broken_compressed_body(client: Client) -> None:
    cursor = await handshake(client, "ch1")
    assert_refused(await post(client, "ch1", b"\x78\x9c garbage", {"Content-Encoding": "deflate"}), 400, "")
    assert_refused(await post(client, "ch1", b"\x1f\x8b garbage", {"Content-Encoding": "gzip"}), 400, "")
    await nothing_delivered(client, cursor)


async def test_message_over_32_kib_is_413(client: Client) -> None:
    cursor = await handshake(client, "ch1")
    big = orjson.dumps("x" * MAX_MESSAGE)  # 32 KiB of text plus the quotes
    assert_refused(await post(client, "ch1", big), 413, "")
    assert_refused(await post(client, "ch1", gzip.compress(big), {"Content-Encoding": "gzip"}), 413, "")
    assert_refused(await post(client, "ch1", zlib.compress(big), {"Content-Encoding": "deflate"}), 413, "")
    await nothing_delivered(client, cursor)


async def test_message_just_under_32_kib_is_accepted(client: Client) -> None:
    cursor = await handshake(client, "ch1")
    message = "x" * (MAX_MESSAGE - 2)  # with its quotes, exactly 32 KiB
    assert_sent(await post(client, "ch1", orjson.dumps(message)))
    assert_sent(await post(client, "ch1", zlib.compress(orjson.dumps(message)), {"Content-Encoding": "deflate"}))
    found, _ = await poll(client, "ch1", cursor)
    assert messages(found) == [message, message]


async def test_zlib_bomb_is_refused_not_expanded(client: Client) -> None:
    # 64 MiB of spaces around a tiny JSON value compress to ~64 KiB; the server must stop inflating
    # at 32 KiB and refuse, instead of expanding the whole thing (or accepting it as valid JSON).
    payload = b" " * (64 * 1024 * 1024) + b'"boom"'
    cursor = await handshake(client, "ch1")
    for body, label in ((zlib.compress(payload, 9), "deflate"), (gzip.compress(payload, 9), "gzip")):
        assert len(body) < 1024 * 1024  # under aiohttp's body limit: it is the inflater that must refuse
        assert_refused(await post(client, "ch1", body, {"Content-Encoding": label}), 413, "")
    await nothing_delivered(client, cursor)


async def test_get_message_over_32_kib_is_refused_with_json(client: Client) -> None:
    cursor = await handshake(client, "ch1")
    resp = await client.get(f"{PUB}/ch1/0/{path_json('x' * (MAX_MESSAGE + 10))}?uuid=p")
    reply = check_json(resp.status, resp.headers.get("Content-Type", ""), await resp.read())
    assert reply.status in (413, 414), reply.body
    await nothing_delivered(client, cursor)


async def test_get_without_a_message_is_a_json_error(client: Client) -> None:
    # Only POST has no message segment; aiohttp's own answer must still be JSON (docs/protocol.md 1.4).
    reply = await get(client, f"{PUB}/ch1/0")
    assert reply.status == 405


async def test_publish_refused_leaves_later_publishes_working(client: Client) -> None:
    cursor = await handshake(client, "ch1")
    assert_refused(await get(client, f"{PUB}/ch1/0/%7Bbad"), 400, "Invalid JSON")
    await publish(client, "ch1", "fine")
    found, _ = await poll(client, "ch1", cursor)
    assert messages(found) == ["fine"]
