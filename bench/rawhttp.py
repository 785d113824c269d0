"""A minimal HTTP/1.1 keep-alive client on asyncio protocols, for the live benchmark.

It is cheaper per request than aiohttp's client (no per-request objects beyond one parse), which
matters when one process holds a thousand long-polls, and it timestamps every response in
``data_received``, the moment its last byte is read from the socket, before any parsing. It speaks
only what the server answers: responses framed by Content-Length, one request in flight per
connection.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import re
import resource
import time
from typing import cast

CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
CHUNKED = re.compile(rb"\r\ntransfer-encoding:[ \t]*chunked", re.IGNORECASE)


class ProtocolError(Exception):
    """The server answered something this client does not parse (chunked, no Content-Length)."""


class ResponseParser:
    """Splits a byte stream into (status, body) responses framed by Content-Length."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buffer += data
        done: list[tuple[int, bytes]] = []
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return done
            head = bytes(self._buffer[:end])
            length = CONTENT_LENGTH.search(head)
            if length is None or CHUNKED.search(head):
                raise ProtocolError(f"unframed response: {head[:200]!r}")
            total = end + 4 + int(length.group(1))
            if len(self._buffer) < total:
                return done
            done.append((int(head[9:12]), bytes(self._buffer[end + 4 : total])))
            del self._buffer[:total]


def request_bytes(path: str, host: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\n\r\n".encode()


@dataclasses.dataclass
class Response:
    status: int
    body: bytes
    received: float  # time.monotonic() when its last byte was read


class HttpClient(asyncio.Protocol):
    """One keep-alive connection; ``await client.get(path)`` sends a request and returns its Response."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.parser = ResponseParser()
        self.transport: asyncio.Transport | None = None
        self.waiting: collections.deque[asyncio.Future[Response]] = collections.deque()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        for status, body in self.parser.feed(data):
            future = self.waiting.popleft()
            if not future.done():
                future.set_result(Response(status, body, now))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(ConnectionError(f"connection to {self.host} closed: {exc}"))

    async def get(self, path: str) -> Response:
        if self.transport is None or self.closed:
            raise ConnectionError(f"not connected to {self.host}")
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        self.transport.write(request_bytes(path, self.host))
        return await future

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def connect(port: int, host: str = "127.0.0.1") -> HttpClient:
    _, client = await asyncio.get_running_loop().create_connection(lambda: HttpClient(f"{host}:{port}"), host, port)
    return client


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's soft open-file limit towards ``wanted`` (children inherit it); returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return int(soft)


class LagMonitor:
    """How late a periodic timer fires: the longest time this event loop was busy with other callbacks.

    A response that arrives while the loop is busy waits in the socket buffer until the loop gets to
    it, so the largest lag bounds what the generator adds to any latency it measures.
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.lags: list[float] = []
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._schedule(loop, loop.time() + self.interval)

    def _schedule(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        self._handle = loop.call_at(due, self._tick, loop, due)

    def _tick(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        now = loop.time()
        self.lags.append(max(0.0, now - due))
        self._schedule(loop, now + self.interval)

    def take(self) -> list[float]:
        """The lags (s) seen since the last call, sorted."""
        lags, self.lags = sorted(self.lags), []
        return lags

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
