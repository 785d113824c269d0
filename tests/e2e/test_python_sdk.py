"""The presence REST surface driven by the real Python SDK, ``pubnub==7.2.0`` (asyncio), against a
live server on loopback, on both engines. No subscribe or publish here: heartbeat, leave, here now,
where now, state, channel groups and time. Time moves only through ``live_server.advance``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pubnub.enums import PNStatusCategory

from presence_server.context import STORE
from tests.e2e.live import LiveServer
from tests.e2e.pysdk import SUB_KEY, Clients, leave, ok, refused

pytestmark = pytest.mark.e2e


@pytest.fixture
async def sdk(live_server: LiveServer) -> AsyncIterator[Clients]:
    clients = Clients(live_server.origin)
    try:
        yield clients
    finally:
        await clients.stop_all()


async def here(client: Any, channel: str) -> dict[str, Any]:
    """One channel's occupants as the SDK reports them: uuid -> state (None without state)."""
    envelope = await ok(client.here_now().channels([channel]).include_state(True))
    [entry] = envelope.result.channels
    assert entry.channel_name == channel
    assert entry.occupancy == len(entry.occupants)
    return {occupant.uuid: occupant.state for occupant in entry.occupants}


async def where(client: Any, uuid: str) -> list[str]:
    envelope = await ok(client.where_now().uuid(uuid))
    return sorted(envelope.result.channels)


# -- heartbeat and leave ------------------------------------------------------------------------


async def test_heartbeat_joins_and_leave_removes(sdk: Clients) -> None:
    alice = sdk("alice", presence_timeout=60)
    envelope = await ok(alice.heartbeat().channels(["lobby"]))
    assert envelope.result is True
    assert envelope.status.original_response == {"status": 200, "message": "OK", "service": "Presence"}
    assert await here(alice, "lobby") == {"alice": None}
    assert await where(alice, "alice") == ["lobby"]

    envelope = await ok(leave(alice).channels(["lobby"]))
    assert envelope.result["action"] == "leave"
    assert envelope.result["status"] == 200
    assert await here(alice, "lobby") == {}
    assert await where(alice, "alice") == []


async def test_heartbeat_on_several_channels_and_leave_from_one(sdk: Clients) -> None:
    alice = sdk("alice", presence_timeout=60)
    await ok(alice.heartbeat().channels(["a", "b", "c"]))
    assert await where(alice, "alice") == ["a", "b", "c"]
    await ok(leave(alice).channels(["b"]))
    assert await where(alice, "alice") == ["a", "c"]
    assert await here(alice, "b") == {}
    assert await here(alice, "a") == {"alice": None}


async def test_heartbeat_carries_per_channel_state(sdk: Clients) -> None:
    # The shape 7.2.0's own heartbeat loop sends: the state keyed by channel.
    alice = sdk("alice", presence_timeout=60)
    await ok(alice.heartbeat().channels(["a", "b"]).state({"a": {"mood": "calm"}}))
    envelope = await ok(alice.get_state().channels(["a", "b"]))
    assert envelope.result.channels == {"a": {"mood": "calm"}, "b": {}}


async def test_names_the_sdk_percent_encodes(sdk: Clients) -> None:
    # 7.2.0 encodes each channel on its own and joins them with a literal comma (docs/protocol.md 1.2).
    odd = ["room a,b", "x/y", "caf\u00e9", "pct%2C"]
    alice = sdk("alice", presence_timeout=60)
    await ok(alice.heartbeat().channels(odd))
    assert await where(alice, "alice") == sorted(odd)
    envelope = await ok(alice.here_now().channels(odd))
    assert sorted(entry.channel_name for entry in envelope.result.channels) == sorted(odd)
    assert envelope.result.total_occupancy == 4
    for name in odd:
        assert await here(alice, name) == {"alice": None}


async def test_heartbeat_leave_and_state_change_are_logged_in_order(live_server: LiveServer, sdk: Clients) -> None:
    alice = sdk("alice", presence_timeout=60)
    await ok(alice.heartbeat().channels(["lobby"]))
    await ok(alice.set_state().channels(["lobby"]).state({"mood": "busy"}))
    await ok(leave(alice).channels(["lobby"]))

    log = await live_server.app[STORE].read_log(SUB_KEY, "lobby")
    assert [entry.action for entry in log] == ["join", "state-change", "leave"]
    assert [entry.uuid for entry in log] == ["alice"] * 3
    assert [entry.occupancy for entry in log] == [1, 1, 0]
    assert log[1].data == {"mood": "busy"}
    timetokens = [int(entry.timetoken) for entry in log]
    assert timetokens == sorted(set(timetokens))
    assert all(len(entry.timetoken) == 17 for entry in log)
    assert {entry.timestamp for entry in log} == {int(live_server.clock())}


async def test_repeated_heartbeat_joins_once(live_server: LiveServer, sdk: Clients) -> None:
    alice = sdk("alice", presence_timeout=60)
    for _ in range(3):
        await ok(alice.heartbeat().channels(["lobby"]))
    log = await live_server.app[STORE].read_log(SUB_KEY, "lobby")
    assert [entry.action for entry in log] == ["join"]


# -- here now -----------------------------------------------------------------------------------


async def test_here_now_one_channel_answers_the_single_shape(sdk: Clients) -> None:
    alice, bob = sdk("alice", presence_timeout=60), sdk("bob", presence_timeout=60)
    await ok(alice.heartbeat().channels(["lobby"]))
    await ok(bob.heartbeat().channels(["lobby"]))

    envelope = await ok(alice.here_now().channels(["lobby"]))
    body = envelope.status.original_response
    assert "payload" not in body
    assert body["occupancy"] == 2
    assert sorted(body["uuids"]) == ["alice", "bob"]
    result = envelope.result
    assert (result.total_channels, result.total_occupancy) == (1, 2)
    [entry] = result.channels
    assert (entry.channel_name, entry.occupancy) == ("lobby", 2)
    assert sorted(occupant.uuid for occupant in entry.occupants) == ["alice", "bob"]
    assert all(occupant.state is None for occupant in entry.occupants)


async def test_here_now_empty_channel(sdk: Clients) -> None:
    alice = sdk("alice")
    envelope = await ok(alice.here_now().channels(["nobody-here"]))
    assert envelope.status.original_response["occupancy"] == 0
    [entry] = envelope.result.channels
    assert (entry.channel_name, entry.occupancy, entry.occupants) == ("nobody-here", 0, [])
    assert envelope.result.total_occupancy == 0


async def test_here_now_several_channels(sdk: Clients) -> None:
    alice, bob = sdk("alice", presence_timeout=60), sdk("bob", presence_timeout=60)
    await ok(alice.heartbeat().channels(["a", "b"]))
    await ok(bob.heartbeat().channels(["b"]))

    envelope = await ok(alice.here_now().channels(["a", "b"]))
    assert "channels" in envelope.status.original_response["payload"]
    result = envelope.result
    assert (result.total_channels, result.total_occupancy) == (2, 3)
    found = {entry.channel_name: entry for entry in result.channels}
    assert set(found) == {"a", "b"}
    assert found["a"].occupancy == 1
    assert [occupant.uuid for occupant in found["a"].occupants] == ["alice"]
    assert found["b"].occupancy == 2
    assert sorted(occupant.uuid for occupant in found["b"].occupants) == ["alice", "bob"]


async def test_here_now_channel_groups(sdk: Clients) -> None:
    alice, bob = sdk("alice", presence_timeout=60), sdk("bob", presence_timeout=60)
    await ok(alice.add_channel_to_channel_group().channel_group("cg1").channels(["a", "b"]))
    await ok(alice.add_channel_to_channel_group().channel_group("cg2").channels(["c"]))
    await ok(alice.heartbeat().channels(["a"]))
    await ok(bob.heartbeat().channels(["b", "c", "elsewhere"]))

    # Groups only: the SDK sends the "," placeholder path; the answer must be the payload shape.
    envelope = await ok(alice.here_now().channel_groups(["cg1"]))
    assert "channels" in envelope.status.original_response["payload"]
    result = envelope.result
    assert (result.total_channels, result.total_occupancy) == (2, 2)
    assert {entry.channel_name: [o.uuid for o in entry.occupants] for entry in result.channels} == {
        "a": ["alice"],
        "b": ["bob"],
    }

    envelope = await ok(alice.here_now().channel_groups(["cg1", "cg2"]))
    assert {entry.channel_name for entry in envelope.result.channels} == {"a", "b", "c"}
    assert envelope.result.total_occupancy == 3

    # One channel plus a group: still the payload shape, channel and members together.
    envelope = await ok(alice.here_now().channels(["elsewhere"]).channel_groups(["cg2"]))
    assert "payload" in envelope.status.original_response
    assert {entry.channel_name: entry.occupancy for entry in envelope.result.channels} == {
        "elsewhere": 1,
        "c": 1,
    }


async def test_here_now_global(sdk: Clients) -> None:
    alice, bob = sdk("alice", presence_timeout=60), sdk("bob", presence_timeout=60)
    await ok(alice.heartbeat().channels(["a", "b"]))
    await ok(bob.heartbeat().channels(["b", "c"]))
    await ok(leave(bob).channels(["c"]))

    envelope = await ok(alice.here_now())
    result = envelope.result
    assert (result.total_channels, result.total_occupancy) == (2, 3)
    assert {entry.channel_name: sorted(o.uuid for o in entry.occupants) for entry in result.channels} == {
        "a": ["alice"],
        "b": ["alice", "bob"],
    }


async def test_here_now_global_with_nobody_present(sdk: Clients) -> None:
    envelope = await ok(sdk("alice").here_now())
    assert (envelope.result.total_channels, envelope.result.total_occupancy) == (0, 0)
    assert envelope.status.original_response["payload"]["channels"] == {}


async def test_here_now_without_uuids(sdk: Clients) -> None:
    alice, bob = sdk("alice", presence_timeout=60), sdk("bob", presence_timeout=60)
    await ok(alice.heartbeat().channels(["a", "b"]))
    await ok(bob.heartbeat().channels(["a"]))

    envelope = await ok(alice.here_now().channels(["a"]).include_uuids(False))
    assert envelope.status.original_response["occupancy"] == 2
    assert "uuids" not in envelope.status.original_response
    assert envelope.result.total_occupancy == 2
    [entry] = envelope.result.channels
    assert (entry.occupancy, entry.occupants) == (2, [])

    envelope = await ok(alice.here_now().channels(["a", "b"]).include_uuids(False))
    for item in envelope.status.original_response["payload"]["channels"].values():
        assert "uuids" not in item
    assert {entry.channel_name: (entry.occupancy, entry.occupants) for entry in envelope.result.channels} == {
        "a": (2, None),
        "b": (1, None),
    }

    envelope = await ok(alice.here_now().include_uuids(False))
    assert (envelope.result.total_channels, envelope.result.total_occupancy) == (2, 3)
    assert all(entry.occupants is None for entry in envelope.result.channels)


async def test_here_now_with_state(sdk: Clients) -> None:
    alice, bob = sdk("alice", presence_timeout=60), sdk("bob", presence_timeout=60)
    await ok(alice.heartbeat().channels(["a", "b"]))
    await ok(bob.heartbeat().channels(["a"]))
    await ok(alice.set_state().channels(["a", "b"]).state({"mood": "happy", "level": 3}))

    envelope = await ok(alice.here_now().channels(["a"]).include_state(True))
    assert sorted(envelope.status.original_response["uuids"], key=lambda item: item["uuid"]) == [
        {"uuid": "alice", "state": {"mood": "happy", "level": 3}},
        {"uuid": "bob"},
    ]
    assert await here(alice, "a") == {"alice": {"mood": "happy", "level": 3}, "bob": None}

    envelope = await ok(alice.here_now().channels(["a", "b"]).include_state(True))
    assert {entry.channel_name: {o.uuid: o.state for o in entry.occupants} for entry in envelope.result.channels} == {
        "a": {"alice": {"mood": "happy", "level": 3}, "bob": None},
        "b": {"alice": {"mood": "happy", "level": 3}},
    }

    # Without include_state the occupants are plain names, state or not.
    envelope = await ok(alice.here_now().channels(["a"]))
    assert sorted(envelope.status.original_response["uuids"]) == ["alice", "bob"]


async def test_occupancy_counts_unique_uuids(sdk: Clients) -> None:
    # Two clients (say two devices) with one user id are one occupant.
    phone, laptop = sdk("alice", presence_timeout=60), sdk("alice", presence_timeout=60)
    bob = sdk("bob", presence_timeout=60)
    await ok(phone.heartbeat().channels(["lobby"]))
    await ok(laptop.heartbeat().channels(["lobby"]))
    envelope = await ok(bob.here_now().channels(["lobby"]))
    assert envelope.result.total_occupancy == 1
    assert await here(bob, "lobby") == {"alice": None}

    await ok(bob.heartbeat().channels(["lobby"]))
    envelope = await ok(bob.here_now().channels(["lobby"]))
    assert envelope.result.total_occupancy == 2
    envelope = await ok(bob.here_now().channels(["lobby", "other"]))
    assert envelope.result.total_occupancy == 2

    # One leave from either device removes the user: presence is per user id, not per client.
    await ok(leave(laptop).channels(["lobby"]))
    assert await here(bob, "lobby") == {"bob": None}


# -- where now ----------------------------------------------------------------------------------


async def test_where_now_for_itself(sdk: Clients) -> None:
    alice = sdk("alice", presence_timeout=60)
    envelope = await ok(alice.where_now())
    assert envelope.result.channels == []
    await ok(alice.heartbeat().channels(["b", "a"]))
    envelope = await ok(alice.where_now())
    assert sorted(envelope.result.channels) == ["a", "b"]
    assert envelope.status.original_response["payload"]["channels"] == envelope.result.channels


async def test_where_now_for_another_uuid(sdk: Clients) -> None:
    alice, bob = sdk("alice", presence_timeout=60), sdk("bob", presence_timeout=60)
    await ok(alice.heartbeat().channels(["a"]))
    await ok(bob.heartbeat().channels(["b", "c"]))
    assert await where(alice, "bob") == ["b", "c"]
    assert await where(bob, "alice") == ["a"]
    assert await where(alice, "carol") == []


# -- state --------------------------------------------------------------------------------------


async def test_set_and_get_state_on_one_channel(sdk: Clients) -> None:
    alice, bob = sdk("alice", presence_timeout=60), sdk("bob", presence_timeout=60)
    await ok(alice.heartbeat().channels(["lobby"]))
    state = {"mood": "happy", "count": 5, "tags": ["x", "y"], "nested": {"deep": True}, "none": None}

    envelope = await ok(alice.set_state().channels(["lobby"]).state(state))
    assert envelope.result.state == state

    envelope = await ok(alice.get_state().channels(["lobby"]))
    assert envelope.result.channels == {"lobby": state}
    body = envelope.status.original_response
    assert (body["channel"], body["uuid"], body["payload"]) == ("lobby", "alice", state)

    # Anyone may read another user's state.
    envelope = await ok(bob.get_state().channels(["lobby"]).uuid("alice"))
    assert envelope.result.channels == {"lobby": state}
    envelope = await ok(alice.get_state().channels(["lobby"]).uuid("bob"))
    assert envelope.result.channels == {"lobby": {}}


async def test_set_and_get_state_on_several_channels(sdk: Clients) -> None:
    alice = sdk("alice", presence_timeout=60)
    await ok(alice.heartbeat().channels(["a", "b", "c"]))

    envelope = await ok(alice.set_state().channels(["a", "b"]).state({"mood": "calm"}))
    # The echo is the flat state, not one entry per channel (docs/protocol.md 2.7).
    assert envelope.result.state == {"mood": "calm"}

    envelope = await ok(alice.get_state().channels(["a", "b", "c"]))
    assert envelope.result.channels == {"a": {"mood": "calm"}, "b": {"mood": "calm"}, "c": {}}
    body = envelope.status.original_response
    assert body["uuid"] == "alice"
    assert body["payload"] == {"channels": envelope.result.channels}


async def test_state_replaces_the_previous_object(live_server: LiveServer, sdk: Clients) -> None:
    alice = sdk("alice", presence_timeout=60)
    await ok(alice.heartbeat().channels(["lobby"]))
    await ok(alice.set_state().channels(["lobby"]).state({"a": 1, "b": 2}))
    await ok(alice.set_state().channels(["lobby"]).state({"c": 3}))
    envelope = await ok(alice.get_state().channels(["lobby"]))
    assert envelope.result.channels == {"lobby": {"c": 3}}
    assert await here(alice, "lobby") == {"alice": {"c": 3}}

    # Setting the same state again changes nothing and is not announced again.
    await ok(alice.set_state().channels(["lobby"]).state({"c": 3}))
    log = await live_server.app[STORE].read_log(SUB_KEY, "lobby")
    assert [(entry.action, entry.data) for entry in log] == [
        ("join", None),
        ("state-change", {"a": 1, "b": 2}),
        ("state-change", {"c": 3}),
    ]

    # An empty object clears it.
    await ok(alice.set_state().channels(["lobby"]).state({}))
    envelope = await ok(alice.get_state().channels(["lobby"]))
    assert envelope.result.channels == {"lobby": {}}
    assert await here(alice, "lobby") == {"alice": None}


async def test_state_is_gone_after_leave(sdk: Clients) -> None:
    alice, bob = sdk("alice", presence_timeout=60), sdk("bob", presence_timeout=60)
    await ok(alice.heartbeat().channels(["a", "b"]))
    await ok(bob.heartbeat().channels(["a"]))  # so that channel "a" itself stays occupied
    await ok(alice.set_state().channels(["a", "b"]).state({"mood": "gone soon"}))
    await ok(bob.set_state().channels(["a"]).state({"mood": "staying"}))
    await ok(leave(alice).channels(["a"]))

    envelope = await ok(alice.get_state().channels(["a", "b"]))
    assert envelope.result.channels == {"a": {}, "b": {"mood": "gone soon"}}
    assert await here(bob, "a") == {"bob": {"mood": "staying"}}

    # Coming back does not bring the old state back.
    await ok(alice.heartbeat().channels(["a"]))
    assert await here(alice, "a") == {"alice": None, "bob": {"mood": "staying"}}


async def test_state_with_channel_groups(sdk: Clients) -> None:
    alice = sdk("alice", presence_timeout=60)
    await ok(alice.add_channel_to_channel_group().channel_group("cg").channels(["m1", "m2"]))
    await ok(alice.heartbeat().channels(["solo"]).channel_groups(["cg"]))
    assert await where(alice, "alice") == ["m1", "m2", "solo"]

    # 7.2.0 refuses group-only set_state client-side, so name a channel as well: the state applies
    # to it and to every member channel of the group.
    await ok(alice.set_state().channels(["solo"]).channel_groups(["cg"]).state({"via": "group"}))

    envelope = await ok(alice.get_state().channel_groups(["cg"]))
    assert envelope.result.channels == {"m1": {"via": "group"}, "m2": {"via": "group"}}
    envelope = await ok(alice.get_state().channels(["solo"]).channel_groups(["cg"]))
    assert envelope.result.channels == {"solo": {"via": "group"}, "m1": {"via": "group"}, "m2": {"via": "group"}}

    # Leaving through the group leaves every member channel and drops the state there.
    await ok(leave(alice).channel_groups(["cg"]))
    assert await where(alice, "alice") == ["solo"]
    envelope = await ok(alice.get_state().channels(["solo"]).channel_groups(["cg"]))
    assert envelope.result.channels == {"solo": {"via": "group"}, "m1": {}, "m2": {}}


# -- channel groups -----------------------------------------------------------------------------


async def test_channel_group_lifecycle(sdk: Clients) -> None:
    alice = sdk("alice")

    async def listed(group: str) -> list[str]:
        envelope = await ok(alice.list_channels_in_channel_group().channel_group(group))
        return sorted(envelope.result.channels)

    assert await listed("cg") == []
    await ok(alice.add_channel_to_channel_group().channel_group("cg").channels(["a", "b"]))
    await ok(alice.add_channel_to_channel_group().channel_group("cg").channels(["b", "c"]))
    assert await listed("cg") == ["a", "b", "c"]
    envelope = await ok(alice.list_channels_in_channel_group().channel_group("cg"))
    assert envelope.status.original_response["payload"]["group"] == "cg"
    assert envelope.status.original_response["service"] == "channel-registry"

    await ok(alice.remove_channel_from_channel_group().channel_group("cg").channels(["a", "c"]))
    assert await listed("cg") == ["b"]

    await ok(alice.add_channel_to_channel_group().channel_group("other").channels(["z"]))
    await ok(alice.remove_channel_group().channel_group("cg"))
    assert await listed("cg") == []
    assert await listed("other") == ["z"]


async def test_heartbeat_through_a_group_tracks_its_members(sdk: Clients) -> None:
    alice, bob = sdk("alice", presence_timeout=60), sdk("bob", presence_timeout=60)
    await ok(alice.add_channel_to_channel_group().channel_group("cg").channels(["m1", "m2"]))
    await ok(bob.heartbeat().channel_groups(["cg"]))
    assert await here(alice, "m1") == {"bob": None}
    assert await here(alice, "m2") == {"bob": None}
    assert await where(alice, "bob") == ["m1", "m2"]


# -- time ---------------------------------------------------------------------------------------


async def test_time(live_server: LiveServer, sdk: Clients) -> None:
    alice = sdk("alice")
    envelope = await ok(alice.time())
    first = int(envelope.result)
    assert isinstance(envelope.status.original_response[0], int)
    assert len(str(first)) == 17
    assert first == int(live_server.clock() * 10_000_000)

    await live_server.advance(2.5)
    envelope = await ok(alice.time())
    assert int(envelope.result) - first == 25_000_000


# -- timeout ------------------------------------------------------------------------------------


async def test_presence_timeout_from_the_sdk(live_server: LiveServer, sdk: Clients) -> None:
    timeout = 10
    alice = sdk("alice", presence_timeout=timeout)
    observer = sdk("observer")
    await ok(alice.heartbeat().channels(["lobby"]))

    assert await live_server.advance(timeout - 1) == 0
    assert await here(observer, "lobby") == {"alice": None}
    assert await where(observer, "alice") == ["lobby"]

    assert await live_server.advance(2) == 1  # now at timeout + 1
    assert await here(observer, "lobby") == {}
    assert await where(observer, "alice") == []
    log = await live_server.app[STORE].read_log(SUB_KEY, "lobby")
    assert [(entry.action, entry.uuid, entry.occupancy) for entry in log] == [
        ("join", "alice", 1),
        ("timeout", "alice", 0),
    ]
    assert await live_server.advance(timeout) == 0


async def test_expired_user_is_hidden_before_the_sweep(live_server: LiveServer, sdk: Clients) -> None:
    timeout = 10
    alice = sdk("alice", presence_timeout=timeout)
    await ok(alice.heartbeat().channels(["lobby"]))

    # Past the deadline, no sweep yet: reads already leave alice out but never remove her; only
    # the sweep does, with the one timeout event.
    live_server.clock.advance(timeout + 1)
    assert await here(alice, "lobby") == {}
    assert await where(alice, "alice") == []
    envelope = await ok(alice.here_now())
    assert envelope.result.total_occupancy == 0
    log = await live_server.app[STORE].read_log(SUB_KEY, "lobby")
    assert [entry.action for entry in log] == ["join"]

    assert await live_server.advance(0) == 1
    log = await live_server.app[STORE].read_log(SUB_KEY, "lobby")
    assert [entry.action for entry in log] == ["join", "timeout"]


async def test_heartbeat_postpones_the_timeout(live_server: LiveServer, sdk: Clients) -> None:
    timeout = 10
    alice = sdk("alice", presence_timeout=timeout)
    await ok(alice.heartbeat().channels(["lobby"]))
    await ok(alice.set_state().channels(["lobby"]).state({"k": "v"}))
    for _ in range(3):
        assert await live_server.advance(timeout - 1) == 0
        await ok(alice.heartbeat().channels(["lobby"]))
    assert await here(alice, "lobby") == {"alice": {"k": "v"}}

    assert await live_server.advance(timeout + 1) == 1
    assert await here(alice, "lobby") == {}
    envelope = await ok(alice.get_state().channels(["lobby"]))
    assert envelope.result.channels == {"lobby": {}}


async def test_default_presence_timeout_is_300(live_server: LiveServer, sdk: Clients) -> None:
    alice = sdk("alice")  # 7.2.0 sends heartbeat=300 unless told otherwise
    await ok(alice.heartbeat().channels(["lobby"]))
    assert await live_server.advance(299) == 0
    assert await here(alice, "lobby") == {"alice": None}
    assert await live_server.advance(2) == 1
    assert await here(alice, "lobby") == {}


# -- errors -------------------------------------------------------------------------------------


async def test_set_state_on_a_too_long_channel_name_is_a_400(sdk: Clients) -> None:
    alice = sdk("alice", presence_timeout=60)
    fits, too_long = "c" * 92, "c" * 93
    await ok(alice.heartbeat().channels([fits]))
    await ok(alice.set_state().channels([fits]).state({"ok": True}))

    status = await refused(alice.set_state().channels([too_long]).state({"ok": False}))
    assert status.status_code == 400
    assert status.category == PNStatusCategory.PNBadRequestCategory
    body = status.original_response
    assert (body["status"], body["error"], body["service"]) == (400, True, "Presence")
    assert "channel" in body["message"]
    assert status.error_data.exception._status_code == 400

    # The refusal changed nothing, and the client keeps working.
    envelope = await ok(alice.get_state().channels([fits]))
    assert envelope.result.channels == {fits: {"ok": True}}


async def test_too_long_user_id_is_refused_everywhere(sdk: Clients) -> None:
    long_id = sdk("u" * 93, presence_timeout=60)
    observer = sdk("observer")
    for call in (
        long_id.heartbeat().channels(["lobby"]),
        long_id.set_state().channels(["lobby"]).state({"a": 1}),
        leave(long_id).channels(["lobby"]),
        observer.where_now().uuid("u" * 93),
    ):
        status = await refused(call)
        assert (status.status_code, status.category) == (400, PNStatusCategory.PNBadRequestCategory)
        assert status.original_response["error"] is True
    assert await here(observer, "lobby") == {}


async def test_too_long_group_name_is_refused_by_the_registry(sdk: Clients) -> None:
    alice = sdk("alice")
    status = await refused(alice.add_channel_to_channel_group().channel_group("g" * 93).channels(["a"]))
    assert (status.status_code, status.category) == (400, PNStatusCategory.PNBadRequestCategory)
    assert status.original_response["service"] == "channel-registry"
