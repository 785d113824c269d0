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
COUNT_STEP = 1000
Entry = tuple[str, dict[str, str]]


@dataclasses.dataclass(frozen=True)
class Walk:
    """Which entries a history read takes: from ``start`` (exclusive) towards ``end`` (inclusive)."""

    start: int | None = None
    end: int | None = None
    reverse: bool = False

    def bounds(self) -> tuple[bool, int | None, bool, int | None, bool] | None:
        """(ascending, low, low inclusive, high, high inclusive), None bounds open; None when empty."""
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
    def _oldest(self, now: float) -> int:
        """The oldest timetoken retention keeps."""
        return max(0, int((now - self.history_retention) * 10_000_000))

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

        Every channel is read in one pipeline per step of 1,000 entries, so a request costs one round
        trip when its channels hold fewer newer entries than that (a badge's "since I last looked").
        """
        ks, now_ms, oldest = self.keys(sub_key), ms(now), self._oldest(now)
        counts = dict.fromkeys((channel for channel, _ in after), 0)
        pending = {channel: (f"({tt}-0" if tt >= oldest else f"{oldest}-0") for channel, tt in after}
        while pending:
            async with self.redis.pipeline(transaction=False) as pipe:
                for channel, low in pending.items():
                    pipe.xrange(ks.messages(channel), min=low, max="+", count=COUNT_STEP)
                replies = cast("list[list[Entry]]", await pipe.execute())
            following: dict[str, str] = {}
            for (channel, _), entries in zip(pending.items(), replies, strict=True):
                counts[channel] += sum(1 for _, fields in entries if self._shown(fields, now_ms))
                if len(entries) == COUNT_STEP and counts[channel] < MAX_COUNT:
                    following[channel] = f"({entries[-1][0]}"
            pending = following
        return {channel: min(count, MAX_COUNT) for channel, count in counts.items()}

    async def delete_history(self, sub_key: str, channel: str, walk: Walk) -> int:
        """Delete the walk's messages (every one between the bounds, no count); returns how many went."""
        bounds = walk.bounds()
        if bounds is None:
            return 0
        _, low, low_in, high, high_in = bounds
        key = self.keys(sub_key).messages(channel)
        return int(await self._history_delete(keys=[key], args=[_id(low, low_in, "-"), _id(high, high_in, "+")]))
