"""The parse caches of presence_server.params hold short texts only: distinct long request lines,
which one client can send without end, leave nothing behind."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from yarl import URL

from presence_server import params
from presence_server.http import PRESENCE, PubNubError

LONG = 100 * 1024


@pytest.mark.parametrize(
    "parse",
    [
        lambda text: params._parse_query(text),
        lambda text: params._segments(text),
        lambda text: params._split_names(text, "channel", 10**6, PRESENCE, False),
    ],
    ids=["query", "path segments", "name lists"],
)
def test_distinct_long_texts_are_not_kept(parse: Callable[[str], Any]) -> None:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(300):
            parse(f"{i:04d}" + "a" * LONG)
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 2 * 1024 * 1024, f"{kept / 1024 / 1024:.1f} MiB kept after 300 texts of 100 KiB"


def test_a_query_is_parsed_once_per_request() -> None:
    # Every lookup of one request reads one parse; the next request's query is parsed anew.
    first = make_mocked_request("GET", "/x?uuid=u1&heartbeat=60&cached-test=1")
    second = make_mocked_request("GET", "/x?uuid=u2&heartbeat=60&cached-test=1")
    assert params.raw_query(first) is params.raw_query(first)
    assert params.raw_query(second) == {"uuid": "u2", "heartbeat": "60", "cached-test": "1"}
    assert params.raw_query(first) == {"uuid": "u1", "heartbeat": "60", "cached-test": "1"}


@pytest.mark.parametrize(
    ("path", "sub_key", "channels"),
    [
        ("/v2/presence/sub-key/sk/channel/ch1/heartbeat", "sk", "ch1"),
        ("/v2/presence/sub-key/sk/channel/a,b/heartbeat", "sk", "a,b"),
        ("/v2/presence/sub-key/s%2Fk/channel/a%2Cb,c/heartbeat", "s%2Fk", "a%2Cb,c"),
        ("/v2/presence/sub-key/sk/channel/%25/heartbeat", "sk", "%25"),
    ],
)
async def test_path_values_are_the_texts_as_sent(aiohttp_client: Any, path: str, sub_key: str, channels: str) -> None:
    # Without a percent sign aiohttp's decoded values are read (the texts are equal); with one, the
    # segments of the raw path. Sent exactly as written: the client must not requote the path.
    async def echo(request: web.Request) -> web.Response:
        names = [params.raw_path_value(request, "sub_key"), params.raw_path_value(request, "channels")]
        return web.json_response([*names, params.path_value(request, "uuid")])

    app = web.Application()
    app.router.add_get("/v2/presence/sub-key/{sub_key:[^/]+}/channel/{channels:[^/]+}/heartbeat", echo)
    client = await aiohttp_client(app)
    response = await client.get(URL(path + "?uuid=u1", encoded=True))
    assert await response.json() == [sub_key, channels, None]


def test_only_encoded_query_names_are_decoded() -> None:
    # Values stay as sent (each lookup decodes its own); a name is decoded where it is encoded,
    # whatever the other pairs hold, and the first value of a name wins.
    parsed = params._parse_query("pnsdk=PubNub-Python%2F7.2.0&channel%2Dgroup=g%2C1&uuid=u&channel-group=x")
    assert parsed == {"pnsdk": "PubNub-Python%2F7.2.0", "channel-group": "g%2C1", "uuid": "u"}


async def _read_targets(aiohttp_client: Any, sub_key: str, channels: str) -> list[Any]:
    """What keyset_and_channels, path_name and path_names read from one request of a heartbeat path."""

    async def echo(request: web.Request) -> web.Response:
        try:
            found_key, found_channels = params.keyset_and_channels(request, 92)
        except PubNubError as refused:
            return web.json_response(["refused", refused.status])
        expected = [
            params.path_name(request, "sub_key", "subscribe key", 92),
            params.path_names(request, "channels", "channel", 92),
        ]
        return web.json_response([[found_key, list(found_channels)], expected])

    app = web.Application()
    app.router.add_get("/v2/presence/sub-key/{sub_key:[^/]+}/channel/{channels:[^/]+}/heartbeat", echo)
    client = await aiohttp_client(app)
    answers = []
    for _ in range(2):  # the second read of a plain path comes from the cache, and must say the same
        url = URL(f"/v2/presence/sub-key/{sub_key}/channel/{channels}/heartbeat?uuid=u", encoded=True)
        answers.append(await (await client.get(url)).json())
    assert answers[0] == answers[1]
    return list(answers[0])


@pytest.mark.parametrize(
    ("sub_key", "channels", "expected"),
    [
        ("sk", "ch1", ["sk", ["ch1"]]),
        ("sk", "a,b,a", ["sk", ["a", "b"]]),
        ("s%2Fk", "a%2Cb,c", ["s/k", ["a,b", "c"]]),
        ("sk", ",", ["sk", []]),
    ],
)
async def test_keyset_and_channels_read_as_path_name_and_path_names(
    aiohttp_client: Any, sub_key: str, channels: str, expected: list[Any]
) -> None:
    assert await _read_targets(aiohttp_client, sub_key, channels) == [expected, expected]


@pytest.mark.parametrize(("sub_key", "channels"), [("sk", "a," + "b" * 93), ("k" * 93, "a")])
async def test_a_refused_path_is_refused_every_time(aiohttp_client: Any, sub_key: str, channels: str) -> None:
    # Exceptions are not cached: the second request is checked again, and refused again.
    assert await _read_targets(aiohttp_client, sub_key, channels) == ["refused", 400]


async def test_a_long_channel_list_is_read_but_not_cached(aiohttp_client: Any) -> None:
    channels = ",".join(f"channel-{i:05d}" for i in range(300))  # over CACHED_TEXT characters
    assert len(channels) > params.CACHED_TEXT
    before = params._plain_keyset_and_channels.cache_info().currsize
    found, expected = await _read_targets(aiohttp_client, "sk", channels)
    assert found == expected and len(found[1]) == 300
    assert params._plain_keyset_and_channels.cache_info().currsize == before
