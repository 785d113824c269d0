"""Message history end to end with the real Python SDK, ``pubnub==7.2.0`` (asyncio), against a live server on
loopback, on both engines (docs/protocol.md 12): ``history`` (v2), ``fetch_messages`` (v3, with and without
actions), ``message_counts`` and ``delete_messages``. Retention and ``ttl`` move with the server's clock
(``server.advance``), never with real time.

What 7.2.0 does (read in its source, held here): ``history`` always sends ``count`` (100 unless 1 to 100) and
hands the timetokens over as the server sent them (numbers); ``fetch_messages`` always sends ``max`` (reset to
100, or 25 for several channels, when out of range) and ``include_meta``, and reads the v3 timetokens as the
strings they are, under the channel keys as the server wrote them (percent-encoded, never decoded); an item
gets ``uuid`` and ``message_type`` attributes only when the server sent them. ``message_counts`` sends
``timetoken`` for one channel and ``channelsTimetoken`` for several, and refuses mismatched lists itself;
``delete_messages`` sends ``start``/``end`` as given and resolves to ``{}``. A refusal resolves to an error
status with the code, the category (``PNAccessDeniedCategory`` for a 403) and the parsed body. Its asyncio
client fails every ``fetch_messages`` after the answer (its telemetry knows no name for the operation), so the
tests' clients name it (``fetching``), and one test pins the failure."""

from __future__ import annotations

import itertools
import json
import re
import textwrap
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
from pubnub.enums import PNOperationType, PNStatusCategory
from pubnub.models.consumer.v3.channel import Channel

from tests.e2e.live import LiveServer
from tests.e2e.pysdk import Clients, Hearing, ok, refused, wind_down
from tests.e2e.pysdk_access import KEYSETS, AccessClients, assert_denied, grant_token

pytestmark = pytest.mark.e2e

ServerFactory = Callable[..., AbstractAsyncContextManager[LiveServer]]
README = Path(__file__).parents[2] / "README.md"
# The publish limit (docs/protocol.md 2.9): the JSON as the SDK sends it, at most 32 KiB.
LIMIT = 32 * 1024
HOUR = 3600.0


def fetching(client: Any) -> Any:
    """``client`` with a ``fetch_messages`` that reaches the caller: 7.2.0's asyncio client records every
    answered call's latency under a name per operation and has none for fetch messages (``KeyError: 45``), so
    every ``fetch_messages`` resolves to an error once the server's answer is in (see
    ``test_7_2_0_asyncio_fetch_messages_fails_on_its_own_telemetry``). This names it as history's."""
    telemetry = client._telemetry_manager
    name_of = telemetry.endpoint_name_for_operation
    telemetry.endpoint_name_for_operation = lambda operation: (
        "hist" if operation == PNOperationType.PNFetchMessagesOperation else name_of(operation)
    )
    return client


class HistoryClients(Clients):
    """Clients that can ``fetch_messages`` (``fetching``)."""

    def __call__(self, uuid: str, *, presence_timeout: int | None = None) -> Any:
        return fetching(super().__call__(uuid, presence_timeout=presence_timeout))


@pytest.fixture
async def sdk(live_server: LiveServer) -> AsyncIterator[Clients]:
    async with HistoryClients(live_server.origin) as clients:
        yield clients


async def sent(call: Any) -> int:
    """Publish through ``call``, which the server must accept; the timetoken it answered."""
    return int((await ok(call)).result.timetoken)


async def publish_all(client: Any, channel: str, messages: list[Any]) -> list[int]:
    return [await sent(client.publish().channel(channel).message(message)) for message in messages]


async def v2(call: Any) -> tuple[list[Any], list[Any], Any, Any]:
    """A v2 history page: the entries, their timetokens, and the page's first and last timetokens."""
    result = (await ok(call)).result
    entries, timetokens = [m.entry for m in result.messages], [m.timetoken for m in result.messages]
    return entries, timetokens, result.start_timetoken, result.end_timetoken


async def fetched(call: Any) -> dict[str, list[Any]]:
    """fetch_messages' channels: name (as the server keyed it) -> items."""
    channels: dict[str, list[Any]] = (await ok(call)).result.channels
    return channels


async def fetched_messages(client: Any, channel: str) -> list[Any]:
    channels = await fetched(client.fetch_messages().channels([channel]))
    return [item.message for item in channels.get(channel, [])]


async def counts(client: Any, channels: list[str], timetokens: list[int]) -> dict[str, int]:
    envelope = await ok(client.message_counts().channel(channels).channel_timetokens(timetokens))
    result: dict[str, int] = envelope.result.channels
    return result


# -- what is stored ------------------------------------------------------------------------------------


async def test_what_was_published_comes_back_in_order_with_its_timetokens(sdk: Clients) -> None:
    bob = sdk("bob")
    sent_messages = ["plain", {"n": 1, "list": [1, 2]}, [1, "two", None], 42, {"post": True}, {"zipped": "z" * 300}]
    calls = [bob.publish().channel("chat").message(m) for m in sent_messages[:4]]
    calls.append(bob.publish().channel("chat").message(sent_messages[4]).use_post(True))
    calls.append(bob.publish().channel("chat").message(sent_messages[5]).use_post(True).use_compression(True))
    timetokens = [await sent(call) for call in calls]
    assert timetokens == sorted(set(timetokens)) and all(len(str(tt)) == 17 for tt in timetokens)

    # v2 without flags: the bare messages; with include_timetoken, each publish's own timetoken (a number).
    entries, tts, first, last = await v2(bob.history().channel("chat"))
    assert (entries, tts) == (sent_messages, [None] * 6)
    assert (first, last) == (timetokens[0], timetokens[-1])
    entries, tts, first, last = await v2(bob.history().channel("chat").include_timetoken(True))
    assert (entries, tts, first, last) == (sent_messages, timetokens, timetokens[0], timetokens[-1])

    # v3: the same, the timetokens as 17-digit strings.
    [(key, items)] = (await fetched(bob.fetch_messages().channels(["chat"]))).items()
    assert key == "chat"
    assert [(item.message, item.timetoken) for item in items] == list(
        zip(sent_messages, map(str, timetokens), strict=True)
    )

    # A channel nobody published to: v2's [[], 0, 0], and v3 leaves it out.
    assert await v2(bob.history().channel("quiet").include_timetoken(True)) == ([], [], 0, 0)
    assert await fetched(bob.fetch_messages().channels(["quiet"])) == {}
    both = await fetched(bob.fetch_messages().channels(["quiet", "chat"]))
    assert {key: [item.message for item in items] for key, items in both.items()} == {"chat": sent_messages}


async def test_publisher_meta_and_message_type_only_when_asked(sdk: Clients) -> None:
    alice, bob = sdk("alice"), sdk("bob")
    await sent(alice.publish().channel("chat").message("from alice").meta({"lang": "en", "n": 1}))
    await sent(bob.publish().channel("chat").message("from bob").use_post(True))

    call = bob.fetch_messages().channels(["chat"]).include_uuid(True).include_meta(True).include_message_type(True)
    items = (await fetched(call))["chat"]
    assert [(i.message, i.uuid, i.meta, i.message_type) for i in items] == [
        ("from alice", "alice", {"lang": "en", "n": 1}, None),
        ("from bob", "bob", "", None),  # no meta published: "" (docs/protocol.md 12.3)
    ]
    # Not asked: the server sends none of them (7.2.0 always sends include_meta=false).
    for item in (await fetched(bob.fetch_messages().channels(["chat"])))["chat"]:
        assert not hasattr(item, "uuid") and not hasattr(item, "message_type")
        assert item.meta is None

    result = (await ok(bob.history().channel("chat").include_meta(True))).result
    assert [(m.entry, m.meta, m.timetoken) for m in result.messages] == [
        ("from alice", {"lang": "en", "n": 1}, None),
        ("from bob", "", None),
    ]


async def test_history_with_actions_gives_every_message_empty_actions(sdk: Clients) -> None:
    bob = sdk("bob")
    timetokens = await publish_all(bob, "chat", [f"m{i}" for i in range(30)])
    call = bob.fetch_messages().channels(["chat"]).include_message_actions(True).include_uuid(True)
    items = (await fetched(call))["chat"]
    # At most 25 with actions: the newest 25, oldest first.
    assert [(i.message, i.timetoken, i.uuid, i.actions) for i in items] == [
        (f"m{i}", str(timetokens[i]), "bob", {}) for i in range(5, 30)
    ]


async def test_signals_fire_and_store_0_are_not_kept(sdk: Clients) -> None:
    bob = sdk("bob")
    kept = [await sent(bob.publish().channel("chat").message("first"))]
    await ok(bob.signal().channel("chat").message("a signal"))
    await ok(bob.fire().channel("chat").message("a fire"))
    await ok(bob.fire().channel("chat").message("a posted fire").use_post(True))
    await ok(bob.publish().channel("chat").message("live only").should_store(False))
    await ok(bob.publish().channel("chat").message("posted live only").should_store(False).use_post(True))
    kept.append(await sent(bob.publish().channel("chat").message("stored").should_store(True)))

    assert (await v2(bob.history().channel("chat").include_timetoken(True)))[:2] == (["first", "stored"], kept)
    assert await fetched_messages(bob, "chat") == ["first", "stored"]
    assert await counts(bob, ["chat"], [0]) == {"chat": 2}


# -- paging by timetoken -------------------------------------------------------------------------------


async def test_v2_pages_read_every_message_once_in_both_directions(sdk: Clients) -> None:
    bob = sdk("bob")
    timetokens = await publish_all(bob, "chat", list(range(23)))

    # Towards older messages: start = the page's first (oldest) timetoken, exclusive.
    pages: list[list[int]] = []
    call = bob.history().channel("chat").count(5).include_timetoken(True)
    while (page := await v2(call))[0]:
        entries, tts, first, last = page
        assert (first, last) == (tts[0], tts[-1]) and entries == [timetokens.index(tt) for tt in tts]
        pages.append(tts)
        call = bob.history().channel("chat").count(5).include_timetoken(True).start(first)
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    assert list(itertools.chain.from_iterable(reversed(pages))) == timetokens

    # Towards newer ones with reverse: start = the page's last (newest) timetoken.
    forward: list[int] = []
    call = bob.history().channel("chat").count(10).reverse(True).include_timetoken(True)
    while tts := (await v2(call))[1]:
        forward += tts
        call = bob.history().channel("chat").count(10).reverse(True).include_timetoken(True).start(tts[-1])
    assert forward == timetokens


async def test_fetch_pages_read_every_message_once(sdk: Clients) -> None:
    bob = sdk("bob")
    timetokens = await publish_all(bob, "chat", [{"i": i} for i in range(23)])
    seen: list[int] = []
    call = bob.fetch_messages().channels(["chat"]).maximum_per_channel(6)
    while items := (await fetched(call)).get("chat", []):
        assert len(items) <= 6 and [item.message["i"] for item in items] == [
            timetokens.index(int(i.timetoken)) for i in items
        ]
        seen[:0] = [int(item.timetoken) for item in items]
        call = bob.fetch_messages().channels(["chat"]).maximum_per_channel(6).start(int(items[0].timetoken))
    assert seen == timetokens


async def test_fetch_pages_across_several_channels(sdk: Clients) -> None:
    """Channels published to in turns (and one that only joined in lately), paged together: each page
    starts at the oldest timetoken seen among the channels whose last page was full."""
    bob = sdk("bob")
    published: dict[str, list[int]] = {"a": [], "b": [], "c": [], "late": []}
    for turn in range(12):
        for name in ("a", "b", "c") if turn < 9 else ("a", "b", "c", "late"):
            published[name].append(await sent(bob.publish().channel(name).message(f"{name}{turn}")))

    seen: dict[str, list[int]] = {name: [] for name in published}
    start: int | None = None
    calls = 0
    while True:
        call = bob.fetch_messages().channels(list(published)).maximum_per_channel(4)
        page = await fetched(call if start is None else call.start(start))
        calls += 1
        full: list[int] = []
        for name, items in page.items():
            tts = [int(item.timetoken) for item in items]
            assert len(tts) <= 4 and all(tt < (start or tts[-1] + 1) for tt in tts), (name, start, tts)
            seen[name][:0] = tts
            if len(tts) == 4:
                full.append(tts[0])
        if not full:
            break
        start = min(full)
    assert seen == published
    assert calls == 4  # 12 turns, 4 a page: three full pages, then the last one comes back short or empty


async def test_the_caps_the_sdk_and_the_server_keep(sdk: Clients) -> None:
    bob = sdk("bob")
    timetokens = await publish_all(bob, "chat", list(range(105)))
    await publish_all(bob, "other", ["x"])
    # history: count 500 is sent as 100; fetch: 500 is reset to 100 (one channel) or 25 (several).
    assert (await v2(bob.history().channel("chat").count(500).include_timetoken(True)))[1] == timetokens[5:]
    single = (await fetched(bob.fetch_messages().channels(["chat"]).maximum_per_channel(500)))["chat"]
    assert [int(item.timetoken) for item in single] == timetokens[5:]
    several = await fetched(bob.fetch_messages().channels(["chat", "other"]).maximum_per_channel(500))
    assert [int(item.timetoken) for item in several["chat"]] == timetokens[80:]
    assert [item.message for item in several["other"]] == ["x"]


# -- counts and deletes --------------------------------------------------------------------------------


async def test_counts_are_of_messages_after_the_timetoken(sdk: Clients) -> None:
    bob = sdk("bob")
    a = await publish_all(bob, "a", [f"a{i}" for i in range(10)])
    await publish_all(bob, "b", ["b0", "b1", "b2"])
    assert await counts(bob, ["a"], [0]) == {"a": 10}
    assert await counts(bob, ["a"], [a[6]]) == {"a": 3}  # exclusive: a7, a8, a9
    assert await counts(bob, ["a"], [a[-1]]) == {"a": 0}
    assert await counts(bob, ["a", "b", "none"], [a[2], 0, 0]) == {"a": 7, "b": 3, "none": 0}
    assert await counts(bob, ["b", "a"], [a[-1], a[0]]) == {"a": 9, "b": 3}  # b came after all of a


async def test_mismatched_count_lists_are_refused_by_the_sdk(sdk: Clients) -> None:
    # 7.2.0 raises before sending; its asyncio future resolves to an exception envelope, no status.
    envelope = await sdk("bob").message_counts().channel(["a", "b"]).channel_timetokens([0]).future()
    assert envelope.status is None and envelope.result is None


async def test_deletes_then_counts_and_fetch_agree(sdk: Clients) -> None:
    bob = sdk("bob")
    tts = await publish_all(bob, "chat", [f"m{i}" for i in range(10)])
    await publish_all(bob, "keep", ["k"])

    # start exclusive, end inclusive, with start > end: m3 to m6.
    assert (await ok(bob.delete_messages().channel("chat").start(tts[7]).end(tts[3]))).result == {}
    assert await fetched_messages(bob, "chat") == ["m0", "m1", "m2", "m7", "m8", "m9"]
    assert await counts(bob, ["chat"], [0]) == {"chat": 6}
    # The other order, start < end: m1 and m2.
    await ok(bob.delete_messages().channel("chat").start(tts[0]).end(tts[2]))
    assert (await v2(bob.history().channel("chat")))[0] == ["m0", "m7", "m8", "m9"]
    assert await counts(bob, ["chat", "keep"], [tts[0], 0]) == {"chat": 3, "keep": 1}
    # One message: start = its timetoken + 1, end = it.
    await ok(bob.delete_messages().channel("chat").start(tts[8] + 1).end(tts[8]))
    assert await fetched_messages(bob, "chat") == ["m0", "m7", "m9"]
    # start = end: nothing.
    await ok(bob.delete_messages().channel("chat").start(tts[9]).end(tts[9]))
    assert await counts(bob, ["chat"], [0]) == {"chat": 3}
    # No bounds: all of the channel, and only that channel.
    await ok(bob.delete_messages().channel("chat"))
    assert await counts(bob, ["chat", "keep"], [0, 0]) == {"chat": 0, "keep": 1}
    assert await v2(bob.history().channel("chat").include_timetoken(True)) == ([], [], 0, 0)
    page = await fetched(bob.fetch_messages().channels(["chat", "keep"]))
    assert {key: [item.message for item in items] for key, items in page.items()} == {"keep": ["k"]}


async def test_odd_channel_names(sdk: Clients) -> None:
    # 7.2.0 percent-encodes each name; v3 answers keyed percent-encoded (as PubNub does, docs/protocol.md 12.3)
    # and the SDK does not decode them; counts are keyed by the names themselves.
    bob = sdk("bob")
    names = {
        "caf\u00e9 \u65e5\u672c": "caf%C3%A9%20%E6%97%A5%E6%9C%AC",
        "a,b|c:d": "a%2Cb%7Cc%3Ad",
        "x/y+z": "x%2Fy%2Bz",
    }
    for name in names:
        await publish_all(bob, name, [name, "second"])
    page = await fetched(bob.fetch_messages().channels(list(names)))
    assert {key: [item.message for item in items] for key, items in page.items()} == {
        key: [name, "second"] for name, key in names.items()
    }
    for name in names:
        assert (await v2(bob.history().channel(name)))[0] == [name, "second"]
    assert await counts(bob, list(names), [0] * 3) == dict.fromkeys(names, 2)
    await ok(bob.delete_messages().channel("a,b|c:d"))
    assert await counts(bob, list(names), [0] * 3) == {**dict.fromkeys(names, 2), "a,b|c:d": 0}


async def test_a_subscriber_catching_up_hears_what_history_holds(sdk: Clients) -> None:
    # One log for both (docs/protocol.md 12.1): what a delete removed is not caught up either.
    bob = sdk("bob")
    cursor = await sent(bob.publish().channel("chat").message("before"))
    tts = await publish_all(bob, "chat", [f"m{i}" for i in range(5)])
    await ok(bob.delete_messages().channel("chat").start(tts[3]).end(tts[1]))  # m1 and m2
    alice, heard = sdk("alice"), Hearing()
    alice.add_listener(heard)
    alice.subscribe().channels(["chat"]).with_timetoken(cursor).execute()
    try:
        caught_up = [await heard.next() for _ in range(3)]
        marker = await sent(bob.publish().channel("chat").message("live"))
        caught_up.append(await heard.next())
    finally:
        await wind_down([alice])
    assert [(kind, m.message, m.timetoken) for kind, m in caught_up] == [
        ("message", "m0", tts[0]),
        ("message", "m3", tts[3]),
        ("message", "m4", tts[4]),
        ("message", "live", marker),
    ]
    held = (await fetched(bob.fetch_messages().channels(["chat"]))).get("chat", [])
    assert [(i.message, int(i.timetoken)) for i in held] == [("before", cursor)] + [
        (m.message, m.timetoken) for _, m in caught_up
    ]


async def test_two_servers_on_one_redis_hold_one_history(live_server_factory: ServerFactory) -> None:
    async with (
        live_server_factory() as first,
        live_server_factory() as second,
        HistoryClients(first.origin) as on_first,
        HistoryClients(second.origin) as on_second,
    ):
        alice, bob = on_first("alice"), on_second("bob")
        tts = await publish_all(alice, "chat", ["a0", "a1"]) + await publish_all(bob, "chat", ["b0"])
        for client in (alice, bob):
            assert (await v2(client.history().channel("chat").include_timetoken(True)))[1] == tts
            assert await fetched_messages(client, "chat") == ["a0", "a1", "b0"]
        await ok(bob.delete_messages().channel("chat").start(tts[1] + 1).end(tts[1]))
        assert await fetched_messages(alice, "chat") == ["a0", "b0"]
        assert await counts(alice, ["chat"], [0]) == await counts(bob, ["chat"], [0]) == {"chat": 2}


# -- payloads ------------------------------------------------------------------------------------------


async def test_unicode_round_trips(sdk: Clients) -> None:
    bob = sdk("bob")
    messages = [
        "h\u00e9llo w\u00f6rld \u2713",
        {"\u65e5\u672c\u8a9e": "\u3053\u3093\u306b\u3061\u306f", "emoji": "\U0001f389\U0001f468\u200d\U0001f469"},
        ["\u0000 nul", "tab\t", 'quote " and \\ backslash', "\u2028\u2029", "\ufeff"],
    ]
    for message in messages:
        await sent(bob.publish().channel("chat").message(message))
        await sent(bob.publish().channel("chat").message(message).use_post(True))
    expected = [m for m in messages for _ in range(2)]
    assert (await v2(bob.history().channel("chat")))[0] == expected
    assert await fetched_messages(bob, "chat") == expected


def sized(size: int, unit: str) -> Any:
    """A message whose JSON, as 7.2.0 sends it, is exactly ``size`` bytes: ``{"pad": unit*n + "x"*m}``."""
    head = len(json.dumps({"pad": ""}))
    unit_bytes = len(json.dumps(unit)) - 2
    n, rest = divmod(size - head, unit_bytes)
    message = {"pad": unit * n + "x" * rest}
    assert len(json.dumps(message)) == size
    return message


async def test_near_32_kib_payloads_round_trip_and_larger_ones_are_not_kept(sdk: Clients) -> None:
    bob = sdk("bob")
    # At the limit, in ASCII and in escaped unicode (7.2.0 sends \uXXXX), by GET and by POST.
    at_limit = [sized(LIMIT, "a"), sized(LIMIT, "\u00e9"), sized(LIMIT - 1, "\U0001f389")]
    for message in at_limit:
        await sent(bob.publish().channel("big").message(message))
        await sent(bob.publish().channel("big").message(message).use_post(True))
    for call in (
        bob.publish().channel("big").message(sized(LIMIT + 1, "a")),
        bob.publish().channel("big").message(sized(LIMIT + 1, "\u00e9")).use_post(True),
    ):
        assert (await refused(call)).status_code == 413
    expected = [m for m in at_limit for _ in range(2)]
    assert (await v2(bob.history().channel("big")))[0] == expected
    assert await fetched_messages(bob, "big") == expected
    assert await counts(bob, ["big"], [0]) == {"big": 6}


# -- retention and ttl on the server's clock -----------------------------------------------------------


async def test_retention_expires_messages_when_the_clock_moves(live_server_factory: ServerFactory) -> None:
    async with live_server_factory(history_retention=HOUR) as server, HistoryClients(server.origin) as sdk:
        bob = sdk("bob")
        await publish_all(bob, "chat", ["old"])
        await sent(bob.publish().channel("chat").message("a ttl past retention").ttl(2))  # retention wins
        await server.advance(HOUR / 2)
        await publish_all(bob, "chat", ["newer"])
        await server.advance(HOUR / 2 - 1)
        assert await fetched_messages(bob, "chat") == ["old", "a ttl past retention", "newer"]

        await server.advance(2)  # "old" is past retention, "newer" is not
        assert await fetched_messages(bob, "chat") == ["newer"]
        assert (await v2(bob.history().channel("chat")))[0] == ["newer"]
        assert await counts(bob, ["chat"], [0]) == {"chat": 1}

        await server.advance(HOUR / 2)
        assert await fetched(bob.fetch_messages().channels(["chat"])) == {}
        assert await v2(bob.history().channel("chat")) == ([], [], 0, 0)
        assert await counts(bob, ["chat"], [0]) == {"chat": 0}


async def test_a_message_ttl_shortens_its_stay(live_server: LiveServer, sdk: Clients) -> None:
    bob = sdk("bob")
    await sent(bob.publish().channel("chat").message("kept").ttl(0))  # 7.2.0 leaves a ttl of 0 out: the retention
    await sent(bob.publish().channel("chat").message("an hour").ttl(1))
    await sent(bob.publish().channel("chat").message("half an hour").ttl(0.5).use_post(True))
    await sent(bob.publish().channel("chat").message("a day").ttl(24))

    await live_server.advance(HOUR / 2 - 1)
    assert await fetched_messages(bob, "chat") == ["kept", "an hour", "half an hour", "a day"]
    await live_server.advance(2)
    assert await fetched_messages(bob, "chat") == ["kept", "an hour", "a day"]
    await live_server.advance(HOUR / 2)
    assert await fetched_messages(bob, "chat") == ["kept", "a day"]
    assert (await v2(bob.history().channel("chat")))[0] == ["kept", "a day"]
    assert await counts(bob, ["chat"], [0]) == {"chat": 2}
    await live_server.advance(24 * HOUR)
    assert await fetched_messages(bob, "chat") == ["kept"]
    assert await counts(bob, ["chat"], [0]) == {"chat": 1}


# -- history off ---------------------------------------------------------------------------------------


async def test_history_off_every_call_gets_the_403(live_server_factory: ServerFactory) -> None:
    async with live_server_factory(history_retention=0.0) as server, HistoryClients(server.origin) as sdk:
        bob = sdk("bob")
        await sent(bob.publish().channel("chat").message("not kept"))  # publishing still works
        calls = {
            PNOperationType.PNHistoryOperation: bob.history().channel("chat"),
            PNOperationType.PNFetchMessagesOperation: bob.fetch_messages().channels(["chat", "other"]),
            PNOperationType.PNMessageCountOperation: bob.message_counts().channel(["chat"]).channel_timetokens([0]),
            PNOperationType.PNHistoryDeleteOperation: bob.delete_messages().channel("chat"),
        }
        for operation, call in calls.items():
            status = await refused(call)
            assert (status.category, status.status_code, status.operation) == (
                PNStatusCategory.PNAccessDeniedCategory,
                403,
                operation,
            )
            body = status.original_response
            assert {k: body[k] for k in ("status", "error", "channels")} == {
                "status": 403,
                "error": True,
                "channels": {},
            }
            wording = (
                "history Delete API requires"
                if operation == PNOperationType.PNHistoryDeleteOperation
                else "history API requires the Storage & Playback"
            )
            assert body["error_message"].startswith(f"Use of the {wording}"), body
            assert "HTTP Client Error (403)" in str(status.error_data.information)


# -- Access Manager -----------------------------------------------------------------------------------


async def test_access_manager_history_needs_read_and_delete_needs_delete(live_server_factory: ServerFactory) -> None:
    async with live_server_factory(keysets=KEYSETS) as server:
        sdk = AccessClients(server.origin)
        try:
            await access_manager_history(sdk)
        finally:
            await sdk.stop_all()


async def access_manager_history(sdk: AccessClients) -> None:
    backend = fetching(sdk.server())  # signs every request: may do anything
    tts = await publish_all(backend, "chat", ["m0", "m1", "m2", "m3"])
    reader = fetching(sdk.client("reader", token=await grant_token(backend, channels=[Channel.id("chat").read()])))
    deleter = fetching(sdk.client("deleter", token=await grant_token(backend, channels=[Channel.id("chat").delete()])))
    chat = {"channels": ["chat"]}

    assert (await v2(reader.history().channel("chat")))[0] == ["m0", "m1", "m2", "m3"]
    assert await fetched_messages(reader, "chat") == ["m0", "m1", "m2", "m3"]
    assert await counts(reader, ["chat"], [tts[0]]) == {"chat": 3}
    assert_denied(await refused(reader.fetch_messages().channels(["chat", "other"])), payload={"channels": ["other"]})
    assert_denied(
        await refused(reader.message_counts().channel(["other"]).channel_timetokens([0])),
        payload={"channels": ["other"]},
    )
    assert_denied(await refused(reader.delete_messages().channel("chat")), payload=chat)

    assert_denied(await refused(deleter.history().channel("chat")), payload=chat)
    assert_denied(await refused(deleter.fetch_messages().channels(["chat"])), payload=chat)
    await ok(deleter.delete_messages().channel("chat").start(tts[2]).end(tts[1]))
    assert await fetched_messages(reader, "chat") == ["m0", "m2", "m3"]

    anon = fetching(sdk.client("anon"))
    assert_denied(await refused(anon.history().channel("chat")), payload=chat)
    assert_denied(await refused(anon.delete_messages().channel("chat")), payload=chat)
    # Signed (7.2.0 signs the DELETE too): no token needed.
    assert await fetched_messages(backend, "chat") == ["m0", "m2", "m3"]
    await ok(backend.delete_messages().channel("chat").end(tts[3]))
    assert await counts(backend, ["chat"], [0]) == {"chat": 2}


# -- 7.2.0's asyncio fetch_messages, and the README ----------------------------------------------------


async def test_7_2_0_asyncio_fetch_messages_fails_on_its_own_telemetry(live_server: LiveServer) -> None:
    async with Clients(live_server.origin) as sdk:
        bob = sdk("bob")
        await publish_all(bob, "chat", ["hi"])
        for call in (
            bob.fetch_messages().channels(["chat"]),
            bob.fetch_messages().channels(["chat"]).include_message_actions(True),
        ):
            status = (await call.future()).status
            assert (status.category, status.status_code) == (PNStatusCategory.PNUnknownCategory, None)
            assert repr(status.error_data.exception) == "KeyError(45)"  # PNOperationType.PNFetchMessagesOperation
        # The rest of history is unaffected.
        assert (await v2(bob.history().channel("chat")))[0] == ["hi"]
        assert await counts(bob, ["chat"], [0]) == {"chat": 1}


def readme_python_history() -> str:
    """The README's History section's Python snippet."""
    section = README.read_text(encoding="utf-8").split("\n## History\n", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found is not None, "the README's History section has no Python snippet"
    return found.group(1)


async def test_the_readme_history_snippet_runs_on_7_2_0(
    live_server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code = readme_python_history()
    namespace: dict[str, Any] = {}
    exec("async def snippet(pubnub):\n" + textwrap.indent(code, "    "), namespace)
    async with Clients(live_server.origin) as sdk:  # as a user makes it: 7.2.0 unpatched
        client = sdk("reader")
        await namespace["snippet"](client)
        [tt] = (await v2(client.history().channel("chat").include_timetoken(True)))[1]
    assert capsys.readouterr().out == f"{tt} {{'text': 'hi'}}\n1\n"
