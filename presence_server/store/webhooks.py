"""The presence webhooks' queue in Redis (presence_server/webhooks.py sends them): one stream per
keyset (``KeysetKeys.hooks``), written by the presence scripts, read through one consumer group by
the process holding the keyset's lease; an entry is deleted once delivered or dropped."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from redis.exceptions import ResponseError

from presence_server.store.core import StoreCore, ms
from presence_server.store.fields import COUNTER_HOOKS_LOST

GROUP = "webhooks"
Entry = tuple[str, dict[str, str]]  # stream id, fields

# What hook_lease answers.
LEASE_LOST, LEASE_KEPT, LEASE_TAKEN = 0, 1, 2


class WebhookQueue(StoreCore):
    async def hook_keysets(self) -> list[str]:
        """Every keyset that may have webhook events: any presence event comes after a join (which
        records the keyset as known) or from a state change (which records it too, with webhooks on)."""
        return sorted(cast("set[str]", await self.redis.smembers(self._keysets_known)))

    async def hook_backlogs(self, sub_keys: Sequence[str]) -> list[int]:
        """How many events wait in each keyset's webhook stream (delivered ones are deleted)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for sub_key in sub_keys:
                pipe.xlen(self.keys(sub_key).hooks)
            return [int(n) for n in await pipe.execute()]

    async def hook_lease(self, sub_key: str, consumer: str, *, now: float, seconds: float, keep: bool = True) -> int:
        """Take or renew (``keep``) the keyset's lease, or give it back: LEASE_LOST, _KEPT or _TAKEN."""
        args: list[str | int] = [consumer, ms(now), int(seconds * 1000), "1" if keep else "0"]
        return int(await self._hook_lease(keys=[self.keys(sub_key).hooks_lease], args=args))

    async def hook_claim(self, sub_key: str, consumer: str) -> list[Entry]:
        """Everything read but not yet delivered, by whichever consumer read it, now ``consumer``'s:
        called by a process that has just taken the lease, before it reads anything new."""
        stream = self.keys(sub_key).hooks
        await self._hook_group(stream)
        entries: list[Entry] = []
        cursor = "0-0"
        while True:
            reply = await self.redis.xautoclaim(stream, GROUP, consumer, 0, cursor, count=500)
            cursor, claimed = reply[0], reply[1]
            entries += [(entry_id, fields) for entry_id, fields in claimed if fields is not None]
            if cursor == "0-0":
                return entries

    async def hook_read(self, sub_key: str, consumer: str, count: int) -> list[Entry]:
        """Up to ``count`` events no consumer has read yet, oldest first."""
        stream = self.keys(sub_key).hooks
        for _ in range(2):
            try:
                reply = await self.redis.xreadgroup(GROUP, consumer, {stream: ">"}, count=count)
            except ResponseError as exc:
                if not _no_group(exc):
                    raise
                await self._hook_group(stream)  # the stream expired or the keyset was reset meanwhile
                continue
            streams = cast("list[tuple[str, list[Entry]]]", reply or [])
            return [entry for _, items in streams for entry in items]
        return []

    async def hook_done(self, sub_key: str, entry_ids: Sequence[str]) -> None:
        """Delivered or dropped: out of the group's pending list and out of the stream."""
        stream = self.keys(sub_key).hooks
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xack(stream, GROUP, *entry_ids)
            pipe.xdel(stream, *entry_ids)
            await pipe.execute()

    async def hook_lost(self, sub_key: str) -> int:
        """Take the count of events a full stream could not keep (COUNTER_HOOKS_LOST)."""
        counters = self.keys(sub_key).counters
        lost = int(await self.redis.hget(counters, COUNTER_HOOKS_LOST) or 0)
        if lost:
            await self.redis.hincrby(counters, COUNTER_HOOKS_LOST, -lost)
        return lost

    async def _hook_group(self, stream: str) -> None:
        # From the stream's first entry: events written before any process sent webhooks go out too.
        try:
            await self.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                raise
            return
        # A stream made here may never be written (each write renews its expiry): the same backstop.
        await self.redis.expire(stream, self.backstop_seconds)


def _no_group(exc: ResponseError) -> bool:
    # Redis says NOGROUP when the stream or its group is missing; fakeredis, for a missing stream, says
    # what XGROUP says of one.
    return str(exc).startswith("NOGROUP") or "requires the key to exist" in str(exc)
