"""One publish to a channel with many held polls costs one log read, not one per poll.

LongPolls.read shares a read under way among identical reads numbered above the caller's
``fresh_after`` marker. LongPolls.notify takes that marker when a wake-up comes and reads once for
every waiting poll with the same subscription and cursor, then wakes them with the result.
"""

from __future__ import annotations

import asyncio

from presence_server.context import LONGPOLLS
from tests.helpers.app import Client, waiting
from tests.helpers.http import handshake, messages, poll, publish
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

    pending = [asyncio.create_task(poll(held, "ch1", first, uuid=f"u{i}")) for i in range(POLLS)]
    await wait_until(lambda: waiting(held) == POLLS)
    before = polls.reads_started
    tt = await publish(held, "ch1", "wake up")
    for found, next_tt in await asyncio.gather(*pending):
        assert messages(found) == ["wake up"] and next_tt == tt
    reads = polls.reads_started - before
    # The wake bus reads once for every poll with the same cursor, then wakes them with the result.
    assert reads == 1, f"{POLLS} polls woken by one publish started {reads} reads"


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
