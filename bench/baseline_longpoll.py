"""The fan-out baseline: the least an aiohttp app can do to hold long-polls and answer them on a publish.

Same paths and answer shapes as the server (subscribe v2, GET publish, ``presence_longpolls_held`` on
/metrics), but with no store, no presence and no parsing beyond the cursor: a publish keeps the
message in memory, encodes the answer once and wakes every held poll through one asyncio.Event.
bench.live drives it exactly like the server, so the gap between the two is what the server's own
work costs. Run as ``python -m bench.baseline_longpoll --port P --hold 60``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from urllib.parse import unquote

import orjson
from aiohttp import web

HEADERS = {"Content-Type": 'text/javascript; charset="UTF-8"'}
HOLD = web.AppKey("hold", float)


class Channel:
    """One message log of length one: the last message, its timetoken and its encoded answer."""

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


def empty(timetoken: str) -> web.Response:
    return reply(b'{"t":{"t":"' + timetoken.encode() + b'","r":1},"m":[]}')


async def subscribe(request: web.Request) -> web.Response:
    state = request.app[STATE]
    cursor = request.query.get("tt", "0") or "0"
    if cursor == "0":
        return empty(str(state.timetoken))
    if int(cursor) < state.timetoken:
        return reply(state.answer)
    event = state.event
    state.held += 1
    try:
        async with asyncio.timeout(request.app[HOLD]):  # no task of its own, unlike wait_for before 3.12
            await event.wait()
    except TimeoutError:
        return empty(cursor)
    finally:
        state.held -= 1
    return reply(state.answer)


async def publish(request: web.Request) -> web.Response:
    message = unquote(request.match_info["message"]).encode()
    tt = request.app[STATE].publish(request.match_info["sub_key"], request.match_info["channel"], message)
    return reply(b'[1,"Sent","' + str(tt).encode() + b'"]')


async def metrics(request: web.Request) -> web.Response:
    return web.Response(text=f"presence_longpolls_held {request.app[STATE].held}\n")


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def create_app(hold: float) -> web.Application:
    app = web.Application()
    app[HOLD] = hold
    app[STATE] = Channel()
    app.router.add_get("/v2/subscribe/{sub_key}/{channels:[^/]+}/{callback}", subscribe)
    # The message is JSON: braces, which the default placeholder pattern refuses.
    app.router.add_get("/publish/{pub_key}/{sub_key}/{signature}/{channel}/{callback}/{message:[^/]+}", publish)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline_longpoll")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--hold", type=float, default=60.0)
    args = parser.parse_args()
    web.run_app(
        create_app(args.hold), host="127.0.0.1", port=args.port, access_log=None, print=None, handler_cancellation=True
    )


if __name__ == "__main__":
    main()
