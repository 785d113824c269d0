"""Long-polling subscribers of one channel, in a process of their own (started by bench.live).

``python -m bench.fanout_client --port P --channel C --first N --count K``. Each subscriber is one
keep-alive connection with a uuid of its own, as an SDK's: a handshake (``tt=0``), then polls with
the cursor each answer returns, sent again as soon as the answer is read. bench.live publishes
``{"r": round, "t": time.time() at sending}``; a delivery's latency is the answer's arrival minus ``t``.

The arrival is the kernel's receive timestamp (SO_TIMESTAMPNS, CLOCK_REALTIME like time.time()), so
a busy event loop here delays the next poll, not the figure; how late reads were and the loop's lag
are reported beside it. Sockets are read by ``loop.add_reader`` callbacks (no transports, no tasks)
to keep this process's CPU small beside the server's.

JSON lines: on stdout the events ``ready``, ``round`` (every subscriber here got that round) and
``stats``; on stdin the command ``stats``, and ``quit`` (or end of input).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import resource
import socket
import struct
import sys
import time
from typing import Any

import orjson

CONNECT_BATCH = 50  # connections opened at once: the server's listen backlog is 128
SO_TIMESTAMPNS = 35  # Linux: a struct timespec of the packet's arrival, CLOCK_REALTIME
STAMP_SPACE = socket.CMSG_SPACE(16)
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)


class ResponseParser:
    """Splits a byte stream into (status, body) responses framed by Content-Length (all the server sends)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buffer += data
        done: list[tuple[int, bytes]] = []
        while (end := self._buffer.find(b"\r\n\r\n")) >= 0:
            head = bytes(self._buffer[:end])
            length = CONTENT_LENGTH.search(head)
            if length is None:
                raise ValueError(f"unframed response: {head[:200]!r}")
            total = end + 4 + int(length.group(1))
            if len(self._buffer) < total:
                break
            done.append((int(head[9:12]), bytes(self._buffer[end + 4 : total])))
            del self._buffer[:total]
        return done


def request_bytes(path: str, host: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\n\r\n".encode()


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft open-file limit towards ``wanted`` (children inherit it); returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return int(soft)


def worst_ms(seconds: list[float]) -> float:
    return 1000 * max(seconds, default=0.0)


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(event).decode() + "\n")
    sys.stdout.flush()


class Subscriber:
    def __init__(self, crowd: Crowd, uuid: str, sock: socket.socket) -> None:
        self.crowd, self.uuid, self.sock = crowd, uuid, sock
        self.cursor: str | None = None
        self.last_round = -1
        self.parser = ResponseParser()
        self.open = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.open = True
        loop.add_reader(self.sock.fileno(), self.readable)
        self.send()

    def send(self) -> None:
        cursor = "0" if self.cursor is None else f"{self.cursor}&tr=1"
        request = request_bytes(f"{self.crowd.path}?uuid={self.uuid}&heartbeat=300&tt={cursor}", self.crowd.host)
        try:
            if self.sock.send(request) != len(request):  # ~200 bytes into an empty buffer: never partial
                self.close("partial send")
        except OSError as exc:
            self.close(f"send: {exc!r}")

    def readable(self) -> None:
        try:
            data, ancillary, _, _ = self.sock.recvmsg(65536, STAMP_SPACE)
        except BlockingIOError:
            return
        except OSError as exc:
            self.close(f"recv: {exc!r}")
            return
        read_at = time.time()
        if not data:
            self.close("closed by the server")
            return
        arrived = read_at
        for level, kind, stamp in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(stamp) >= 16:
                seconds, nanoseconds = struct.unpack("qq", stamp[:16])
                arrived = seconds + nanoseconds / 1e9
        try:
            answers = self.parser.feed(data)
        except ValueError as exc:
            self.close(str(exc))
            return
        for status, body in answers:
            if self.open:
                self.crowd.answered(self, status, body, arrived, read_at)

    def close(self, reason: str = "") -> None:
        if self.open:
            self.open = False
            if reason and not self.crowd.quitting:
                self.crowd.lost += 1
                self.crowd.error_sample = self.crowd.error_sample or reason
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()


class Crowd:
    """This process's subscribers and what they saw."""

    def __init__(self, port: int, sub_key: str, channel: str, first: int, count: int) -> None:
        self.port, self.host = port, f"127.0.0.1:{port}"
        self.path = f"/v2/subscribe/{sub_key}/{channel}/0"
        self.first, self.count = first, count
        self.subscribers: list[Subscriber] = []
        self.handshaken = 0
        self.ready = asyncio.Event()
        self.quitting = False
        self.latencies: list[tuple[int, float]] = []
        self.read_delays: list[float] = []
        self.delivered: dict[int, int] = {}
        self.stamps = sys.platform.startswith("linux")
        self.empty = self.errors = self.lost = self.duplicates = 0
        self.error_sample = ""

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        for start in range(self.first, self.first + self.count, CONNECT_BATCH):
            numbers = range(start, min(self.first + self.count, start + CONNECT_BATCH))
            socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in numbers]
            for sock in socks:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.stamps:
                    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            await asyncio.gather(*(loop.sock_connect(sock, ("127.0.0.1", self.port)) for sock in socks))
            for n, sock in zip(numbers, socks, strict=True):
                self.subscribers.append(Subscriber(self, f"fan-{n:08d}-0000-4000-8000-000000000000", sock))
                self.subscribers[-1].start(loop)

    def answered(self, subscriber: Subscriber, status: int, body: bytes, arrived: float, read_at: float) -> None:
        if status != 200:
            self.errors += 1
            self.error_sample = self.error_sample or f"{status}: {body[:200]!r}"
            subscriber.close()
            return
        reply = orjson.loads(body)
        if subscriber.cursor is None:
            self.handshaken += 1
            if self.handshaken == self.count:
                self.ready.set()
        elif not reply["m"]:
            self.empty += 1  # a hold that ran out
        for envelope in reply["m"] if subscriber.cursor is not None else ():
            data = envelope.get("d")
            if isinstance(data, dict) and "r" in data:
                self.arrived(subscriber, int(data["r"]), arrived - float(data["t"]), arrived)
                self.read_delays.append(read_at - arrived)
        subscriber.cursor = str(reply["t"]["t"])
        subscriber.send()

    def arrived(self, subscriber: Subscriber, round_no: int, latency: float, now: float) -> None:
        if round_no <= subscriber.last_round:
            self.duplicates += 1
            return
        subscriber.last_round = round_no
        self.latencies.append((round_no, latency))
        self.delivered[round_no] = self.delivered.get(round_no, 0) + 1
        if self.delivered[round_no] == self.count:
            emit({"event": "round", "r": round_no, "last": now})

    def stats(self, lags: list[float]) -> dict[str, Any]:
        latencies, self.latencies = self.latencies, []
        delays, self.read_delays = self.read_delays, []
        return {
            "event": "stats",
            "cpu": time.process_time(),
            "lag_ms": worst_ms(lags),
            "read_delay_ms": worst_ms(delays),
            "kernel_stamps": self.stamps,
            "latencies": [[r, 1000 * s] for r, s in latencies],
            **{k: getattr(self, k) for k in ("empty", "errors", "lost", "duplicates", "error_sample")},
        }


async def watch_lag(lags: list[float], interval: float = 0.005) -> None:
    """How late a 5 ms timer fires: the longest the loop was busy, so the longest an answer waited unread."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval
        await asyncio.sleep(interval)
        lags.append(max(0.0, loop.time() - due))


async def run(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    crowd = Crowd(args.port, args.sub_key, args.channel, args.first, args.count)
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    lags: list[float] = []
    lag_task = asyncio.create_task(watch_lag(lags))
    try:
        async with asyncio.timeout(args.connect_timeout):
            await crowd.connect()
            await crowd.ready.wait()
        emit({"event": "ready"})
        while (line := (await commands.readline()).strip()) not in (b"quit", b""):
            if line == b"stats":
                emit(crowd.stats(lags))
                lags.clear()
        return 0
    except (TimeoutError, OSError) as exc:
        emit({"event": "error", "text": f"{crowd.handshaken}/{args.count} handshakes: {exc!r} {crowd.error_sample}"})
        return 1
    finally:
        lag_task.cancel()
        crowd.quitting = True
        for subscriber in crowd.subscribers:
            subscriber.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout_client")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sub-key", default="bench")
    parser.add_argument("--channel", required=True)
    parser.add_argument("--first", type=int, default=0, help="number of this process's first subscriber")
    parser.add_argument("--count", type=int, required=True, help="subscribers (connections) in this process")
    parser.add_argument("--connect-timeout", type=float, default=60.0)
    args = parser.parse_args()
    raise_fd_limit(args.count + 256)
    raise SystemExit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
