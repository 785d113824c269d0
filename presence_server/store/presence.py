"""Presence writes: heartbeats, leaves and state changes, each one script (heartbeat/leave/set_state.lua),
and renew.lua or refresh.lua first for a heartbeat that may be a plain refresh (store/refreshes.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

from presence_server.store import fields
from presence_server.store.core import SCRIPT_CHANNELS, StoreCore, channel_names, chunks, ms
from presence_server.store.fields import TIMEOUT_IN_KEY, timeout_code
from presence_server.store.keys import KeysetKeys

_IN_KEY = str(TIMEOUT_IN_KEY)


class _Timing(NamedTuple):
    """When a heartbeat came and the timeout it sent, as PresenceWrites.heartbeat worked them out."""

    now: float
    now_ms: int
    timeout: float | None  # None: none sent
    code: str  # of the timeout sent ('' with none)
    score: str  # the one refresh scripts write ('' with none sent, or one no code tells)
    deadline: int  # the one the score gives (0 with none sent)


class PresenceWrites(StoreCore):
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
        member = fields.member(uuid)
        now_ms = ms(now)
        code, score, deadline = self._sent(now_ms, timeout)
        refreshable = code != _IN_KEY
        if not groups and not states:
            # Most heartbeats: channels named directly, no state, most often a plain refresh. Tried
            # here with the least work; _write serves what it leaves (and does not try it again).
            names = channel_names(channels)
            if not names:
                return 0
            if refreshable and len(names) <= SCRIPT_CHANNELS:
                refreshed = await self._refreshes.refresh(ks, now_ms, member, score, deadline, names)
                if refreshed is not None:
                    if refreshed:
                        await self._detach(self._note_keyset(sub_key, float(refreshed)))
                    return 0
                refreshable = False
            targets: Sequence[tuple[str, str | None]] = [(ch, None) for ch in names]
        else:
            targets = await self._expand(ks, channels, groups)
            if not targets:
                return 0
        timing = _Timing(now, now_ms, timeout, code, score, deadline)
        return await self._write(ks, uuid, member, targets, timing, refreshable, states)

    def _sent(self, now_ms: int, timeout: float | None) -> tuple[str, str, int]:
        """The code of the timeout sent, the score refresh scripts take and the deadline it gives
        ('', '' and 0 with none sent; no score for a timeout no code tells)."""
        if timeout is None:
            return "", "", 0
        deadline = now_ms + int(timeout * 1000)
        number = timeout_code(timeout, self.default_timeout, deadline)
        return str(number), "" if number == TIMEOUT_IN_KEY else fields.deadline_text(deadline, number), deadline

    async def _write(
        self,
        ks: KeysetKeys,
        uuid: str,
        member: str,
        targets: Sequence[tuple[str, str | None]],
        timing: _Timing,
        refreshable: bool,
        states: Mapping[str, str] | None,
    ) -> int:
        """A heartbeat's script calls, SCRIPT_CHANNELS channels at a time: a refresh where it may be
        one (``refreshable``), else heartbeat.lua. Returns the joins."""
        now, now_ms, timeout, code, score, deadline = timing
        joins, earlier, written = 0, "", False
        for part in chunks(targets):
            names = [channel for channel, _ in part]
            part_states = [states.get(ch, states.get(group or "", "")) for ch, group in part] if states else None
            part_earlier: str | None = None
            if refreshable and not (part_states and any(part_states)):
                # Most heartbeats only move deadlines on: a refresh script does that, or says it cannot.
                part_earlier = await self._refreshes.refresh(ks, now_ms, member, score, deadline, names)
            if part_earlier is None:
                extra = [uuid, member, _num(timeout), code, _num(self.default_timeout)]
                keys, args = self._mutation_call(ks, now, names, extra, uuid)
                for channel, state in zip(names, part_states or [""] * len(names), strict=True):
                    args += [channel, state]
                part_joins, part_earlier = await self._batch.call(self._heartbeat, keys, args)
                joins += int(part_joins)
                written = True
            if part_earlier and (not earlier or float(part_earlier) < float(earlier)):
                earlier = part_earlier
        self.counts["join"] += joins
        if written:
            self._presence_written(ks.sub_key)
        if earlier:
            # The global index lives in another cluster slot, so this cannot be part of the script.
            # Shielded: a client that goes away must not leave a join the sweeper never looks at;
            # and the sweeper reconciles from time to time in case this write failed outright.
            await self._detach(self._note_keyset(ks.sub_key, float(earlier)))
        return int(joins)

    async def _note_keyset(self, sub_key: str, upcoming: float) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self._keysets_due, {sub_key: upcoming}, lt=True)
            pipe.sadd(self._keysets_known, sub_key)
            await pipe.execute()

    async def leave(
        self, sub_key: str, uuid: str, channels: Sequence[str], groups: Sequence[str] = (), *, now: float
    ) -> int:
        """Remove ``uuid`` from the channels (and groups' channels); returns how many it left.

        Every process hears of the leave (leave.lua's wake-up names the uuid), this one at once.
        """
        ks = self.keys(sub_key)
        targets = await self._expand(ks, channels, groups)
        if not targets:
            return 0
        left = 0
        for part in chunks(targets):
            keys, args = self._mutation_call(ks, now, (ch for ch, _ in part), [uuid, fields.member(uuid)])
            args += [channel for channel, _ in part]
            left += int(await self._batch.call(self._leave, keys, args))
        self.counts["leave"] += left
        if left:
            self._presence_written(sub_key)
        self._departed(sub_key, uuid)
        return left

    async def set_state(
        self, sub_key: str, uuid: str, channels: Sequence[str], groups: Sequence[str], state: str, *, now: float
    ) -> int:
        """Replace ``uuid``'s state (JSON object text; ``{}`` clears) on the channels and groups' channels."""
        ks = self.keys(sub_key)
        targets = await self._expand(ks, channels, groups)
        if not targets:
            return 0
        changed = 0
        for part in chunks(targets):
            keys, args = self._mutation_call(ks, now, (ch for ch, _ in part), [uuid, fields.member(uuid), state])
            args += [channel for channel, _ in part]
            changed += int(await self._batch.call(self._set_state, keys, args))
        self.counts["state-change"] += changed
        if changed and self.webhook_backlog:
            if sub_key not in self._hooked_keysets:
                # A state change needs no join first: the webhook sender must learn of the keyset too.
                await self.redis.sadd(self._keysets_known, sub_key)
                self._hooked_keysets.add(sub_key)
            self._presence_written(sub_key)
        return changed


def _num(value: float | None) -> str:
    return "" if value is None else repr(float(value))
