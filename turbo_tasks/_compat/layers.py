"""channels_redis and redis-py internals: where a group lives, receive timeouts, and the
receive that a cancellation could lose a message in."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
import weakref
from typing import Any

import redis
import redis.exceptions
import redis.sentinel
from channels_redis.core import RedisChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer, RedisPubSubLoopLayer
from channels_redis.utils import _consistent_hash, decode_hosts

logger = logging.getLogger(__name__)

# -- channels_redis: where a group lives --------------------------------------------------
#
# Both layers channels_redis ships are supported. RedisChannelLayer keeps a group as a
# sorted set on the shard ``consistent_hash(group)``. RedisPubSubChannelLayer keeps no group
# in Redis: each process SUBSCRIBEs to the group's channel, ``<prefix>__group__<group>``, on
# the shard that channel hashes to, and group_send PUBLISHes there.


def is_redis_core_layer(layer: Any) -> bool:
    """channels_redis' RedisChannelLayer, whose groups are sorted sets we can read."""
    return isinstance(layer, RedisChannelLayer)


def is_redis_pubsub_layer(layer: Any) -> bool:
    """channels_redis' RedisPubSubChannelLayer, whose groups are pub/sub channels."""
    return isinstance(layer, RedisPubSubChannelLayer)


# The layers channels_redis ships: turbo_tasks knows where their groups live.
REDIS_LAYERS: tuple[type, ...] = (RedisChannelLayer, RedisPubSubChannelLayer)


def is_redis_layer(layer: Any) -> bool:
    """Either layer channels_redis ships (or a subclass)."""
    return isinstance(layer, REDIS_LAYERS)


_pubsub_configs: weakref.WeakKeyDictionary[Any, tuple[str, list[dict[str, Any]]]] = (
    weakref.WeakKeyDictionary()
)


def _pubsub_config(layer: RedisPubSubChannelLayer) -> tuple[str, list[dict[str, Any]]]:
    """``(prefix, hosts)`` of a pub/sub layer. The layer itself is a proxy that makes one
    RedisPubSubLoopLayer per event loop (reading any attribute of it needs a running loop),
    from the arguments it keeps in ``_args``/``_kwargs``: read them the way that class does."""
    config = _pubsub_configs.get(layer)
    if config is None:
        bound = inspect.signature(RedisPubSubLoopLayer).bind(*layer._args, **layer._kwargs)
        bound.apply_defaults()
        config = (str(bound.arguments["prefix"]), decode_hosts(bound.arguments["hosts"]))
        _pubsub_configs[layer] = config
    return config


def prefix(layer: Any) -> str:
    """The layer's key prefix (``"asgi"`` unless configured)."""
    if is_redis_pubsub_layer(layer):
        return _pubsub_config(layer)[0]
    return str(layer.prefix)


def hosts(layer: Any) -> list[dict[str, Any]]:
    """The layer's ``hosts``, one connection kwargs dict per shard (channels_redis'
    ``decode_hosts``)."""
    if is_redis_pubsub_layer(layer):
        return _pubsub_config(layer)[1]
    return list(layer.hosts)


def group_key(layer: RedisChannelLayer, group: str) -> bytes:
    """Core layer: the Redis key of ``group``'s sorted set (members scored by join time)."""
    key: bytes = layer._group_key(group)
    return key


def group_channel(layer: RedisPubSubChannelLayer, group: str) -> str:
    """Pub/sub layer: the Redis channel ``group`` is published on and subscribed to
    (``RedisPubSubLoopLayer._get_group_channel_name``)."""
    return f"{prefix(layer)}__group__{group}"


def shard_index(layer: Any, group: str) -> int:
    """The index of the shard (``hosts`` entry) that holds ``group``: for the pub/sub layer,
    the one ``RedisPubSubLoopLayer._get_shard`` picks for the group's channel."""
    if is_redis_pubsub_layer(layer):
        index: int = _consistent_hash(group_channel(layer, group), len(hosts(layer)))
    else:
        index = layer.consistent_hash(group)
    return index


def shard_connection(layer: Any, index: int) -> Any:
    """The redis-py asyncio client of shard ``index`` for the running event loop, from the
    layer's own pool. Call it from a coroutine.

    On the pub/sub layer that is the client its RedisSingleShardConnection publishes with,
    rather than a pool of ours: channels_redis makes it per event loop (one
    RedisPubSubLoopLayer per loop), from the same ``hosts`` entry (URL, host/port or
    Sentinel, through ``create_pool``), and closes it when that loop closes (it wraps
    ``loop.close``) or the layer is flushed; a pool of ours would need all of that again and
    would double the sockets per shard. Used without the shard's lock, which serialises the
    layer's own publishes and subscribes: each command takes a connection of its own from the
    pool (at most 100), apart from the one the subscriptions hold."""
    if is_redis_pubsub_layer(layer):
        shard = layer._get_layer()._shards[index]
        shard._ensure_redis()
        return shard._redis
    return layer.connection(index)


def group_connection(layer: Any, group: str) -> Any:
    """The redis-py asyncio client of the shard (``hosts`` entry) that holds ``group``."""
    return shard_connection(layer, shard_index(layer, group))


async def has_members(layer: Any, group: str) -> bool:
    """Whether ``group`` has a live member. Core layer: a channel that joined within
    ``group_expiry`` (group_send discards older ones). Pub/sub layer: a process subscribed
    to the group's channel (which of its sockets, that layer cannot tell)."""
    client = group_connection(layer, group)
    if is_redis_pubsub_layer(layer):
        [(_, subscribers)] = await client.pubsub_numsub(group_channel(layer, group))
        return bool(subscribers)
    alive_since = int(time.time()) - layer.group_expiry
    return bool(await client.zcount(group_key(layer, group), alive_since, "+inf"))


# channels_redis' group_send, in two round trips instead of four: the group's members are
# read by turbo_tasks (with the history append, in one script: history.append_and_send) and
# each shard's channels get the message in one script that also drops expired messages
# (channels_redis runs that clean-up as a separate pipeline first). KEYS: channel keys.
# ARGV: one message per key, one capacity per key, then now (s) and the message expiry (s).
_SEND_TO_CHANNELS = """
local n = #KEYS
local over_capacity = 0
local current_time = ARGV[2 * n + 1]
local expiry = ARGV[2 * n + 2]
local expired = math.floor(tonumber(current_time)) - tonumber(expiry)
for i = 1, n do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, expired)
  if redis.call('ZCOUNT', KEYS[i], '-inf', '+inf') < tonumber(ARGV[i + n]) then
    redis.call('ZADD', KEYS[i], current_time, ARGV[i])
    redis.call('EXPIRE', KEYS[i], expiry)
  else
    over_capacity = over_capacity + 1
  end
end
return over_capacity
"""


def sends_directly(layer: Any) -> bool:
    """Whether ``send_to_members`` can stand in for ``layer.group_send``: channels_redis'
    core layer (or a subclass that keeps its group_send and message mapping)."""
    return (
        is_redis_core_layer(layer)
        and type(layer).group_send is RedisChannelLayer.group_send
        and type(layer)._map_channel_keys_to_connection
        is RedisChannelLayer._map_channel_keys_to_connection
    )


def changes_groups_directly(layer: Any) -> bool:
    """Whether ``queue_group_add`` and ``queue_group_discard`` can stand in for the layer's
    ``group_add`` and ``group_discard``: channels_redis' core layer with its own (neither
    overridden nor replaced on the instance)."""
    return is_redis_core_layer(layer) and all(
        getattr(getattr(layer, name, None), "__func__", None) is getattr(RedisChannelLayer, name)
        for name in ("group_add", "group_discard")
    )


def check_group_change(layer: RedisChannelLayer, group: str, channel: str) -> None:
    """What channels_redis' ``group_add`` and ``group_discard`` check first."""
    assert layer.require_valid_group_name(group), "Group name not valid"
    assert layer.require_valid_channel_name(channel), "Channel name not valid"


def queue_group_add(layer: RedisChannelLayer, pipe: Any, group: str, channels: list[str]) -> None:
    """Queue on ``pipe`` (of the group's shard) what channels_redis' ``group_add(group,
    channel)`` sends for each of ``channels``: the ZADD (scored by the time now), the EXPIRE."""
    key = layer._group_key(group)
    pipe.zadd(key, dict.fromkeys(channels, time.time()))
    pipe.expire(key, layer.group_expiry)


def queue_group_discard(layer: Any, pipe: Any, group: str, channels: list[str]) -> None:
    """Queue on ``pipe`` channels_redis' ``group_discard(group, channel)`` for ``channels``."""
    pipe.zrem(layer._group_key(group), *channels)


def alive_since(layer: RedisChannelLayer) -> int:
    """Core layer: members that joined before this (s) are expired (group_send drops them)."""
    return int(time.time()) - int(layer.group_expiry)


async def send_to_members(
    layer: RedisChannelLayer, group: str, members: list[Any], message: dict[str, Any]
) -> None:
    """The second half of channels_redis' ``group_send`` for ``members`` (the group's
    channel names, read with the expired ones dropped): one message per channel key,
    serialized by the layer, one round trip per shard involved."""
    names = [m.decode("utf8") if isinstance(m, bytes) else str(m) for m in members]
    if not names:
        return
    by_connection, messages, capacities = layer._map_channel_keys_to_connection(names, message)
    for index, keys in by_connection.items():
        over = await layer.connection(index).eval(
            _SEND_TO_CHANNELS,
            len(keys),
            *keys,
            *(messages[key] for key in keys),
            *(capacities[key] for key in keys),
            time.time(),
            int(layer.expiry),
        )
        if over:
            logger.info("%s of %s channels over capacity in group %s", over, len(names), group)


# layer -> {shard index: pool}; by the layer object, not its id (which a new layer, e.g.
# after override_settings(CHANNEL_LAYERS=…), may reuse with other hosts).
_sync_pools: weakref.WeakKeyDictionary[Any, dict[int, Any]] = weakref.WeakKeyDictionary()


# A page render waits on the sync client: never longer than this per command.
SYNC_TIMEOUT_SECONDS = 2.0


def answers(layer: Any) -> bool:
    """Whether every shard of ``layer`` answers a PING now (within SYNC_TIMEOUT_SECONDS);
    True for a layer that is not channels_redis' (there is nothing to ask)."""
    if not is_redis_layer(layer):
        return True
    try:
        return all(sync_client(layer, index).ping() for index in range(len(hosts(layer))))
    except (redis.exceptions.RedisError, OSError):
        return False


def sync_client(layer: Any, index: int) -> Any:
    """A synchronous redis-py client for shard ``index`` of ``layer``, configured from the
    same ``hosts`` entry as channels_redis' own (asyncio) pool for that shard, with socket
    timeouts of at most SYNC_TIMEOUT_SECONDS."""
    pools = _sync_pools.setdefault(layer, {})
    pool = pools.get(index)
    if pool is None:
        host = dict(hosts(layer)[index])
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
        pools[index] = pool
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
# What it raises when its connection is lost (killed, Redis restarted); redis-py opens a
# new one on the next call. (redis-py's TimeoutError is a ConnectionError's sibling.)
RECEIVE_DISCONNECTS: tuple[type[Exception], ...] = (redis.exceptions.ConnectionError, OSError)


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


# -- channels_redis: a cancelled receive loses another consumer's message -----------------


def protect_receive(layer: Any) -> bool:
    """Make ``layer``'s process-wide receive safe to cancel; True if it was changed.

    channels_redis' core layer runs one ``BZPOPMIN`` on the process's channel at a time, in
    whichever consumer holds its ``receive_lock``, and hands each message popped to the
    consumer it is for. When that consumer is cancelled (its socket closed) after Redis
    popped a message but before the reply was read, redis-py drops the connection and the
    message, which may belong to *another* socket, is gone (tests/test_receive.py pins it).
    Here the pop runs in a task that a cancellation does not stop; a message it pops after
    all goes back to the head of the channel's queue (it waits in channels_redis' backup
    key meanwhile), where the next receive takes it.
    """
    if not is_redis_core_layer(layer) or getattr(layer, "_turbo_tasks_protected", False):
        return False
    original = layer._brpop_with_clean

    async def brpop_with_clean(index: int, channel: str, timeout: float) -> Any:
        task = asyncio.ensure_future(original(index, channel, timeout))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(functools.partial(_requeue, layer, index, channel))
            raise

    layer._brpop_with_clean = brpop_with_clean
    layer._turbo_tasks_protected = True
    return True


# KEYS: channel, its backup. ARGV: member. Back from the backup (unless the next receive's
# clean-up moved it already), with its score, so it keeps its place in the queue.
_REQUEUE = """
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if score then
  redis.call('ZADD', KEYS[1], score, ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
"""
_requeues: set[asyncio.Future[Any]] = set()


def _requeue(layer: Any, index: int, channel: str, task: asyncio.Future[Any]) -> None:
    if task.cancelled() or task.exception() is not None or task.result() is None:
        return
    backup = layer._backup_channel_name(channel)
    call = asyncio.ensure_future(
        layer.connection(index).eval(_REQUEUE, 2, channel, backup, task.result())
    )
    _requeues.add(call)
    call.add_done_callback(_requeue_done)


def _requeue_done(call: asyncio.Future[Any]) -> None:
    _requeues.discard(call)
    if not call.cancelled() and call.exception() is not None:
        logger.error(
            "turbo_tasks: could not put back a message a cancelled receive popped; it waits in "
            "channels_redis' backup key for the next receive",
            exc_info=call.exception(),
        )


# -- both: a layer fit for websocket consumers ----------------------------------------------

_fitted_layers: weakref.WeakSet[Any] = weakref.WeakSet()


def fit_layer_for_consumers(alias: str) -> None:
    """Once per layer: make its receive safe to cancel (a closing socket must not take
    another socket's frame with it), and lengthen socket timeouts that would kill idle
    consumers (logged, with the way to silence it)."""
    from channels.layers import get_channel_layer

    layer = get_channel_layer(alias)
    if layer is None or layer in _fitted_layers:
        return
    _fitted_layers.add(layer)
    protect_receive(layer)
    for host in lengthen_receive_timeouts(layer):
        logging.getLogger("turbo_tasks.consumers").warning(
            "turbo_tasks: channel layer %r host %s had no socket_timeout; redis-py's default "
            "(%ss) is no longer than channels_redis' blocking receive, which would close every "
            "idle websocket. Using socket_timeout=%s; set it in CHANNEL_LAYERS to silence this.",
            alias,
            host.get("address") or (host.get("host"), host.get("port")),
            redis_default_socket_timeout(),
            host["socket_timeout"],
        )
