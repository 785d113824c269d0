"""The baselines: the least an aiohttp app can do on the paths bench.live measures.

- Heartbeats: the same pre-encoded body the server sends, no parsing, no store. The ratio of the
  server's throughput to this one's is what the presence code costs. With ``--defer`` each heartbeat
  first waits for a future that is resolved, with every other one asked for meanwhile, at the next
  loop iteration, as the store's batched script replies resolve the server's: the least a handler
  that waits for Redis costs (bench.callgrind ``--target deferred``).
- Long-polls: holds subscribe polls on one asyncio.Event and answers them, on a publish, with a body
  encoded once (no store, no Redis, no presence); ``presence_longpolls_held`` on /metrics as the
  server has it. Its fan-out latency is what one aiohttp process costs on this machine.

Run as ``python -m bench.baseline --port P --hold 60``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from urllib.parse import unquote

import orjson
from aiohttp import web

HEADERS = {"Content-Type": 'text/javascript; charset="UTF-8"'}
HEARTBEAT = b'{"status":200,"message":"OK","service":"Presence"}'
HOLD = web.AppKey("hold", float)


class Channel:
    """A message log of length one: the last message's timetoken and its encoded answer."""

    def __init__(self) -> None:
        self.timetoken = int(time.time() * 10_000_000)
        self.answer = b""
        self.event = asyncio.Event()
        self.held = 0

    def publish(self, sub_key: str, channel: str, message: bytes) -> int:
        self.timetoken += 1
        tt = str(self.timetoken)
        envelope = {"a": "1", "f": 0, "p": {"t": tt, "r": 1}, "k": sub_key, "c": channel, "d": orjson.Fragment(message)}
        self.answer = orjson.dumps({"t": {"t": tt, "r": 1}, "m": [envelope]})
        self.event.set()
        self.event = asyncio.Event()
        return self.timetoken


STATE = web.AppKey("state", Channel)


def reply(body: bytes) -> web.Response:
    return web.Response(body=body, headers=HEADERS)


async def heartbeat(request: web.Request) -> web.Response:
    return reply(HEARTBEAT)


class Deferred:
    """Futures resolved together at the next loop iteration, as a batch of script replies."""

    def __init__(self) -> None:
        self.waiting: list[asyncio.Future[None]] = []

    def wait(self) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        if not self.waiting:
            loop.call_soon(self.resolve)
        future: asyncio.Future[None] = loop.create_future()
        self.waiting.append(future)
        return future

    def resolve(self) -> None:
        waiting, self.waiting = self.waiting, []
        for future in waiting:
            future.set_result(None)


DEFERRED = web.AppKey("deferred", Deferred)


async def deferred_heartbeat(request: web.Request) -> web.Response:
    await request.app[DEFERRED].wait()
    return reply(HEARTBEAT)


async def subscribe(request: web.Request) -> web.Response:
    state = request.app[STATE]
    cursor = request.query.get("tt", "0") or "0"
    if cursor == "0" or int(cursor) < state.timetoken:
        return reply(state.answer if cursor != "0" else b'{"t":{"t":"%d","r":1},"m":[]}' % state.timetoken)
    event = state.event
    state.held += 1
    try:
        async with asyncio.timeout(request.app[HOLD]):
            await event.wait()
    except TimeoutError:
        return reply(b'{"t":{"t":"' + cursor.encode() + b'","r":1},"m":[]}')
    finally:
        state.held -= 1
    return reply(state.answer)


async def publish(request: web.Request) -> web.Response:
    message = unquote(request.match_info["message"]).encode()
    tt = request.app[STATE].publish(request.match_info["sub_key"], request.match_info["channel"], message)
    return reply(b'[1,"Sent","%d"]' % tt)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(text=f"presence_longpolls_held {request.app[STATE].held}\n")


def create_app(hold: float, defer: bool = False) -> web.Application:
    app = web.Application()
    app[HOLD] = hold
    app[STATE] = Channel()
    app[DEFERRED] = Deferred()
    beat = deferred_heartbeat if defer else heartbeat
    app.router.add_get("/v2/presence/sub-key/{sub_key}/channel/{channels}/heartbeat", beat)
    app.router.add_get("/v2/subscribe/{sub_key}/{channels:[^/]+}/{callback}", subscribe)
    # The message is JSON: braces, which the default placeholder pattern refuses.
    app.router.add_get("/publish/{pub_key}/{sub_key}/{signature}/{channel}/{callback}/{message:[^/]+}", publish)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", heartbeat)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--hold", type=float, default=60.0)
    parser.add_argument("--defer", action="store_true", help="heartbeats wait for a batch resolved next iteration")
    args = parser.parse_args()
    app = create_app(args.hold, args.defer)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None, handler_cancellation=True)


if __name__ == "__main__":
    main()
