"""What every part of the store shares: the Redis client, its settings, the scripts and their calling convention."""

from __future__ import annotations

import asyncio
import collections
import functools
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from importlib import resources
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from presence_server.store import topology
from presence_server.store.batch import ScriptBatcher
from presence_server.store.fields import lua_header
from presence_server.store.keys import KeysetKeys, clock_offset, keysets_due, keysets_known
from presence_server.store.refreshes import Refreshes
from presence_server.store.subscription import is_presence_name

# Called with (subscribe key, uuid) when a user left channels of the keyset in this process, and
# with (subscribe key, None) when the keyset was reset: whatever is remembered about them must go.
Departure = Callable[[str, str | None], None]
T = TypeVar("T")


@functools.lru_cache(maxsize=4096)
def _keyset_keys(prefix: str, sub_key: str) -> KeysetKeys:
    # Key names are built on every call: a keyset's fixed ones are built once here.
    return KeysetKeys(prefix, sub_key)


class ClockOutOfRange(Exception):
    """The clock reads a time no 17-digit timetoken can tell (before 1973 or after 2286)."""


def timetoken_at(now: float) -> str:
    """The 17-digit PubNub timetoken (100 ns units) of a Unix time.

    Raises ClockOutOfRange rather than hand out another length: every script takes its time from
    here before it writes, so a clock moved too far (the admin API bounds its moves) writes nothing
    that a later read, a cursor check or Redis's 64-bit INCR could not take back.
    """
    timetoken = str(int(now * 10_000_000))
    if len(timetoken) != 17:
        raise ClockOutOfRange(f"the clock reads {now!r} s, which no 17-digit timetoken tells")
    return timetoken


def ms(now: float) -> int:
    return int(now * 1000)


# At most this many channels go into one script call: a request naming many channels, or groups of
# up to 2,000 each, becomes several calls, so that no single one holds Redis (or, on memory://, the
# event loop) for long. Each call is atomic over its own channels only.
SCRIPT_CHANNELS = 500


def channel_names(channels: Sequence[str], presence_names: bool = False) -> list[str]:
    """The channels once each, in order (``-pnpres`` names dropped unless ``presence_names``)."""
    if len(channels) == 1:  # most heartbeats name one channel: nothing to dedupe
        return [] if not presence_names and is_presence_name(channels[0]) else [channels[0]]
    return [ch for ch in dict.fromkeys(channels) if presence_names or not is_presence_name(ch)]


def unique_channels(channels: Sequence[str], presence_names: bool = False) -> list[tuple[str, str | None]]:
    """``channel_names``, each of no group."""
    return [(ch, None) for ch in channel_names(channels, presence_names)]


def chunks(items: Sequence[T], size: int = SCRIPT_CHANNELS) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _lua(name: str) -> str:
    return (resources.files("presence_server.store") / "lua" / f"{name}.lua").read_text()


def _load_script(redis: aioredis.Redis, name: str, *, with_common: bool, with_header: bool = False) -> AsyncScript:
    """A script of lua/; ``with_common`` prepends the field names, deadlines.lua and common.lua,
    ``with_header`` the field names alone."""
    body = _lua(name)
    if with_common:
        body = lua_header() + _lua("deadlines") + _lua("common") + "\n" + body
    elif with_header:
        body = lua_header() + body
    return redis.register_script(body)


class StoreCore:
    """The state every concern of the store works on (see store.py for the concerns)."""

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
        history_retention: float = 0.0,
        history_max: int = 100_000,
        webhook_backlog: int = 0,
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
        # Seconds published messages are kept for history (0: history is off, logs keep log_size).
        self.history_retention = history_retention
        self.history_max = history_max
        # Presence webhooks: the most events a keyset's webhook stream holds (0: webhooks off, the
        # scripts write none). See presence_server/webhooks.py.
        self.webhook_backlog = webhook_backlog
        self._presence_listeners: list[Callable[[str], None]] = []
        self._hooked_keysets: set[str] = set()  # keysets this process recorded as known (set_state)
        self._keysets_due = keysets_due(prefix)
        self._keysets_known = keysets_known(prefix)
        # The shard channel of admin clock moves (every keyset's own wake-ups: KeysetKeys.wake).
        self.clock_channel = clock_offset(prefix)
        self.counts: collections.Counter[str] = collections.Counter()
        self._departures: list[Departure] = []
        self._batch = ScriptBatcher(redis)
        # Writes that outlive the call that made them (shielded from its cancellation): aclose waits
        # for them, or one would use the client after it closed and leave its connection unclosed.
        self._detached: set[asyncio.Task[Any]] = set()
        # One .lua file per atomic operation; the mutating ones share common.lua (its calling
        # convention: ``mutation_call``).
        self._heartbeat = _load_script(redis, "heartbeat", with_common=True)
        # Plain refreshes, tried first (store/presence.py), several in one call: only the names and
        # functions renew.lua and refresh.lua need.
        self._refreshes = Refreshes(
            self._batch,
            redis.register_script(lua_header(("OCC",)) + _lua("deadlines") + _lua("refresh")),
            redis.register_script(lua_header(("OCC",)) + _lua("deadlines") + _lua("renew")),
            default_timeout=repr(float(default_timeout)),
            max_channels=SCRIPT_CHANNELS,
        )
        self._leave = _load_script(redis, "leave", with_common=True)
        self._set_state = _load_script(redis, "set_state", with_common=True)
        self._sweep = _load_script(redis, "sweep", with_common=True)
        self._publish = _load_script(redis, "publish", with_common=True)
        self._here_now = _load_script(redis, "here_now", with_common=False)
        self._group_add = _load_script(redis, "group_add", with_common=False)
        self._group_remove = _load_script(redis, "group_remove", with_common=False)
        self._history_delete = _load_script(redis, "history_delete", with_common=False, with_header=True)
        self._history_counts = _load_script(redis, "history_counts", with_common=False, with_header=True)
        self._hook_lease = _load_script(redis, "hook_lease", with_common=False)

    async def aclose(self) -> None:
        """Let the detached writes finish, then hand the connections the script batcher keeps back to
        the client's pool."""
        if self._detached:
            await asyncio.wait(list(self._detached), timeout=2.0)
        await self._batch.aclose()

    async def _detach(self, work: Coroutine[Any, Any, None]) -> None:
        """``work`` to the end even if the caller is cancelled, and awaited by aclose."""
        task = asyncio.ensure_future(work)
        self._detached.add(task)
        task.add_done_callback(self._detached.discard)
        await asyncio.shield(task)

    def keys(self, sub_key: str) -> KeysetKeys:
        return _keyset_keys(self.prefix, sub_key)

    def _oldest(self, now: float) -> int:
        """The oldest timetoken history keeps (retention back from ``now``)."""
        return max(0, int((now - self.history_retention) * 10_000_000))

    @staticmethod
    def _history_keys(ks: KeysetKeys, channel: str) -> list[str]:
        """A channel's message log and what history keeps beside it, in the order the scripts take them."""
        return [ks.messages(channel), ks.history_gone(channel), ks.history_ttl(channel), ks.history_rank(channel)]

    async def ping(self) -> None:
        """Raise unless Redis answers."""
        await self.redis.ping()

    async def health(self, keysets: Iterable[str] = ()) -> tuple[str | None, list[str]]:
        """Why the store cannot serve (None: it can), and what is lost without stopping it (a cluster
        replica, a sentinel); a lost cluster master's reason names which of ``keysets`` it held."""
        return await topology.check(self.redis, self.prefix, keysets)

    def on_departure(self, callback: Departure) -> None:
        """Call ``callback`` after each leave and keyset reset made through this store."""
        self._departures.append(callback)

    def _departed(self, sub_key: str, uuid: str | None) -> None:
        for callback in self._departures:
            callback(sub_key, uuid)

    def on_presence_events(self, callback: Callable[[str], None]) -> None:
        """With webhooks on: call ``callback(sub_key)`` after each write through this store that may
        have added presence events to the keyset's webhook stream (so they go out without waiting)."""
        self._presence_listeners.append(callback)

    def _presence_written(self, sub_key: str) -> None:
        for callback in self._presence_listeners:
            callback(sub_key)

    async def _expand(
        self, ks: KeysetKeys, channels: Sequence[str], groups: Sequence[str], *, presence_names: bool = False
    ) -> list[tuple[str, str | None]]:
        """Channels plus the channels of each group, once each, with the group each came from.

        ``-pnpres`` names are dropped unless ``presence_names``: they never hold presence.
        """
        if not groups:
            return unique_channels(channels, presence_names)
        async with self.redis.pipeline(transaction=False) as pipe:
            for group in groups:
                pipe.smembers(ks.group(group))
            members: list[Iterable[str]] = await pipe.execute()
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
        """KEYS and ARGV of the scripts that share common.lua's calling convention: its keys, four keys
        per channel, its arguments (in common.lua's order), then the script's own (``extra``)."""
        keys = [ks.timetoken, ks.due, ks.uuid_timeout(uuid), ks.intervals, ks.names, ks.counters]
        keys += [ks.hooks, ks.hooks_active]
        for channel in channels:
            keys += [ks.occupants(channel), ks.state(channel), ks.log(channel), ks.deltas(channel)]
        args: list[Any] = [
            ms(now),
            timetoken_at(now),
            int(now),
            self.log_size,
            self.backstop_seconds,
            ks.sub_key,
            ks.wake,
            self.announce_max,
            int(self.interval * 1000),
            self.webhook_backlog,
            *extra,
        ]
        return keys, args
