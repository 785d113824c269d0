"""Every typed application key, in one place: what the app factory builds and the handlers read.

Set by app.py: SETTINGS and CLOCK when the app is built; the others by one cleanup context each, in
this order (torn down in reverse): REDIS, STORE (with ACCESS), LONGPOLLS (with METRICS and REDIS_OUTAGE), BUS
(with FAULTS),
SWEEPER, WEBHOOKS.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from aiohttp import web

from presence_server.clock import Clock
from presence_server.config import Settings
from presence_server.logs import RedisOutage
from presence_server.store import LongPolls, PresenceStore, WakeBus
from presence_server.sweeper import Sweeper

if TYPE_CHECKING:
    from presence_server.access.control import AccessControl  # all three read these keys
    from presence_server.faults import Faults
    from presence_server.metrics import Metrics
    from presence_server.webhooks import WebhookSender

SETTINGS = web.AppKey("settings", Settings)
CLOCK = web.AppKey("clock", Clock)
REDIS = web.AppKey("redis", aioredis.Redis)
STORE = web.AppKey("store", PresenceStore)
LONGPOLLS = web.AppKey("longpolls", LongPolls)  # every subscribe call: held polls, shared reads, refresh memo
BUS = web.AppKey("bus", WakeBus)  # the wake listener; also announces admin clock moves
SWEEPER = web.AppKey("sweeper", Sweeper)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
# The Access Manager keysets and the check of their requests (with its token cache).
ACCESS: web.AppKey[AccessControl] = web.AppKey("access")
# Told of each call that failed because Redis could not be reached: counts the requests (metrics)
# and logs once when Redis is lost and once when it is back.
REDIS_OUTAGE = web.AppKey("redis_outage", RedisOutage)
# With PRESENCE_WEBHOOK_URL set: the presence webhooks' sender (set after SWEEPER).
WEBHOOKS: web.AppKey[WebhookSender] = web.AppKey("webhooks")
# With the admin API on: this process's copy of the fault rules (set with BUS, which hears their changes).
FAULTS: web.AppKey[Faults] = web.AppKey("faults")
