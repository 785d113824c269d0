"""Admin operations (the admin API, a test double): the shared clock offset, keyset reset and snapshot,
and what the inspector page reads and does (last messages, a user made to time out)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import orjson

from presence_server.store.core import StoreCore, ms
from presence_server.store.fields import WAKE_KEYSET, WAKE_RESET, deadline_of, member, uuid_of
from presence_server.store.keys import clock_offset
from presence_server.store.subscription import is_presence_name

# How many channels' messages one ``last_messages`` call reads when it is not told which.
LAST_MESSAGES_CHANNELS = 100


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
                        uuid_of(name): {
                            "deadline": deadline_of(score) / 1000,
                            "state": orjson.loads(states.get(name) or "{}"),
                        }
                        for name, score in occupants
                    },
                }
        groups = {g: sorted(m) for g, m in zip(group_names, replies[2 * len(channels) : -1], strict=True)}
        return {"sub_key": sub_key, "now": now, "timetoken": replies[-1], "channels": out, "groups": groups}

    async def last_messages(
        self, sub_key: str, channels: Sequence[str] | None, count: int
    ) -> dict[str, list[tuple[str, dict[str, str]]]]:
        """The last ``count`` entries (timetoken, fields; oldest first) of each channel's message log:
        the channels named, else the first LAST_MESSAGES_CHANNELS of the keyset's name index. Channels
        without any are left out. The log as subscribers read it, signals and ``store=0`` included.
        """
        ks = self.keys(sub_key)
        if channels is None:
            channels = cast("list[str]", await self.redis.zrange(ks.names, 0, LAST_MESSAGES_CHANNELS - 1))
        async with self.redis.pipeline(transaction=False) as pipe:
            for channel in channels:
                pipe.xrevrange(ks.messages(channel), max="+", min="-", count=count)
            logs = cast("list[list[tuple[str, dict[str, str]]]]", await pipe.execute())
        return {
            channel: [(entry_id.partition("-")[0], fields) for entry_id, fields in reversed(entries)]
            for channel, entries in zip(channels, logs, strict=True)
            if entries
        }

    async def expire_now(self, sub_key: str, uuid: str, channels: Sequence[str], *, now: float) -> list[str]:
        """Bring ``uuid``'s deadline on the channels down to ``now``, so that the next sweep times it out
        there with the usual ``timeout`` event (sweep.lua); returns the channels it was present on.

        Deadlines are only lowered (``ZADD XX LT``: a uuid not present is not added), and with them the
        channels' entries in the keyset's due index and the keyset's in the global one, which the
        sweeper reads (store/expiry.py): each must stay no later than the deadlines it stands for.
        """
        ks, at = self.keys(sub_key), ms(now)
        channels = [channel for channel in dict.fromkeys(channels) if not is_presence_name(channel)]
        if not channels:
            return []
        async with self.redis.pipeline(transaction=True) as pipe:
            for channel in channels:
                pipe.zadd(ks.occupants(channel), {member(uuid): at}, xx=True, lt=True)
                pipe.zscore(ks.occupants(channel), member(uuid))
            replies = await pipe.execute()
        present = [channel for channel, score in zip(channels, replies[1::2], strict=True) if score is not None]
        if present:
            # A channel whose last occupant left meanwhile gets a due entry it need not have: the
            # sweep finds nobody past a deadline there and drops the entry (refresh_due).
            await self.redis.zadd(ks.due, dict.fromkeys(present, at), lt=True)
            # In another cluster slot, hence a command of its own, as heartbeats do (store/presence.py).
            await self.redis.zadd(self._keysets_due, {sub_key: at}, lt=True)
        return present


async def _batched(items: AsyncIterator[str], size: int) -> AsyncIterator[list[str]]:
    batch: list[str] = []
    async for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
