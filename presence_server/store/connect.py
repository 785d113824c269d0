"""Open a Redis client from a URL: one Redis, a Redis Cluster, a Sentinel-managed Redis, or ``memory://``
(the same store in-process on fakeredis).

The forms (docs/scaling.md says what each gives):

- ``redis://[[user]:password@]host:port/db``, ``rediss://…``, ``unix://…``: one Redis;
- ``redis+cluster://[[user]:password@]host:port[,host:port…]`` (``rediss+cluster://`` with TLS): seed nodes
  of a Redis Cluster, the client discovers the rest; the password is every node's;
- ``redis+sentinel://[[user]:password@]host:port[,host:port…]/<master name>[/<db>]``: sentinels, asked for
  the master of that name (again after a failover); the password is the master's, not the sentinels'.
"""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError, TimeoutError

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel",)


class BadRedisUrl(ValueError):
    """A ``PRESENCE_REDIS_URL`` the server cannot use (the message never repeats its password)."""


def open_redis(url: str, max_connections: int = 100, **options: Any) -> aioredis.Redis:
    """A client for any of the URL forms above.

    Typed as ``Redis``: a ``RedisCluster`` has every command the store sends, with the same replies, and
    the two places that need a node of their own (the script batcher, the wake listener) ask
    ``is_cluster``.

    Past ``max_connections`` busy connections, a command waits (up to 10 s) for one instead of failing:
    redis-py's default pool raises at its limit, which under load would turn into 503s. A cluster node's
    pool cannot wait, so each node gets ten times as many before it raises.
    """
    options.setdefault("decode_responses", True)
    if url.startswith("memory://"):
        return _open_memory(max_connections, options)
    options.setdefault("socket_connect_timeout", 5)
    options.setdefault("socket_timeout", 10)
    scheme = url.partition("://")[0].lower()
    if scheme in CLUSTER_SCHEMES:
        return cast("aioredis.Redis", _open_cluster(url, 10 * max_connections, options))
    options.setdefault("health_check_interval", 15)
    options.setdefault("retry_on_timeout", False)
    # Once, at once, on a new connection: after Redis restarts, each pooled connection fails its next
    # command ("Connection closed by server") though Redis answers again; while it is down, one more
    # refused connect costs nothing.
    options.setdefault("retry", Retry(NoBackoff(), 1, supported_errors=(ConnectionError,)))
    if scheme in SENTINEL_SCHEMES:
        return _open_sentinel(url, max_connections, options)
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=10, **options)
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


def is_cluster(client: object) -> bool:
    return isinstance(client, RedisCluster)


async def refresh_slots(cluster: RedisCluster) -> None:
    """Read the cluster's map of slots again (after a failover its keysets have other masters).

    The client is initialized first: redis-py 8.1 routes a command by its keys before initializing
    itself once its node map exists, so a map refreshed on a client never initialized would leave it
    without its command table.
    """
    await cluster.initialize()
    await cluster.nodes_manager.initialize()


def _open_memory(max_connections: int, options: dict[str, Any]) -> aioredis.Redis:
    import fakeredis

    # One FakeServer per client: two `memory://` servers in one process never share data. The same
    # waiting pool as for a real Redis: fakeredis's own raises "Too many connections" once a burst of
    # polls has more commands in flight than it has connections.
    fake_pool = aioredis.BlockingConnectionPool(
        connection_class=fakeredis.FakeAsyncRedisConnection,
        server=fakeredis.FakeServer(),
        max_connections=max_connections,
        timeout=10,
        **options,
    )
    return fakeredis.FakeAsyncRedis(connection_pool=fake_pool)


def _hosts(netloc: str, default_port: int) -> tuple[dict[str, Any], list[tuple[str, int]]]:
    """The credentials and the ``host:port`` list of a URL's netloc."""
    credentials: dict[str, Any] = {}
    userinfo, _, hostlist = netloc.rpartition("@")
    if userinfo:
        user, _, password = userinfo.partition(":")
        if user:
            credentials["username"] = unquote(user)
        if password:
            credentials["password"] = unquote(password)
    hosts: list[tuple[str, int]] = []
    for item in hostlist.split(","):
        host, _, port = item.strip().rpartition(":") if ":" in item else (item.strip(), "", "")
        host = host.strip("[]")
        if not host:
            raise BadRedisUrl(f"a host of the Redis URL is empty: {item!r}")
        try:
            hosts.append((host, int(port) if port else default_port))
        except ValueError:
            raise BadRedisUrl(f"a port of the Redis URL is not a number: {item!r}") from None
    return credentials, hosts


def _split(url: str) -> tuple[str, str, str]:
    # urlsplit refuses a netloc with several ports, so the netloc is cut out by hand.
    scheme, _, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    netloc, _, _query = netloc.partition("?")
    return scheme.lower(), netloc, slash + path


def _open_cluster(url: str, max_connections: int, options: dict[str, Any]) -> RedisCluster:
    scheme, netloc, _ = _split(url)
    credentials, hosts = _hosts(netloc, 6379)
    if scheme == "rediss+cluster":
        options.setdefault("ssl", True)
    # A command whose master is lost is tried again, on a fresh map of the slots, three more times over
    # about 2.5 s (0.5, 1, 1): a replica that takes over within that answers it; else the request gets
    # its 503 well inside a client's 10 s timeout, even with each connect to a dead host taking its 2 s.
    options["socket_connect_timeout"] = min(options["socket_connect_timeout"], 2)
    options.setdefault("retry", Retry(ExponentialBackoff(cap=1.0, base=0.25), 3))
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in hosts],
        max_connections=max_connections,
        **credentials,
        **options,
    )


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """The sentinels' master pool, waiting for a free connection at its limit like the single-Redis one."""


class _Sentinels(Sentinel):
    """redis-py's Sentinel, asking its sentinels in turn without losing one.

    redis-py 8.1 moves the sentinel that answered to the front by swapping at an index taken before it
    awaited the answer; concurrent lookups (every new connection during a failover makes one) then list
    one sentinel twice and drop another, whose connections are never closed. Here the answering one is
    moved to the front with no await in between.
    """

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        errors = []
        for sentinel in list(self.sentinels):
            try:
                masters = await sentinel.sentinel_masters()
            except (ConnectionError, TimeoutError) as exc:
                errors.append(f"{address_of(sentinel)}: {exc}")
                continue
            state = masters.get(service_name) if isinstance(masters, dict) else None
            if state and self.check_master_state(state, service_name):
                if sentinel in self.sentinels:
                    self.sentinels.remove(sentinel)
                    self.sentinels.insert(0, sentinel)
                host = self._force_master_ip if self._force_master_ip is not None else state["ip"]
                return host, int(state["port"])
        said = f": {'; '.join(errors)}" if errors else ""
        raise MasterNotFoundError(f"no sentinel names a master for {service_name!r}{said}")


def address_of(client: aioredis.Redis) -> str:
    """``host:port`` of a client of one Redis (or sentinel)."""
    kwargs = client.connection_pool.connection_kwargs
    return f"{kwargs.get('host')}:{kwargs.get('port')}"


class SentinelRedis(aioredis.Redis):
    """A master client that also closes its connections to the sentinels."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        manager = getattr(self.connection_pool, "sentinel_manager", None)
        await super().aclose(close_connection_pool)
        if isinstance(manager, Sentinel):
            await manager.aclose()


def _sentinel_target(url: str) -> tuple[dict[str, Any], list[tuple[str, int]], str, int]:
    """A redis+sentinel URL's credentials, sentinels, master name and database."""
    _, netloc, path = _split(url)
    credentials, hosts = _hosts(netloc, 26379)
    parts = [unquote(part) for part in urlsplit(path).path.split("/") if part]
    if not parts or len(parts) > 2:
        raise BadRedisUrl("a redis+sentinel URL names the master after the sentinels: …/<master name>[/<db>]")
    try:
        db = int(parts[1]) if len(parts) == 2 else 0
    except ValueError:
        raise BadRedisUrl(f"the database of the redis+sentinel URL is not a number: {parts[1]!r}") from None
    return credentials, hosts, parts[0], db


def check_url(url: str) -> None:
    """Raise BadRedisUrl if a cluster or sentinel URL cannot be used (a bad port, no master name)."""
    scheme, netloc, _ = _split(url)
    if scheme in CLUSTER_SCHEMES:
        _hosts(netloc, 6379)
    elif scheme in SENTINEL_SCHEMES:
        _sentinel_target(url)


async def sentinel_master(client: aioredis.Redis) -> tuple[str, int] | None:
    """The master the sentinels name now, for a Sentinel-managed client; None for any other client, or
    when no sentinel answers."""
    pool = getattr(client, "connection_pool", None)  # a RedisCluster has none
    manager = getattr(pool, "sentinel_manager", None)
    if pool is None or not isinstance(manager, Sentinel):
        return None
    try:
        host, port = await pool.get_master_address()
    except (ConnectionError, TimeoutError):
        return None
    return str(host), int(port)


def _open_sentinel(url: str, max_connections: int, options: dict[str, Any]) -> SentinelRedis:
    credentials, hosts, name, db = _sentinel_target(url)
    timeouts = {key: options[key] for key in ("socket_connect_timeout", "socket_timeout")}
    sentinel = _Sentinels(  # type: ignore[no-untyped-call]
        hosts, sentinel_kwargs={**timeouts, "decode_responses": True}
    )
    client: SentinelRedis = sentinel.master_for(
        name,
        redis_class=SentinelRedis,
        connection_pool_class=_BlockingSentinelPool,
        db=db,
        max_connections=max_connections,
        timeout=10,
        **credentials,
        **options,
    )
    return client
