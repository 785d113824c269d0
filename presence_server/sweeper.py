"""The expiry sweeper: runs in every server process, without a leader.

Each sweep is a compare-and-remove inside Redis (sweep.lua), so concurrent sweepers report every
timeout exactly once; the loop itself only keeps cadence and survives Redis outages.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from presence_server.logs import REDIS_DOWN, RedisOutage
from presence_server.store import PresenceStore

log = logging.getLogger("presence_server.sweeper")

# While Redis cannot be reached, a sweep is tried again this often: sweeping resumes within about
# this of Redis answering again (a refused connection costs next to nothing). Other failures back
# off, up to MAX_BACKOFF, since trying again at once would most likely fail the same way.
OUTAGE_RETRY = 0.25
MAX_BACKOFF = 30.0
RECONCILE_EVERY = 60  # sweeps between repairs of the global due index (PresenceStore.reconcile)


class Sweeper:
    def __init__(
        self,
        store: PresenceStore,
        clock: Callable[[], float],
        interval: float,
        outage: RedisOutage | None = None,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.store = store
        self.clock = clock
        self.interval = interval
        self.outage = outage if outage is not None else RedisOutage()
        self.sleep = sleep
        self.sweeps = 0
        self.timeouts = 0

    async def run_once(self) -> int:
        """One sweep at the clock's current time; returns how many users timed out."""
        removed = await self.store.sweep(now=self.clock())
        self.sweeps += 1
        self.timeouts += removed
        return removed

    async def run(self) -> None:
        """Sweep every ``interval`` seconds until cancelled; errors are logged once and retried."""
        backoff = self.interval
        failing = False
        while True:
            try:
                await self.run_once()
                if self.sweeps % RECONCILE_EVERY == 1:  # after the first sweep, then every so often
                    await self.store.reconcile()
            except asyncio.CancelledError:
                raise
            except REDIS_DOWN as exc:
                self.outage.failed("a sweep", exc, request=False)
                delay = min(self.interval, OUTAGE_RETRY)
            except Exception as exc:
                backoff = min(max(backoff * 2, self.interval), MAX_BACKOFF)
                delay = backoff
                if not failing:
                    log.warning("sweep failed, retrying with backoff: %s", exc, exc_info=exc)
                failing = True
            else:
                self.outage.answered()
                if failing:
                    log.info("sweeping again")
                failing = False
                backoff = delay = self.interval
            await self.sleep(delay)
