"""Logging set-up (plain lines, or one JSON object per line with PRESENCE_LOG_FORMAT=json), and the
once-per-outage report of Redis going away and coming back."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime

import orjson
import redis.exceptions
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, Request, StreamResponse

log = logging.getLogger("presence_server")

# What a call to Redis raises when Redis cannot be reached (or is still loading its data), and on a
# Redis Cluster or behind Sentinel while a master is lost or being replaced: the cluster is down, a
# slot has no master yet, a slot is being moved (TRYAGAIN), or a connection still reaches the old
# master, now a replica. (Sentinel's "no master found" is a ConnectionError.)
REDIS_DOWN = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ClusterError,
    redis.exceptions.SlotNotCoveredError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ReadOnlyError,
)


class RedisOutage:
    """Says once that Redis is lost and once that it is back, however many calls fail in between
    (during a 20 s outage, one warning per failed request made thousands of lines). Each failed
    request is still counted, by ``count`` (the presence_redis_errors metric)."""

    def __init__(self, count: Callable[[], None] | None = None) -> None:
        self.count = count
        self.down = False
        self.failures = 0

    def failed(self, what: str, exc: BaseException, *, request: bool = True) -> None:
        """A call to Redis failed because it could not be reached; ``request`` when a client's did."""
        if request and self.count is not None:
            self.count()
        self.failures += 1
        if not self.down:
            self.down = True
            log.warning(
                "redis lost during %s: %s (said once; failed requests are counted in presence_redis_errors)", what, exc
            )

    def answered(self) -> None:
        """A call to Redis succeeded (the sweeper makes one every second)."""
        if self.down:
            self.down = False
            log.warning("redis back after %d failed calls", self.failures)
            self.failures = 0


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def setup_logging(log_format: str, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class RouteAccessLogger(AbstractAccessLogger):
    """Access lines (PRESENCE_ACCESS_LOG=1) naming the route's pattern, never the request target: its
    query holds tokens, auth keys and signatures, and its path users' names (and a token, on revoke)."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        resource = request.match_info.route.resource if isinstance(request, Request) else None
        route = resource.canonical if resource is not None else "(no route)"
        self.logger.info("%s %s %s %d %.1f ms", request.remote, request.method, route, response.status, time * 1000)
