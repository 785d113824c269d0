"""Load generator of the fan-out figure: long-polling subscribers of one channel, in a process of their own.

``python -m bench.fanout_client --port P --channel C --first N --count K`` (started by bench.live).
Each subscriber is one keep-alive connection with its own uuid, as an SDK would be: a handshake
(``tt=0``), then polls with the cursor each answer returns, sent again as soon as the answer is
read. The messages bench.live publishes carry ``{"r": round, "t": time.time() when the publish was
sent}``; the delivery latency is the answer's arrival time minus ``t``.

The arrival time is the kernel's receive timestamp of the answer (SO_TIMESTAMPNS, CLOCK_REALTIME
like time.time()), so it does not depend on when this process gets round to reading the socket: a
busy event loop here delays the re-polls, not the figures. How late the reads were (read time
minus arrival) is reported beside them, as is the event loop's lag and this process's CPU time.
Without kernel timestamps (not Linux) the read time stands in for the arrival time.

It talks in JSON lines: on stdout the events ``ready``, ``round`` (every subscriber of this process
got that round's message) and ``stats``; on stdin the commands ``stats`` and ``quit`` (end of input
quits too, so it never outlives bench.live). Sockets are read with ``loop.add_reader`` callbacks,
without transports or tasks, to keep this process's CPU time small beside the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import struct
import sys
import time
from typing import Any

import orjson

from bench.rawhttp import LagMonitor, ProtocolError, ResponseParser, raise_fd_limit, request_bytes

CONNECT_BATCH = 50  # connections opened at once per process: the server's listen backlog is 128
SO_TIMESTAMPNS = 35  # Linux (asm-generic and x86): struct timespec of the packet's arrival, CLOCK_REALTIME
STAMP_SPACE = socket.CMSG_SPACE(16)


def kernel_stamps(sock: socket.socket) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


def arrival(ancillary: list[tuple[int, int, bytes]]) -> float | None:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            seconds, nanoseconds = struct.unpack("qq", data[:16])
            return float(seconds + nanoseconds / 1e9)
    return None


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(event).decode() + "\n")
    sys.stdout.flush()


def summary_ms(sorted_seconds: list[float]) -> dict[str, float]:
    if not sorted_seconds:
        return {"n": 0, "max": 0.0, "p99": 0.0}
    n = len(sorted_seconds)
    return {"n": n, "max": 1000 * sorted_seconds[-1], "p99": 1000 * sorted_seconds[min(n - 1, int(n * 0.99))]}


class Subscriber:
    def __init__(self, crowd: Crowd, uuid: str, sock: socket.socket) -> None:
        self.crowd = crowd
        self.uuid = uuid
        self.sock = sock
        self.cursor: str | None = None
        self.last_round = -1
        self.parser = ResponseParser()
        self.open = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.open = True
        self.crowd.open += 1
        loop.add_reader(self.sock.fileno(), self.readable)
        self.send()

    def send(self) -> None:
        if not self.open:
            return
        if self.cursor is None:
            query = f"uuid={self.uuid}&tt=0&heartbeat=300"
        else:
            query = f"uuid={self.uuid}&tt={self.cursor}&tr=1&heartbeat=300"
        request = request_bytes(f"{self.crowd.path}?{query}", self.crowd.host)
        try:
            sent = self.sock.send(request)
        except OSError as exc:
            self.close(f"send: {exc!r}")
            return
        if sent != len(request):  # a ~200-byte request into an empty send buffer: never partial
            self.close(f"send: {sent} of {len(request)} bytes")

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
        arrived = arrival(ancillary) or read_at
        try:
            answers = self.parser.feed(data)
        except ProtocolError as exc:
            self.crowd.fail(self, str(exc))
            return
        for status, body in answers:
            self.crowd.answered(self, status, body, arrived, read_at)

    def close(self, reason: str | None = None) -> None:
        if not self.open:
            return
        self.open = False
        self.crowd.open -= 1
        if reason is not None and not self.crowd.quitting:
            self.crowd.lost += 1
            self.crowd.error_sample = self.crowd.error_sample or reason
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()


class Crowd:
    def __init__(self, host: str, port: int, sub_key: str, channel: str, first: int, count: int) -> None:
        self.host_name = host
        self.port = port
        self.host = f"{host}:{port}"
        self.path = f"/v2/subscribe/{sub_key}/{channel}/0"
        self.first = first
        self.count = count
        self.subscribers: list[Subscriber] = []
        self.open = 0
        self.handshaken = 0
        self.ready = asyncio.Event()
        self.quitting = False
        self.latencies: list[tuple[int, float]] = []
        self.delivered: dict[int, int] = {}
        self.first_arrival: dict[int, float] = {}
        self.empty = 0
        self.errors = 0
        self.lost = 0
        self.duplicates = 0
        self.error_sample = ""
        self.stamps = False
        self.read_delays: list[float] = []

    async def connect(self) -> None:
        for start in range(0, self.count, CONNECT_BATCH):
            numbers = range(self.first + start, self.first + min(self.count, start + CONNECT_BATCH))
            await asyncio.gather(*(self.connect_one(f"fan-{n:08d}-0000-4000-8000-000000000000") for n in numbers))

    async def connect_one(self, uuid: str) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.stamps = kernel_stamps(sock)
        subscriber = Subscriber(self, uuid, sock)
        self.subscribers.append(subscriber)
        try:
            await loop.sock_connect(sock, (self.host_name, self.port))
        except OSError:
            sock.close()
            raise
        subscriber.start(loop)

    def fail(self, subscriber: Subscriber, text: str) -> None:
        self.errors += 1
        self.error_sample = self.error_sample or text[:300]
        subscriber.close()

    def answered(self, subscriber: Subscriber, status: int, body: bytes, now: float, read_at: float) -> None:
        if status != 200:
            self.fail(subscriber, f"{status}: {body[:200]!r}")
            return
        reply = orjson.loads(body)
        if subscriber.cursor is None:
            self.handshaken += 1
            if self.handshaken == self.count:
                self.ready.set()
        else:
            messages = reply["m"]
            if not messages:
                self.empty += 1  # a hold that ran out: answered with the same cursor
            for envelope in messages:
                data = envelope.get("d")
                if isinstance(data, dict) and "r" in data and "t" in data:
                    self.arrived(subscriber, int(data["r"]), now - float(data["t"]), now)
                    self.read_delays.append(read_at - now)
        subscriber.cursor = str(reply["t"]["t"])
        subscriber.send()

    def arrived(self, subscriber: Subscriber, round_no: int, latency: float, now: float) -> None:
        if round_no <= subscriber.last_round:
            self.duplicates += 1
            return
        subscriber.last_round = round_no
        self.latencies.append((round_no, latency))
        count = self.delivered.get(round_no, 0) + 1
        self.delivered[round_no] = count
        self.first_arrival.setdefault(round_no, now)
        if count == self.count:
            emit({"event": "round", "r": round_no, "first": self.first_arrival[round_no], "last": now})

    def stats(self, lag: LagMonitor) -> dict[str, Any]:
        latencies, self.latencies = self.latencies, []
        delays, self.read_delays = sorted(self.read_delays), []
        return {
            "event": "stats",
            "cpu": time.process_time(),
            "lag_ms": summary_ms(lag.take()),
            "read_delay_ms": summary_ms(delays),
            "kernel_stamps": self.stamps,
            "latencies": [[r, 1000 * s] for r, s in latencies],
            "open": self.open,
            "handshaken": self.handshaken,
            "empty": self.empty,
            "errors": self.errors,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "error_sample": self.error_sample,
        }

    def close(self) -> None:
        self.quitting = True
        for subscriber in self.subscribers:
            subscriber.close()


async def run(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    lag = LagMonitor()
    lag.start()
    crowd = Crowd(args.host, args.port, args.sub_key, args.channel, args.first, args.count)
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    started = time.monotonic()
    try:
        await asyncio.wait_for(crowd.connect(), args.connect_timeout)
        await asyncio.wait_for(crowd.ready.wait(), max(1.0, args.connect_timeout - (time.monotonic() - started)))
    except (TimeoutError, OSError) as exc:
        emit(
            {
                "event": "error",
                "text": f"{crowd.handshaken}/{args.count} handshakes after "
                f"{time.monotonic() - started:.1f} s: {exc!r} {crowd.error_sample}",
            }
        )
        crowd.close()
        return 1
    emit({"event": "ready", "count": crowd.handshaken, "seconds": time.monotonic() - started})
    try:
        while True:
            line = (await commands.readline()).strip()
            if line == b"stats":
                emit(crowd.stats(lag))
            elif line in (b"quit", b""):
                return 0
    finally:
        lag.stop()
        crowd.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout_client")
    parser.add_argument("--host", default="127.0.0.1")
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
