"""Presence reads: here_now (one read-only script, here_now.lua), where_now and state. Reads never
delete: an occupant past its deadline is not counted, but only the sweeper removes it."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, cast

import orjson

from presence_server.store.core import StoreCore, chunks, ms
from presence_server.store.fields import member, uuid_of
from presence_server.store.keys import KeysetKeys


@dataclasses.dataclass(frozen=True, slots=True)
class HereNowChannel:
    channel: str
    occupancy: int
    uuids: list[str]
    states: list[dict[str, Any] | None]


class PresenceReads(StoreCore):
    async def get_state(
        self, sub_key: str, uuid: str, channels: Sequence[str], groups: Sequence[str] = ()
    ) -> dict[str, dict[str, Any]]:
        """``uuid``'s state on each channel (and groups' channels); ``{}`` where it has none."""
        ks = self.keys(sub_key)
        targets = [channel for channel, _ in await self._expand(ks, channels, groups, presence_names=True)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for channel in targets:
                pipe.hget(ks.state(channel), member(uuid))
            raw = await pipe.execute()
        return {channel: orjson.loads(text) if text else {} for channel, text in zip(targets, raw, strict=True)}

    async def here_now(
        self,
        sub_key: str,
        channels: Sequence[str],
        groups: Sequence[str] = (),
        *,
        now: float,
        offset: int = 0,
        limit: int = 1000,
        with_uuids: bool = True,
        with_state: bool = False,
    ) -> list[HereNowChannel]:
        """Occupancy of each channel (and groups' channels), with a page of its occupants."""
        ks = self.keys(sub_key)
        targets = [channel for channel, _ in await self._expand(ks, channels, groups, presence_names=True)]
        return await self._here_now_of(ks, targets, now, offset, limit, with_uuids, with_state)

    async def here_now_global(
        self,
        sub_key: str,
        *,
        now: float,
        offset: int = 0,
        limit: int = 1000,
        with_uuids: bool = True,
        with_state: bool = False,
    ) -> list[HereNowChannel]:
        """Every channel of the keyset that has someone present."""
        ks = self.keys(sub_key)
        channels = cast("list[str]", await self.redis.zrange(ks.due, 0, -1))
        found = await self._here_now_of(ks, channels, now, offset, limit, with_uuids, with_state)
        return [entry for entry in found if entry.occupancy > 0]

    async def where_now(self, sub_key: str, uuid: str, *, now: float) -> list[str]:
        """The channels where ``uuid`` is present.

        There is no uuid -> channels index: it would cost about as much memory per present user as
        the occupancy itself, on every heartbeat path. where_now instead asks every occupied channel
        of the keyset (the due index lists them), in one pipeline: a rare call pays, not the hot path.
        """
        ks = self.keys(sub_key)
        channels = cast("list[str]", await self.redis.zrange(ks.due, 0, -1))
        if not channels:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for channel in channels:
                pipe.zscore(ks.occupants(channel), member(uuid))
            deadlines = await pipe.execute()
        now_ms = ms(now)
        return [ch for ch, deadline in zip(channels, deadlines, strict=True) if deadline and deadline > now_ms]

    async def _here_now_of(
        self,
        ks: KeysetKeys,
        channels: Sequence[str],
        now: float,
        offset: int,
        limit: int,
        with_uuids: bool,
        with_state: bool,
    ) -> list[HereNowChannel]:
        if not channels:
            return []
        args = [ms(now), offset, limit, int(with_uuids), int(with_state)]
        replies: list[Any] = []
        for part in chunks(channels):
            keys: list[str] = []
            for channel in part:
                keys += [ks.occupants(channel), ks.state(channel)]
            replies += await self._batch.call(self._here_now, keys, args)
        out = []
        for channel, (occupancy, uuids, states) in zip(channels, replies, strict=True):
            parsed = [orjson.loads(s) if s else None for s in states] if with_state else []
            out.append(HereNowChannel(channel, int(occupancy), [uuid_of(m) for m in uuids], parsed))
        return out
