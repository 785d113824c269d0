"""Typed application keys shared by the app factory and the handlers."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from server.config import Settings
from server.store import PresenceStore, WakeBus

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", PresenceStore)
Clock = Callable[[], float]
CLOCK: web.AppKey[Clock] = web.AppKey("clock")
BUS = web.AppKey("bus", WakeBus)
