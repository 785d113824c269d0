"""Typed application keys shared by the app factory and the handlers."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from presence_server.config import Settings
from presence_server.store import PresenceStore, WakeBus

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", PresenceStore)
Clock = Callable[[], float]
CLOCK: web.AppKey[Clock] = web.AppKey("clock")
BUS = web.AppKey("bus", WakeBus)
