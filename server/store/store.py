"""The presence store: every Redis operation of the server, on real Redis or fakeredis alike."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from typing import Any, cast

import orjson
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from server.store.keys import KeysetKeys, keysets_due

PRESENCE_SUFFIX = "-pnpres"


class GroupCapExceeded(Exception):
    """Adding the channels would grow a channel group past its cap."""


class StoreUnavailable(Exception):
    """Redis cannot be reached."""


@dataclasses.dataclass(frozen=True, slots=True)
class HereNowChannel:
    channel: str
    occupancy: int
    uuids: list[str]
    states: list[dict[str, Any] | None]


@dataclasses.dataclass(frozen=True, slots=True)
class LogEntry:
    """One entry of a channel's log; presence events carry action, uuid, occupancy and timestamp."""

    timetoken: str
    fields: dict[str, str]

    @property
    def action(self) -> str:
        return self.fields["a"]

    @property
    def uuid(self) -> str:
        return self.fields["u"]

    @property
    def occupancy(self) -> int:
        return int(self.fields["o"])

    @property
    def timestamp(self) -> int:
        return int(self.fields["s"])

    @property
    def data(self) -> dict[str, Any] | None:
        raw = self.fields.get("d")
        return None if raw is None else cast("dict[str, Any]", orjson.loads(raw))


def timetoken_at(now: float) -> str:
    """The 17-digit PubNub timetoken (100 ns units) of a Unix time."""
    return str(int(now * 10_000_000))


def is_presence_name(name: str) -> bool:
    """``<channel>-pnpres`` names are where presence events are read, never where anyone is present."""
    return name.endswith(PRESENCE_SUFFIX)


def _load_script(redis: aioredis.Redis, name: str, *, with_common: bool) -> AsyncScript:
    lua = resources.files("server.store") / "lua"
    body = (lua / f"{name}.lua").read_text()
    if with_common:
        body = (lua / "common.lua").read_text() + "\n" + body
    return redis.register_script(body)


class PresenceStore:
    """Presence, state, channel groups and event logs of every keyset, kept in one Redis."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str = "pn",
        default_timeout: float = 300.0,
        log_size: int = 1000,
        backstop_seconds: int = 86_400,
        group_cap: int = 2000,
        sweep_budget: int = 1000,
        sweep_channels: int = 100,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.default_timeout = default_timeout
        self.log_size = log_size
        self.backstop_seconds = backstop_seconds
        self.group_cap = group_cap
        self.sweep_budget = sweep_budget
        self.sweep_channels = sweep_channels
        self._keysets_due = keysets_due(prefix)
        self._heartbeat = _load_script(redis, "heartbeat", with_common=True)
        self._leave = _load_script(redis, "leave", with_common=True)
        self._set_state = _load_script(redis, "set_state", with_common=True)
        self._sweep = _load_script(redis, "sweep", with_common=True)
        self._here_now = _load_script(redis, "here_now", with_common=False)
        self._group_add = _load_script(redis, "group_add", with_common=False)
        self._group_remove = _load_script(redis, "group_remove", with_common=False)

    def keys(self, sub_key: str) -> KeysetKeys:
        return KeysetKeys(self.prefix, sub_key)

    async def ping(self) -> None:
        """Raise unless Redis answers."""
        await self.redis.ping()

    # -- presence -------------------------------------------------------------------------------

    async def heartbeat(
        self,
        sub_key: str,
        uuid: str,
        channels: Sequence[str],
        groups: Sequence[str] = (),
        *,
        now: float,
        timeout: float | None = None,  # noqa: ASYNC109 - a presence timeout, not an I/O one
        states: Mapping[str, str] | None = None,
    ) -> int:
        """Make ``uuid`` present on the channels (and groups' channels) until now + timeout.

        ``timeout`` None means the uuid's last timeout, else the store default. ``states`` maps a
        channel or group name to the new state object as JSON text (``{}`` clears it); a channel's
        own entry wins over its group's. Returns how many channels the uuid joined.
        """
        ks = self.keys(sub_key)
        targets = await self._expand(ks, channels, groups)
        if not targets:
            return 0
        states = states or {}
        keys, args = self._mutation_call(ks, now, targets, [uuid, _num(timeout), _num(self.default_timeout)])
        for channel, group in targets:
            args += [channel, states.get(channel, states.get(group or "", ""))]
        joins, earlier = await self._heartbeat(keys=keys, args=args)
        if earlier:
            await self.redis.zadd(self._keysets_due, {sub_key: float(earlier)}, lt=True)
        return int(joins)

    async def leave(self, sub_key: str, uuid: str, channels: Sequence[str], groups: Sequence[str] = (), *,
                    now: float) -> int:
        """Remove ``uuid`` from the channels (and groups' channels); returns how many it left."""
        ks = self.keys(sub_key)
        targets = await self._expand(ks, channels, groups)
        if not targets:
            return 0
        keys, args = self._mutation_call(ks, now, targets, [uuid])
        args += [channel for channel, _ in targets]
        return int(await self._leave(keys=keys, args=args))

    async def set_state(self, sub_key: str, uuid: str, channels: Sequence[str], groups: Sequence[str],
                        state: str, *, now: float) -> int:
        """Replace ``uuid``'s state (JSON object text; ``{}`` clears) on the channels and groups' channels."""
        ks = self.keys(sub_key)
        targets = await self._expand(ks, channels, groups)
        if not targets:
            return 0
        keys, args = self._mutation_call(ks, now, targets, [uuid, state])
        args += [channel for channel, _ in targets]
        return int(await self._set_state(keys=keys, args=args))

    async def get_state(self, sub_key: str, uuid: str, channels: Sequence[str],
                        groups: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
        """``uuid``'s state on each channel (and groups' channels); ``{}`` where it has none."""
        ks = self.keys(sub_key)
        targets = [channel for channel, _ in await self._expand(ks, channels, groups, presence_names=True)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for channel in targets:
                pipe.hget(ks.state(channel), uuid)
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

    async def here_now_global(self, sub_key: str, *, now: float, offset: int = 0, limit: int = 1000,
                              with_uuids: bool = True, with_state: bool = False) -> list[HereNowChannel]:
        """Every channel of the keyset that has someone present."""
        ks = self.keys(sub_key)
        channels = cast("list[str]", await self.redis.zrange(ks.due, 0, -1))
        found = await self._here_now_of(ks, channels, now, offset, limit, with_uuids, with_state)
        return [entry for entry in found if entry.occupancy > 0]

    async def where_now(self, sub_key: str, uuid: str, *, now: float) -> list[str]:
        """The channels where ``uuid`` is present."""
        ks = self.keys(sub_key)
        raw = await self.redis.hget(ks.where, uuid)
        if not raw:
            return []
        channels: list[str] = orjson.loads(raw)["c"]
        async with self.redis.pipeline(transaction=False) as pipe:
            for channel in channels:
                pipe.zscore(ks.occupants(channel), uuid)
            deadlines = await pipe.execute()
        now_ms = _ms(now)
        return [ch for ch, deadline in zip(channels, deadlines, strict=True) if deadline and deadline > now_ms]

    async def read_log(self, sub_key: str, channel: str, after: str | None = None) -> list[LogEntry]:
        """Entries of a channel's log with a timetoken above ``after`` (all of them when None)."""
        start = f"({after}-0" if after else "-"
        entries = cast(
            "list[tuple[str, dict[str, str]]]",
            await self.redis.xrange(self.keys(sub_key).log(channel), min=start, max="+"),
        )
        return [LogEntry(entry_id.partition("-")[0], fields) for entry_id, fields in entries]

    # -- expiry ---------------------------------------------------------------------------------

    async def sweep(self, *, now: float) -> int:
        """Remove everyone whose deadline has passed, with one timeout event each; returns how many."""
        due = cast("list[str]", await self.redis.zrangebyscore(self._keysets_due, "-inf", _ms(now)))
        total = 0
        for sub_key in due:
            total += await self._sweep_keyset(sub_key, now)
        return total

    async def _sweep_keyset(self, sub_key: str, now: float) -> int:
        ks = self.keys(sub_key)
        total = 0
        earliest = ""
        while True:
            channels = cast(
                "list[str]",
                await self.redis.zrangebyscore(ks.due, "-inf", _ms(now), start=0, num=self.sweep_channels),
            )
            keys, args = self._mutation_call(ks, now, [(ch, None) for ch in channels], [self.sweep_budget])
            args += channels
            timeouts, earliest = await self._sweep(keys=keys, args=args)
            total += int(timeouts)
            if int(timeouts) < self.sweep_budget and len(channels) < self.sweep_channels:
                break
        # The keyset's entry in the global index may only be raised here. A join that lowered the
        # keyset's earliest deadline between our script and this write would be overwritten, so
        # re-read the keyset's own (exact, atomically kept) index afterwards and lower it again.
        if earliest:
            await self.redis.zadd(self._keysets_due, {sub_key: float(earliest)})
        else:
            await self.redis.zrem(self._keysets_due, sub_key)
        first = await self.redis.zrange(ks.due, 0, 0, withscores=True)
        if first:
            await self.redis.zadd(self._keysets_due, {sub_key: first[0][1]}, lt=True)
        return total

    # -- channel groups -------------------------------------------------------------------------

    async def group_add(self, sub_key: str, group: str, channels: Sequence[str]) -> None:
        """Add channels to a group; raise GroupCapExceeded when it would outgrow its cap."""
        ks = self.keys(sub_key)
        size = await self._group_add(keys=[ks.group(group), ks.groups], args=[group, self.group_cap, *channels])
        if int(size) < 0:
            raise GroupCapExceeded(group)

    async def group_remove(self, sub_key: str, group: str, channels: Sequence[str]) -> None:
        """Remove channels from a group; a group left without channels no longer exists."""
        ks = self.keys(sub_key)
        await self._group_remove(keys=[ks.group(group), ks.groups], args=[group, *channels])

    async def group_delete(self, sub_key: str, group: str) -> None:
        ks = self.keys(sub_key)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(ks.group(group))
            pipe.srem(ks.groups, group)
            await pipe.execute()

    async def group_channels(self, sub_key: str, group: str) -> list[str]:
        members = cast("set[str]", await self.redis.smembers(self.keys(sub_key).group(group)))
        return sorted(members)

    async def group_list(self, sub_key: str) -> list[str]:
        groups = cast("set[str]", await self.redis.smembers(self.keys(sub_key).groups))
        return sorted(groups)

    # -- helpers --------------------------------------------------------------------------------

    async def _expand(self, ks: KeysetKeys, channels: Sequence[str], groups: Sequence[str], *,
                      presence_names: bool = False) -> list[tuple[str, str | None]]:
        """Channels plus the channels of each group, once each, with the group each came from.

        ``-pnpres`` names are dropped unless ``presence_names``: they never hold presence.
        """
        members: list[Iterable[str]] = []
        if groups:
            async with self.redis.pipeline(transaction=False) as pipe:
                for group in groups:
                    pipe.smembers(ks.group(group))
                members = await pipe.execute()
        seen: dict[str, str | None] = {}
        for channel in channels:
            seen.setdefault(channel, None)
        for group, group_channels in zip(groups, members, strict=True):
            for channel in sorted(group_channels):
                seen.setdefault(channel, group)
        return [(ch, g) for ch, g in seen.items() if presence_names or not is_presence_name(ch)]

    def _mutation_call(self, ks: KeysetKeys, now: float, targets: Sequence[tuple[str, str | None]],
                       extra: Sequence[Any]) -> tuple[list[str], list[Any]]:
        """KEYS and leading ARGV of the scripts that share common.lua's calling convention."""
        keys = [ks.timetoken, ks.due, ks.where]
        for channel, _ in targets:
            keys += [ks.occupants(channel), ks.state(channel), ks.log(channel)]
        args: list[Any] = [_ms(now), timetoken_at(now), int(now), self.log_size, self.backstop_seconds, *extra]
        return keys, args

    async def _here_now_of(self, ks: KeysetKeys, channels: Sequence[str], now: float, offset: int, limit: int,
                           with_uuids: bool, with_state: bool) -> list[HereNowChannel]:
        if not channels:
            return []
        keys: list[str] = []
        for channel in channels:
            keys += [ks.occupants(channel), ks.state(channel)]
        args = [_ms(now), offset, limit, int(with_uuids), int(with_state)]
        replies = await self._here_now(keys=keys, args=args)
        out = []
        for channel, (occupancy, uuids, states) in zip(channels, replies, strict=True):
            parsed = [orjson.loads(s) if s else None for s in states] if with_state else []
            out.append(HereNowChannel(channel, int(occupancy), list(uuids), parsed))
        return out


def _ms(now: float) -> int:
    return int(now * 1000)


def _num(value: float | None) -> str:
    return "" if value is None else repr(float(value))
