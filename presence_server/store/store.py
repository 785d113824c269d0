"""The presence store: every Redis operation of the server, on real Redis or fakeredis alike."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from importlib import resources
from typing import Any, cast

import orjson
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from presence_server.store.batch import ScriptBatcher
from presence_server.store.bus import GROUP_CHANGED
from presence_server.store.keys import KeysetKeys, clock_offset, keysets_due, keysets_known, wake_channel
from presence_server.store.subscription import Delivery, ReadResult, Resolved, Subscription, is_presence_name


class GroupCapExceeded(Exception):
    """Adding the channels would grow a channel group past its cap."""


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


class _SharedRead:
    """A subscription read under way, which identical reads may join (see PresenceStore.read)."""

    __slots__ = ("sent", "seq", "task")

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.sent = False
        self.task: asyncio.Future[ReadResult]


@functools.lru_cache(maxsize=4096)
def _keyset_keys(prefix: str, sub_key: str) -> KeysetKeys:
    # Key names are built on every call: a keyset's fixed ones are built once here.
    return KeysetKeys(prefix, sub_key)


def timetoken_at(now: float) -> str:
    """The 17-digit PubNub timetoken (100 ns units) of a Unix time."""
    return str(int(now * 10_000_000))


def _load_script(redis: aioredis.Redis, name: str, *, with_common: bool) -> AsyncScript:
    lua = resources.files("presence_server.store") / "lua"
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
        announce_max: int = 20,
        interval: float = 10.0,
        interval_max_uuids: int = 100,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.default_timeout = default_timeout
        self.log_size = log_size
        self.backstop_seconds = backstop_seconds
        self.group_cap = group_cap
        self.sweep_budget = sweep_budget
        self.sweep_channels = sweep_channels
        self.announce_max = announce_max
        self.interval = interval
        self.interval_max_uuids = interval_max_uuids
        self._keysets_due = keysets_due(prefix)
        self._keysets_known = keysets_known(prefix)
        self.wake_channel = wake_channel(prefix)
        self._reads: dict[tuple[Any, ...], _SharedRead] = {}
        self._reads_started = 0
        self.counts: collections.Counter[str] = collections.Counter()
        self._batch = ScriptBatcher(redis)
        self._heartbeat = _load_script(redis, "heartbeat", with_common=True)
        self._leave = _load_script(redis, "leave", with_common=True)
        self._set_state = _load_script(redis, "set_state", with_common=True)
        self._sweep = _load_script(redis, "sweep", with_common=True)
        self._publish = _load_script(redis, "publish", with_common=True)
        self._here_now = _load_script(redis, "here_now", with_common=False)
        self._group_add = _load_script(redis, "group_add", with_common=False)
        self._group_remove = _load_script(redis, "group_remove", with_common=False)

    async def aclose(self) -> None:
        """Hand the connections the script batcher keeps back to the client's pool."""
        await self._batch.aclose()

    def keys(self, sub_key: str) -> KeysetKeys:
        return _keyset_keys(self.prefix, sub_key)

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
        keys, args = self._mutation_call(
            ks, now, (ch for ch, _ in targets), [uuid, _num(timeout), _num(self.default_timeout)], uuid
        )
        for channel, group in targets:
            args += [channel, states.get(channel, states.get(group or "", ""))]
        joins, earlier = await self._batch.call(self._heartbeat, keys, args)
        self.counts["join"] += int(joins)
        if earlier:
            # The global index lives in another cluster slot, so this cannot be part of the script.
            # Shielded: a client that goes away must not leave a join the sweeper never looks at;
            # and the sweeper reconciles from time to time in case this write failed outright.
            await asyncio.shield(self._note_keyset(sub_key, float(earlier)))
        return int(joins)

    async def _note_keyset(self, sub_key: str, upcoming: float) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self._keysets_due, {sub_key: upcoming}, lt=True)
            pipe.sadd(self._keysets_known, sub_key)
            await pipe.execute()

    async def leave(
        self, sub_key: str, uuid: str, channels: Sequence[str], groups: Sequence[str] = (), *, now: float
    ) -> int:
        """Remove ``uuid`` from the channels (and groups' channels); returns how many it left."""
        ks = self.keys(sub_key)
        targets = await self._expand(ks, channels, groups)
        if not targets:
            return 0
        keys, args = self._mutation_call(ks, now, (ch for ch, _ in targets), [uuid])
        args += [channel for channel, _ in targets]
        left = int(await self._batch.call(self._leave, keys, args))
        self.counts["leave"] += left
        return left

    async def set_state(
        self, sub_key: str, uuid: str, channels: Sequence[str], groups: Sequence[str], state: str, *, now: float
    ) -> int:
        """Replace ``uuid``'s state (JSON object text; ``{}`` clears) on the channels and groups' channels."""
        ks = self.keys(sub_key)
        targets = await self._expand(ks, channels, groups)
        if not targets:
            return 0
        keys, args = self._mutation_call(ks, now, (ch for ch, _ in targets), [uuid, state])
        args += [channel for channel, _ in targets]
        changed = int(await self._batch.call(self._set_state, keys, args))
        self.counts["state-change"] += changed
        return changed

    async def get_state(
        self, sub_key: str, uuid: str, channels: Sequence[str], groups: Sequence[str] = ()
    ) -> dict[str, dict[str, Any]]:
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

    # -- messages and delivery ------------------------------------------------------------------

    async def publish(
        self,
        sub_key: str,
        channel: str,
        message: str,
        *,
        now: float,
        publisher: str | None = None,
        meta: str | None = None,
        kind: int | None = None,
        custom_type: str | None = None,
    ) -> str:
        """Append a message (JSON text) to the channel's log; returns its timetoken."""
        ks = self.keys(sub_key)
        keys, args = self._mutation_call(ks, now, (), [channel])
        keys.append(ks.messages(channel))
        args += ["m", message]
        for name, value in (("i", publisher), ("u", meta), ("e", kind), ("cmt", custom_type)):
            if value is not None:
                args += [name, value]
        timetoken = str(await self._batch.call(self._publish, keys, args))
        self.counts["publish"] += 1
        return timetoken

    async def cursor(self, sub_key: str, *, now: float) -> str:
        """A subscribe cursor for now: every entry appended from here on has a later timetoken."""
        last = await self.redis.get(self.keys(sub_key).timetoken)
        return str(max(int(last or 0), int(timetoken_at(now)) - 1))

    async def recent_join(self, sub_key: str, uuid: str, channels: Sequence[str], *, since: float) -> str | None:
        """The timetoken of the earliest join of ``uuid`` on these channels after ``since``, if any."""
        ks = self.keys(sub_key)
        async with self.redis.pipeline(transaction=False) as pipe:
            for channel in channels:
                pipe.xrevrange(ks.log(channel), max="+", min=f"({timetoken_at(since)}-0", count=100)
            logs = cast("list[list[tuple[str, dict[str, str]]]]", await pipe.execute())
        joins = [
            int(entry_id.partition("-")[0])
            for entries in logs
            for entry_id, fields in entries
            if fields.get("a") == "join" and fields.get("u") == uuid
        ]
        return str(min(joins)) if joins else None

    def read_marker(self) -> int:
        """A mark to pass as ``read(fresh_after=...)``: only reads started after it are shared."""
        return self._reads_started

    @staticmethod
    def read_key(sub_key: str, subscription: Subscription, after: str, limit: int) -> tuple[Any, ...]:
        """Equal for reads that return the same thing."""
        return (sub_key, subscription.names, after, limit)

    async def read(
        self, sub_key: str, subscription: Subscription, after: str, *, limit: int = 100, fresh_after: int | None = None
    ) -> ReadResult:
        """The first ``limit`` entries after the cursor over everything the subscription matches, in
        timetoken order, the cursor to read from next, and the logs that were read.

        Identical reads share one Redis round trip (a publish wakes every subscriber of a channel at
        once, and they all poll again at once), but only with a read that started after
        ``fresh_after`` or that has not sent anything to Redis yet: a poll woken for an entry must
        not take the answer of a read that was already on its way before the entry was written.
        """
        key = self.read_key(sub_key, subscription, after, limit)
        shared = self._reads.get(key)
        if shared is not None and (fresh_after is None or shared.seq > fresh_after or not shared.sent):
            return await asyncio.shield(shared.task)
        self._reads_started += 1
        entry = _SharedRead(self._reads_started)
        entry.task = asyncio.ensure_future(self._read(sub_key, subscription, after, limit, entry))
        self._reads[key] = entry

        def forget(_: object) -> None:
            if self._reads.get(key) is entry:
                del self._reads[key]

        entry.task.add_done_callback(forget)
        return await asyncio.shield(entry.task)

    async def _read(
        self, sub_key: str, subscription: Subscription, after: str, limit: int, entry: _SharedRead
    ) -> ReadResult:
        # The logs are read in one MULTI, so the cursor covers a consistent cut: an entry committed
        # after the read has a later timetoken than everything returned and is found next time.
        # Group members and wildcard matches are read in the same MULTI and the read is repeated
        # when they changed since they were resolved, so a new channel's first entries are not skipped.
        entry.sent = True  # from here on Redis is asked: later callers must not join this read
        ks = self.keys(sub_key)
        resolved = await self._resolve(ks, subscription) if subscription.needs_resolving else Resolved()
        start = f"({after}-0"
        lookups = len(subscription.groups) + len(subscription.wildcards)
        for _ in range(3):
            sources = subscription.sources(resolved)
            async with self.redis.pipeline(transaction=True) as pipe:
                self._queue_resolve(pipe, ks, subscription)
                pipe.get(ks.timetoken)
                for source in sources:
                    key = ks.log(source.channel) if source.presence else ks.messages(source.channel)
                    pipe.xrange(key, min=start, max="+", count=limit)
                replies = await pipe.execute()
            fresh = self._parse_resolve(subscription, replies[:lookups])
            if fresh == resolved:
                break
            resolved = fresh
        found: list[Delivery] = []
        for source, entries in zip(sources, replies[lookups + 1 :], strict=True):
            for entry_id, fields in entries:
                found.append(Delivery(entry_id.partition("-")[0], source, fields))
        found.sort(key=lambda d: int(d.timetoken))
        found = found[:limit]
        return ReadResult(found, found[-1].timetoken if found else after, sources, replies[lookups] or "0")

    async def _resolve(self, ks: KeysetKeys, subscription: Subscription) -> Resolved:
        async with self.redis.pipeline(transaction=False) as pipe:
            self._queue_resolve(pipe, ks, subscription)
            replies = await pipe.execute()
        return self._parse_resolve(subscription, replies)

    @staticmethod
    def _parse_resolve(subscription: Subscription, replies: Sequence[Any]) -> Resolved:
        groups = len(subscription.groups)
        return Resolved(tuple(tuple(sorted(r)) for r in replies[:groups]), tuple(tuple(r) for r in replies[groups:]))

    @staticmethod
    def _queue_resolve(pipe: Any, ks: KeysetKeys, subscription: Subscription) -> None:
        for group in subscription.groups:
            pipe.smembers(ks.group(group.base))  # `g-pnpres` reads the presence of g's channels
        for wildcard in subscription.wildcards:
            # Every name starting with "<pattern minus *>": a lex range on the name index.
            low = wildcard.prefix.encode()
            pipe.zrangebylex(ks.names, b"[" + low, b"[" + low + b"\xff")

    # -- expiry ---------------------------------------------------------------------------------

    async def sweep(self, *, now: float) -> int:
        """Remove everyone whose deadline has passed, with one timeout event each; returns how many."""
        due = cast("list[str]", await self.redis.zrangebyscore(self._keysets_due, "-inf", _ms(now)))
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
                pipe.zrangebyscore(ks.due, "-inf", _ms(now), start=0, num=self.sweep_channels)
                pipe.zrangebyscore(ks.intervals, "-inf", _ms(now), start=0, num=self.sweep_channels)
                expiring, intervals = cast("list[list[str]]", await pipe.execute())
            keys, args = self._mutation_call(
                ks, now, [*expiring, *intervals], [self.sweep_budget, len(expiring), self.interval_max_uuids]
            )
            args += [*expiring, *intervals]
            timeouts, upcoming = await self._sweep(keys=keys, args=args)
            total += int(timeouts)
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

    # -- operations -----------------------------------------------------------------------------

    async def totals(self) -> tuple[int, int]:
        """Occupants (a user counts once per channel) and occupied channels over every keyset, from the
        counters the scripts keep: two commands per keyset, expired but unswept occupants included."""
        sub_keys = cast("list[str]", await self.redis.zrange(self._keysets_due, 0, -1))
        if not sub_keys:
            return 0, 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for sub_key in sub_keys:
                ks = self.keys(sub_key)
                pipe.hget(ks.counters, "occupants")
                pipe.zcard(ks.due)
            replies = await pipe.execute()
        return sum(int(r or 0) for r in replies[0::2]), sum(int(r) for r in replies[1::2])

    async def advance_clock(self, seconds: float) -> float:
        """Move the shared admin clock forward; returns the new offset in seconds."""
        return float(await self.redis.incrbyfloat(clock_offset(self.prefix), seconds))

    async def clock_offset(self) -> float:
        return float(await self.redis.get(clock_offset(self.prefix)) or 0.0)

    async def reset_keyset(self, sub_key: str) -> int:
        """Drop every key of one keyset: presence, state, groups, logs. Returns how many keys went."""
        ks = self.keys(sub_key)
        removed = 0
        async for batch in _batched(self.redis.scan_iter(match=ks.match_all, count=1000), 500):
            removed += int(await self.redis.unlink(*batch))
        await self.redis.zrem(self._keysets_due, sub_key)
        return removed

    async def snapshot(self, sub_key: str, *, now: float) -> dict[str, Any]:
        """The keyset's whole presence picture: occupants with deadlines and state, groups, last timetoken."""
        ks = self.keys(sub_key)
        channels = cast("list[str]", await self.redis.zrange(ks.due, 0, -1))
        group_names = await self.group_list(sub_key)
        async with self.redis.pipeline(transaction=False) as pipe:
            for channel in channels:
                pipe.zrangebyscore(ks.occupants(channel), f"({_ms(now)}", "+inf", withscores=True)
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

    # -- channel groups -------------------------------------------------------------------------

    async def group_add(self, sub_key: str, group: str, channels: Sequence[str]) -> None:
        """Add channels to a group; raise GroupCapExceeded when it would outgrow its cap."""
        ks = self.keys(sub_key)
        # Repeats would be counted as new channels by the cap check.
        channels = list(dict.fromkeys(channels))
        size = await self._group_add(keys=[ks.group(group), ks.groups], args=[group, self.group_cap, *channels])
        if int(size) < 0:
            raise GroupCapExceeded(group)
        await self._group_changed(sub_key, group)

    async def group_remove(self, sub_key: str, group: str, channels: Sequence[str]) -> None:
        """Remove channels from a group; a group left without channels no longer exists."""
        ks = self.keys(sub_key)
        await self._group_remove(keys=[ks.group(group), ks.groups], args=[group, *channels])
        await self._group_changed(sub_key, group)

    async def group_delete(self, sub_key: str, group: str) -> None:
        ks = self.keys(sub_key)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(ks.group(group))
            pipe.srem(ks.groups, group)
            await pipe.execute()
        await self._group_changed(sub_key, group)

    async def _group_changed(self, sub_key: str, group: str) -> None:
        # Polls held on the group re-read its members (and the new channels' logs) at once.
        await self.redis.publish(self.wake_channel, orjson.dumps({"k": sub_key, "n": [GROUP_CHANGED + group]}))

    async def group_channels(self, sub_key: str, group: str) -> list[str]:
        members = cast("set[str]", await self.redis.smembers(self.keys(sub_key).group(group)))
        return sorted(members)

    async def group_list(self, sub_key: str) -> list[str]:
        groups = cast("set[str]", await self.redis.smembers(self.keys(sub_key).groups))
        return sorted(groups)

    # -- helpers --------------------------------------------------------------------------------

    async def _expand(
        self, ks: KeysetKeys, channels: Sequence[str], groups: Sequence[str], *, presence_names: bool = False
    ) -> list[tuple[str, str | None]]:
        """Channels plus the channels of each group, once each, with the group each came from.

        ``-pnpres`` names are dropped unless ``presence_names``: they never hold presence.
        """
        if not groups:
            unique = dict.fromkeys(channels)
            return [(ch, None) for ch in unique if presence_names or not is_presence_name(ch)]
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

    def _mutation_call(
        self, ks: KeysetKeys, now: float, channels: Iterable[str], extra: Sequence[Any], uuid: str = ""
    ) -> tuple[list[str], list[Any]]:
        """KEYS and leading ARGV of the scripts that share common.lua's calling convention."""
        keys = [ks.timetoken, ks.due, ks.uuid_timeout(uuid), ks.intervals, ks.names, ks.counters]
        for channel in channels:
            keys += [ks.occupants(channel), ks.state(channel), ks.log(channel), ks.deltas(channel)]
        args: list[Any] = [
            _ms(now),
            timetoken_at(now),
            int(now),
            self.log_size,
            self.backstop_seconds,
            ks.sub_key,
            self.wake_channel,
            self.announce_max,
            int(self.interval * 1000),
            *extra,
        ]
        return keys, args

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
        keys: list[str] = []
        for channel in channels:
            keys += [ks.occupants(channel), ks.state(channel)]
        args = [_ms(now), offset, limit, int(with_uuids), int(with_state)]
        replies = await self._batch.call(self._here_now, keys, args)
        out = []
        for channel, (occupancy, uuids, states) in zip(channels, replies, strict=True):
            parsed = [orjson.loads(s) if s else None for s in states] if with_state else []
            out.append(HereNowChannel(channel, int(occupancy), list(uuids), parsed))
        return out


async def _batched(items: AsyncIterator[str], size: int) -> AsyncIterator[list[str]]:
    batch: list[str] = []
    async for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _ms(now: float) -> int:
    return int(now * 1000)


def _num(value: float | None) -> str:
    return "" if value is None else repr(float(value))
