"""One publish to a channel with many held polls costs at most one log read, not one per poll.

A publish's wake-up carries its entry: the polls whose cursor is at or after the keyset's timetoken
before it, and that subscribe to its channel directly, are answered with it and read nothing. For
the others, LongPolls.read shares a read under way among identical reads numbered above the caller's
``fresh_after`` marker; LongPolls.notify takes that marker when a wake-up comes and reads once for
every waiting poll with the same subscription and cursor, then wakes them with the result.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest

from presence_server.context import LONGPOLLS
from presence_server.store.fields import MAX_WAKE_ENTRY_BYTES, MESSAGE_BODY
from presence_server.store.longpoll import Published
from presence_server.store.subscription import subscription_of
from tests.helpers.app import Client, waiting
from tests.helpers.http import add_to_group, handshake, heartbeat, messages, poll, publish
from tests.helpers.wait import wait_until

POLLS = 20


async def test_one_publish_wakes_many_polls_with_one_shared_read(held: Client) -> None:
    assert held.app is not None
    polls = held.app[LONGPOLLS]
    cursors = [await handshake(held, "ch1", uuid=f"u{i}") for i in range(POLLS)]
    # A first message puts every subscriber on the same cursor, as after any delivery.
    first = await publish(held, "ch1", "align")
    pending = [asyncio.create_task(poll(held, "ch1", c, uuid=f"u{i}")) for i, c in enumerate(cursors)]
    for found, next_tt in await asyncio.gather(*pending):
        assert messages(found) == ["align"] and next_tt == first

    # Another channel's message after their cursor: the entry of the next publish is not all they may
    # have to receive, as far as the wake-up tells, so they read.
    await publish(held, "ch2", "elsewhere")
    pending = [asyncio.create_task(poll(held, "ch1", first, uuid=f"u{i}")) for i in range(POLLS)]
    await wait_until(lambda: waiting(held) == POLLS)
    before = polls.reads_started
    tt = await publish(held, "ch1", "wake up")
    for found, next_tt in await asyncio.gather(*pending):
        assert messages(found) == ["wake up"] and next_tt == tt
    reads = polls.reads_started - before
    # The wake bus reads once for every poll with the same cursor, then wakes them with the result.
    assert reads == 1, f"{POLLS} polls woken by one publish started {reads} reads"


async def test_polls_at_the_keysets_last_timetoken_are_answered_with_the_wake_ups_entry_unread(held: Client) -> None:
    assert held.app is not None
    polls = held.app[LONGPOLLS]
    names = ["ch1", "ch1,ch2", "ch2,ch1-pnpres,ch1"]  # every shape that names ch1 directly
    cursors = [await handshake(held, names[i % 3], uuid=f"u{i}") for i in range(POLLS)]
    first = await publish(held, "ch1", "align")
    pending = [asyncio.create_task(poll(held, names[i % 3], c, uuid=f"u{i}")) for i, c in enumerate(cursors)]
    await asyncio.gather(*pending)
    pending = [asyncio.create_task(poll(held, names[i % 3], first, uuid=f"u{i}")) for i in range(POLLS)]
    await wait_until(lambda: waiting(held) == POLLS)
    before = polls.reads_started
    meta = {"lang": "fr"}
    tt = await publish(held, "ch1", {"text": "wake up"}, meta=orjson.dumps(meta).decode(), custom_message_type="chat-1")
    answers = await asyncio.gather(*pending)
    assert polls.reads_started == before, "a poll read what its wake-up carried"
    # The same envelope as a read of the log gives (a poll that finds the entry there at once).
    for i in range(3):
        read, read_tt = await poll(held, names[i], first, uuid=f"u{i}")
        assert polls.reads_started > before
        assert answers[i] == (read, read_tt)
        assert read_tt == tt and messages(read) == [{"text": "wake up"}]
        assert read[0]["u"] == meta and read[0]["cmt"] == "chat-1" and read[0]["i"] == "publisher"
    assert all(answer == answers[i % 3] for i, answer in enumerate(answers))


async def test_polls_through_a_group_or_a_wildcard_read_even_at_the_last_timetoken(held: Client) -> None:
    assert held.app is not None
    polls = held.app[LONGPOLLS]
    await add_to_group(held, "g", "room.a")
    shapes = [{"channels": "room.a"}, {"channels": "room.*"}, {"channels": ",", "channel-group": "g"}]
    cursors = [await handshake(held, str(s["channels"]), uuid=f"u{i}", **_rest(s)) for i, s in enumerate(shapes)]
    first = await publish(held, "room.a", "align")
    for i, (shape, cursor) in enumerate(zip(shapes, cursors, strict=True)):
        found, cursors[i] = await poll(held, str(shape["channels"]), cursor, uuid=f"u{i}", **_rest(shape))
        assert messages(found) == ["align"] and cursors[i] == first
    pending = [
        asyncio.create_task(poll(held, str(s["channels"]), first, uuid=f"u{i}", **_rest(s)))
        for i, s in enumerate(shapes)
    ]
    await wait_until(lambda: waiting(held) == len(shapes))
    before = polls.reads_started
    tt = await publish(held, "room.a", "wake up")
    for found, next_tt in await asyncio.gather(*pending):
        assert messages(found) == ["wake up"] and next_tt == tt
    # The direct poll took the wake-up's entry; the wildcard's and the group's polls read (their
    # members may have changed since they last read).
    assert polls.reads_started - before == 2


async def test_polls_of_two_names_one_wake_up_names_are_read_for_once(held: Client) -> None:
    """A join on two channels is one wake-up naming both presence logs: the polls watching both are
    one group, read for once, and each gets both events."""
    assert held.app is not None
    polls = held.app[LONGPOLLS]
    names = "ch1-pnpres,ch2-pnpres"
    cursors = [await handshake(held, names, uuid=f"w{i}") for i in range(POLLS)]
    await heartbeat(held, "ch1,ch2", "first")
    answers = await asyncio.gather(*(poll(held, names, c, uuid=f"w{i}") for i, c in enumerate(cursors)))
    cursor = answers[0][1]
    assert all(next_tt == cursor for _, next_tt in answers)
    pending = [asyncio.create_task(poll(held, names, cursor, uuid=f"w{i}")) for i in range(POLLS)]
    await wait_until(lambda: waiting(held) == POLLS)
    before = polls.reads_started
    await heartbeat(held, "ch1,ch2", "second")
    for found, _ in await asyncio.gather(*pending):
        assert sorted((e["c"], e["d"]["action"], e["d"]["uuid"]) for e in found) == [
            ("ch1-pnpres", "join", "second"),
            ("ch2-pnpres", "join", "second"),
        ]
    assert polls.reads_started - before == 1


async def test_a_message_too_long_to_ride_on_its_wake_up_is_read_once(held: Client) -> None:
    assert held.app is not None
    polls = held.app[LONGPOLLS]
    cursors = [await handshake(held, "ch1", uuid=f"u{i}") for i in range(POLLS)]
    first = await publish(held, "ch1", "align")
    await asyncio.gather(*(poll(held, "ch1", c, uuid=f"u{i}") for i, c in enumerate(cursors)))
    pending = [asyncio.create_task(poll(held, "ch1", first, uuid=f"u{i}")) for i in range(POLLS)]
    await wait_until(lambda: waiting(held) == POLLS)
    before = polls.reads_started
    long = "x" * MAX_WAKE_ENTRY_BYTES
    tt = await publish(held, "ch1", long)
    for found, next_tt in await asyncio.gather(*pending):
        assert messages(found) == [long] and next_tt == tt
    assert polls.reads_started - before == 1


@pytest.mark.parametrize(
    "entry",
    [
        None,
        "ch1",
        ["ch1", "1", "2", "d"],  # a field without its value
        ["ch1", "1", "2"],  # no fields
        ["ch1", "one", "2", "d", "1"],
        ["ch1", "1", "٢", "d", "1"],  # a digit, not an ASCII one
        ["ch1", 1, "2", "d", "1"],
        {"c": "ch1"},
    ],
)
def test_a_wake_up_entry_of_another_shape_is_none(entry: object) -> None:
    assert Published.of(entry) is None


def test_a_wake_up_entry_answers_direct_reads_from_its_previous_timetoken_to_before_its_own() -> None:
    published = Published.of(["ch1", "100", "105", MESSAGE_BODY, "1"])
    assert published is not None
    direct = subscription_of(("ch0", "ch1"), ())
    answered = [c for c in range(98, 108) if published.answers(direct, str(c)) is not None]
    assert answered == [100, 101, 102, 103, 104]
    for channels, groups in [(("ch0",), ()), (("ch1",), ("g",)), (("ch1", "ch.*"), ()), (("ch1-pnpres",), ())]:
        assert published.answers(subscription_of(channels, groups), "100") is None, (channels, groups)
    answer = published.answers(direct, "100")
    assert answer is not None and answer is published.answers(subscription_of(("ch1",), ()), "104")  # rendered once
    assert answer.cursor == "105" and [d.fields for d in answer.deliveries] == [{MESSAGE_BODY: "1"}]


def _rest(shape: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in shape.items() if k != "channels"}


async def test_polls_woken_twice_before_they_ran_get_both_messages(held: Client) -> None:
    cursors = [await handshake(held, "ch1", uuid=f"u{i}") for i in range(POLLS)]
    first = await publish(held, "ch1", "align")
    pending = [asyncio.create_task(poll(held, "ch1", c, uuid=f"u{i}")) for i, c in enumerate(cursors)]
    await asyncio.gather(*pending)
    pending = [asyncio.create_task(poll(held, "ch1", first, uuid=f"u{i}")) for i in range(POLLS)]
    await wait_until(lambda: waiting(held) == POLLS)
    # Two publishes back to back: the second wake-up may come while the first one's read is on
    # its way or its result not yet taken. Whatever a poll got, its next poll gets the rest.
    await publish(held, "ch1", "one")
    await publish(held, "ch1", "two")
    for i, (found, next_tt) in enumerate(await asyncio.gather(*pending)):
        got = messages(found)
        if got == ["one"]:
            more, _ = await poll(held, "ch1", next_tt, uuid=f"u{i}")
            got += messages(more)
        assert got == ["one", "two"], i
