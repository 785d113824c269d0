"""Operating the server: /metrics, /health and /ready, the keyset allow-list, settings and logs.

Metrics are read the way Prometheus reads them (the text format, parsed by prometheus-client's own
parser). Settings and logs are checked on real ``python -m presence_server`` processes, since what matters
there is what an operator sees: the exit code and the lines on stderr.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, generate_latest

from presence_server.app import create_app
from presence_server.config import Settings
from presence_server.context import LONGPOLLS, STORE
from presence_server.metrics import METRICS, RequestStats
from presence_server.store import open_redis
from tests.helpers.app import (
    START,
    TEST_SERVER_OPTIONS,
    AiohttpClient,
    AiohttpServer,
    Client,
    FakeClock,
    MakeApp,
    sweeper_of,
    waiting,
)
from tests.helpers.http import (
    LONG_HOLD,
    Reply,
    Scrape,
    get,
    handshake,
    heartbeat,
    ok_body,
    parse_metrics,
    poll,
    publish,
)
from tests.helpers.process import ROOT, server_env, server_process, wait_answering
from tests.helpers.redis import free_port, redis_server
from tests.helpers.wait import wait_until

P = "/v2/presence/sub-key/demo"
HEARTBEAT_ROUTE = "/v2/presence/sub-key/{sub_key}/channel/{channels}/heartbeat"
HERE_NOW_ROUTE = "/v2/presence/sub-key/{sub_key}/channel/{channels}"
SUBSCRIBE_ROUTE = "/v2/subscribe/{sub_key}/{channels}/{callback}"
TT_NOW = str(int(START * 10_000_000))
ACCESS_DENIED = {"status": 400, "error": True, "message": "Invalid Subscribe Key", "service": "Access Manager"}


# -- metrics ---------------------------------------------------------------------------------------


async def scrape(client: Client) -> Scrape:
    resp = await client.get("/metrics")
    text = await resp.text()
    assert resp.status == 200, text
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4"), resp.headers["Content-Type"]
    return parse_metrics(text)


def resample(client: Client) -> None:
    """Let the next scrape read the presence gauges again instead of the value sampled < 5 s ago."""
    assert client.app is not None
    client.app[METRICS]._sampled_at = float("-inf")


async def test_every_metric_is_exposed_with_its_type(client: Client) -> None:
    await heartbeat(client, "ch1", "u1")  # so that the labelled families have a child
    found = await scrape(client)
    assert {
        "presence_http_requests": "counter",
        "presence_http_request_duration_seconds": "histogram",
        "presence_redis_errors": "counter",
        "presence_longpolls_held": "gauge",
        "presence_present_users": "gauge",
        "presence_occupied_channels": "gauge",
        "presence_events": "counter",
        "presence_messages_published": "counter",
        "presence_sweeps": "counter",
    }.items() <= found.types.items()
    # The names an operator writes in queries (counters end in _total on the wire).
    for name in (
        "presence_redis_errors_total",
        "presence_longpolls_held",
        "presence_present_users",
        "presence_occupied_channels",
        "presence_messages_published_total",
        "presence_sweeps_total",
    ):
        found.value(name)
    found.value("presence_http_requests_total", route=HEARTBEAT_ROUTE, method="GET", status="200")
    found.value("presence_events_total", action="join")


async def test_request_counter_and_latency_histogram_move_with_requests(client: Client) -> None:
    before = await scrape(client)
    for uuid in ("u1", "u2", "u3"):
        await heartbeat(client, "ch-a", uuid)
    assert (await get(client, f"{P}/channel/ch-b/heartbeat")).status == 400  # no uuid
    await ok_body(client, f"{P}/channel/ch-a")
    assert (await get(client, "/no/such/path")).status == 404
    after = await scrape(client)

    def delta(**labels: str) -> float:
        return after.count("presence_http_requests_total", **labels) - before.count(
            "presence_http_requests_total", **labels
        )

    assert delta(route=HEARTBEAT_ROUTE, method="GET", status="200") == 3
    assert delta(route=HEARTBEAT_ROUTE, method="GET", status="400") == 1
    assert delta(route=HERE_NOW_ROUTE, method="GET", status="200") == 1
    assert delta(route="unmatched", method="GET", status="404") == 1
    # The scrape before this one was counted once it was answered.
    assert delta(route="/metrics", method="GET", status="200") == 1

    histogram = "presence_http_request_duration_seconds"
    count = after.value(f"{histogram}_count", route=HEARTBEAT_ROUTE)
    assert count - before.count(f"{histogram}_count", route=HEARTBEAT_ROUTE) == 4  # 200s and the 400
    assert after.value(f"{histogram}_bucket", route=HEARTBEAT_ROUTE, le="+Inf") == count
    assert after.value(f"{histogram}_sum", route=HEARTBEAT_ROUTE) > 0
    assert after.value(f"{histogram}_bucket", route=HEARTBEAT_ROUTE, le="300.0") == count
    # Labels name routes, never channels or keys: the series count stays bounded.
    assert not [key for key in after.samples if any("ch-a" in value or "demo" in value for _, value in key[1])]


async def test_a_poll_its_client_abandons_is_counted_as_499_not_as_a_server_error(held: Client) -> None:
    # The SDKs drop their held poll at every unsubscribe and reconnect: that is no failure of ours.
    cursor = await handshake(held, "ch1")
    abandoned = asyncio.ensure_future(poll(held, "ch1", cursor))
    await wait_until(lambda: waiting(held) == 1, what="the poll held")
    abandoned.cancel()
    await wait_until(lambda: waiting(held) == 0, what="the abandoned poll let go")
    found = await scrape(held)
    assert found.count("presence_http_requests_total", route=SUBSCRIBE_ROUTE, method="GET", status="499") == 1
    assert found.count("presence_http_requests_total", route=SUBSCRIBE_ROUTE, method="GET", status="500") == 0


def test_latency_buckets_count_a_request_at_their_bound_and_below() -> None:
    registry = CollectorRegistry()
    stats = RequestStats()
    registry.register(stats)
    for seconds in (0.0005, 0.001, 0.0011, 7.0, 400.0):
        stats.observe("/r", "GET", 200, seconds)
    found = parse_metrics(generate_latest(registry).decode())
    bucket = "presence_http_request_duration_seconds_bucket"
    assert found.value(bucket, route="/r", le="0.001") == 2  # le: less than or equal
    assert found.value(bucket, route="/r", le="0.0025") == 3
    assert found.value(bucket, route="/r", le="2.5") == 3
    assert found.value(bucket, route="/r", le="10.0") == 4
    assert found.value(bucket, route="/r", le="300.0") == 4
    assert found.value(bucket, route="/r", le="+Inf") == 5
    assert found.value("presence_http_request_duration_seconds_sum", route="/r") == pytest.approx(407.0026)
    assert found.value("presence_http_requests_total", route="/r", method="GET", status="200") == 5


async def test_event_and_message_counters_follow_the_store(client: Client, clock: FakeClock) -> None:
    before = await scrape(client)
    await heartbeat(client, "ch1", "u1", heartbeat=10)
    await heartbeat(client, "ch1", "u2", heartbeat=60)
    await heartbeat(client, "ch1", "u1", heartbeat=10)  # a refresh, not a join
    await handshake(client, "ch2", uuid="u3")  # subscribing joins too
    await ok_body(client, f"{P}/channel/ch1/uuid/u2/data", {"state": '{"mood":"ok"}'})
    await ok_body(client, f"{P}/channel/ch2/leave", {"uuid": "u3"})
    await publish(client, "ch1", {"n": 1})
    reply = await get(client, "/signal/pub-key/demo/0/ch1/0/%22typing%22")
    assert reply.status == 200
    refused = await get(client, "/publish/pub-key/demo/0/ch1/0/%7Bnot-json")
    assert refused.status == 400
    clock.advance(10)
    assert await sweeper_of(client).run_once() == 1  # u1
    after = await scrape(client)

    def delta(name: str, **labels: str) -> float:
        return after.count(name, **labels) - before.count(name, **labels)

    assert delta("presence_events_total", action="join") == 3
    assert delta("presence_events_total", action="state-change") == 1
    assert delta("presence_events_total", action="leave") == 1
    assert delta("presence_events_total", action="timeout") == 1
    assert delta("presence_messages_published_total") == 2  # the message and the signal, not the 400
    assert delta("presence_sweeps_total") == 1


async def test_longpolls_held_is_one_while_a_poll_waits(
    make_app: MakeApp, aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient
) -> None:
    client = await aiohttp_client(await aiohttp_server(make_app(longpoll_hold=LONG_HOLD), **TEST_SERVER_OPTIONS))
    assert (await scrape(client)).value("presence_longpolls_held") == 0
    cursor = await handshake(client, "ch1")
    pending = asyncio.create_task(poll(client, "ch1", cursor))
    await wait_until(lambda: waiting(client) == 1)
    assert (await scrape(client)).value("presence_longpolls_held") == 1
    await publish(client, "ch1", "wake")
    found, _ = await pending
    assert [env["d"] for env in found] == ["wake"]
    assert (await scrape(client)).value("presence_longpolls_held") == 0


@pytest.mark.engines("redis")
async def test_longpolls_held_leaves_out_a_poll_still_reading(
    make_app: MakeApp, aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, redis_client: aioredis.Redis
) -> None:
    """Held means waiting for a wake-up: a poll whose read has not come back yet is not held (a bench or
    a test that publishes once every poll is held must not publish while they are still reading)."""
    app = make_app(longpoll_hold=LONG_HOLD)
    client = await aiohttp_client(await aiohttp_server(app, **TEST_SERVER_OPTIONS))
    cursor = await handshake(client, "ch1")  # presence refreshed: the poll's refresh is skipped (memo)
    await redis_client.client_pause(1000)  # every command waits a second (CLIENT PAUSE 1000 ALL)
    pending = asyncio.create_task(poll(client, "ch1", cursor))
    polls = app[LONGPOLLS]
    await wait_until(lambda: polls.holds("demo"), what="the poll registered, its read on its way")
    assert waiting(client) == 0
    await wait_until(lambda: waiting(client) == 1, what="the poll held once its read came back")
    await publish(client, "ch1", "wake")
    found, _ = await pending
    assert [env["d"] for env in found] == ["wake"]
    assert waiting(client) == 0


async def test_present_users_and_occupied_channels_are_sampled(client: Client, clock: FakeClock) -> None:
    await heartbeat(client, "ch1", "u1", heartbeat=30)
    await heartbeat(client, "ch1", "u2", heartbeat=30)
    await heartbeat(client, "ch2", "u3", heartbeat=30)
    await ok_body(client, "/v2/presence/sub-key/other/channel/ch9/heartbeat", {"uuid": "u4", "heartbeat": 300})
    found = await scrape(client)  # a fresh app: the first scrape samples
    assert found.value("presence_present_users") == 4  # every keyset counts
    assert found.value("presence_occupied_channels") == 3

    await heartbeat(client, "ch3", "u5", heartbeat=30)
    found = await scrape(client)  # within 5 s of the last sample: the same values
    assert found.value("presence_present_users") == 4
    assert found.value("presence_occupied_channels") == 3
    resample(client)
    found = await scrape(client)
    assert found.value("presence_present_users") == 5
    assert found.value("presence_occupied_channels") == 4

    clock.advance(30)
    assert await sweeper_of(client).run_once() == 4
    resample(client)
    found = await scrape(client)
    assert found.value("presence_present_users") == 1
    assert found.value("presence_occupied_channels") == 1


@pytest.fixture
async def down(
    aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, settings: Settings, clock: FakeClock
) -> AsyncIterator[Client]:
    """An app whose Redis is unreachable (port 1 refuses connections)."""
    broken = open_redis("redis://127.0.0.1:1/0")
    try:
        app = create_app(settings, redis=broken, clock=clock, sweeper=False)
        client = await aiohttp_client(await aiohttp_server(app, **TEST_SERVER_OPTIONS))
        yield client
        await client.close()  # the app first: its wake-up listener uses the Redis client
    finally:
        await broken.aclose()


async def test_a_redis_outage_is_logged_once_however_many_requests_fail(
    down: Client, caplog: pytest.LogCaptureFixture
) -> None:
    # Before, one warning per failed request: 2,532 lines in a 20 s outage.
    caplog.set_level(logging.INFO, logger="presence_server")
    for i in range(20):
        assert (await get(down, f"{P}/channel/ch{i}/heartbeat", {"uuid": "u1"})).status == 503
    said = [
        r.getMessage() for r in caplog.records if r.name.startswith("presence_server") and "redis" in r.getMessage()
    ]
    assert len(said) == 1 and said[0].startswith("redis lost during GET "), said
    assert (await scrape(down)).value("presence_redis_errors_total") == 20


async def test_redis_errors_are_counted_and_metrics_still_answer(down: Client) -> None:
    assert (await get(down, f"{P}/channel/ch1/heartbeat", {"uuid": "u1"})).status == 503
    assert (await get(down, "/v2/subscribe/demo/ch1/0", {"uuid": "u1", "tt": "0"})).status == 503
    # The scrape must answer while Redis is down: that is when an operator needs this counter.
    first = await scrape(down)
    assert first.value("presence_redis_errors_total") >= 2
    assert first.value("presence_http_requests_total", route=HEARTBEAT_ROUTE, method="GET", status="503") == 1
    assert first.value("presence_http_requests_total", route=SUBSCRIBE_ROUTE, method="GET", status="503") == 1
    assert (await get(down, f"{P}/channel/ch1")).status == 503
    second = await scrape(down)
    assert second.value("presence_redis_errors_total") == first.value("presence_redis_errors_total") + 1


# -- health ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/health", "/ready"])
async def test_health_and_ready_answer_ok_while_the_store_answers(client: Client, path: str) -> None:
    reply = await get(client, path)
    assert (reply.status, reply.body) == (200, {"status": "ok"})


@pytest.mark.parametrize("path", ["/health", "/ready"])
async def test_health_and_ready_answer_503_with_a_reason_while_redis_is_down(down: Client, path: str) -> None:
    reply = await get(down, path)
    assert reply.status == 503
    assert reply.body["status"] != "ok"
    assert isinstance(reply.body["reason"], str) and reply.body["reason"]


async def wait_for_status(client: Client, path: str, status: int, within: float = 10.0) -> None:
    replies: list[Reply] = []

    async def answers() -> bool:
        replies.append(await get(client, path))
        return replies[-1].status == status

    def last() -> str:
        return f"{path} kept answering {replies[-1].status} {replies[-1].body}"

    await wait_until(answers, within, what=last, interval=0.05)


async def test_health_follows_redis_going_away_and_coming_back(
    aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, settings: Settings, clock: FakeClock
) -> None:
    port = free_port()
    redis = open_redis(f"redis://127.0.0.1:{port}/0", socket_connect_timeout=1)
    try:
        client = await aiohttp_client(
            await aiohttp_server(create_app(settings, redis=redis, clock=clock, sweeper=False), **TEST_SERVER_OPTIONS)
        )
        assert (await get(client, "/ready")).status == 503  # nothing listens yet
        with redis_server(port):
            await wait_for_status(client, "/ready", 200)
            await heartbeat(client, "ch1", "u1")
        reply = await get(client, "/health")
        assert reply.status == 503 and reply.body["status"] != "ok"
        with redis_server(port):  # the same server process keeps working once Redis is back
            await wait_for_status(client, "/health", 200)
            await heartbeat(client, "ch1", "u1")
            assert (await ok_body(client, f"{P}/channel/ch1"))["uuids"] == ["u1"]
            await client.close()
    finally:
        await redis.aclose()


# -- keysets ---------------------------------------------------------------------------------------


@pytest.fixture
async def listed(make_app: MakeApp, aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient) -> Client:
    """A server that serves only two keysets: pub-a:demo and pub-b:other."""
    app = make_app(keysets="pub-a:demo, pub-b:other", longpoll_hold=0.2)
    return await aiohttp_client(await aiohttp_server(app, **TEST_SERVER_OPTIONS))


async def test_a_listed_keyset_is_served(listed: Client) -> None:
    cursor = await handshake(listed, "ch1", uuid="watcher")
    await heartbeat(listed, "ch1", "u1")
    assert sorted((await ok_body(listed, f"{P}/channel/ch1"))["uuids"]) == ["u1", "watcher"]
    await ok_body(listed, "/v1/channel-registration/sub-key/demo/channel-group/g1", {"add": "ch1"})
    reply = await get(listed, "/publish/pub-a/demo/0/ch1/0/%22hi%22")
    assert reply.status == 200 and reply.body[:2] == [1, "Sent"]
    found, _ = await poll(listed, "ch1", cursor, uuid="watcher")
    assert [env["d"] for env in found] == ["hi"]
    # The second pair too, and the endpoints that name no keyset.
    await ok_body(listed, "/v2/presence/sub-key/other/channel/ch1/heartbeat", {"uuid": "u2"})
    assert (await get(listed, "/publish/pub-b/other/0/ch1/0/1")).status == 200
    assert (await get(listed, "/time/0")).status == 200
    assert (await get(listed, "/health")).status == 200


UNLISTED_SUB_KEY_CALLS = [
    "/v2/presence/sub-key/nope/channel/ch1/heartbeat?uuid=u1",
    "/v2/presence/sub-key/nope/channel/ch1/leave?uuid=u1",
    "/v2/presence/sub-key/nope/channel/ch1",
    "/v2/presence/sub-key/nope",
    "/v2/presence/sub-key/nope/uuid/u1",
    "/v2/presence/sub-key/nope/channel/ch1/uuid/u1",
    "/v2/presence/sub-key/nope/channel/ch1/uuid/u1/data?state=%7B%22a%22%3A1%7D",
    "/v2/subscribe/nope/ch1/0?uuid=u1&tt=0",
    "/v2/subscribe/nope/ch1,ch1-pnpres/0?uuid=u1&tt=17999999999999999",
    "/v1/channel-registration/sub-key/nope/channel-group",
    "/v1/channel-registration/sub-key/nope/channel-group/g1",
    "/v1/channel-registration/sub-key/nope/channel-group/g1?add=ch1",
    "/v1/channel-registration/sub-key/nope/channel-group/g1/remove",
]


@pytest.mark.parametrize("path", UNLISTED_SUB_KEY_CALLS)
async def test_an_unlisted_subscribe_key_gets_the_access_manager_400(listed: Client, path: str) -> None:
    reply = await get(listed, path)
    assert (reply.status, reply.body) == (400, ACCESS_DENIED)
    # Nothing at all was stored for it.
    assert listed.app is not None
    store = listed.app[STORE]
    assert [key async for key in store.redis.scan_iter(match=store.keys("nope").match_all)] == []


PUBLISH_WITH_A_WRONG_PAIR = [
    ("GET", "/publish/pub-a/other/0/ch1/0/%22hi%22"),  # both keys listed, not as a pair
    ("GET", "/publish/pub-b/demo/0/ch1/0/%22hi%22"),
    ("GET", "/publish/pub-x/demo/0/ch1/0/%22hi%22"),  # an unknown publish key
    ("GET", "/publish/pub-a/nope/0/ch1/0/%22hi%22"),  # an unknown subscribe key
    ("GET", "/signal/pub-b/demo/0/ch1/0/%22hi%22"),
    ("POST", "/publish/pub-b/demo/0/ch1/0"),
]


@pytest.mark.parametrize(("method", "path"), PUBLISH_WITH_A_WRONG_PAIR)
async def test_publish_with_a_wrong_key_pair_gets_invalid_key(listed: Client, method: str, path: str) -> None:
    cursor = await handshake(listed, "ch1", uuid="watcher")
    other_cursor = (await subscribe_in(listed, "other", "ch1", "0"))["t"]["t"]
    resp = await listed.request(method, path, data=b'"hi"' if method == "POST" else None)
    assert "javascript" in resp.headers["Content-Type"]
    assert (resp.status, orjson.loads(await resp.read())) == (400, [0, "Invalid Key", TT_NOW])
    # Not delivered in either keyset.
    assert (await poll(listed, "ch1", cursor, uuid="watcher"))[0] == []
    assert (await subscribe_in(listed, "other", "ch1", other_cursor))["m"] == []


async def subscribe_in(client: Client, sub_key: str, channels: str, tt: str, uuid: str = "watcher") -> Any:
    """One subscribe request in any keyset (the shared helpers subscribe in "demo")."""
    body = await ok_body(client, f"/v2/subscribe/{sub_key}/{channels}/0", {"uuid": uuid, "tt": tt})
    assert all(env["k"] == sub_key for env in body["m"])
    return body


async def test_keysets_are_isolated_without_an_allow_list(client: Client) -> None:
    a, b = "/v2/presence/sub-key/key-a", "/v2/presence/sub-key/key-b"
    watch_b = await subscribe_in(client, "key-b", "ch1,ch1-pnpres", "0")
    await ok_body(client, f"{a}/channel/ch1/heartbeat", {"uuid": "u1", "state": '{"in":"a"}'})
    await ok_body(client, "/v1/channel-registration/sub-key/key-a/channel-group/g1", {"add": "ch1"})
    assert (await get(client, "/publish/pk/key-a/0/ch1/0/%22for-a%22")).status == 200

    assert (await ok_body(client, f"{a}/channel/ch1"))["uuids"] == ["u1"]
    assert (await ok_body(client, f"{b}/channel/ch1"))["uuids"] == ["watcher"]
    assert (await ok_body(client, f"{b}/uuid/u1"))["payload"]["channels"] == []
    assert (await ok_body(client, f"{b}/channel/ch1/uuid/u1"))["payload"] == {}
    assert (await ok_body(client, "/v1/channel-registration/sub-key/key-b/channel-group"))["payload"]["groups"] == []
    await ok_body(client, f"{b}/channel/,/heartbeat", {"uuid": "u9", "channel-group": "g1"})
    assert (await ok_body(client, f"{b}/uuid/u9"))["payload"]["channels"] == []
    # The subscriber in key-b saw only its own join: nothing of key-a's presence or message.
    body = await subscribe_in(client, "key-b", "ch1,ch1-pnpres", watch_b["t"]["t"])
    assert [(env["c"], env["d"].get("uuid")) for env in body["m"]] == [("ch1-pnpres", "watcher")]


# -- settings and the command line -----------------------------------------------------------------


def run_server(env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m presence_server`` expected to stop at once; a server that starts instead fails the test."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "presence_server", *args],
            cwd=ROOT,
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=20,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the server started instead of refusing its settings: {exc.stderr!r}") from None


BAD_SETTINGS = [
    ("PRESENCE_MIN_TIMEOUT", "abc"),
    ("PRESENCE_LOG_FORMAT", "xml"),
    ("PRESENCE_PORT", "99999"),
    ("PRESENCE_PORT", "http"),
    ("PRESENCE_ADMIN", "maybe"),
    ("PRESENCE_ACCESS_LOG", "2"),
    ("PRESENCE_REDIS_URL", "localhost:6379"),
    ("PRESENCE_KEYSETS", "pub-only"),
    ("PRESENCE_KEYSETS", "pub:sub:"),  # an empty secret
    ("PRESENCE_KEYSETS", "pub:sub:sec,pub2:sub"),  # a subscribe key with a secret, listed twice
    ("PRESENCE_SIGNATURE_WINDOW", "0"),
    ("PRESENCE_LOG_SIZE", "10"),
    ("PRESENCE_KEY_PREFIX", "{pn}"),
    ("PRESENCE_ANNOUNCE_MAX", "-1"),
    ("PRESENCE_LONGPOLL_HOLD", "0"),
    ("PRESENCE_DEFAULT_TIMEOUT", "nan"),
    ("PRESENCE_MAX_TIMEOUT", "inf"),  # an infinite timeout cannot be a deadline
]


@pytest.mark.parametrize(("name", "value"), BAD_SETTINGS)
def test_a_bad_setting_stops_the_server_with_a_message_naming_it(name: str, value: str) -> None:
    env = server_env(**{name: value})
    done = run_server(env)
    assert done.returncode == 2, done.stderr
    assert name in done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_conflicting_timeouts_name_both_settings() -> None:
    done = run_server(server_env(PRESENCE_MIN_TIMEOUT="100", PRESENCE_MAX_TIMEOUT="10"))
    assert done.returncode == 2
    assert "PRESENCE_MIN_TIMEOUT" in done.stderr and "PRESENCE_MAX_TIMEOUT" in done.stderr


def test_a_bad_flag_stops_the_server_naming_the_flag() -> None:
    done = run_server(server_env(), "--port", "abc")
    assert done.returncode == 2
    assert "--port" in done.stderr


def test_refused_keysets_are_not_echoed_with_their_secrets() -> None:
    done = run_server(server_env(PRESENCE_KEYSETS="pub:sub:sec-c-s3cret,pub:sub"))
    assert done.returncode == 2 and "PRESENCE_KEYSETS" in done.stderr
    assert "s3cret" not in done.stderr, done.stderr


def test_a_refused_redis_url_is_not_echoed_with_its_password() -> None:
    # Missing its scheme, so refused; the message goes to the logs and must not carry the secret.
    done = run_server(server_env(PRESENCE_REDIS_URL=":s3cret-pw@redis-host:6379/0"))
    assert done.returncode == 2
    assert "PRESENCE_REDIS_URL" in done.stderr
    assert "s3cret-pw" not in done.stderr, done.stderr


@pytest.mark.parametrize(
    "url",
    [
        "redis://:s3cret-pw@redis-host:6379/0",
        "redis://app:s3cret-pw@redis-host:6379/0",
        "rediss://app:s3cret-pw@redis-host:6380",
        "redis://app:s3cret%40pw@redis-host:6379/0",
        "unix://:s3cret-pw@/run/redis.sock?db=0",
        # redis-py also reads the password from the query string (its documented form for unix sockets).
        "unix:///run/redis.sock?db=0&password=s3cret-pw",
        "redis://redis-host:6379/0?password=s3cret-pw",
    ],
)
def test_the_settings_summary_never_contains_the_redis_password(url: str) -> None:
    summary = Settings(redis_url=url, keysets="pub-secret:sub-secret,pub-2:sub-2:sec-c-s3cret").summary()
    text = repr(summary)
    assert "s3cret" not in text, summary
    assert "redis-host" in text or "redis.sock" in text  # still says where Redis is
    assert "pub-secret" not in text and "sub-secret" not in text


async def test_json_log_format_makes_every_line_json() -> None:
    port = free_port()
    env = server_env(
        PRESENCE_PORT=str(port), PRESENCE_REDIS_URL="memory://", PRESENCE_LOG_FORMAT="json", PRESENCE_ACCESS_LOG="1"
    )
    async with server_process(env) as proc:
        assert proc.stderr is not None
        first = await asyncio.wait_for(proc.stderr.readline(), 20)
        entry = orjson.loads(first)
        assert {"time", "level", "logger", "message"} <= entry.keys(), entry
        assert entry["level"] == "info" and entry["message"].startswith("starting on 127.0.0.1:")
        assert f":{port}" in entry["message"]
        await wait_answering(f"http://127.0.0.1:{port}", "/time/0?auth=s3cret-token", 200, proc)
        proc.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(proc.stderr.read(), 20)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    lines = [orjson.loads(line) for line in rest.splitlines() if line.strip()]
    assert any(line["logger"] == "aiohttp.access" and "/time/0" in line["message"] for line in lines), lines
    # Access lines name the route, never the query: it holds tokens, auth keys and signatures.
    assert "s3cret" not in rest.decode(), rest
    assert lines[-1]["message"] == "stopped"


async def test_text_log_format_is_plain_lines_without_access_lines_by_default() -> None:
    port = free_port()
    env = server_env(PRESENCE_PORT=str(port), PRESENCE_REDIS_URL="memory://")
    async with server_process(env) as proc:
        assert proc.stderr is not None
        first = (await asyncio.wait_for(proc.stderr.readline(), 20)).decode()
        assert " INFO presence_server: starting on 127.0.0.1:" in first
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(first)
        await wait_answering(f"http://127.0.0.1:{port}", "/time/0", 200, proc)
        proc.send_signal(signal.SIGTERM)
        rest = (await asyncio.wait_for(proc.stderr.read(), 20)).decode()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    assert "/time/0" not in rest and "aiohttp.access" not in rest, rest
    assert rest.rstrip().endswith("INFO presence_server: stopped"), rest


async def test_logs_of_a_server_whose_redis_has_a_password_never_show_it(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "server.log"
    # Nothing listens there: besides the start line, the Redis-lost lines get logged too.
    url = f"redis://app:s3cret-pw@127.0.0.1:{free_port()}/0"
    async with server_process(server_env(PRESENCE_PORT=str(port), PRESENCE_REDIS_URL=url), stderr=log) as proc:
        await wait_answering(f"http://127.0.0.1:{port}", "/health", 503, proc)
        await heartbeat_refused(f"http://127.0.0.1:{port}")
    text = log.read_text(errors="replace")
    assert "starting on" in text and "app:***@127.0.0.1" in text
    assert "s3cret" not in text, text


async def heartbeat_refused(base: str) -> None:
    async with aiohttp.ClientSession() as session:
        path = f"/v2/presence/sub-key/demo/channel/{quote('ch1')}/heartbeat?uuid=u1"
        async with session.get(base + path) as resp:
            assert resp.status == 503


async def test_a_request_failing_on_redis_is_logged_by_its_route_not_its_path(
    down: Client, caplog: pytest.LogCaptureFixture
) -> None:
    # A path may carry a token (revoke: /v3/pam/{sub_key}/grant/{token}) and names are the users' own.
    caplog.set_level(logging.DEBUG)
    assert (await get(down, f"{P}/channel/private-room-4711/heartbeat", {"uuid": "u1"})).status == 503
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("presence_server"))
    assert "private-room-4711" not in ours, ours
    assert "/v2/presence/sub-key/{sub_key}/channel/{channels}/heartbeat" in ours, ours
