"""Prometheus metrics (prometheus-client), one registry per app so several apps never collide."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from server.http import REDIS_DOWN, handle_errors
from server.store import PresenceStore, WakeBus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SAMPLE_EVERY = 5.0


class _StoreCounters(Collector):
    """What the store counted (events by action, messages, sweeps), read at scrape time."""

    def __init__(self, store: PresenceStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        events = CounterMetricFamily("presence_events", "Presence events recorded, by action", labels=["action"])
        for action, count in sorted(self.store.counts.items()):
            if action in ("join", "leave", "timeout", "state-change"):
                events.add_metric([action], count)
        yield events
        yield CounterMetricFamily("presence_messages_published", "Messages and signals published",
                                  value=self.store.counts["publish"])
        yield CounterMetricFamily("presence_sweeps", "Expiry sweeps run by this process",
                                  value=self.store.counts["sweep"])


class Metrics:
    def __init__(self, store: PresenceStore, bus: WakeBus) -> None:
        self.store = store
        self.registry = CollectorRegistry()
        self.requests = Counter("presence_http_requests", "HTTP requests by route and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("presence_http_request_duration_seconds", "HTTP request latency by route",
                                 ["route"], registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60, 300))
        self.redis_errors = Counter("presence_redis_errors", "Requests that failed because Redis was unreachable",
                                    registry=self.registry)
        held = Gauge("presence_longpolls_held", "Subscribe long-polls waiting in this process", registry=self.registry)
        held.set_function(lambda: bus.waiting)
        self.present_users = Gauge("presence_present_users",
                                   "Occupants summed over channels (a user in two channels counts twice), all keysets"
                                   " (sampled)",
                                   registry=self.registry)
        self.channels = Gauge("presence_occupied_channels", "Channels with someone present, all keysets (sampled)",
                              registry=self.registry)
        self.registry.register(_StoreCounters(store))
        self._sampled_at = float("-inf")
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        # labels() looks its child up under a lock each time; the handful of children are kept here.
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(route, method, str(status)), self.latency.labels(route),
            )
        children[0].inc()
        children[1].observe(seconds)

    async def sample(self) -> None:
        """Refresh the presence gauges, at most once every few seconds (a few commands per keyset)."""
        if time.monotonic() - self._sampled_at < SAMPLE_EVERY:
            return
        self._sampled_at = time.monotonic()
        try:
            users, channels = await self.store.totals()
        except REDIS_DOWN:
            return  # keep the last values: a scrape during an outage must still show the error counts
        self.present_users.set(users)
        self.channels.set(channels)

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS = web.AppKey("metrics", Metrics)


def route_of(request: web.Request) -> str:
    info = request.match_info
    if info.http_exception is not None or info.route.resource is None:
        return "unmatched"
    return info.route.resource.canonical


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors to JSON (http.handle_errors), then one observation per request: one middleware layer
    for both, since each layer costs every request, heartbeats included."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handle_errors(request, handler)
        status = response.status
        return response
    except web.HTTPException as exc:  # only redirects and other statuses below 400 get here
        status = exc.status
        raise
    finally:
        metrics = request.app.get(METRICS)
        if metrics is not None:
            metrics.observe(route_of(request), request.method, status, time.perf_counter() - started)


async def metrics_handler(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    await metrics.sample()
    return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})
