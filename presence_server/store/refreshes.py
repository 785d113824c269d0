"""Plain refreshes of one keyset, asked for in one event-loop iteration, sent as one refresh.lua call.

Most heartbeats change nothing but deadlines. refresh.lua serves many of them in one script call, so
that Redis pays the cost of a call (argument copying, the Lua call itself) once per batch instead of
once per heartbeat, and reads each channel's due entry and sets each occupants key's expiry once per
batch. Each heartbeat is atomic on its own there; the ones it cannot serve (joins, lapses, a timeout
or state that changes) come back as None, and the caller runs heartbeat.lua for them.

The batch is sent at the next loop iteration (or once it is full) through the script batcher, which
pipelines it with the other script calls made meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Any

from redis.commands.core import AsyncScript

from presence_server.store.batch import ScriptBatcher
from presence_server.store.keys import KeysetKeys

# At most this many heartbeats in one refresh.lua call (and at most ``max_channels`` channels).
REFRESH_BATCH = 64


@dataclasses.dataclass
class _Batch:
    keys: list[str]
    args: list[Any]
    futures: list[asyncio.Future[str | None]] = dataclasses.field(default_factory=list)
    channels: int = 0


class Refreshes:
    def __init__(
        self, batcher: ScriptBatcher, script: AsyncScript, *, backstop: int, default_timeout: str, max_channels: int
    ) -> None:
        self._batcher = batcher
        self._max_channels = max_channels
        self._script = script
        self._backstop = backstop
        self._default = default_timeout
        self._pending: dict[str, _Batch] = {}  # by subscribe key

    def refresh(
        self, ks: KeysetKeys, now_ms: int, member: str, code: str, channels: Sequence[str]
    ) -> asyncio.Future[str | None]:
        """Queue one heartbeat; the future resolves with when the sweeper must next look at the keyset
        ('' unless that moved earlier), or None when heartbeat.lua must serve it."""
        loop = asyncio.get_running_loop()
        if not self._pending:
            loop.call_soon(self._send_all)
        batch = self._pending.get(ks.sub_key)
        if batch is None:
            batch = self._pending[ks.sub_key] = _Batch([ks.due, ks.intervals], [self._backstop, self._default])
        future: asyncio.Future[str | None] = loop.create_future()
        batch.keys += map(ks.occupants, channels)
        batch.args += [now_ms, member, code, len(channels), *channels]
        batch.futures.append(future)
        batch.channels += len(channels)
        if len(batch.futures) >= REFRESH_BATCH or batch.channels >= self._max_channels:
            self._send(self._pending.pop(ks.sub_key))
        return future

    def _send_all(self) -> None:
        pending, self._pending = self._pending, {}
        for batch in pending.values():
            self._send(batch)

    def _send(self, batch: _Batch) -> None:
        reply = self._batcher.call(self._script, batch.keys, batch.args)
        reply.add_done_callback(lambda done: _settle(batch.futures, done))


def _settle(futures: list[asyncio.Future[str | None]], reply: asyncio.Future[Any]) -> None:
    # A failed call (a lost connection, a key of another type) leaves every heartbeat of it to
    # heartbeat.lua, which reports its own error, if any.
    results = None if reply.cancelled() or reply.exception() is not None else reply.result()
    for i, future in enumerate(futures):
        if not future.done():
            future.set_result(results[-1] if results and int(results[i]) else None)
