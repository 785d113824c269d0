"""The expiry sweeper: runs in every server process, without a leader.

Each sweep is a compare-and-remove inside Redis (sweep.lua), so concurrent sweepers report every
timeout exactly once; the loop itself only keeps cadence and survives Redis outages.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from presence_server.store import PresenceStore

log = logging.getLogger("presence_server.sweeper")

MAX_BACKOFF = 30.0
RECONCILE_EVERY = 60  # sweeps between repairs of the global due index (PresenceStore.reconcile)


class Sweeper:
    def __init__(self, store: PresenceStore, clock: Callable[[], float], interval: float) -> None:
        self.store = store
        self.clock = clock
        self.interval = interval
        self.sweeps = 0
        self.timeouts = 0

    async def run_once(self) -> int:
        """One sweep at the clock's current time; returns how many users timed out."""
        removed = await self.store.sweep(now=self.clock())
        self.sweeps += 1
        self.timeouts += removed
        return removed

    async def run(self) -> None:
        """Sweep every ``interval`` seconds until cancelled; errors are logged and retried with backoff."""
        delay = self.interval
        failing = False
        while True:
            try:
                await self.run_once()
                if self.sweeps % RECONCILE_EVERY == 1:  # after the first sweep, then every so often
                    await self.store.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = min(max(delay * 2, self.interval), MAX_BACKOFF)
                if not failing:
                    log.warning("redis lost: sweep failed, retrying with backoff: %s", exc)
                failing = True
            else:
                if failing:
                    log.info("redis regained: sweeping again")
                failing = False
                delay = self.interval
            await asyncio.sleep(delay)
