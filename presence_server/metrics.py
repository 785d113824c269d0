"""Prometheus metrics (prometheus-client), one registry per app so several apps never collide."""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import Iterator

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from presence_server.context import METRICS as METRICS  # re-exported: its home was here
from presence_server.http import REDIS_DOWN, error_response
from presence_server.store import LongPolls, PresenceStore

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SAMPLE_EVERY = 5.0
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60, 300)
# The `le` labels, spelt as prometheus-client spells them ("1.0", "+Inf").
_LE = [floatToGoString(bound) for bound in (*LATENCY_BUCKETS, float("inf"))]  # type: ignore[no-untyped-call]


class RequestStats(Collector):
    """Requests by route, method and status, and latency by route.

    Counted in plain dicts and turned into metric families at scrape time: prometheus-client's
    Counter and Histogram take a lock on every update, a cost every heartbeat paid. The server
    runs one event loop, so nothing else updates these concurrently.
    """

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, int], int] = {}
        # Per route: a count per bucket (the last for above every bound), and the sum of seconds.
        self.latency: dict[str, tuple[list[int], list[float]]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1
        entry = self.latency.get(route)
        if entry is None:
            entry = self.latency[route] = ([0] * (len(LATENCY_BUCKETS) + 1), [0.0])
        buckets, total = entry
        buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        total[0] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "presence_http_requests", "HTTP requests by route and status", labels=["route", "method", "status"]
        )
        for (route, method, status), count in sorted(self.counts.items()):
            requests.add_metric([route, method, str(status)], count)
        yield requests
        latency = HistogramMetricFamily(
            "presence_http_request_duration_seconds", "HTTP request latency by route", labels=["route"]
        )
        for route, (counts, total) in sorted(self.latency.items()):
            cumulative, buckets = 0, []
            for le, count in zip(_LE, counts, strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            latency.add_metric([route], buckets, total[0])
        yield latency


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
        yield CounterMetricFamily(
            "presence_messages_published", "Messages and signals published", value=self.store.counts["publish"]
        )
        yield CounterMetricFamily(
            "presence_sweeps", "Expiry sweeps run by this process", value=self.store.counts["sweep"]
        )


class Metrics:
    def __init__(self, store: PresenceStore, polls: LongPolls) -> None:
        self.store = store
        self.registry = CollectorRegistry()
        self.requests = RequestStats()
        self.registry.register(self.requests)
        self.redis_errors = Counter(
            "presence_redis_errors", "Requests that failed because Redis was unreachable", registry=self.registry
        )
        held = Gauge("presence_longpolls_held", "Subscribe long-polls waiting in this process", registry=self.registry)
        held.set_function(lambda: polls.waiting)
        self.present_users = Gauge(
            "presence_present_users",
            "Occupants summed over channels (a user in two channels counts twice), all keysets (sampled)",
            registry=self.registry,
        )
        self.channels = Gauge(
            "presence_occupied_channels", "Channels with someone present, all keysets (sampled)", registry=self.registry
        )
        self.registry.register(_StoreCounters(store))
        self._sampled_at = float("-inf")

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


UNMATCHED = "unmatched"  # the route label of answers to paths and methods no route serves
CLIENT_GONE = 499  # the status label of requests whose client left before the answer (nginx's code)


def instrumented(handler: Handler, route: str, app: web.Application) -> Handler:
    """``handler`` (a route of ``app``) with what every request gets: errors as JSON
    (http.error_response) and one observation in the metrics under ``route``.

    Wrapped around each route's handler when the routes are added rather than run as a
    middleware: any middleware adds its own layer and aiohttp's current-app layer to every
    request, which a fan-out to thousands of polls pays thousands of times.
    """

    # The app's request counts, found at its first request (the metrics come with its startup).
    stats: RequestStats | None = None

    async def handle(request: web.Request) -> web.StreamResponse:
        nonlocal stats
        started = time.perf_counter()
        status = 500
        try:
            # Errors are caught here rather than in a wrapper of their own: one coroutine layer
            # less for every request.
            try:
                response = await handler(request)
            except asyncio.CancelledError:
                # The client went away first (an SDK drops its held poll at each unsubscribe and
                # reconnect; a fault rule's drop too): no answer was sent, and no server error happened.
                status = CLIENT_GONE
                raise
            except web.HTTPException as exc:
                if exc.status < 400:  # redirects pass through as they are
                    status = exc.status
                    raise
                response = error_response(request, exc)
            except Exception as exc:
                response = error_response(request, exc)
            status = response.status
            return response
        finally:
            if stats is None:
                metrics = app.get(METRICS)  # not request.app: two property calls more per request
                stats = None if metrics is None else metrics.requests
            if stats is not None:
                stats.observe(route, request.method, status, time.perf_counter() - started)

    return handle


async def metrics_handler(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    await metrics.sample()
    return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})
