"""Driving the real JavaScript client, ``pubnub@7.3.3``, through ``tests/e2e/js/listen.mjs``: one Node
process, started with ``asyncio.create_subprocess_exec`` so that the in-process live server keeps serving
on the test's event loop, holds every client a test makes. The test writes one JSON command a line to its
stdin (make a client, call a method on one) and reads one JSON line per command reply, per listener
callback and per HTTP request from its stdout. Every wait is bounded by ``WAIT``; a crash or an early exit
of Node fails the wait at once with what Node said.

``JsDriver`` is the common part: the commands, and what each client heard. Test modules subclass it for
the views of the request log and of messages they need."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from tests.e2e.live import JS_DIR

LISTENER = JS_DIR / "listen.mjs"
WAIT = 5.0

Event = dict[str, Any]


class NodeExited(AssertionError):
    pass


class JsDriver:
    """One Node process running ``listen.mjs``: commands in; replies, heard events and sent requests out."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []
        self.stderr = b""
        self.ended = False
        self._changed = asyncio.Condition()
        self._ids = itertools.count(1)
        self._taken: dict[tuple[str, str], int] = {}
        self._uuids: dict[str, str] = {}
        self._reader = asyncio.create_task(self._read())
        self._errors = asyncio.create_task(self._read_stderr())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"stdout": raw.decode(errors="replace")}  # e.g. a console.log warning of the SDK
            async with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        async with self._changed:
            self.ended = True
            self._changed.notify_all()

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = await self.proc.stderr.read()

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()
        await asyncio.gather(self._reader, self._errors, return_exceptions=True)

    def _failure(self) -> str:
        crashed = [line for line in self.lines if "crashed" in line]
        return f"node ended (exit {self.proc.returncode}); crash: {crashed}; stderr: {self.stderr.decode()}"

    async def _wait_for(self, found: Callable[[], Any], what: str) -> Any:
        async def wait() -> Any:
            async with self._changed:
                while (result := found()) is None:
                    if self.ended or any("crashed" in line for line in self.lines):
                        raise NodeExited(self._failure())
                    await self._changed.wait()
                return result

        try:
            return await asyncio.wait_for(wait(), WAIT)
        except TimeoutError:
            raise AssertionError(f"no {what} within {WAIT} s; heard so far: {self.lines}") from None

    async def _send(self, command: dict[str, Any]) -> dict[str, Any]:
        ident = next(self._ids)
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"id": ident, **command}).encode() + b"\n")
        await self.proc.stdin.drain()

        def reply() -> dict[str, Any] | None:
            return next((line for line in self.lines if line.get("reply") == ident), None)

        answer: dict[str, Any] = await self._wait_for(reply, f"reply to {command}")
        return answer

    # -- commands -------------------------------------------------------------------------------

    async def client(self, name: str, config: dict[str, Any] | None = None, *, user_id: str | None = None) -> None:
        """A new client ``name`` (``userId`` = ``user_id`` or ``name``, then ``config``) with a listener
        reporting all it hears."""
        self._uuids[name] = user_id or name
        full = {"userId": self._uuids[name], **(config or {})}
        answer = await self._send({"op": "client", "name": name, "config": full})
        assert "error" not in answer, answer

    def uuid(self, name: str) -> str:
        """The ``userId`` client ``name`` was made with."""
        return self._uuids[name]

    async def attempt(self, who: str, method: str, *args: Any) -> dict[str, Any]:
        """The reply to ``who.method(arg)`` (at most one argument): ``{"result": ...}`` or ``{"error": ...}``."""
        command: dict[str, Any] = {"op": "call", "as": who, "call": method}
        if args:
            (command["args"],) = args
        return await self._send(command)

    async def call(self, who: str, method: str, *args: Any) -> Any:
        answer = await self.attempt(who, method, *args)
        assert "error" not in answer, f"{who}.{method}{args} failed: {answer['error']}"
        return answer["result"]

    async def subscribe(self, who: str, **args: Any) -> Event:
        """Subscribe and wait for the connected status (the handshake answer: ``who`` is present)."""
        await self.call(who, "subscribe", args)
        return await self.status(who, "PNConnectedCategory")

    # -- what the clients heard -----------------------------------------------------------------

    def heard(self, who: str, kind: str) -> list[Event]:
        return [line["event"] for line in self.lines if line.get("from") == who and line.get("kind") == kind]

    async def next(self, who: str, kind: str) -> Event:
        """The next ``kind`` event ``who`` heard that no earlier ``next`` returned, in hearing order."""
        key = (who, kind)

        def found() -> Event | None:
            events = self.heard(who, kind)
            taken = self._taken.get(key, 0)
            if len(events) <= taken:
                return None
            self._taken[key] = taken + 1
            return events[taken]

        event: Event = await self._wait_for(found, f"{kind} heard by {who}")
        return event

    def unread(self, who: str, kind: str) -> list[Event]:
        return self.heard(who, kind)[self._taken.get((who, kind), 0) :]

    async def status(self, who: str, category: str | None, operation: str | None = None) -> Event:
        """The next status with this category (and operation); others are passed over. 7.3.3 gives the
        status of a successful ``/leave`` no category at all."""
        while True:
            event = await self.next(who, "status")
            if event.get("category") == category and operation in (None, event.get("operation")):
                return event

    async def heard_status(self, who: str, category: str, operation: str) -> Event:
        """The first status of this category and operation ``who`` heard, whether or not ``next`` or
        ``status`` passed over it."""

        def found() -> Event | None:
            statuses = self.heard(who, "status")
            return next((e for e in statuses if (e.get("category"), e.get("operation")) == (category, operation)), None)

        event: Event = await self._wait_for(found, f"{category} {operation} status heard by {who}")
        return event


Driver = TypeVar("Driver", bound=JsDriver)
# One reply is one stdout line: one holding near-32-KiB messages is about 100 KB, past asyncio's 64 KiB default.
LINE_LIMIT = 1 << 20


@contextlib.asynccontextmanager
async def running(driver: type[Driver], node: str, origin: str, sub_key: str) -> AsyncIterator[Driver]:
    """``listen.mjs`` against the server at ``origin`` (``sub_key`` for clients whose config names
    none), driven by a ``driver``; Node is killed at the end."""
    proc = await asyncio.create_subprocess_exec(
        node,
        str(LISTENER),
        origin,
        sub_key,
        cwd=JS_DIR,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        limit=LINE_LIMIT,
    )
    clients = driver(proc)
    try:
        yield clients
    finally:
        await clients.close()
