"""The server's clock: wall-clock time plus an offset that only the admin API moves."""

from __future__ import annotations

import time
from collections.abc import Callable


class Clock:
    def __init__(self, base: Callable[[], float] = time.time) -> None:
        self.base = base
        self.offset = 0.0

    def __call__(self) -> float:
        return self.base() + self.offset

    def set_offset(self, offset: float) -> None:
        # Only forward: an admin clock that went back would make deadlines reappear.
        self.offset = max(self.offset, offset)
