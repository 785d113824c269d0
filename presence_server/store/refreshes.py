"""Plain refreshes of one keyset, sent together as one refresh.lua call.

Most heartbeats change nothing but deadlines. refresh.lua serves many of them in one script call, so
that Redis pays the cost of a call (argument copying, the Lua call itself) once per batch instead of
once per heartbeat, and its commands once per channel of the batch (a read of the members, a write of
their scores) and once per batch (the due entries). Each heartbeat is atomic on its own there; the
ones it cannot serve (joins, lapses, a timeout or state that changes) come back as None, and the caller
runs heartbeat.lua for them.

A keyset has at most one call in flight (unless a batch fills up first): the refreshes asked for while
it is out wait for its reply and go together in the next call. A busy server process thus sends
batches as deep as the refreshes that arrive in one round trip, not only in one loop iteration (which
holds few of them when every request takes several iterations), and an idle one sends each at once,
at the next loop iteration. A batch goes through the script batcher, which pipelines it with the
other script calls made meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Any, Final

from redis.commands.core import AsyncScript

from presence_server.store.batch import ScriptBatcher
from presence_server.store.keys import KeysetKeys

# At most this many heartbeats in one refresh.lua call (and at most ``max_channels`` channels).
REFRESH_BATCH = 64


# A channel's position among the call's (from 1), as refresh.lua reads it: two characters, 48 plus
# each base-64 digit, so that Redis parses no number for it. A call has fewer than 2 * max_channels
# positions (it is sent once it holds max_channels), far below 4096.
_PLACES: Final = [chr(48 + (p >> 6)) + chr(48 + (p & 63)) for p in range(4096)]


@dataclasses.dataclass
class _Batch:
    keys: list[str]  # the indexes, then each channel's occupants key
    beats: list[Any] = dataclasses.field(default_factory=list)  # each heartbeat's arguments
    positions: dict[str, int] = dataclasses.field(default_factory=dict)  # channel: its position (1 for the first)
    lowest: list[int] = dataclasses.field(default_factory=list)  # by position - 1: the lowest deadline sent, or 0
    latest: int = 0  # the latest now (ms)
    futures: list[asyncio.Future[str | None]] = dataclasses.field(default_factory=list)
    channels: int = 0  # of all the heartbeats


class Refreshes:
    def __init__(self, batcher: ScriptBatcher, script: AsyncScript, *, default_timeout: str, max_channels: int) -> None:
        self._batcher = batcher
        self._max_channels = max_channels
        self._script = script
        self._default = default_timeout
        self._pending: dict[str, _Batch] = {}  # by subscribe key: waiting to be sent
        self._in_flight: dict[str, int] = {}  # by subscribe key: calls sent, not answered yet
        self._scheduled = False  # a send of the idle keysets' batches at the next loop iteration

    def refresh(
        self,
        ks: KeysetKeys,
        now_ms: int,
        member: str,
        code: str,
        score: str,
        deadline: int,
        channels: Sequence[str],
    ) -> asyncio.Future[str | None]:
        """Queue one heartbeat (``code`` and ``score`` as refresh.lua takes them, ``deadline`` the one
        the score gives, 0 with no timeout sent); the future resolves with when the sweeper must next
        look at the keyset ('' unless that moved earlier), or None when heartbeat.lua must serve it."""
        loop = asyncio.get_running_loop()
        sub_key = ks.sub_key
        batch = self._pending.get(sub_key)
        if batch is None:
            batch = self._pending[sub_key] = _Batch([ks.due, ks.intervals])
            if not self._scheduled and sub_key not in self._in_flight:
                self._scheduled = True
                loop.call_soon(self._send_idle)
        future: asyncio.Future[str | None] = loop.create_future()
        positions, lowest = batch.positions, batch.lowest
        places = []
        for channel in channels:
            position = positions.get(channel)
            if position is None:
                position = positions[channel] = len(positions) + 1
                batch.keys.append(ks.occupants(channel))
                lowest.append(deadline)
            elif deadline and (not lowest[position - 1] or deadline < lowest[position - 1]):
                lowest[position - 1] = deadline
            places.append(_PLACES[position])
        batch.beats += (now_ms, member, code, score, places[0] if len(places) == 1 else "".join(places))
        if now_ms > batch.latest:
            batch.latest = now_ms
        batch.futures.append(future)
        batch.channels += len(channels)
        if len(batch.futures) >= REFRESH_BATCH or batch.channels >= self._max_channels:
            self._send(sub_key, self._pending.pop(sub_key))
        return future

    def _send_idle(self) -> None:
        """The batches of the keysets with no call in flight; the others wait for their reply."""
        self._scheduled = False
        for sub_key in [key for key in self._pending if key not in self._in_flight]:
            self._send(sub_key, self._pending.pop(sub_key))

    def _send(self, sub_key: str, batch: _Batch) -> None:
        self._in_flight[sub_key] = self._in_flight.get(sub_key, 0) + 1
        bounds = [deadline or "" for deadline in batch.lowest]
        args = [self._default, len(bounds), batch.latest, *batch.positions, *bounds, *batch.beats]
        reply = self._batcher.call(self._script, batch.keys, args)
        reply.add_done_callback(lambda done: self._answered(sub_key, batch.futures, done))

    def _answered(self, sub_key: str, futures: list[asyncio.Future[str | None]], reply: asyncio.Future[Any]) -> None:
        left = self._in_flight.pop(sub_key) - 1
        if left:
            self._in_flight[sub_key] = left
        elif sub_key in self._pending and not self._scheduled:
            # Sent at the next loop iteration, with whatever else this one asks for.
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._send_idle)
        _settle(futures, reply)


def _settle(futures: list[asyncio.Future[str | None]], reply: asyncio.Future[Any]) -> None:
    # A failed call (a lost connection, a key of another type) leaves every heartbeat of it to
    # heartbeat.lua, which reports its own error, if any.
    results = None if reply.cancelled() or reply.exception() is not None else reply.result()
    for i, future in enumerate(futures):
        if not future.done():
            future.set_result(results[-1] if results and int(results[i]) else None)
