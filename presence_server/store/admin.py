"""Admin operations (the admin API, a test double): the shared clock offset, keyset reset and snapshot."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import orjson

from presence_server.store.core import StoreCore, ms
from presence_server.store.fields import WAKE_KEYSET, WAKE_RESET
from presence_server.store.keys import clock_offset


class Admin(StoreCore):
    async def advance_clock(self, seconds: float) -> float:
        """Move the shared admin clock forward; returns the new offset in seconds."""
        return float(await self.redis.incrbyfloat(clock_offset(self.prefix), seconds))

    async def clock_offset(self) -> float:
        return float(await self.redis.get(clock_offset(self.prefix)) or 0.0)

    async def reset_keyset(self, sub_key: str) -> int:
        """Drop every key of one keyset: presence, state, groups, logs. Returns how many keys went.

        Every process hears of it (a wake-up with WAKE_RESET), this one at once.
        """
        ks = self.keys(sub_key)
        removed = 0
        async for batch in _batched(self.redis.scan_iter(match=ks.match_all, count=1000), 500):
            removed += int(await self.redis.unlink(*batch))
        await self.redis.zrem(self._keysets_due, sub_key)
        self._departed(sub_key, None)
        await self.redis.spublish(ks.wake, orjson.dumps({WAKE_KEYSET: sub_key, WAKE_RESET: True}))
        return removed

    async def snapshot(self, sub_key: str, *, now: float) -> dict[str, Any]:
        """The keyset's whole presence picture: occupants with deadlines and state, groups, last timetoken."""
        ks = self.keys(sub_key)
        channels = cast("list[str]", await self.redis.zrange(ks.due, 0, -1))
        group_names = sorted(cast("set[str]", await self.redis.smembers(ks.groups)))
        async with self.redis.pipeline(transaction=False) as pipe:
            for channel in channels:
                pipe.zrangebyscore(ks.occupants(channel), f"({ms(now)}", "+inf", withscores=True)
                pipe.hgetall(ks.state(channel))
            for group in group_names:
                pipe.smembers(ks.group(group))
            pipe.get(ks.timetoken)
            replies = await pipe.execute()
        out: dict[str, Any] = {}
        for i, channel in enumerate(channels):
            occupants, states = replies[2 * i], replies[2 * i + 1]
            if occupants:
                out[channel] = {
                    "occupancy": len(occupants),
                    "occupants": {
                        uuid: {"deadline": deadline / 1000, "state": orjson.loads(states.get(uuid) or "{}")}
                        for uuid, deadline in occupants
                    },
                }
        groups = {g: sorted(m) for g, m in zip(group_names, replies[2 * len(channels) : -1], strict=True)}
        return {"sub_key": sub_key, "now": now, "timetoken": replies[-1], "channels": out, "groups": groups}


async def _batched(items: AsyncIterator[str], size: int) -> AsyncIterator[list[str]]:
    batch: list[str] = []
    async for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
