"""The server's clock: a base time (the wall clock, or one a test injects) plus an offset that only the
admin API moves. Every app holds one ``Clock``, so the admin API never has to ask whether it can move it."""

from __future__ import annotations

import time
from collections.abc import Callable


class Clock:
    """``base() + offset``; the offset only moves forward."""

    def __init__(self, base: Callable[[], float] = time.time) -> None:
        self.base = base
        self.offset = 0.0

    def __call__(self) -> float:
        return self.base() + self.offset

    def set_offset(self, offset: float) -> None:
        # Only forward: an admin clock that went back would make deadlines reappear.
        self.offset = max(self.offset, offset)


def clock_of(clock: Clock | Callable[[], float] | None) -> Clock:
    """The app's Clock: the one given, or one over the given base time (the wall clock by default)."""
    if isinstance(clock, Clock):
        return clock
    return Clock(clock if clock is not None else time.time)
