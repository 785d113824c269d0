"""The real JavaScript client, ``pubnub@7.3.3`` (the last MIT release), under Node against the live server.

Each test hands ``tests/e2e/js/run.mjs`` a list of client calls, runs it with
``asyncio.create_subprocess_exec`` (so the in-process server keeps serving on this event loop) and
asserts on the JSON it prints. Where time has to pass, the scenario is split in two Node runs with
``live_server.advance`` in between; nothing sleeps.

7.3.3 facts these tests rest on (read in ``node_modules/pubnub/lib``, seen on the wire):

* the config takes ``userId`` (or ``uuid``, not both);
* ``iAmHere`` is a direct ``/heartbeat`` call (``heartbeat=<presenceTimeout>``, ``state`` sent as
  given, ``{}`` by default) and ``iAmAway`` a direct ``/leave``, neither needing a subscription;
* ``setState({withHeartbeat: true})`` sends ``/heartbeat`` with the state keyed by every channel
  and group named (``{"c1": {...}, "g1": {...}}``), not the flat object newer releases send;
* a channel list in the path is percent-encoded as one string, ``c1%2Cc2``, and the empty list
  placeholder as ``%2C`` (newer releases encode each name and join with a literal comma);
* a response body it cannot read throws inside the HTTP callback, which kills the process:
  ``run.mjs`` reports that as ``crashed`` and these tests fail with the stack.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.e2e.live import JS_DIR, LiveServer

pytestmark = pytest.mark.e2e

RUNNER = JS_DIR / "run.mjs"
SUB_KEY = "sub-c-e2e-js"
NODE_RUN_TIMEOUT = 30.0

Step = dict[str, Any]


def call(who: str, method: str, args: dict[str, Any] | None = None, *, expect_error: bool = False) -> Step:
    """One client call; without ``args`` the method gets no argument (``time``, ``listGroups``)."""
    step: Step = {"as": who, "call": method}
    if args is not None:
        step["args"] = args
    if expect_error:
        step["expectError"] = True
    return step


async def run_js(node: str, server: LiveServer, clients: dict[str, dict[str, Any]], steps: list[Step]) -> list[Any]:
    """Run the calls in one Node process; ``clients`` maps a name to its extra PubNub config."""
    scenario = {"subscribeKey": SUB_KEY, "clients": clients, "steps": steps}
    proc = await asyncio.create_subprocess_exec(
        node,
        str(RUNNER),
        server.origin,
        json.dumps(scenario),
        cwd=JS_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(NODE_RUN_TIMEOUT):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"node did not finish within {NODE_RUN_TIMEOUT} s")
    lines = out.decode().strip().splitlines()
    report = json.loads(lines[-1]) if lines else None
    if proc.returncode != 0 or not isinstance(report, dict) or "results" not in report:
        pytest.fail(f"node exited {proc.returncode}\nstdout: {out.decode()}\nstderr: {err.decode()}")
    results: list[Any] = report["results"]
    return results


def users(who: str, **config: Any) -> dict[str, Any]:
    return {"userId": who, **config}


def occupants(here_now: dict[str, Any], channel: str) -> list[str]:
    return sorted(item["uuid"] for item in here_now["channels"][channel]["occupants"])


# -- time ---------------------------------------------------------------------------------------


async def test_time_is_the_server_clock_as_a_timetoken(node: str, live_server: LiveServer) -> None:
    [result] = await run_js(node, live_server, {"a": users("alice")}, [call("a", "time")])
    timetoken = result["timetoken"]
    assert isinstance(timetoken, int)
    assert len(str(timetoken)) == 17
    # A 17-digit number is past 2**53, so JS may round the last digits; seconds survive.
    assert timetoken // 10_000_000 == int(live_server.clock())


# -- heartbeat ----------------------------------------------------------------------------------


async def test_heartbeat_call_makes_the_user_present_with_a_flat_state(node: str, live_server: LiveServer) -> None:
    results = await run_js(
        node,
        live_server,
        {"a": users("alice"), "b": users("bob")},
        [
            call("a", "iAmHere", {"channels": ["lobby"]}),
            call("b", "iAmHere", {"channels": ["lobby"], "state": {"mood": "calm"}}),
            call("a", "hereNow", {"channels": ["lobby"], "includeState": True}),
            call("a", "whereNow", {}),
        ],
    )
    assert results[0] == {}
    assert results[1] == {}
    here = results[2]
    assert here["totalOccupancy"] == 2
    by_uuid = {item["uuid"]: item.get("state") for item in here["channels"]["lobby"]["occupants"]}
    assert by_uuid == {"alice": None, "bob": {"mood": "calm"}}
    assert results[3] == {"channels": ["lobby"]}


async def test_heartbeat_on_several_channels(node: str, live_server: LiveServer) -> None:
    # 7.3.3 sends the list as one encoded string: /channel/red%2Cblue/heartbeat.
    results = await run_js(
        node,
        live_server,
        {"a": users("alice")},
        [
            call("a", "iAmHere", {"channels": ["red", "blue"]}),
            call("a", "whereNow", {}),
        ],
    )
    assert sorted(results[1]["channels"]) == ["blue", "red"]


async def test_heartbeat_on_a_channel_group_only(node: str, live_server: LiveServer) -> None:
    # 7.3.3 names no channel as /channel/%2C/heartbeat?channel-group=team.
    results = await run_js(
        node,
        live_server,
        {"a": users("alice")},
        [
            call("a", "channelGroups.addChannels", {"channelGroup": "team", "channels": ["dev", "ops"]}),
            call("a", "iAmHere", {"channelGroups": ["team"]}),
            call("a", "whereNow", {}),
        ],
    )
    assert sorted(results[2]["channels"]) == ["dev", "ops"]


async def test_set_state_with_heartbeat_sends_state_through_the_heartbeat(
    node: str,
    live_server: LiveServer,
) -> None:
    # 7.3.3 keys the state by channel on /heartbeat: state={"lobby":{"mood":"busy"}}.
    results = await run_js(
        node,
        live_server,
        {"a": users("alice")},
        [
            call("a", "setState", {"channels": ["lobby"], "state": {"mood": "busy"}, "withHeartbeat": True}),
            call("a", "hereNow", {"channels": ["lobby"], "includeState": True}),
            call("a", "getState", {"channels": ["lobby"]}),
        ],
    )
    assert results[0] == {}
    assert results[1]["channels"]["lobby"]["occupants"] == [{"uuid": "alice", "state": {"mood": "busy"}}]
    assert results[2] == {"channels": {"lobby": {"mood": "busy"}}}


async def test_set_state_with_heartbeat_on_a_channel_and_a_group(node: str, live_server: LiveServer) -> None:
    # state={"lobby":{...},"team":{...}}: the group's entry reaches the group's channels.
    results = await run_js(
        node,
        live_server,
        {"a": users("alice")},
        [
            call("a", "channelGroups.addChannels", {"channelGroup": "team", "channels": ["dev"]}),
            call(
                "a",
                "setState",
                {"channels": ["lobby"], "channelGroups": ["team"], "state": {"mood": "busy"}, "withHeartbeat": True},
            ),
            call("a", "whereNow", {}),
            call("a", "hereNow", {"channels": ["dev"], "includeState": True}),
        ],
    )
    assert sorted(results[2]["channels"]) == ["dev", "lobby"]
    assert results[3]["channels"]["dev"]["occupants"] == [{"uuid": "alice", "state": {"mood": "busy"}}]


async def test_user_who_stops_heartbeating_times_out(node: str, live_server: LiveServer) -> None:
    clients = {"a": users("alice", presenceTimeout=20), "b": users("bob")}
    await run_js(
        node,
        live_server,
        clients,
        [
            call("a", "iAmHere", {"channels": ["lobby"]}),  # heartbeat=20
            call("b", "iAmHere", {"channels": ["lobby"]}),  # heartbeat=300, the default
        ],
    )
    assert await live_server.advance(19) == 0
    assert await live_server.advance(2) == 1
    results = await run_js(
        node,
        live_server,
        clients,
        [
            call("b", "hereNow", {"channels": ["lobby"]}),
            call("b", "whereNow", {"uuid": "alice"}),
            call("b", "whereNow", {}),
        ],
    )
    assert occupants(results[0], "lobby") == ["bob"]
    assert results[0]["totalOccupancy"] == 1
    assert results[1] == {"channels": []}
    assert results[2] == {"channels": ["lobby"]}


# -- here now -----------------------------------------------------------------------------------


async def test_here_now_one_channel(node: str, live_server: LiveServer) -> None:
    results = await run_js(
        node,
        live_server,
        {"a": users("alice"), "b": users("bob")},
        [
            call("a", "iAmHere", {"channels": ["lobby"]}),
            call("b", "iAmHere", {"channels": ["lobby"]}),
            call("b", "iAmHere", {"channels": ["elsewhere"]}),
            call("a", "hereNow", {"channels": ["lobby"]}),
            call("a", "hereNow", {"channels": ["empty"]}),
        ],
    )
    here, empty = results[3], results[4]
    assert here["totalChannels"] == 1
    assert here["totalOccupancy"] == 2
    assert here["channels"]["lobby"]["occupancy"] == 2
    assert occupants(here, "lobby") == ["alice", "bob"]
    assert all(item["state"] is None for item in here["channels"]["lobby"]["occupants"])
    assert empty["totalOccupancy"] == 0
    assert empty["channels"]["empty"]["occupants"] == []


async def test_here_now_several_channels(node: str, live_server: LiveServer) -> None:
    results = await run_js(
        node,
        live_server,
        {"a": users("alice"), "b": users("bob")},
        [
            call("a", "iAmHere", {"channels": ["red"]}),
            call("b", "iAmHere", {"channels": ["red"]}),
            call("b", "iAmHere", {"channels": ["blue"]}),
            call("a", "hereNow", {"channels": ["red", "blue", "empty"]}),
        ],
    )
    here = results[3]
    assert here["totalChannels"] == 2
    assert here["totalOccupancy"] == 3
    assert sorted(here["channels"]) == ["blue", "red"]
    assert occupants(here, "red") == ["alice", "bob"]
    assert occupants(here, "blue") == ["bob"]


async def test_here_now_channel_groups(node: str, live_server: LiveServer) -> None:
    results = await run_js(
        node,
        live_server,
        {"a": users("alice"), "b": users("bob")},
        [
            call("a", "channelGroups.addChannels", {"channelGroup": "team", "channels": ["dev", "ops", "idle"]}),
            call("a", "iAmHere", {"channels": ["dev"]}),
            call("b", "iAmHere", {"channels": ["ops"]}),
            call("b", "iAmHere", {"channels": ["lobby"]}),
            call("a", "hereNow", {"channelGroups": ["team"]}),
            call("a", "hereNow", {"channels": ["lobby"], "channelGroups": ["team"]}),
        ],
    )
    groups_only, mixed = results[4], results[5]
    assert sorted(groups_only["channels"]) == ["dev", "ops"]
    assert groups_only["totalChannels"] == 2
    assert groups_only["totalOccupancy"] == 2
    assert occupants(groups_only, "dev") == ["alice"]
    assert occupants(groups_only, "ops") == ["bob"]
    assert sorted(mixed["channels"]) == ["dev", "lobby", "ops"]
    assert mixed["totalOccupancy"] == 3


async def test_here_now_global(node: str, live_server: LiveServer) -> None:
    results = await run_js(
        node,
        live_server,
        {"a": users("alice"), "b": users("bob")},
        [
            call("a", "iAmHere", {"channels": ["red"]}),
            call("b", "iAmHere", {"channels": ["red"]}),
            call("b", "iAmHere", {"channels": ["blue"]}),
            call("b", "iAmAway", {"channels": ["blue"]}),
            call("a", "iAmHere", {"channels": ["green"]}),
            call("a", "hereNow", {}),
        ],
    )
    here = results[5]
    assert sorted(here["channels"]) == ["green", "red"]
    assert here["totalChannels"] == 2
    assert here["totalOccupancy"] == 3
    assert occupants(here, "red") == ["alice", "bob"]
    assert occupants(here, "green") == ["alice"]


async def test_here_now_without_uuids(node: str, live_server: LiveServer) -> None:
    results = await run_js(
        node,
        live_server,
        {"a": users("alice"), "b": users("bob")},
        [
            call("a", "channelGroups.addChannels", {"channelGroup": "team", "channels": ["dev"]}),
            call("a", "iAmHere", {"channels": ["dev"]}),
            call("b", "iAmHere", {"channels": ["dev"]}),
            call("a", "hereNow", {"channels": ["dev"], "includeUUIDs": False}),
            call("a", "hereNow", {"channelGroups": ["team"], "includeUUIDs": False}),
            call("a", "hereNow", {"includeUUIDs": False}),
        ],
    )
    for here in results[3:]:
        assert here["totalOccupancy"] == 2
        assert here["channels"]["dev"]["occupancy"] == 2
        assert here["channels"]["dev"]["occupants"] == []


async def test_here_now_with_state(node: str, live_server: LiveServer) -> None:
    results = await run_js(
        node,
        live_server,
        {"a": users("alice"), "b": users("bob")},
        [
            call("a", "channelGroups.addChannels", {"channelGroup": "team", "channels": ["dev"]}),
            call("a", "iAmHere", {"channels": ["dev"]}),
            call("b", "iAmHere", {"channels": ["dev"]}),
            call("b", "setState", {"channels": ["dev"], "state": {"role": "lead", "level": 3}}),
            call("a", "hereNow", {"channels": ["dev"], "includeState": True}),
            call("a", "hereNow", {"channelGroups": ["team"], "includeState": True}),
            call("a", "hereNow", {"includeState": True}),
        ],
    )
    for here in results[4:]:
        by_uuid = {item["uuid"]: item.get("state") for item in here["channels"]["dev"]["occupants"]}
        assert by_uuid == {"alice": None, "bob": {"role": "lead", "level": 3}}


# -- where now ----------------------------------------------------------------------------------


async def test_where_now_self_and_other(node: str, live_server: LiveServer) -> None:
    results = await run_js(
        node,
        live_server,
        {"a": users("alice"), "b": users("bob")},
        [
            call("a", "iAmHere", {"channels": ["red"]}),
            call("b", "iAmHere", {"channels": ["red"]}),
            call("b", "iAmHere", {"channels": ["blue"]}),
            call("a", "whereNow", {}),
            call("a", "whereNow", {"uuid": "bob"}),
            call("a", "whereNow", {"uuid": "nobody"}),
        ],
    )
    assert results[3] == {"channels": ["red"]}
    assert sorted(results[4]["channels"]) == ["blue", "red"]
    assert results[5] == {"channels": []}


# -- state --------------------------------------------------------------------------------------


async def test_set_and_get_state_on_one_channel(node: str, live_server: LiveServer) -> None:
    state = {"mood": "happy", "score": 7, "tags": ["a", "b"], "nested": {"x": None}}
    results = await run_js(
        node,
        live_server,
        {"a": users("alice"), "b": users("bob")},
        [
            call("a", "iAmHere", {"channels": ["lobby"]}),
            call("a", "setState", {"channels": ["lobby"], "state": state}),
            call("a", "getState", {"channels": ["lobby"]}),
            call("b", "getState", {"uuid": "alice", "channels": ["lobby"]}),
            call("b", "getState", {"channels": ["lobby"]}),
            call("a", "setState", {"channels": ["lobby"], "state": {"mood": "tired"}}),
            call("b", "getState", {"uuid": "alice", "channels": ["lobby"]}),
        ],
    )
    assert results[1] == {"state": state}
    assert results[2] == {"channels": {"lobby": state}}
    assert results[3] == {"channels": {"lobby": state}}
    assert results[4] == {"channels": {"lobby": {}}}
    # State is replaced as a whole, not merged.
    assert results[6] == {"channels": {"lobby": {"mood": "tired"}}}


async def test_set_and_get_state_on_several_channels(node: str, live_server: LiveServer) -> None:
    results = await run_js(
        node,
        live_server,
        {"a": users("alice")},
        [
            call("a", "setState", {"channels": ["red", "blue"], "state": {"mood": "busy"}}),
            call("a", "getState", {"channels": ["red", "blue", "green"]}),
        ],
    )
    assert results[0] == {"state": {"mood": "busy"}}
    # 7.3.3 returns the multi-channel payload as is; with the real service's payload.channels
    # wrapper (docs/protocol.md 2.8, needed by Python) that is one level deeper than its docs show.
    assert results[1] == {"channels": {"channels": {"red": {"mood": "busy"}, "blue": {"mood": "busy"}, "green": {}}}}


async def test_set_and_get_state_on_a_channel_group(node: str, live_server: LiveServer) -> None:
    results = await run_js(
        node,
        live_server,
        {"a": users("alice")},
        [
            call("a", "channelGroups.addChannels", {"channelGroup": "team", "channels": ["dev", "ops"]}),
            call("a", "setState", {"channelGroups": ["team"], "state": {"mood": "busy"}}),
            call("a", "getState", {"channelGroups": ["team"]}),
            call("a", "getState", {"channels": ["lobby"], "channelGroups": ["team"]}),
            call("a", "getState", {"channels": ["dev"]}),
        ],
    )
    assert results[1] == {"state": {"mood": "busy"}}
    assert results[2] == {"channels": {"channels": {"dev": {"mood": "busy"}, "ops": {"mood": "busy"}}}}
    assert results[3] == {"channels": {"channels": {"lobby": {}, "dev": {"mood": "busy"}, "ops": {"mood": "busy"}}}}
    assert results[4] == {"channels": {"dev": {"mood": "busy"}}}


# -- channel groups -----------------------------------------------------------------------------


async def test_channel_group_lifecycle(node: str, live_server: LiveServer) -> None:
    results = await run_js(
        node,
        live_server,
        {"a": users("alice")},
        [
            call("a", "channelGroups.listGroups"),
            call("a", "channelGroups.addChannels", {"channelGroup": "team", "channels": ["dev", "ops", "qa"]}),
            call("a", "channelGroups.addChannels", {"channelGroup": "other", "channels": ["x"]}),
            call("a", "channelGroups.listChannels", {"channelGroup": "team"}),
            call("a", "channelGroups.listGroups"),
            call("a", "channelGroups.removeChannels", {"channelGroup": "team", "channels": ["ops", "qa"]}),
            call("a", "channelGroups.listChannels", {"channelGroup": "team"}),
            call("a", "channelGroups.deleteGroup", {"channelGroup": "team"}),
            call("a", "channelGroups.listGroups"),
            call("a", "channelGroups.listChannels", {"channelGroup": "team"}),
        ],
    )
    assert results[0] == {"groups": []}
    assert results[1] == {}
    assert sorted(results[3]["channels"]) == ["dev", "ops", "qa"]
    assert sorted(results[4]["groups"]) == ["other", "team"]
    assert results[5] == {}
    assert results[6] == {"channels": ["dev"]}
    assert results[7] == {}
    assert results[8] == {"groups": ["other"]}
    assert results[9] == {"channels": []}


# -- leave --------------------------------------------------------------------------------------
# 7.3.3 has no unsubscribe without a subscription, but iAmAway is the /leave call on its own.


async def test_leave_one_channel(node: str, live_server: LiveServer) -> None:
    results = await run_js(
        node,
        live_server,
        {"a": users("alice"), "b": users("bob")},
        [
            call("a", "iAmHere", {"channels": ["red"]}),
            call("a", "iAmHere", {"channels": ["blue"]}),
            call("b", "iAmHere", {"channels": ["red"]}),
            call("a", "iAmAway", {"channels": ["red"]}),
            call("a", "whereNow", {}),
            call("b", "hereNow", {"channels": ["red"]}),
        ],
    )
    assert results[3] == {}
    assert results[4] == {"channels": ["blue"]}
    assert occupants(results[5], "red") == ["bob"]


async def test_leave_several_channels_and_a_group(node: str, live_server: LiveServer) -> None:
    results = await run_js(
        node,
        live_server,
        {"a": users("alice")},
        [
            call("a", "channelGroups.addChannels", {"channelGroup": "team", "channels": ["dev"]}),
            call("a", "iAmHere", {"channels": ["red"]}),
            call("a", "iAmHere", {"channels": ["blue"]}),
            call("a", "iAmHere", {"channels": ["green"]}),
            call("a", "iAmHere", {"channels": ["dev"]}),
            call("a", "iAmAway", {"channels": ["red", "blue"]}),
            call("a", "whereNow", {}),
            call("a", "iAmAway", {"channelGroups": ["team"]}),
            call("a", "whereNow", {}),
        ],
    )
    assert sorted(results[6]["channels"]) == ["dev", "green"]
    assert results[8] == {"channels": ["green"]}


# -- errors -------------------------------------------------------------------------------------


async def test_refused_call_is_a_bad_request_error_not_a_crash(node: str, live_server: LiveServer) -> None:
    longest, too_long = "c" * 92, "c" * 93
    results = await run_js(
        node,
        live_server,
        {"a": users("alice")},
        [
            call("a", "hereNow", {"channels": [too_long]}, expect_error=True),
            call("a", "iAmHere", {"channels": [too_long]}, expect_error=True),
            call("a", "hereNow", {"channels": [longest]}),
        ],
    )
    for refused in results[:2]:
        status = refused["error"]["status"]
        assert status["statusCode"] == 400
        assert status["category"] == "PNBadRequestCategory"
        assert status["errorData"]["error"] is True
        assert "92" in status["errorData"]["message"]
    assert results[1]["error"]["status"]["operation"] == "PNHeartbeatOperation"
    assert results[2]["totalOccupancy"] == 0
