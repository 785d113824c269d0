"""Expiry: the sweep (sweep.lua, compare-and-remove, so every process may sweep) and the global due index."""

from __future__ import annotations

from typing import cast

from presence_server.store.core import StoreCore, ms


class Expiry(StoreCore):
    async def sweep(self, *, now: float) -> int:
        """Remove everyone whose deadline has passed, with one timeout event each; returns how many."""
        due = cast("list[str]", await self.redis.zrangebyscore(self._keysets_due, "-inf", ms(now)))
        total = 0
        for sub_key in due:
            total += await self._sweep_keyset(sub_key, now)
        self.counts["sweep"] += 1
        self.counts["timeout"] += total
        return total

    async def reconcile(self) -> None:
        """Lower each known keyset's entry in the global index to its own next due time: repairs a
        global write that failed after its script succeeded. A few commands per keyset."""
        sub_keys = cast("set[str]", await self.redis.smembers(self._keysets_known))
        for sub_key in sub_keys:
            await self._lower_global_due(sub_key)

    async def _lower_global_due(self, sub_key: str) -> None:
        """Lower the keyset's entry in the global index to its own next due time (never raise it)."""
        ks = self.keys(sub_key)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrange(ks.due, 0, 0, withscores=True)
            pipe.zrange(ks.intervals, 0, 0, withscores=True)
            firsts = cast("list[list[tuple[str, float]]]", await pipe.execute())
        scores = [first[0][1] for first in firsts if first]
        if scores:
            await self.redis.zadd(self._keysets_due, {sub_key: min(scores)}, lt=True)

    async def _sweep_keyset(self, sub_key: str, now: float) -> int:
        ks = self.keys(sub_key)
        total = 0
        upcoming = ""
        while True:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zrangebyscore(ks.due, "-inf", ms(now), start=0, num=self.sweep_channels)
                pipe.zrangebyscore(ks.intervals, "-inf", ms(now), start=0, num=self.sweep_channels)
                expiring, intervals = cast("list[list[str]]", await pipe.execute())
            keys, args = self._mutation_call(
                ks, now, [*expiring, *intervals], [self.sweep_budget, len(expiring), self.interval_max_uuids]
            )
            args += [*expiring, *intervals]
            timeouts, upcoming = await self._sweep(keys=keys, args=args)
            total += int(timeouts)
            self._presence_written(sub_key)
            full = len(expiring) >= self.sweep_channels or len(intervals) >= self.sweep_channels
            if int(timeouts) < self.sweep_budget and not full:
                break
        # The keyset's entry in the global index may only be raised here. A join that lowered the
        # keyset's next time between our script and this write would be overwritten, so re-read
        # the keyset's own (atomically kept) indexes afterwards and lower it again.
        if upcoming:
            await self.redis.zadd(self._keysets_due, {sub_key: float(upcoming)})
        else:
            await self.redis.zrem(self._keysets_due, sub_key)
        await self._lower_global_due(sub_key)
        return total
