"""Metric totals over every keyset, from the counters the scripts keep (fields.COUNTER_*)."""

from __future__ import annotations

from typing import cast

from presence_server.store.core import StoreCore
from presence_server.store.fields import COUNTER_OCCUPANTS


class Totals(StoreCore):
    async def totals(self) -> tuple[int, int]:
        """Occupants (a user counts once per channel) and occupied channels over every keyset, from the
        counters the scripts keep: two commands per keyset, expired but unswept occupants included."""
        sub_keys = cast("list[str]", await self.redis.zrange(self._keysets_due, 0, -1))
        if not sub_keys:
            return 0, 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for sub_key in sub_keys:
                ks = self.keys(sub_key)
                pipe.hget(ks.counters, COUNTER_OCCUPANTS)
                pipe.zcard(ks.due)
            replies = await pipe.execute()
        return sum(int(r or 0) for r in replies[0::2]), sum(int(r) for r in replies[1::2])
