"""The names of the data scripts write are defined once, in fields.py, and the scripts use them."""

from __future__ import annotations

import asyncio
import re
from importlib import resources

import pytest
import redis.exceptions

from presence_server.store import PresenceStore, fields
from presence_server.store.keys import keysets_due

# Written by Python only (the admin API, a reset), never by a script.
PYTHON_ONLY = {"WAKE_CLOCK", "WAKE_RESET", "WAKE_FAULTS"}


def test_the_lua_header_names_every_field_scripts_write() -> None:
    header = fields.lua_header()
    in_lua = set(re.findall(r"= '([^']*)'", header))
    written = {
        value
        for name, value in vars(fields).items()
        if re.fullmatch(r"(EVENT|COUNTER|WAKE)_[A-Z_]+", name) and name not in PYTHON_ONLY
    }
    assert written <= in_lua, written - in_lua


def test_no_script_spells_a_field_name_itself() -> None:
    lua = resources.files("presence_server.store") / "lua"
    for name in ("common", "heartbeat", "leave", "set_state", "sweep", "publish"):
        text = (lua / f"{name}.lua").read_text()
        # A field given as a one-letter literal in a fields list or a wake-up table.
        assert not re.search(r"\{'[a-z]',|table\.insert\(fields, '[a-z]'\)|\b[kn] = ", text), name


# -- occupants: compact members, timeout codes in the deadlines (issue 15) --------------------------

UUID4 = "0f8fad5b-d9cb-469f-a165-70867728950e"


@pytest.mark.parametrize(
    "uuid",
    [
        UUID4,
        "00000000-0000-4000-8000-000000000000",
        "ffffffff-ffff-ffff-ffff-ffffffffffff",
        "u1",
        "~",
        "~~x",
        "~D4+tW9nLRp+hZXCGdyiVDg",
        UUID4.upper(),
        UUID4 + "x",
        UUID4.replace("-", "_"),
        "канал🙂",
        UUID4[:-2] + " e",  # bytes.fromhex skips whitespace
        UUID4[:-2] + "\te",
        UUID4[:-1] + "-",
        UUID4[:14] + "-" + UUID4[15:],
        UUID4[:-1] + "\u0660",  # a digit, not an ASCII one (ARABIC-INDIC ZERO)
        UUID4[:-1] + "g",
    ],
)
def test_members_are_short_for_canonical_uuids_and_name_one_uuid_each(uuid: str) -> None:
    member = fields.member(uuid)
    assert fields.uuid_of(member) == uuid
    canonical = re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", uuid)
    assert len(member) == 23 if canonical else member in (uuid, "~" + uuid)


def test_members_of_different_uuids_differ() -> None:
    uuids = [UUID4, fields.member(UUID4), "~" + UUID4, "~", "~~"]
    assert len({fields.member(uuid) for uuid in uuids}) == len(uuids)


@pytest.mark.parametrize(
    ("length", "code"),
    [(300.0, 0), (60.0, 60), (60, 60), (1.0, 1), (2046.0, 2046), (2047.0, 2047), (3600.0, 2047), (2.5, 2047)],
)
def test_timeout_codes(length: float, code: int) -> None:
    now_ms = 1_800_000_000_000
    assert fields.timeout_code(length, 300.0, now_ms + int(length * 1000)) == code
    # Past 2^42 ms a double cannot hold a code exactly: every timeout but the default takes the key.
    assert fields.timeout_code(length, 300.0, fields.DEADLINE_CODED_BELOW) == (0 if code == 0 else 2047)


@pytest.mark.parametrize(
    "deadline",
    [
        1,
        1_800_000_000_123,
        fields.SHORT_SCORES_FROM - 1,
        fields.SHORT_SCORES_FROM,
        fields.SHORT_SCORES_FROM + 1,  # four decimals from here on
        2**41 - 1,
        2**41,  # a double's spacing doubles here
        2**41 + 1,
        fields.DEADLINE_CODED_BELOW - 1,
    ],
)
def test_a_deadline_text_is_exactly_the_score(deadline: int) -> None:
    for code in range(fields.TIMEOUT_IN_KEY):
        text = fields.deadline_text(deadline, code)
        assert float(text) == deadline - code / fields.DEADLINE_CODES, (deadline, code, text)
        assert fields.deadline_of(float(text)) == deadline
        if deadline > fields.SHORT_SCORES_FROM:
            assert len(text.replace(".", "")) <= 17, text


SUB = "fields"
T = 1_800_000_000.0


def at(ms: int) -> float:
    return (int(T * 1000) + ms) / 1000


async def present(store: PresenceStore, channel: str, now: float) -> list[str]:
    [entry] = await store.here_now(SUB, [channel], now=now)
    return sorted(entry.uuids)


async def test_a_canonical_uuid_is_itself_in_every_read_event_and_state(store: PresenceStore) -> None:
    other = "~" + UUID4  # the member-like uuid of someone else entirely
    assert await store.heartbeat(SUB, UUID4, ["a", "b"], now=T, timeout=10, states={"a": '{"s":1}'}) == 2
    assert await store.heartbeat(SUB, other, ["a"], now=T, timeout=20) == 1
    assert await present(store, "a", at(1)) == sorted([UUID4, other])
    assert await store.where_now(SUB, UUID4, now=at(1)) == ["a", "b"]
    assert await store.get_state(SUB, UUID4, ["a", "b"]) == {"a": {"s": 1}, "b": {}}
    assert await store.get_state(SUB, other, ["a"]) == {"a": {}}
    [entry] = await store.here_now(SUB, ["a"], now=at(1), with_state=True)
    assert dict(zip(entry.uuids, entry.states, strict=True)) == {UUID4: {"s": 1}, other: None}
    assert await store.set_state(SUB, UUID4, ["b"], [], '{"s":2}', now=at(2)) == 1
    assert await store.leave(SUB, UUID4, ["b"], now=at(3)) == 1
    snapshot = await store.snapshot(SUB, now=at(4))
    assert snapshot["channels"]["a"]["occupants"][UUID4] == {"deadline": at(10_000), "state": {"s": 1}}
    assert await store.sweep(now=at(10_000)) == 1  # the uuid the sweep decodes from its member
    log = await store.read_log(SUB, "a")
    assert [(e.action, e.uuid) for e in log] == [("join", UUID4), ("join", other), ("timeout", UUID4)]
    assert [(e.action, e.uuid) for e in await store.read_log(SUB, "b")] == [
        ("join", UUID4),
        ("state-change", UUID4),
        ("leave", UUID4),
    ]


@pytest.mark.parametrize("length", [60.0, 2.5, 3000.0])
async def test_the_timeout_sent_last_is_reused_whatever_it_is(store: PresenceStore, length: float) -> None:
    await store.heartbeat(SUB, UUID4, ["a"], now=T, timeout=length)
    for step in (1, 2):
        # A refresh without a timeout, then one on a channel more: both take the one sent.
        await store.heartbeat(SUB, UUID4, ["a", "b"][:step], now=at(step * 1000))
    for channel in ("a", "b"):
        assert await present(store, channel, at(2000 + int(length * 1000) - 1)) == [UUID4], channel
        assert await present(store, channel, at(2000 + int(length * 1000))) == [], channel
    # The default sent again is remembered too (it replaces the other).
    await store.heartbeat(SUB, UUID4, ["c"], now=at(2500), timeout=300)
    await store.heartbeat(SUB, UUID4, ["c"], now=at(3000))
    assert await present(store, "c", at(302_999)) == [UUID4]
    assert await present(store, "c", at(303_000)) == []


async def test_without_a_timeout_the_latest_refresh_on_the_channels_decides(store: PresenceStore) -> None:
    await store.heartbeat(SUB, "u1", ["a"], now=T, timeout=60)
    await store.heartbeat(SUB, "u1", ["b"], now=at(1000), timeout=30)  # the last one sent
    await store.heartbeat(SUB, "u1", ["a", "b", "c"], now=at(2000))
    for channel in ("a", "b", "c"):
        assert await present(store, channel, at(31_999)) == ["u1"], channel
        assert await present(store, channel, at(32_000)) == [], channel


async def test_a_deadline_past_2109_keeps_its_timeout_in_the_key(store: PresenceStore) -> None:
    far = fields.DEADLINE_CODED_BELOW / 1000  # the clock of a test double moved far on
    await store.heartbeat(SUB, "u1", ["a"], now=far - 10, timeout=60)  # a deadline past the bound
    await store.heartbeat(SUB, "u1", ["a"], now=far)
    await store.heartbeat(SUB, "u1", ["a"], now=far + 1)
    assert await present(store, "a", far + 60.999) == ["u1"]
    assert await present(store, "a", far + 61) == []


async def test_refreshes_sent_together_each_get_their_own_outcome(store: PresenceStore) -> None:
    for uuid in ("u1", "u2", "u3"):
        await store.heartbeat(SUB, uuid, ["a"], now=T, timeout=60)
    await store.heartbeat(SUB, "u4", ["b"], now=T, timeout=10)
    await store.redis.set(store.keys(SUB).occupants("broken"), "not a sorted set")
    outcomes = await asyncio.gather(
        store.heartbeat(SUB, "u1", ["a"], now=at(10_000)),  # a refresh
        store.heartbeat(SUB, "u2", ["a", "broken"], now=at(10_000)),  # an error of its own
        store.heartbeat(SUB, "u4", ["b"], now=at(10_000)),  # lapsed: a timeout, then a join
        store.heartbeat(SUB, "u5", ["a"], now=at(10_000)),  # a join
        store.heartbeat(SUB, "u3", ["a"], now=at(10_000), timeout=30),  # a new timeout
        return_exceptions=True,
    )
    assert [o if isinstance(o, int) else type(o) for o in outcomes] == [0, redis.exceptions.ResponseError, 1, 1, 0]
    assert await present(store, "a", at(39_999)) == ["u1", "u2", "u3", "u5"]
    assert await present(store, "a", at(40_000)) == ["u1", "u2", "u5"]  # u3 took its new timeout
    assert await present(store, "a", at(60_000)) == ["u1", "u5"]  # u2's heartbeat failed whole
    assert [(e.action, e.uuid) for e in await store.read_log(SUB, "b")] == [
        ("join", "u4"),
        ("timeout", "u4"),
        ("join", "u4"),
    ]


async def test_a_heartbeat_of_several_channels_sent_with_others_moves_on_all_of_them_or_none(
    store: PresenceStore,
) -> None:
    await store.heartbeat(SUB, "u1", ["a", "b", "c"], now=T, timeout=60)
    await store.heartbeat(SUB, "u2", ["b"], now=T, timeout=60)
    await store.heartbeat(SUB, "u3", ["b"], now=T, timeout=10)
    await store.heartbeat(SUB, "u3", ["c"], now=T, timeout=60)
    outcomes = await asyncio.gather(
        store.heartbeat(SUB, "u1", ["c", "a", "b"], now=at(20_000)),  # a refresh on three channels
        store.heartbeat(SUB, "u2", ["b"], now=at(20_000), timeout=60),
        store.heartbeat(SUB, "u3", ["c", "b"], now=at(20_000), timeout=60),  # lapsed on b: a join there
        store.heartbeat(SUB, "u2", ["b"], now=at(20_001), timeout=60),  # the same uuid twice in a call
    )
    assert list(outcomes) == [0, 0, 1, 0]
    assert await present(store, "a", at(79_999)) == ["u1"]
    assert await present(store, "b", at(79_999)) == ["u1", "u2", "u3"]
    assert await present(store, "c", at(79_999)) == ["u1", "u3"]  # u3 moved on c with its join on b
    assert await present(store, "b", at(80_000)) == ["u2"]  # u2's later heartbeat counts
    assert await present(store, "b", at(80_001)) == []
    assert await present(store, "c", at(80_000)) == []
    assert [(e.action, e.uuid) for e in await store.read_log(SUB, "b")][-2:] == [("timeout", "u3"), ("join", "u3")]


async def test_refreshes_that_send_their_timeout_together_each_get_their_own_outcome(store: PresenceStore) -> None:
    """renew.lua writes without reading first: what it finds absent or lapsed still goes to heartbeat.lua."""
    for uuid in ("u1", "u2", "u3", "u6"):
        await store.heartbeat(SUB, uuid, ["a"], now=T, timeout=60)
    await store.heartbeat(SUB, "u4", ["b"], now=T, timeout=10)
    await store.heartbeat(SUB, "u7", ["b"], now=T, timeout=60)
    await store.heartbeat(SUB, "u8", ["c"], now=T, timeout=60)
    await store.redis.set(store.keys(SUB).occupants("broken"), "not a sorted set")
    calls = store._batch.calls
    outcomes = await asyncio.gather(
        store.heartbeat(SUB, "u1", ["a"], now=at(10_000), timeout=60),  # a refresh
        store.heartbeat(SUB, "u2", ["a", "broken"], now=at(10_000), timeout=60),  # an error of its own
        store.heartbeat(SUB, "u4", ["b"], now=at(10_000), timeout=10),  # lapsed: a timeout, then a join
        store.heartbeat(SUB, "u7", ["b"], now=at(10_000), timeout=60),  # on a channel with a lapsed uuid
        store.heartbeat(SUB, "u5", ["a"], now=at(10_000), timeout=60),  # a join
        store.heartbeat(SUB, "u3", ["a"], now=at(10_000), timeout=30),  # a new timeout
        store.heartbeat(SUB, "u6", ["a"], now=at(10_000), timeout=60),  # twice, the same deadline:
        store.heartbeat(SUB, "u6", ["a"], now=at(10_000), timeout=60),  # one score left unchanged
        store.heartbeat(SUB, "u8", ["c", "d"], now=at(10_000), timeout=60),  # a join on its second channel
        return_exceptions=True,
    )
    assert [o if isinstance(o, int) else type(o) for o in outcomes] == [
        0,
        redis.exceptions.ResponseError,
        1,
        0,
        1,
        0,
        0,
        0,
        1,
    ]
    assert store._batch.calls - calls == 5  # one renew.lua for the nine, then heartbeat.lua for the four it left
    assert await present(store, "a", at(39_999)) == ["u1", "u2", "u3", "u5", "u6"]
    assert await present(store, "a", at(40_000)) == ["u1", "u2", "u5", "u6"]  # u3 took its new timeout
    assert await present(store, "a", at(60_000)) == ["u1", "u5", "u6"]  # u2's heartbeat failed whole
    assert await present(store, "a", at(70_000)) == []
    assert await present(store, "b", at(69_999)) == ["u7"]  # u4 joined again, for 10 s
    assert await present(store, "b", at(19_999)) == ["u4", "u7"]
    assert [(e.action, e.uuid) for e in await store.read_log(SUB, "b")][-2:] == [("timeout", "u4"), ("join", "u4")]
    for channel in ("c", "d"):
        assert await present(store, channel, at(69_999)) == ["u8"], channel
        assert await present(store, channel, at(70_000)) == [], channel
    assert [(e.action, e.uuid) for e in await store.read_log(SUB, "d")] == [("join", "u8")]
    assert [(e.action, e.uuid) for e in await store.read_log(SUB, "c")] == [("join", "u8")]


async def test_a_timeout_sent_replaces_one_the_key_held_and_the_default_follows_a_timeout(
    store: PresenceStore,
) -> None:
    await store.heartbeat(SUB, "u1", ["a"], now=T, timeout=3000)  # no code tells it: in the uuid's key
    await store.heartbeat(SUB, "u1", ["a"], now=at(1000), timeout=60)  # a refresh (renew.lua)
    await store.heartbeat(SUB, "u1", ["a"], now=at(2000))  # no timeout: the one sent last
    assert await present(store, "a", at(61_999)) == ["u1"]
    assert await present(store, "a", at(62_000)) == []
    # Gone everywhere (the key may still be there): a heartbeat without a timeout gets the default.
    assert await store.sweep(now=at(62_000)) == 1
    assert await store.heartbeat(SUB, "u1", ["a"], now=at(70_000)) == 1
    assert await present(store, "a", at(369_999)) == ["u1"]
    assert await present(store, "a", at(370_000)) == []


async def test_refreshes_asked_for_while_the_keysets_call_is_out_wait_and_go_together(store: PresenceStore) -> None:
    for n in range(5):
        await store.heartbeat(SUB, f"u{n}", ["a"], now=T, timeout=60)
    calls = store._batch.calls
    first = asyncio.ensure_future(store.heartbeat(SUB, "u0", ["a"], now=at(1000)))
    await asyncio.sleep(0)  # the first call goes out
    later = []
    for n in range(1, 5):  # each in a loop iteration of its own, while the first is out
        later.append(asyncio.ensure_future(store.heartbeat(SUB, f"u{n}", ["a"], now=at(1000 + n))))
        await asyncio.sleep(0)
    assert await asyncio.gather(first, *later) == [0] * 5
    # Each of the four alone would be a call of its own (five in all). On a real Redis the first reply
    # may come back before the last are asked for, which then go in a third call.
    assert store._batch.calls - calls in (2, 3)
    assert await present(store, "a", at(61_000)) == ["u1", "u2", "u3", "u4"]


async def test_a_refresh_puts_back_a_due_entry_that_went_missing(store: PresenceStore) -> None:
    await store.heartbeat(SUB, "u1", ["a", "b"], now=T, timeout=60)
    ks = store.keys(SUB)
    await store.redis.zrem(ks.due, "b")
    await store.redis.zrem(keysets_due(store.prefix), SUB)
    assert await store.heartbeat(SUB, "u1", ["a", "b"], now=at(1000)) == 0  # a refresh
    assert await store.redis.zscore(ks.due, "a") == int(T * 1000) + 60_000  # not raised
    assert await store.redis.zscore(ks.due, "b") == int(T * 1000) + 61_000
    assert await store.redis.zscore(keysets_due(store.prefix), SUB) == int(T * 1000) + 60_000
    assert await store.sweep(now=at(61_000)) == 2
