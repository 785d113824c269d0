"""The one way tests wait for something another task or process makes true: poll a condition until
a deadline, then fail with a message that says what never happened. Presence time is never waited
for (it is injected); only real-time effects are: a poll getting held, a process answering."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

Condition = Callable[[], bool | Awaitable[bool]]


async def wait_until(
    condition: Condition, within: float = 5.0, *, what: str | Callable[[], str] = "", interval: float = 0.01
) -> None:
    """Return once ``condition()`` (a plain or async callable) is true; fail after ``within`` seconds.

    ``what`` names what was awaited in the failure message; a callable is asked at the time of failure
    (for a log or the last answer seen)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        outcome = condition()
        if await outcome if inspect.isawaitable(outcome) else outcome:
            return
        if loop.time() >= deadline:
            raise AssertionError(_failure(condition, within, what))
        await asyncio.sleep(interval)


def wait_until_blocking(
    condition: Callable[[], bool], within: float = 5.0, *, what: str | Callable[[], str] = "", interval: float = 0.02
) -> None:
    """``wait_until`` for code outside an event loop (fixtures that start processes)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(_failure(condition, within, what))
        time.sleep(interval)


def _failure(condition: Callable[[], object], within: float, what: str | Callable[[], str]) -> str:
    described = what() if callable(what) else what
    if not described:  # the condition's own source line, e.g. ``wait_until(lambda: waiting(held) == 1)``
        try:
            described = inspect.getsource(condition).strip()
        except (OSError, TypeError):
            described = repr(condition)
    return f"not within {within} s: {described}"
