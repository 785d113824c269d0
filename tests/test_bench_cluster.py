"""The pure parts of bench/cluster.py and bench/commandstats.py: which master a keyset's name lands on,
the names the cluster run picks, and the arithmetic that turns INFO readings into costs per operation.
The benches themselves are run by hand (bench/README.md)."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from bench.cluster import SlotRange, keyset_slot, owner, pick_keysets
from bench.commandstats import Usage, per_core, present_users
from presence_server.store.keys import KeysetKeys

THIRDS: list[SlotRange] = [(0, 5460, 7001), (5461, 10922, 7002), (10923, 16383, 7003)]


def test_a_keyset_slot_is_the_crc16_of_its_hash_tag_whatever_the_prefix() -> None:
    # CRC16/XMODEM of "123456789" is 0x31C3, the check value Redis Cluster's specification gives.
    assert keyset_slot("123456789") == 0x31C3
    assert keyset_slot("123456789", prefix="other") == 0x31C3
    assert keyset_slot("room") == key_slot(b"{room}") != keyset_slot("room2")


def test_braces_in_a_subscribe_key_are_hashed_as_the_escaped_tag_the_server_writes() -> None:
    assert keyset_slot("a{b}") == key_slot(b"{a%7Bb%7D}")
    assert keyset_slot("a{b}") == key_slot(KeysetKeys("pn", "a{b}").occupants("ch").encode())


def test_owner_finds_the_range_and_refuses_a_slot_nobody_serves() -> None:
    assert [owner(slot, THIRDS) for slot in (0, 5460, 5461, 16383)] == [7001, 7001, 7002, 7003]
    with pytest.raises(LookupError):
        owner(100, [(200, 16383, 7001)])


@pytest.mark.parametrize("per_master", [1, 2, 5])
def test_every_master_gets_the_same_number_of_keysets(per_master: int) -> None:
    names = pick_keysets(THIRDS, per_master)
    owners = [owner(keyset_slot(name), THIRDS) for name in names]
    assert len(set(names)) == len(names) == 3 * per_master
    assert {port: owners.count(port) for port in owners} == dict.fromkeys((7001, 7002, 7003), per_master)


def test_the_first_names_are_taken_and_a_name_is_skipped_only_when_its_master_is_full() -> None:
    names = pick_keysets(THIRDS, 2)
    last = max(int(name.split("-")[1]) for name in names)
    taken: dict[int, int] = {}
    for n in range(last + 1):
        port = owner(keyset_slot(f"ks-{n}"), THIRDS)
        assert (f"ks-{n}" in names) == (taken.get(port, 0) < 2)
        taken[port] = taken.get(port, 0) + (f"ks-{n}" in names)
    assert names == sorted(names, key=lambda name: int(name.split("-")[1]))


def test_uneven_ranges_still_get_their_share() -> None:
    skewed: list[SlotRange] = [(0, 99, 1), (100, 16283, 2), (16284, 16383, 3)]
    owners = [owner(keyset_slot(name), skewed) for name in pick_keysets(skewed, 2)]
    assert sorted(owners) == [1, 1, 2, 2, 3, 3]


def test_usage_is_taken_net_of_idle_work_in_proportion_to_the_span() -> None:
    idle = Usage(2.0, 0.02, {"zrangebyscore": 2.0}, {"zrangebyscore": 4.0})
    phase = Usage(10.0, 1.0, {"evalsha": 1000.0, "zadd": 2000.0, "exec": 10.0}, {"evalsha": 30_000.0, "zadd": 4000.0})
    cost = phase.net_of(idle).per(1000)
    assert cost.cpu_us == pytest.approx(900.0)  # 1.0 s less five times 0.02 s of idle, over 1000 operations
    assert cost.calls == {"evalsha": 1.0, "zadd": 2.0, "exec": 0.01}  # the idle sweeps' -0.01 left out
    assert cost.usec == {"evalsha": 30.0, "zadd": 4.0, "exec": 0.0}
    assert cost.commands == pytest.approx(3.0)  # EXEC is not a command of its own


def test_a_difference_of_readings_keeps_commands_seen_in_either() -> None:
    before = Usage(1.0, 0.5, {"get": 3.0}, {"get": 1.0})
    after = Usage(4.0, 0.8, {"get": 5.0, "xrange": 2.0}, {"get": 2.0, "xrange": 6.0})
    spent = after - before
    assert (spent.seconds, spent.calls, spent.usec) == (3.0, {"get": 2.0, "xrange": 2.0}, {"get": 1.0, "xrange": 6.0})
    assert spent.cpu == pytest.approx(0.3)


def test_what_one_core_carries() -> None:
    assert per_core(40.0) == pytest.approx(25_000)
    assert present_users(40.0, 150) == pytest.approx(3_750_000)
    assert present_users(40.0, 10) == pytest.approx(250_000)
