"""The wake listener: one Redis pub/sub subscription per process, handed to the long-poll owner.

Scripts publish the names whose logs grew (common.lua ``publish_wakes``; the message's fields are
``WAKE_*`` of fields.py), leaves name the uuid that left, resets the keyset, revocations the token, and the admin API
the clock's new offset. What a wake-up does to held polls is longpoll.py's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import orjson
import redis.asyncio as aioredis

from presence_server.store.fields import WAKE_CLOCK, WAKE_KEYSET, WAKE_LEFT, WAKE_NAMES, WAKE_RESET, WAKE_REVOKED
from presence_server.store.longpoll import LongPolls

log = logging.getLogger("presence_server.bus")


class WakeBus:
    def __init__(
        self,
        redis: aioredis.Redis,
        channel: str,
        polls: LongPolls,
        *,
        on_clock: Callable[[float], None] | None = None,
        on_connect: Callable[[], Awaitable[None]] | None = None,
        on_revoke: Callable[[str, str | None], None] | None = None,
    ) -> None:
        """``on_clock`` gets each announced admin clock offset; ``on_connect`` runs at each (re)connection,
        to read again what may have been announced while this process was away; ``on_revoke`` gets
        (subscribe key, token id) for each revoked Access Manager token, (subscribe key, None) when a
        keyset was reset."""
        self.redis = redis
        self.channel = channel
        self.polls = polls
        self.on_clock = on_clock
        self.on_connect = on_connect
        self.on_revoke = on_revoke
        self.stopped = False

    async def announce_clock(self, offset: float) -> None:
        """Tell every process the admin clock's new offset."""
        await self.redis.publish(self.channel, orjson.dumps({WAKE_CLOCK: offset}))

    async def announce(self, sub_key: str, names: list[str]) -> None:
        """Tell every process's waiters (this one's included, through Redis) to read ``names`` again."""
        await self.redis.publish(self.channel, orjson.dumps({WAKE_KEYSET: sub_key, WAKE_NAMES: names}))

    async def run(self) -> None:
        """Listen until cancelled. After a lost connection every waiter is woken to re-read."""
        # redis-py can swallow a cancellation (or turn it into a ConnectionError) inside its reads,
        # so the loop does not rely on it: it also checks, at every step, whether it should stop.
        backoff = 0.1
        while not self._should_stop():
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                backoff = 0.1
                self.polls.wake_all()
                if self.on_connect is not None:
                    # Whatever was announced while we were away (the admin clock) is read again.
                    await self.on_connect()
                while not self._should_stop():
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._dispatch(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._should_stop():
                    return
                log.warning("wake-up listener lost its connection, reconnecting: %s", exc)
                self.polls.wake_all()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                # Bounded: closing a pub/sub whose client was already closed must not hang shutdown.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), 1.0)  # type: ignore[no-untyped-call]

    def _should_stop(self) -> bool:
        task = asyncio.current_task()
        return self.stopped or (task is not None and task.cancelling() > 0)

    def _dispatch(self, data: str | bytes) -> None:
        try:
            body = orjson.loads(data)
            if WAKE_CLOCK in body:
                if self.on_clock is not None:
                    self.on_clock(float(body[WAKE_CLOCK]))
                return
            sub_key = body[WAKE_KEYSET]
            names = body.get(WAKE_NAMES) or ()
            left = body.get(WAKE_LEFT)
            revoked = body.get(WAKE_REVOKED)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            log.warning("ignoring a malformed wake-up: %r", data)
            return
        if self.on_revoke is not None and (revoked is not None or WAKE_RESET in body):
            self.on_revoke(sub_key, None if revoked is None else str(revoked))
        if left is not None or WAKE_RESET in body:
            self.polls.forget(sub_key, left)
        if names:
            self.polls.notify(sub_key, names)
