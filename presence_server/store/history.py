"""Message history (docs/protocol.md 12): reads, counts and deletes over the channels' message logs.

History reads the very logs subscribe catches up from (``KeysetKeys.messages``), so the two never
disagree. What history does not show is filtered on read: signals, messages published with
``store=0``, messages past their own ttl, and anything older than retention that the trim on write has
not reached yet (a log nobody writes to expires as a whole, retention after its last message).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import cast

from presence_server.store.core import StoreCore, ms
from presence_server.store.fields import MESSAGE_EXPIRES, MESSAGE_KIND, MESSAGE_LIVE_ONLY

# Message counts stop counting a channel here, as PubNub's do.
MAX_COUNT = 10_000
Entry = tuple[str, dict[str, str]]


@dataclasses.dataclass(frozen=True)
class Walk:
    """Which entries a history read takes: from ``start`` (exclusive) towards ``end`` (inclusive)."""

    start: int | None = None
    end: int | None = None
    reverse: bool = False

    def bounds(self) -> tuple[bool, int | None, bool, int | None, bool] | None:
        """(ascending, low, low inclusive, high, high inclusive), None bounds open; None when empty."""
        found = self._bounds()
        if found is not None and found[3] == 0 and not found[4]:
            return None  # below timetoken 0: nothing (and Redis refuses an exclusive end at 0-0)
        return found

    def _bounds(self) -> tuple[bool, int | None, bool, int | None, bool] | None:
        start, end = self.start, self.end
        if start is not None and end is not None:
            if start == end:
                return None
            return (False, end, True, start, False) if start > end else (True, start, False, end, True)
        if start is not None:
            return (True, start, False, None, True) if self.reverse else (False, None, True, start, False)
        if end is not None:
            return (True, end, True, None, True) if self.reverse else (False, end, True, None, True)
        return (self.reverse, None, True, None, True)


def _id(tt: int | None, inclusive: bool, open_end: str) -> str:
    if tt is None:
        return open_end
    return f"{tt}-0" if inclusive else f"({tt}-0"


def _tt(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])


class History(StoreCore):
    @staticmethod
    def _shown(fields: dict[str, str], now_ms: int) -> bool:
        if MESSAGE_KIND in fields or MESSAGE_LIVE_ONLY in fields:
            return False
        expires = fields.get(MESSAGE_EXPIRES)
        return expires is None or int(expires) > now_ms

    async def history(self, sub_key: str, channel: str, walk: Walk, count: int, *, now: float) -> list[Entry]:
        """Up to ``count`` messages of the walk, oldest first."""
        bounds = walk.bounds()
        if bounds is None or count < 1:
            return []
        ascending, low, low_in, high, high_in = bounds
        oldest = self._oldest(now)
        if low is None or low < oldest or (low == oldest and not low_in):
            low, low_in = oldest, True
        if high is not None and (high < low or (high == low and not (high_in and low_in))):
            return []
        key, now_ms = self.keys(sub_key).messages(channel), ms(now)
        lo, hi = _id(low, low_in, "-"), _id(high, high_in, "+")
        found: list[Entry] = []
        batch = count  # mostly all shown; what signals or store=0 left out is topped up after
        while len(found) < count:
            if ascending:
                entries = cast("list[Entry]", await self.redis.xrange(key, min=lo, max=hi, count=batch))
            else:
                entries = cast("list[Entry]", await self.redis.xrevrange(key, max=hi, min=lo, count=batch))
            found += [entry for entry in entries if self._shown(entry[1], now_ms)]
            if len(entries) < batch:
                break
            if ascending:
                lo = f"({entries[-1][0]}"
            else:
                hi = f"({entries[-1][0]}"
            batch = min(max(batch * 2, 16), 1000)
        found = found[:count]
        return found if ascending else found[::-1]

    async def history_counts(self, sub_key: str, after: Sequence[tuple[str, int]], *, now: float) -> dict[str, int]:
        """How many messages each channel holds past its timetoken (exclusive), at most MAX_COUNT.

        One script call for every channel (history_counts.lua), which subtracts ranks rather than
        read the messages in between: a few commands per channel, however many it counts.
        """
        ks, floor = self.keys(sub_key), self._oldest(now) - 1
        keys = [key for channel, _ in after for key in self._history_keys(ks, channel)]
        args: list[str | int] = [ms(now), MAX_COUNT, *(max(tt, floor, 0) for _, tt in after)]
        counts = await self._history_counts(keys=keys, args=args)
        return {channel: int(count) for (channel, _), count in zip(after, counts, strict=True)}

    async def delete_history(self, sub_key: str, channel: str, walk: Walk) -> int:
        """Delete the walk's messages (every one between the bounds, no count); returns how many went."""
        bounds = walk.bounds()
        if bounds is None:
            return 0
        _, low, low_in, high, high_in = bounds
        keys = self._history_keys(self.keys(sub_key), channel)
        ids = [_id(low, low_in, "-"), _id(high, high_in, "+")]
        return int(await self._history_delete(keys=keys, args=[*ids, int(self.history_retention) + 60]))
