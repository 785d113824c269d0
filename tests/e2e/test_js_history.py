"""Message history through the real JavaScript client, ``pubnub@7.3.3`` (the last MIT release), under
Node against the live server, on both engines: ``history`` (v2), ``fetchMessages`` (v3, with and without
actions), ``messageCounts`` and ``deleteMessages`` (docs/protocol.md 12).

Each test is one Node process, ``tests/e2e/js/listen.mjs`` driven through ``tests/e2e/jsdriver.py``, so
that a test can publish, read back, move the server's clock (``advance``) and read again; its request
log shows what 7.3.3 sends. The README's History snippet runs as written through ``js/snippet.mjs``.

What 7.3.3 does (read in ``node_modules/pubnub/lib/core/endpoints``, checked on the wire here):

* ``history`` sends ``include_token=true`` always, ``count`` as given (100 when absent; not lowered to
  100 by the client), ``start``/``end`` only when truthy, ``reverse`` when set, and
  ``string_message_token=true`` only with ``stringifiedTimeToken: true``. It parses the body with plain
  ``JSON.parse``: without ``stringifiedTimeToken`` the 17-digit timetokens are JS numbers and lose their
  last digit. It reads ``item.message`` and ``item.timetoken`` only (``meta`` when truthy);
* ``fetchMessages`` sends ``max`` = ``count`` as given (100 for one channel, 25 for several or with
  actions when absent), ``include_uuid=true`` and ``include_message_type=true`` by default; several
  channels go into the path as one percent-encoded string (``a%2Cb``). Its timetokens are the server's
  strings, exact. It copies ``message_type`` to ``messageType`` as is (``null``) and ``actions`` (also as
  ``data``) when present;
* ``messageCounts`` sends ``channelsTimetoken=t1,t2`` for a list of several, ``timetoken`` for one value or
  a list of one (then it stands for every channel), and nothing at all for a falsy ``timetoken`` (``0``);
* ``deleteMessages`` sends ``DELETE`` with ``start``/``end`` when truthy and resolves to nothing;
* ``publish`` sends ``store=0`` for ``storeInHistory: false`` and ``ttl`` as given; ``fire`` is a publish
  with ``store=0&norep=true``; a 403 is ``PNAccessDeniedCategory`` with the body as ``errorData``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from asyncio.subprocess import PIPE
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from presence_server.store.history import Walk
from tests.e2e.jsdriver import JsDriver, running
from tests.e2e.live import JS_DIR, LiveServer

pytestmark = pytest.mark.e2e

SUB_KEY = "sub-c-e2e-js-history"
README = Path(__file__).resolve().parents[2] / "README.md"
SNIPPET_RUNNER = JS_DIR / "snippet.mjs"
NODE_RUN_TIMEOUT = 30.0
HOUR = 3600.0

Sent = tuple[str, str, dict[str, str]]


class JsHistory(JsDriver):
    """``listen.mjs`` as these tests drive it: publishing, the history calls, and what was sent."""

    async def publish(self, who: str, channel: str, message: Any, **args: Any) -> str:
        result = await self.call(who, "publish", {"channel": channel, "message": message, **args})
        timetoken: str = result["timetoken"]
        return timetoken

    async def publish_all(self, who: str, channel: str, messages: list[Any]) -> list[str]:
        return [await self.publish(who, channel, message) for message in messages]

    async def fetch(self, who: str, *channels: str, **args: Any) -> dict[str, list[dict[str, Any]]]:
        result = await self.call(who, "fetchMessages", {"channels": list(channels), **args})
        found: dict[str, list[dict[str, Any]]] = result["channels"]
        return found

    def requests(self, path_part: str) -> list[dict[str, Any]]:
        """The request log lines (method, path and query as sent) whose path holds ``path_part``."""
        return [line for line in self.lines if line.get("kind") == "request" and path_part in line["path"]]

    def sent(self, path_part: str) -> list[Sent]:
        """(method, decoded path, query) of every request whose path holds ``path_part``, in order."""
        decoded = []
        for line in self.requests(path_part):
            url = urlsplit(line["path"])
            query = {name: values[0] for name, values in parse_qs(url.query).items()}
            decoded.append((line["method"], unquote(url.path), query))
        return decoded

    def last_raw(self, path_part: str) -> str:
        """The path and query, as sent, of the last request whose path holds ``path_part``."""
        sent = self.requests(path_part)
        assert sent, f"no request to {path_part} was sent"
        raw: str = sent[-1]["path"]
        return raw

    def last_sent(self, path_part: str) -> Sent:
        requests = self.sent(path_part)
        assert requests, f"no request to {path_part} was sent"
        return requests[-1]


Js = Callable[[LiveServer], contextlib.AbstractAsyncContextManager[JsHistory]]
ServerFactory = Callable[..., contextlib.AbstractAsyncContextManager[LiveServer]]


@pytest.fixture
def js(node: str) -> Js:
    """``async with js(server) as clients:`` runs ``listen.mjs`` against ``server``, killed at the end."""

    def start(server: LiveServer) -> contextlib.AbstractAsyncContextManager[JsHistory]:
        return running(JsHistory, node, server.origin, SUB_KEY)

    return start


def texts(items: list[dict[str, Any]]) -> list[Any]:
    return [item["message"] for item in items]


def stamps(items: list[dict[str, Any]]) -> list[Any]:
    return [item["timetoken"] for item in items]


def call_flags(query: dict[str, str]) -> dict[str, str]:
    """A request's query without what 7.3.3 adds to every call (``uuid``, ``pnsdk``, ``requestid``, and
    ``l_*`` latency telemetry of the previous call)."""
    return {k: v for k, v in query.items() if k not in ("uuid", "pnsdk", "requestid") and not k.startswith("l_")}


def as_js_number(timetoken: str) -> int:
    """The integer a JS number parsed from ``timetoken`` holds: the nearest IEEE double."""
    return int(float(int(timetoken)))


# -- what was published comes back ---------------------------------------------------------------


async def test_published_messages_come_back_in_order_with_their_exact_timetokens(
    js: Js, live_server: LiveServer
) -> None:
    async with js(live_server) as clients:
        await clients.client("alice")
        await clients.client("bob")
        published: list[tuple[str, dict[str, Any]]] = [
            ("alice" if n % 2 == 0 else "bob", {"n": n, "text": f"message {n}"}) for n in range(6)
        ]
        tts = []
        for n, (who, message) in enumerate(published):
            extra = {"meta": {"mood": "calm", "n": n}} if n == 2 else {}
            tts.append(await clients.publish(who, "chat", message, **extra))
        assert all(len(tt) == 17 and tt.isdigit() for tt in tts)
        assert [int(tt) for tt in tts] == sorted({int(tt) for tt in tts})
        # The server hands out neighbouring ticks at one clock reading: a JS number cannot tell them all.
        assert any(as_js_number(tt) != int(tt) for tt in tts)

        channels = await clients.fetch("alice", "chat", includeMeta=True)
        assert list(channels) == ["chat"]
        items = channels["chat"]
        assert texts(items) == [message for _, message in published]
        assert stamps(items) == tts  # strings, every digit kept
        assert [item["uuid"] for item in items] == [who for who, _ in published]
        assert {item["channel"] for item in items} == {"chat"}
        # null (listen.mjs writes an absent field as null too, so this shows no other type came back).
        assert [item["messageType"] for item in items] == [None] * 6
        # meta "" (published without) is falsy, so 7.3.3 leaves it out.
        assert [item.get("meta") for item in items] == [None, None, {"mood": "calm", "n": 2}, None, None, None]
        assert "actions" not in items[0]
        _, path, query = clients.last_sent("/v3/history/")
        assert path == f"/v3/history/sub-key/{SUB_KEY}/channel/chat"
        assert call_flags(query) == {
            "max": "100",
            "include_meta": "true",
            "include_uuid": "true",
            "include_message_type": "true",
        }

        exact = await clients.call("alice", "history", {"channel": "chat", "stringifiedTimeToken": True})
        assert [m["entry"] for m in exact["messages"]] == [message for _, message in published]
        assert [m["timetoken"] for m in exact["messages"]] == tts
        assert (exact["startTimeToken"], exact["endTimeToken"]) == (tts[0], tts[-1])
        _, path, query = clients.last_sent("/v2/history/")
        assert path == f"/v2/history/sub-key/{SUB_KEY}/channel/chat"
        assert (query["include_token"], query["count"], query["string_message_token"]) == ("true", "100", "true")

        # By default the server sends numbers, as PubNub does, and 7.3.3 keeps what JSON.parse makes of them.
        lossy = await clients.call("alice", "history", {"channel": "chat", "includeMeta": True})
        assert "string_message_token" not in clients.last_sent("/v2/history/")[2]
        assert [m["timetoken"] for m in lossy["messages"]] == [as_js_number(tt) for tt in tts]
        assert (lossy["startTimeToken"], lossy["endTimeToken"]) == (as_js_number(tts[0]), as_js_number(tts[-1]))
        assert [m.get("meta") for m in lossy["messages"]] == [None, None, {"mood": "calm", "n": 2}, None, None, None]

        with_actions = await clients.fetch("alice", "chat", includeMessageActions=True)
        _, path, query = clients.last_sent("/v3/history-with-actions/")
        assert (path, query["max"]) == (f"/v3/history-with-actions/sub-key/{SUB_KEY}/channel/chat", "25")
        assert texts(with_actions["chat"]) == [message for _, message in published]
        assert stamps(with_actions["chat"]) == tts
        assert [(m["actions"], m["data"]) for m in with_actions["chat"]] == [({}, {})] * 6


async def test_paging_by_timetoken_reads_every_message_exactly_once(js: Js, live_server: LiveServer) -> None:
    async with js(live_server) as clients:
        await clients.client("alice")
        tts = await clients.publish_all("alice", "feed", [f"m{n}" for n in range(101)])
        everything = [f"m{n}" for n in range(101)]

        # 7.3.3 does not lower a count above the cap; the server does.
        capped = await clients.fetch("alice", "feed", count=500)
        assert clients.last_sent("/v3/history/")[2]["max"] == "500"
        assert texts(capped["feed"]) == everything[1:]
        capped_v2 = await clients.call(
            "alice", "history", {"channel": "feed", "count": 500, "stringifiedTimeToken": True}
        )
        assert clients.last_sent("/v2/history/")[2]["count"] == "500"
        assert [m["entry"] for m in capped_v2["messages"]] == everything[1:]
        several = await clients.fetch("alice", "feed", "empty", count=100)
        assert clients.last_sent("/v3/history/")[2]["max"] == "100"
        assert texts(several["feed"]) == everything[-25:]  # "empty" has none: it is left out
        assert list(several) == ["feed"]
        with_actions = await clients.fetch("alice", "feed", includeMessageActions=True, count=100)
        assert clients.last_sent("/v3/history-with-actions/")[2]["max"] == "100"
        assert texts(with_actions["feed"]) == everything[-25:]

        # fetchMessages, newest first, each page before the oldest timetoken of the last.
        pages: list[list[dict[str, Any]]] = []
        start: str | None = None
        while True:
            args: dict[str, Any] = {"count": 40} | ({"start": start} if start else {})
            page = (await clients.fetch("alice", "feed", **args)).get("feed", [])
            if start:
                assert clients.last_sent("/v3/history/")[2]["start"] == start
            if not page:
                break
            pages.append(page)
            start = page[0]["timetoken"]
        assert [len(page) for page in pages] == [40, 40, 21]
        read = [item for page in reversed(pages) for item in page]
        assert texts(read) == everything
        assert stamps(read) == tts

        # history, newest first by startTimeToken, then oldest first (reverse) by endTimeToken.
        backwards: list[str] = []
        args = {"channel": "feed", "count": 30, "stringifiedTimeToken": True}
        while (page_v2 := await clients.call("alice", "history", args))["messages"]:
            backwards[:0] = [m["timetoken"] for m in page_v2["messages"]]
            args["start"] = page_v2["startTimeToken"]
        assert (page_v2["startTimeToken"], page_v2["endTimeToken"]) == (0, 0)  # [[], 0, 0]: numbers even then
        assert backwards == tts
        forwards: list[str] = []
        args = {"channel": "feed", "count": 30, "reverse": True, "stringifiedTimeToken": True}
        while (page_v2 := await clients.call("alice", "history", args))["messages"]:
            forwards += [m["timetoken"] for m in page_v2["messages"]]
            args["start"] = page_v2["endTimeToken"]
        assert clients.last_sent("/v2/history/")[2]["reverse"] == "true"
        assert forwards == tts

        # Both bounds: start exclusive, end inclusive, whichever is the larger.
        between = await clients.fetch("alice", "feed", start=tts[60], end=tts[50])
        assert texts(between["feed"]) == everything[50:60]
        forward = await clients.call(
            "alice", "history", {"channel": "feed", "start": tts[50], "end": tts[60], "stringifiedTimeToken": True}
        )
        assert [m["entry"] for m in forward["messages"]] == everything[51:61]
        # Only an end (inclusive): the newest, or with reverse the oldest, at or after it.
        assert texts((await clients.fetch("alice", "feed", end=tts[95]))["feed"]) == everything[95:]
        oldest_after = await clients.call(
            "alice", "history", {"channel": "feed", "end": tts[50], "count": 3, "reverse": True}
        )
        assert [m["entry"] for m in oldest_after["messages"]] == everything[50:53]
        newest = await clients.call("alice", "history", {"channel": "feed", "end": tts[50], "count": 3})
        assert [m["entry"] for m in newest["messages"]] == everything[-3:]


# -- counts and deletes ----------------------------------------------------------------------------


async def test_counts_and_deletes_agree(js: Js, live_server: LiveServer) -> None:
    async with js(live_server) as clients:
        await clients.client("alice")
        a = await clients.publish_all("alice", "room-a", [f"a{n}" for n in range(6)])
        b = await clients.publish_all("alice", "room-b", [f"b{n}" for n in range(3)])

        both = await clients.fetch("alice", "room-a", "room-b")
        _, path, query = clients.last_sent("/v3/history/")
        assert (path, query["max"]) == (f"/v3/history/sub-key/{SUB_KEY}/channel/room-a,room-b", "25")
        assert "/channel/room-a%2Croom-b?" in clients.last_raw("/v3/history/")
        assert {name: stamps(items) for name, items in both.items()} == {"room-a": a, "room-b": b}

        counts = await clients.call(
            "alice", "messageCounts", {"channels": ["room-a", "room-b"], "channelTimetokens": [a[1], b[0]]}
        )
        assert counts == {"channels": {"room-a": 4, "room-b": 2}}  # strictly after each timetoken
        assert clients.last_sent("/message-counts/")[2]["channelsTimetoken"] == f"{a[1]},{b[0]}"
        # Both commas percent-encoded: the one between the names in the path and the one in the query.
        assert f"/message-counts/room-a%2Croom-b?channelsTimetoken={a[1]}%2C{b[0]}&" in clients.last_raw(
            "/message-counts/"
        )
        # One timetoken, or a list of one, stands for every channel.
        counts = await clients.call("alice", "messageCounts", {"channels": ["room-a", "room-b"], "timetoken": a[0]})
        assert counts == {"channels": {"room-a": 5, "room-b": 3}}
        counts = await clients.call(
            "alice", "messageCounts", {"channels": ["room-a", "room-b"], "channelTimetokens": [b[1]]}
        )
        _, path, query = clients.last_sent("/message-counts/")
        assert (path, query.get("timetoken"), "channelsTimetoken" in query) == (
            f"/v3/history/sub-key/{SUB_KEY}/message-counts/room-a,room-b",
            b[1],
            False,
        )
        assert counts == {"channels": {"room-a": 0, "room-b": 1}}
        # Lists of other lengths never leave the client.
        sent_before = len(clients.sent("/message-counts/"))
        mismatched = {"channels": ["room-a", "room-b"], "channelTimetokens": [a[0], a[1], a[2]]}
        local = await clients.attempt("alice", "messageCounts", mismatched)
        assert local["error"]["status"] == {
            "message": "Length of channelTimetokens and channels do not match",
            "type": "validationError",
            "error": True,
        }
        assert len(clients.sent("/message-counts/")) == sent_before
        # A timetoken of 0 as a number is falsy: 7.3.3 sends none, which is a 400.
        refused = await clients.attempt("alice", "messageCounts", {"channels": ["room-a"], "timetoken": 0})
        assert "timetoken" not in clients.last_sent("/message-counts/")[2]
        status = refused["error"]["status"]
        assert (status["statusCode"], status["category"], status["error"]) == (400, "PNBadRequestCategory", True)
        assert status["errorData"]["error_message"].startswith("Invalid Arguments")

        # Delete a[1] and a[2]: start (a[3]) exclusive, end (a[1]) inclusive.
        assert await clients.call("alice", "deleteMessages", {"channel": "room-a", "start": a[3], "end": a[1]}) is None
        method, path, query = clients.last_sent("/v3/history/")
        assert (method, path) == ("DELETE", f"/v3/history/sub-key/{SUB_KEY}/channel/room-a")
        assert (query["start"], query["end"]) == (a[3], a[1])
        left = [a[0], a[3], a[4], a[5]]
        assert stamps((await clients.fetch("alice", "room-a"))["room-a"]) == left
        counts = await clients.call("alice", "messageCounts", {"channels": ["room-a", "room-b"], "timetoken": a[0]})
        assert counts == {"channels": {"room-a": 3, "room-b": 3}}
        v2 = await clients.call("alice", "history", {"channel": "room-a", "stringifiedTimeToken": True})
        assert [m["timetoken"] for m in v2["messages"]] == left

        # start = end: nothing; a single message T goes with start = T + 1, end = T.
        await clients.call("alice", "deleteMessages", {"channel": "room-a", "start": a[4], "end": a[4]})
        assert stamps((await clients.fetch("alice", "room-a"))["room-a"]) == left
        await clients.call("alice", "deleteMessages", {"channel": "room-a", "start": str(int(a[4]) + 1), "end": a[4]})
        left.remove(a[4])
        assert stamps((await clients.fetch("alice", "room-a"))["room-a"]) == left

        # No bounds: all of one channel, and nothing of another.
        await clients.call("alice", "deleteMessages", {"channel": "room-b"})
        assert call_flags(clients.last_sent("/v3/history/")[2]) == {}
        assert {name: stamps(items) for name, items in (await clients.fetch("alice", "room-a", "room-b")).items()} == {
            "room-a": left
        }
        counts = await clients.call(
            "alice", "messageCounts", {"channels": ["room-a", "room-b"], "channelTimetokens": ["0", "0"]}
        )
        assert counts == {"channels": {"room-a": 3, "room-b": 0}}
        v2 = await clients.call("alice", "history", {"channel": "room-b"})
        assert (v2["messages"], v2["startTimeToken"], v2["endTimeToken"]) == ([], 0, 0)


# -- what is stored --------------------------------------------------------------------------------

UNICODE = {"text": "héllo wörld ✓ 日本語 עברית 🎉👩\u200d👩\u200d👧", "quote": '"\\/\b\f\n\r\t', "nested": [{"ü": "é"}]}


def near_limit(fill: str, size: int = 32 * 1024) -> dict[str, str]:
    """A message whose compact JSON is exactly ``size`` bytes of UTF-8 (``fill`` one to three bytes)."""
    frame = len(json.dumps({"pad": ""}, separators=(",", ":")).encode())
    width = len(fill.encode())
    pad = fill * ((size - frame) // width)
    pad += "x" * (size - frame - len(pad.encode()))
    message = {"pad": pad}
    assert len(json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()) == size
    return message


async def test_unicode_and_near_32_kib_payloads_round_trip(js: Js, live_server: LiveServer) -> None:
    big_ascii, big_unicode = near_limit("x"), near_limit("ü")
    async with js(live_server) as clients:
        await clients.client("alice")
        tts = [
            await clients.publish("alice", "intl", UNICODE),
            await clients.publish("alice", "intl", "☃ plain string"),
            await clients.publish("alice", "intl", big_ascii),  # GET: in the path
            await clients.publish("alice", "intl", big_unicode, sendByPost=True),  # POST: in the body
        ]
        assert [m for m, _, _ in clients.sent("/publish/")] == ["GET", "GET", "GET", "POST"]
        expected = [UNICODE, "☃ plain string", big_ascii, big_unicode]

        fetched = await clients.fetch("alice", "intl")
        assert texts(fetched["intl"]) == expected
        assert stamps(fetched["intl"]) == tts
        v2 = await clients.call("alice", "history", {"channel": "intl", "stringifiedTimeToken": True})
        assert [m["entry"] for m in v2["messages"]] == expected
        # One byte more is refused, and not kept.
        refused = await clients.attempt(
            "alice", "publish", {"channel": "intl", "message": near_limit("x", 32 * 1024 + 1)}
        )
        assert refused["error"]["status"]["statusCode"] == 413
        assert await clients.call("alice", "messageCounts", {"channels": ["intl"], "timetoken": "1"}) == {
            "channels": {"intl": 4}
        }

        # An odd channel name: its key in fetchMessages is percent-encoded, as PubNub sends it, and
        # 7.3.3 does not decode it.
        tt = await clients.publish("alice", "café:1", "bonjour")
        odd = await clients.fetch("alice", "café:1")
        assert list(odd) == ["caf%C3%A9%3A1"]
        assert (texts(odd["caf%C3%A9%3A1"]), stamps(odd["caf%C3%A9%3A1"])) == (["bonjour"], [tt])
        assert [m["entry"] for m in (await clients.call("alice", "history", {"channel": "café:1"}))["messages"]] == [
            "bonjour"
        ]


async def test_signals_fire_and_unstored_publishes_are_absent(js: Js, live_server: LiveServer) -> None:
    async with js(live_server) as clients:
        await clients.client("alice")
        kept = [await clients.publish("alice", "mixed", "kept 1")]
        await clients.call("alice", "signal", {"channel": "mixed", "message": "a signal"})
        await clients.call("alice", "fire", {"channel": "mixed", "message": "a fire"})
        await clients.publish("alice", "mixed", "live only", storeInHistory=False)
        kept.append(await clients.publish("alice", "mixed", "kept 2", storeInHistory=True))
        stores = [query.get("store") for _, _, query in clients.sent("/publish/")]
        assert stores == [None, "0", "0", "1"]
        assert clients.sent("/publish/")[1][2]["norep"] == "true"  # the fire

        fetched = await clients.fetch("alice", "mixed")
        assert (texts(fetched["mixed"]), stamps(fetched["mixed"])) == (["kept 1", "kept 2"], kept)
        v2 = await clients.call("alice", "history", {"channel": "mixed", "stringifiedTimeToken": True})
        assert [(m["entry"], m["timetoken"]) for m in v2["messages"]] == [("kept 1", kept[0]), ("kept 2", kept[1])]
        counts = await clients.call("alice", "messageCounts", {"channels": ["mixed"], "timetoken": "1"})
        assert counts == {"channels": {"mixed": 2}}
        # Between the two kept messages there is nothing.
        assert await clients.fetch("alice", "mixed", start=kept[1], end=str(int(kept[0]) + 1)) == {}


# -- expiry by the server's clock --------------------------------------------------------------------


async def test_retention_and_a_messages_ttl_expire_it_when_the_clock_moves(
    js: Js, live_server_factory: ServerFactory
) -> None:
    async with live_server_factory(history_retention=2 * HOUR) as server, js(server) as clients:
        await clients.client("alice")

        async def left() -> list[str]:
            fetched = await clients.fetch("alice", "news")
            v2 = await clients.call("alice", "history", {"channel": "news"})
            counts = await clients.call("alice", "messageCounts", {"channels": ["news"], "timetoken": "1"})
            on_v3 = texts(fetched.get("news", []))
            assert [m["entry"] for m in v2["messages"]] == on_v3
            assert counts == {"channels": {"news": len(on_v3)}}
            return on_v3

        await clients.publish("alice", "news", "old")
        await clients.publish("alice", "news", "old, ttl past retention", ttl=24)
        await server.advance(HOUR)
        await clients.publish("alice", "news", "half an hour", ttl=0.5)
        await clients.publish("alice", "news", "fresh")
        assert clients.sent("/publish/")[2][2]["ttl"] == "0.5"
        assert await left() == ["old", "old, ttl past retention", "half an hour", "fresh"]

        await server.advance(HOUR / 2 - 1)
        assert await left() == ["old", "old, ttl past retention", "half an hour", "fresh"]
        await server.advance(2)  # the ttl has passed
        assert await left() == ["old", "old, ttl past retention", "fresh"]
        await server.advance(HOUR / 2)  # retention has passed for the first two, their ttl of a day regardless
        assert await left() == ["fresh"]
        await server.advance(HOUR)
        assert await left() == []
        assert await clients.fetch("alice", "news") == {}


# -- history off -------------------------------------------------------------------------------------


async def test_history_off_answers_every_call_with_the_403(js: Js, live_server_factory: ServerFactory) -> None:
    async with live_server_factory(history_retention=0.0) as server, js(server) as clients:
        await clients.client("alice")
        await clients.publish("alice", "quiet", "not kept")
        calls = [
            ("history", {"channel": "quiet"}, "PNHistoryOperation"),
            ("fetchMessages", {"channels": ["quiet"]}, "PNFetchMessagesOperation"),
            ("fetchMessages", {"channels": ["quiet"], "includeMessageActions": True}, "PNFetchMessagesOperation"),
            ("messageCounts", {"channels": ["quiet"], "timetoken": "1"}, "PNMessageCountsOperation"),
            ("deleteMessages", {"channel": "quiet"}, "PNDeleteMessagesOperation"),
        ]
        for method, args, operation in calls:
            answer = await clients.attempt("alice", method, args)
            assert "error" in answer, f"{method} succeeded with history off: {answer}"
            status = answer["error"]["status"]
            assert (status["statusCode"], status["category"], status["operation"], status["error"]) == (
                403,
                "PNAccessDeniedCategory",
                operation,
                True,
            ), method
            body = status["errorData"]
            assert (body["status"], body["error"], body["channels"]) == (403, True, {}), method
            wanted = (
                "Use of the history Delete API requires"
                if method == "deleteMessages"
                else "Use of the history API requires"
            )
            assert body["error_message"].startswith(wanted), method
        assert [m for m, _, _ in clients.sent("/history")] == ["GET", "GET", "GET", "GET", "DELETE"]


# -- the README ---------------------------------------------------------------------------------------


def readme_history_js() -> str:
    """The JavaScript example of the README's History section, as printed there."""
    text = README.read_text()
    section = text.split("\n## History\n", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"JavaScript \(`pubnub@7\.3\.3`\):\n\n```js\n(.*?)```", section, re.DOTALL)
    assert found, "the README's History section has no JavaScript example for pubnub@7.3.3"
    return found.group(1)


async def run_snippet(node: str, server: LiveServer, source: str) -> list[list[Any]]:
    """Run ``source`` with ``pubnub`` a 7.3.3 client of ``server``; returns what it logged, call by call."""
    argv = (str(SNIPPET_RUNNER), server.origin, SUB_KEY, "readme", source)
    proc = await asyncio.create_subprocess_exec(node, *argv, cwd=JS_DIR, stdout=PIPE, stderr=PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), NODE_RUN_TIMEOUT)
    finally:
        if proc.returncode is None:  # timed out
            proc.kill()
            await proc.wait()
    lines = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    if proc.returncode != 0 or not lines or lines[-1] != {"done": True}:
        pytest.fail(f"the snippet failed (exit {proc.returncode})\nstdout: {out.decode()}\nstderr: {err.decode()}")
    return [line["log"] for line in lines[:-1]]


async def test_readme_history_snippet_runs_as_written(node: str, live_server: LiveServer) -> None:
    logged = await run_snippet(node, live_server, readme_history_js())
    assert len(logged) == 2, logged
    [[pairs], [count]] = logged
    [[timetoken, message]] = pairs
    assert message == {"text": "hi"}
    assert isinstance(timetoken, str) and len(timetoken) == 17 and timetoken.isdigit()
    assert count == 1
    # The snippet ends by deleting all of the channel's history.
    now = live_server.clock()
    assert await live_server.store.history(SUB_KEY, "chat", Walk(), 100, now=now) == []
