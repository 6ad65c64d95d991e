"""A socket closing must not lose a frame meant for another socket of the same process.

channels_redis' core layer pops the process's channel in whichever consumer holds its
receive lock; cancelling that consumer between Redis' pop and the read of the reply loses
the message (pinned below, so an upstream fix shows up here). ``_compat.protect_receive``
puts such a message back. Real Redis; the moment of the cancellation is made exact by
writing and waiting from the event loop's own thread, so the reply is in the socket,
unread, when the lock holder is cancelled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis
from channels_redis.core import RedisChannelLayer

from tests.helpers import start_redis
from turbo_tasks import _compat

TIMEOUT = 10


@pytest.fixture(scope="module")
def own_redis() -> Iterator[str]:
    """A Redis of this module's own: the moment of the pop is read from its count of
    blocked clients, which other tests' workers and servers would add to."""
    server, url = start_redis("receive")
    yield url
    server.stop()


def _layer(redis_server: str) -> RedisChannelLayer:
    return RedisChannelLayer(hosts=[{"address": redis_server, "socket_timeout": 15}])


async def _wait(condition, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


async def _cancel_the_lock_holder_mid_pop(
    layer: RedisChannelLayer, redis_server: str, patience: float = TIMEOUT
) -> bool:
    """Socket A waits for a frame while socket B holds the receive lock; B is cancelled
    after Redis popped A's frame for B, before B read the reply. True if A gets it (a
    frame takes milliseconds: ``patience`` is how long its absence takes to be a loss)."""
    sync = redis.Redis.from_url(redis_server)
    a, b = await layer.new_channel(), await layer.new_channel()
    holder = asyncio.ensure_future(layer.receive(b))
    await _wait(lambda: layer.receive_lock is not None and layer.receive_lock.locked(), "lock")
    waiter = asyncio.ensure_future(layer.receive(a))
    key = layer.prefix + layer.non_local_name(a)
    # Ours to read back: BZPOPMIN is issued once the holder blocks on it.
    await _wait(lambda: _blocked_clients(sync) >= 1, "BZPOPMIN")
    # From here on the loop does not run until the holder is cancelled.
    sync.zadd(key, {layer.serialize({"type": "frame", "__asgi_channel__": a}): time.time()})
    deadline = time.monotonic() + TIMEOUT
    while sync.zcard(key) and time.monotonic() < deadline:  # popped for the holder
        time.sleep(0.001)
    if sync.zcard(key):
        # The holder's BZPOPMIN timed out (channels_redis re-issues it every 5 s) before
        # the frame was written, on a stalled machine: not the moment this is about.
        holder.cancel()
        waiter.cancel()
        sync.close()
        raise _Missed
    assert _blocked_clients(sync) == 0
    holder.cancel()
    try:
        message = await asyncio.wait_for(waiter, patience)
    except asyncio.TimeoutError:
        return False
    finally:
        sync.close()
    assert message == {"type": "frame"}
    return True


class _Missed(Exception):
    """The scenario's moment did not happen; run it again."""


def _scenario(layer: RedisChannelLayer, redis_server: str, patience: float = TIMEOUT) -> bool:
    for _ in range(3):
        try:
            return asyncio.run(_cancel_the_lock_holder_mid_pop(layer, redis_server, patience))
        except _Missed:
            continue
    raise AssertionError("the holder never popped the frame in three tries")


def _blocked_clients(sync: redis.Redis) -> int:
    return int(sync.info("clients")["blocked_clients"])


def test_upstream_a_cancelled_receive_loses_another_channels_message(own_redis):
    """If this fails, channels_redis no longer loses the message: protect_receive can go."""
    layer = _layer(own_redis)
    assert not _scenario(layer, own_redis, patience=2)


def test_protected_receive_keeps_another_channels_message(own_redis):
    layer = _layer(own_redis)
    assert _compat.protect_receive(layer)
    assert not _compat.protect_receive(layer)  # once per layer
    for _ in range(3):
        assert _scenario(layer, own_redis)


@pytest.mark.parametrize("backend", ["pubsub", "memory"])
def test_protect_receive_leaves_other_layers_alone(backend):
    from channels.layers import InMemoryChannelLayer
    from channels_redis.pubsub import RedisPubSubChannelLayer

    layer = RedisPubSubChannelLayer() if backend == "pubsub" else InMemoryChannelLayer()
    assert not _compat.protect_receive(layer)
