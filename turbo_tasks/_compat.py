"""The third-party internals turbo_tasks relies on, each behind one small function.

tests/test_compat.py pins every behaviour used here against the installed versions, so an
upgrade that changes one fails there, by name, instead of somewhere downstream. (kombu's
Redis message layout, which turbo_tasks.publish writes itself, is pinned by
tests/test_publish.py against ``send_task``.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
import redis.exceptions
import redis.sentinel
from channels_redis.core import RedisChannelLayer

# -- Django: transaction.on_commit bookkeeping ----------------------------------------------


def on_commit_callbacks(connection: Any) -> list[Callable[[], Any]]:
    """The callbacks pending on ``connection``, oldest first (Django keeps
    ``(savepoint_ids, callback, robust)`` tuples in ``connection.run_on_commit``)."""
    return [entry[1] for entry in connection.run_on_commit]


def last_on_commit_callback(connection: Any) -> Callable[[], Any] | None:
    pending = connection.run_on_commit
    return pending[-1][1] if pending else None


# -- channels_redis: where a group lives --------------------------------------------------


def is_redis_core_layer(layer: Any) -> bool:
    """channels_redis' RedisChannelLayer, whose groups are sorted sets we can read."""
    return isinstance(layer, RedisChannelLayer)


def group_key(layer: RedisChannelLayer, group: str) -> bytes:
    """The Redis key of ``group``'s sorted set (members scored by join time)."""
    key: bytes = layer._group_key(group)
    return key


def group_connection(layer: RedisChannelLayer, group: str) -> Any:
    """The redis-py client of the shard (``hosts`` entry) that holds ``group``."""
    return layer.connection(layer.consistent_hash(group))


_sync_pools: dict[tuple[int, int], Any] = {}


# A page render waits on the sync client: never longer than this per command.
SYNC_TIMEOUT_SECONDS = 2.0


def sync_client(layer: RedisChannelLayer, index: int) -> Any:
    """A synchronous redis-py client for shard ``index`` of ``layer``, configured from the
    same ``hosts`` entry as channels_redis' own (asyncio) pool for that shard, with socket
    timeouts of at most SYNC_TIMEOUT_SECONDS."""
    key = (id(layer), index)
    pool = _sync_pools.get(key)
    if pool is None:
        host = dict(layer.hosts[index])
        for option in ("socket_timeout", "socket_connect_timeout"):
            host[option] = min(host.get(option) or SYNC_TIMEOUT_SECONDS, SYNC_TIMEOUT_SECONDS)
        if "address" in host:
            pool = redis.ConnectionPool.from_url(host.pop("address"), **host)
        elif "master_name" in host:
            sentinel = redis.sentinel.Sentinel(
                host.pop("sentinels"), sentinel_kwargs=host.pop("sentinel_kwargs", None)
            )
            pool = redis.sentinel.SentinelConnectionPool(host.pop("master_name"), sentinel, **host)
        else:
            pool = redis.ConnectionPool(**host)
        _sync_pools[key] = pool
    return redis.Redis(connection_pool=pool)


def lengthen_receive_timeouts(layer: Any) -> list[dict[str, Any]]:
    """Give every ``hosts`` entry of a channels_redis core layer a socket timeout longer
    than its blocking receive, where it has none (or a shorter one is redis-py's default):
    with the configuration the Channels docs show, redis-py 8's 5 s default equals
    channels_redis' 5 s BZPOPMIN, and every idle consumer dies with a TimeoutError
    (channels_redis#422). Affects connection pools created afterwards (they are made per
    event loop, on first use). Returns the host entries it changed."""
    if not is_redis_core_layer(layer):
        return []
    default = redis_default_socket_timeout()
    if default is None or default > blocking_receive_seconds():
        return []
    changed, hosts = [], []
    for host in layer.hosts:
        if "socket_timeout" not in host and not _url_sets_timeout(host):
            host = {**host, "socket_timeout": blocking_receive_seconds() + 10}
            changed.append(host)
        hosts.append(host)
    layer.hosts = hosts
    return changed


def _url_sets_timeout(host: dict[str, Any]) -> bool:
    return "socket_timeout=" in str(host.get("address", ""))


# What a channels_redis read raises when its socket timeout fires (redis-py 8's default
# of 5 s equals channels_redis' blocking receive).
RECEIVE_TIMEOUTS: tuple[type[Exception], ...] = (redis.exceptions.TimeoutError, TimeoutError)


def blocking_receive_seconds() -> float:
    """How long channels_redis blocks in one BZPOPMIN while a consumer waits for a message."""
    return float(RedisChannelLayer.brpop_timeout)


# -- redis-py: default socket timeout -----------------------------------------------------


def redis_default_socket_timeout() -> float | None:
    """redis-py's socket timeout when a connection sets none: 5 s since redis-py 8, None
    (wait forever) before."""
    try:
        from redis._defaults import DEFAULT_SOCKET_TIMEOUT
    except ImportError:
        return None
    return None if DEFAULT_SOCKET_TIMEOUT is None else float(DEFAULT_SOCKET_TIMEOUT)
