"""Publishing and reading logs: messages in (publish.lua), subscribe reads and cursors out.

Sharing one read among many polls is not done here but by the long-poll owner (longpoll.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from presence_server.store.core import StoreCore, timetoken_at
from presence_server.store.fields import (
    EVENT_ACTION,
    EVENT_UUID,
    MESSAGE_BODY,
    MESSAGE_CUSTOM_TYPE,
    MESSAGE_EXPIRES,
    MESSAGE_KIND,
    MESSAGE_LIVE_ONLY,
    MESSAGE_META,
    MESSAGE_PUBLISHER,
    LogEntry,
)
from presence_server.store.keys import KeysetKeys
from presence_server.store.subscription import Delivery, ReadResult, Resolved, Subscription


class Logs(StoreCore):
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
        store: bool = True,
        ttl_hours: float = 0.0,
    ) -> str:
        """Append a message (JSON text) to the channel's log; returns its timetoken.

        With history on, the log keeps what retention keeps (and at most ``history_max`` entries);
        ``store=False`` marks a message for live delivery only, and ``ttl_hours`` (above 0 and
        shorter than retention) makes it leave history earlier.
        """
        ks = self.keys(sub_key)
        keys, args = self._mutation_call(ks, now, (), [channel])
        keys += self._history_keys(ks, channel)
        retention = self.history_retention
        shown = retention > 0 and store and kind is None
        expires = ""
        if shown and 0 < ttl_hours * 3600 < retention:
            expires = str(int((now + ttl_hours * 3600) * 1000))
        if retention > 0:
            args += [self.history_max, str(self._oldest(now)).zfill(17), int(retention) + 60]
        else:
            args += [self.log_size, "", 0]
        args += ["1" if shown else "0", expires, MESSAGE_BODY, message]
        optional = (
            (MESSAGE_PUBLISHER, publisher),
            (MESSAGE_META, meta),
            (MESSAGE_KIND, kind),
            (MESSAGE_CUSTOM_TYPE, custom_type),
            # Published while history is off: not history's, should it be turned on later.
            (MESSAGE_LIVE_ONLY, None if store and retention > 0 else 1),
            (MESSAGE_EXPIRES, expires or None),
        )
        for name, value in optional:
            if value is not None:
                args += [name, value]
        timetoken = str(await self._batch.call(self._publish, keys, args))
        self.counts["publish"] += 1
        return timetoken

    async def cursor(self, sub_key: str, *, now: float) -> str:
        """A subscribe cursor for now: every entry appended from here on has a later timetoken."""
        last = await self.redis.get(self.keys(sub_key).timetoken)
        if last is not None and len(last) > 19:
            last = None  # beyond any stream id: written by an older server, never used by an entry
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
            if fields.get(EVENT_ACTION) == "join" and fields.get(EVENT_UUID) == uuid
        ]
        return str(min(joins)) if joins else None

    async def read_log(self, sub_key: str, channel: str, after: str | None = None) -> list[LogEntry]:
        """Entries of a channel's presence log with a timetoken above ``after`` (all of them when None)."""
        start = f"({after}-0" if after else "-"
        entries = cast(
            "list[tuple[str, dict[str, str]]]",
            await self.redis.xrange(self.keys(sub_key).log(channel), min=start, max="+"),
        )
        return [LogEntry(entry_id.partition("-")[0], fields) for entry_id, fields in entries]

    async def read(self, sub_key: str, subscription: Subscription, after: str, *, limit: int = 100) -> ReadResult:
        """The first ``limit`` entries after the cursor over everything the subscription matches, in
        timetoken order, the cursor to read from next, and the logs that were read.

        The logs are read in one MULTI, so the cursor covers a consistent cut: an entry committed
        after the read has a later timetoken than everything returned and is found next time.
        Group members and wildcard matches are read in the same MULTI and the read is repeated
        when they changed since they were resolved, so a new channel's first entries are not skipped.
        """
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
