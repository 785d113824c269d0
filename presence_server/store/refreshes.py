"""Plain refreshes of one keyset, sent together: renew.lua calls, and refresh.lua calls.

Most heartbeats change nothing but deadlines. Two scripts serve many of them in one call each, so that
Redis pays the cost of a call (argument copying, the Lua call itself) once per batch instead of once per
heartbeat, and its commands once per channel of the batch and once per batch (the due entries):

- renew.lua, for the heartbeats that send their presence timeout (the SDKs send it with every one):
  the new scores are written out here, so the script reads nothing in the common case. Per channel it
  counts the lapsed members and sends the pairs, grouped by channel as the batch holds them, to one
  ``ZADD XX CH``; its reply names the members it found absent or lapsed.
- refresh.lua, for the ones that send none: their deadline depends on the timeout each uuid's deadlines
  hold, so it reads the members' scores first, one ``ZMSCORE`` per channel.

The heartbeats a script cannot serve (joins, lapses, a timeout that changes where the uuid's key holds
it) come back as None, and the caller runs heartbeat.lua for them.

A keyset has at most one call of each script in flight (unless a batch fills up first): the refreshes
asked for while it is out wait for its reply and go together in the next call. A busy server process
thus sends batches as deep as the refreshes that arrive in one round trip, not only in one loop
iteration (which holds few of them when every request takes several iterations), and an idle one sends
each at once, at the next loop iteration. A batch goes through the script batcher, which pipelines it
with the other script calls made meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Any, Final

from redis.commands.core import AsyncScript

from presence_server.store.batch import ScriptBatcher
from presence_server.store.keys import KeysetKeys

# At most this many heartbeats in one call (and at most ``max_channels`` channels).
REFRESH_BATCH = 64


# A channel's position among the call's (from 1), as refresh.lua reads it, and a channel's count of
# pairs, as renew.lua reads it: two characters, 48 plus each base-64 digit, so that Redis parses no
# number for it. A call has fewer than 2 * max_channels positions (it is sent once it holds
# max_channels) and at most REFRESH_BATCH pairs per channel, far below 4096.
_PLACES: Final = [chr(48 + (p >> 6)) + chr(48 + (p & 63)) for p in range(4096)]


@dataclasses.dataclass
class _Held:
    """A refresh.lua call: heartbeats that sent no timeout (the one their deadlines hold is kept)."""

    keys: list[str]  # the indexes, then each channel's occupants key
    beats: list[Any] = dataclasses.field(default_factory=list)  # each heartbeat's arguments
    positions: dict[str, int] = dataclasses.field(default_factory=dict)  # channel: its position (1 for the first)
    latest: int = 0  # the latest now (ms)
    futures: list[asyncio.Future[str | None]] = dataclasses.field(default_factory=list)
    channels: int = 0  # of all the heartbeats

    def add(self, ks: KeysetKeys, now_ms: int, member: str, channels: Sequence[str]) -> None:
        positions = self.positions
        places = []
        for channel in channels:
            position = positions.get(channel)
            if position is None:
                position = positions[channel] = len(positions) + 1
                self.keys.append(ks.occupants(channel))
            places.append(_PLACES[position])
        self.beats += (now_ms, member, places[0] if len(places) == 1 else "".join(places))

    def args(self, default: str) -> list[Any]:
        return [default, len(self.positions), self.latest, *self.positions, *self.beats]

    def settle(self, results: list[Any] | None) -> None:
        for i, future in enumerate(self.futures):
            if not future.done():
                future.set_result(results[-1] if results and int(results[i]) else None)


@dataclasses.dataclass
class _Sent:
    """A renew.lua call: heartbeats that sent their timeout, each with its score written out."""

    keys: list[str]  # the indexes, then each channel's occupants key
    # In the keys' order, each channel's lowest deadline (ms) of its pairs, then the pairs: score, member, ...
    by_channel: dict[str, list[Any]] = dataclasses.field(default_factory=dict)
    members: list[str] = dataclasses.field(default_factory=list)  # each heartbeat's member
    latest: int = 0  # the latest now (ms)
    futures: list[asyncio.Future[str | None]] = dataclasses.field(default_factory=list)
    channels: int = 0  # of all the heartbeats

    def add(self, ks: KeysetKeys, member: str, score: str, deadline: int, channels: Sequence[str]) -> None:
        by_channel = self.by_channel
        for channel in channels:
            entry = by_channel.get(channel)
            if entry is None:
                by_channel[channel] = [deadline, score, member]
                self.keys.append(ks.occupants(channel))
            else:
                if deadline < entry[0]:
                    entry[0] = deadline
                entry += (score, member)
        self.members.append(member)

    def args(self, default: str) -> list[Any]:
        # Numbers as text, converted here rather than by hiredis (a little cheaper, the same bytes).
        args: list[Any] = [str(self.latest)]
        for channel, entry in self.by_channel.items():
            args += (channel, str(entry[0]), _PLACES[len(entry) >> 1])
        for entry in self.by_channel.values():
            args += entry[1:]
        return args

    def settle(self, results: list[Any] | None) -> None:
        earlier = results[-1] if results else None
        left = set(results[:-1]) if results and len(results) > 1 else ()
        for future, member in zip(self.futures, self.members, strict=True):
            if not future.done():
                future.set_result(None if earlier is None or member in left else earlier)


class Refreshes:
    def __init__(
        self,
        batcher: ScriptBatcher,
        held: AsyncScript,
        sent: AsyncScript,
        *,
        default_timeout: str,
        max_channels: int,
    ) -> None:
        self._batcher = batcher
        self._max_channels = max_channels
        self._scripts = {False: held, True: sent}
        self._default = default_timeout
        # By (timeout sent, subscribe key): waiting to be sent, and the calls sent and not answered yet.
        self._pending: dict[tuple[bool, str], _Held | _Sent] = {}
        self._in_flight: dict[tuple[bool, str], int] = {}
        self._scheduled = False  # a send of the idle keysets' batches at the next loop iteration

    def refresh(
        self,
        ks: KeysetKeys,
        now_ms: int,
        member: str,
        score: str,
        deadline: int,
        channels: Sequence[str],
    ) -> asyncio.Future[str | None]:
        """Queue one heartbeat (``score`` the one renew.lua writes, as fields.deadline_text gives it,
        ``deadline`` the one the score gives; '' and 0 with no timeout sent). The future resolves with
        when the sweeper must next look at the keyset ('' unless that moved earlier), or None when
        heartbeat.lua must serve it."""
        loop = asyncio.get_running_loop()
        queue = (bool(score), ks.sub_key)
        batch = self._pending.get(queue)
        if batch is None:
            keys = [ks.due, ks.intervals]
            batch = self._pending[queue] = _Sent(keys) if score else _Held(keys)
            if not self._scheduled and queue not in self._in_flight:
                self._scheduled = True
                loop.call_soon(self._send_idle)
        if isinstance(batch, _Sent):
            batch.add(ks, member, score, deadline, channels)
        else:
            batch.add(ks, now_ms, member, channels)
        future: asyncio.Future[str | None] = loop.create_future()
        if now_ms > batch.latest:
            batch.latest = now_ms
        batch.futures.append(future)
        batch.channels += len(channels)
        if len(batch.futures) >= REFRESH_BATCH or batch.channels >= self._max_channels:
            self._send(queue, self._pending.pop(queue))
        return future

    def _send_idle(self) -> None:
        """The batches of the keysets with no call in flight; the others wait for their reply."""
        self._scheduled = False
        for queue in [queue for queue in self._pending if queue not in self._in_flight]:
            self._send(queue, self._pending.pop(queue))

    def _send(self, queue: tuple[bool, str], batch: _Held | _Sent) -> None:
        self._in_flight[queue] = self._in_flight.get(queue, 0) + 1
        reply = self._batcher.call(self._scripts[queue[0]], batch.keys, batch.args(self._default))
        reply.add_done_callback(lambda done: self._answered(queue, batch, done))

    def _answered(self, queue: tuple[bool, str], batch: _Held | _Sent, reply: asyncio.Future[Any]) -> None:
        left = self._in_flight.pop(queue) - 1
        if left:
            self._in_flight[queue] = left
        elif queue in self._pending and not self._scheduled:
            # Sent at the next loop iteration, with whatever else this one asks for.
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._send_idle)
        # A failed call (a lost connection, a key of another type) leaves every heartbeat of it to
        # heartbeat.lua, which reports its own error, if any.
        batch.settle(None if reply.cancelled() or reply.exception() is not None else reply.result())
