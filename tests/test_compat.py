"""Pins the third-party behaviour turbo_tasks._compat relies on, against the installed
versions: an upgrade that changes one fails here, by name."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
import redis
import redis.asyncio
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from channels_redis.core import RedisChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer, RedisSingleShardConnection
from django.conf import settings
from django.db import connection, transaction
from django.test import override_settings

from turbo_tasks import _compat, history

T = TypeVar("T")


@pytest.mark.django_db(transaction=True)
def test_on_commit_callbacks_lists_what_is_pending_in_order():
    def first() -> None: ...

    def second() -> None: ...

    with transaction.atomic():
        assert _compat.last_on_commit_callback(connection) is None
        transaction.on_commit(first)
        transaction.on_commit(second, robust=True)
        assert _compat.on_commit_callbacks(connection) == [first, second]
        assert _compat.last_on_commit_callback(connection) is second
        transaction.set_rollback(True)


CORE_LAYER = "channels_redis.core.RedisChannelLayer"
PUBSUB_LAYER = "channels_redis.pubsub.RedisPubSubChannelLayer"
GROUPS = [f"turbo_tasks.compat.{i}" for i in range(40)]


def _layer(backend: str, **config):
    """A layer of ``backend`` on the suite's channel-layer hosts (whatever
    TURBO_TEST_CHANNEL_LAYER says), through channels' own factory."""
    config = {**settings.CHANNEL_LAYERS["default"]["CONFIG"], **config}
    with override_settings(CHANNEL_LAYERS={"default": {"BACKEND": backend, "CONFIG": config}}):
        return get_channel_layer()


def test_group_key_and_connection_are_where_group_add_writes(redis_server):
    layer = _layer(CORE_LAYER)
    assert isinstance(layer, RedisChannelLayer)

    async def join_and_score() -> float | None:
        await layer.group_add("turbo_tasks.compat", "some.channel!abc")
        client = _compat.group_connection(layer, "turbo_tasks.compat")
        score = await client.zscore(
            _compat.group_key(layer, "turbo_tasks.compat"), "some.channel!abc"
        )
        await layer.group_discard("turbo_tasks.compat", "some.channel!abc")
        return score

    assert async_to_sync(join_and_score)() is not None


def test_blocking_receive_seconds_is_what_receive_blocks_for():
    assert _compat.blocking_receive_seconds() == RedisChannelLayer(hosts=[]).brpop_timeout
    assert _compat.blocking_receive_seconds() > 0


def test_redis_default_socket_timeout_is_what_a_connection_gets():
    assert redis.Connection().socket_timeout == _compat.redis_default_socket_timeout()


# -- channels_redis: where each layer keeps a group ------------------------------------------

SHARDS = ["redis://127.0.0.1:1/0", "redis://127.0.0.1:2/0", ("127.0.0.1", 3)]


def test_core_layer_shard_prefix_and_hosts_are_the_layers():
    layer = RedisChannelLayer(hosts=SHARDS, prefix="pfx")
    assert _compat.prefix(layer) == "pfx"
    assert _compat.hosts(layer) == layer.hosts
    assert [_compat.shard_index(layer, g) for g in GROUPS] == [
        layer.consistent_hash(g) for g in GROUPS
    ]
    assert _compat.is_redis_layer(layer)
    assert not _compat.is_redis_pubsub_layer(layer)


@pytest.mark.parametrize(
    ("args", "kwargs"), [((), {"hosts": SHARDS, "prefix": "pfx"}), ((SHARDS, "pfx"), {})]
)
def test_pubsub_layer_prefix_hosts_group_channel_and_shard_are_what_each_loop_layer_uses(
    args, kwargs
):
    """Read without an event loop, from the arguments the proxy keeps, they match what
    the RedisPubSubLoopLayer it makes for a loop uses to subscribe and publish."""
    layer = RedisPubSubChannelLayer(*args, **kwargs)
    assert _compat.is_redis_layer(layer)
    assert _compat.is_redis_pubsub_layer(layer)

    async def loop_layer_view():
        loop_layer = layer._get_layer()
        channels = [loop_layer._get_group_channel_name(g) for g in GROUPS]
        shards = [loop_layer._shards.index(loop_layer._get_shard(c)) for c in channels]
        return loop_layer.prefix, [s.host for s in loop_layer._shards], channels, shards

    prefix, hosts, channels, shards = async_to_sync(loop_layer_view)()
    assert _compat.prefix(layer) == prefix == "pfx"
    assert _compat.hosts(layer) == hosts
    assert [_compat.group_channel(layer, g) for g in GROUPS] == channels
    assert [_compat.shard_index(layer, g) for g in GROUPS] == shards
    assert set(shards) == {0, 1, 2}


def test_pubsub_layer_defaults_are_read_without_a_loop():
    layer = RedisPubSubChannelLayer()
    assert _compat.prefix(layer) == "asgi"
    assert _compat.hosts(layer) == [{"address": "redis://localhost:6379"}]


def test_pubsub_shard_connection_is_the_client_the_layer_publishes_with(redis_server):
    layer = _layer(PUBSUB_LAYER)
    # Taken without the shard's lock: _ensure_redis must stay synchronous.
    assert not inspect.iscoroutinefunction(RedisSingleShardConnection._ensure_redis)

    async def publish_and_compare():
        client = _compat.shard_connection(layer, 0)
        await layer.group_send("turbo_tasks.compat", {"type": "x"})
        publisher = layer._get_layer()._shards[0]._redis
        return client is publisher, isinstance(client, redis.asyncio.Redis), await client.ping()

    assert async_to_sync(publish_and_compare)() == (True, True, True)


def test_pubsub_group_members_are_processes_subscribed_to_the_group_channel(redis_server):
    """PUBSUB NUMSUB on the group's shard counts each process (one subscription per
    process, however many of its consumers are in the group), from a client and from Lua."""
    layer = _layer(PUBSUB_LAYER)
    group = "turbo_tasks.compat.members"
    channel = _compat.group_channel(layer, group)
    lua = "return redis.call('PUBSUB', 'NUMSUB', ARGV[1])[2]"

    async def numsub() -> tuple[int, int]:
        client = _compat.group_connection(layer, group)
        [(_, count)] = await client.pubsub_numsub(channel)
        return count, await client.eval(lua, 0, channel)

    async def join_two_then_leave():
        first, second = await layer.new_channel(), await layer.new_channel()
        await layer.group_add(group, first)
        await layer.group_add(group, second)
        joined = await _eventually(numsub, (1, 1))
        await layer.group_discard(group, first)
        await layer.group_discard(group, second)
        return joined, await _eventually(numsub, (0, 0))

    assert async_to_sync(join_two_then_leave)() == ((1, 1), (0, 0))


def test_sync_client_reaches_the_shard_of_each_layer(redis_server):
    for backend in (CORE_LAYER, PUBSUB_LAYER):
        layer = _layer(backend)
        assert _compat.sync_client(layer, 0).ping()
        # One pool per layer object (reused), not per id(): another layer gets its own.
        pool = _compat.sync_client(layer, 0).connection_pool
        assert _compat.sync_client(layer, 0).connection_pool is pool
        assert _compat.sync_client(_layer(backend), 0).connection_pool is not pool


@pytest.mark.parametrize("backend", [CORE_LAYER, PUBSUB_LAYER])
def test_has_members_while_a_channel_is_in_the_group(redis_server, backend):
    layer = _layer(backend)
    group = f"turbo_tasks.compat.has_members.{backend.rsplit('.', 1)[1]}"

    async def has_members() -> bool:
        return await _compat.has_members(layer, group)

    async def join_then_leave() -> tuple[bool, bool, bool]:
        before = await has_members()
        channel = await layer.new_channel()
        await layer.group_add(group, channel)
        joined = await _eventually(has_members, True)
        await layer.group_discard(group, channel)
        return before, joined, await _eventually(has_members, False)

    assert async_to_sync(join_then_leave)() == (False, True, False)


async def _eventually(read: Callable[[], Awaitable[T]], expected: T, timeout: float = 5) -> T:
    """``read()`` once it returns ``expected``, or its last value after ``timeout``: the
    pub/sub layer's group_add and group_discard return once (UN)SUBSCRIBE is sent, before
    Redis has run it, so another connection may see the change a moment later."""
    deadline = time.monotonic() + timeout
    while (value := await read()) != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return value


# -- Channels: AsyncConsumer ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_async_consumer_receives_its_channel_through_the_channel_receive_attribute():
    from channels.consumer import AsyncConsumer
    from channels.layers import channel_layers
    from channels.testing import ApplicationCommunicator

    seen: list[dict[str, object]] = []

    def wrap(
        consumer: object, receive: Callable[[], Awaitable[dict[str, object]]]
    ) -> Callable[..., object]:
        async def recording() -> dict[str, object]:
            message = await receive()
            seen.append(message)
            return message

        return recording

    class Probe(AsyncConsumer):
        channel_receive = _compat.wrapped_channel_receive(wrap)

        async def probe_hello(self, message: dict[str, object]) -> None:
            await self.send({"type": "probe.channel", "name": self.channel_name})

        async def probe_ping(self, message: dict[str, object]) -> None:
            await self.send({"type": "probe.pong"})

    memory = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    with override_settings(CHANNEL_LAYERS=memory):
        communicator = ApplicationCommunicator(Probe.as_asgi(), {"type": "probe"})
        await communicator.send_input({"type": "probe.hello"})
        name = (await communicator.receive_output(timeout=5))["name"]
        await channel_layers["default"].send(name, {"type": "probe.ping"})
        assert await communicator.receive_output(timeout=5) == {"type": "probe.pong"}
        communicator.stop()
    assert seen == [{"type": "probe.ping"}]


def test_async_consumer_dispatch_closes_old_connections_before_each_handler():
    # The reason the consumer routes frames through dispatch_without_db_cleanup.
    from channels.consumer import AsyncConsumer, get_handler_name

    assert "aclose_old_connections()" in inspect.getsource(AsyncConsumer.dispatch)
    assert get_handler_name({"type": "turbo.message"}) == "turbo_message"


@pytest.mark.asyncio
async def test_dispatch_without_db_cleanup_runs_the_handler_dispatch_would():
    handled = []

    class Consumer:
        async def turbo_message(self, message: dict[str, str]) -> None:
            handled.append(message)

    await _compat.dispatch_without_db_cleanup(Consumer(), {"type": "turbo.message"})
    assert handled == [{"type": "turbo.message"}]


def test_async_websocket_consumer_disconnect_cleans_up_after_the_handler():
    # What websocket_disconnect_without_db_cleanup repeats, less the clean-up hop.
    from channels.generic.websocket import AsyncWebsocketConsumer

    source = inspect.getsource(AsyncWebsocketConsumer.websocket_disconnect)
    for line in (
        "for group in self.groups:",
        "await self.channel_layer.group_discard(group, self.channel_name)",
        'await self.disconnect(message["code"])',
        "await aclose_old_connections()",
        "raise StopConsumer()",
    ):
        assert line in source, line


@pytest.mark.asyncio
async def test_websocket_disconnect_without_db_cleanup_leaves_groups_disconnects_and_stops():
    from channels.exceptions import StopConsumer

    done: list[tuple[str, object]] = []

    class Layer:
        async def group_discard(self, group: str, channel: str) -> None:
            done.append(("discard", (group, channel)))

    class Consumer:
        groups = ["a", "b"]
        channel_layer = Layer()
        channel_name = "ch"

        async def disconnect(self, code: int) -> None:
            done.append(("disconnect", code))

    with pytest.raises(StopConsumer):
        await _compat.websocket_disconnect_without_db_cleanup(
            Consumer(), {"type": "websocket.disconnect", "code": 1001}
        )
    assert done == [("discard", ("a", "ch")), ("discard", ("b", "ch")), ("disconnect", 1001)]


# -- Django: a queryset's write routing -------------------------------------------------------


@pytest.mark.parametrize("alias", [None, "other"])
def test_queryset_routing_gives_the_alias_update_and_delete_write_to(alias):
    from django.db import router

    from tests.testapp.models import Message

    queryset = Message.objects.filter(text="x")
    if alias is not None:
        queryset = queryset.using(alias)
    chosen, hints = _compat.queryset_routing(queryset)
    assert chosen == alias
    # QuerySet.db, once update()/delete() marked the queryset for writing:
    queryset._for_write = True
    assert (chosen or router.db_for_write(Message, **hints)) == queryset.db


# -- kombu: a Redis broker's queue ------------------------------------------------------------


def test_kombu_redis_queue_size_and_unacknowledged_deliveries(redis_server):
    from kombu import Connection

    queue = f"pin-{time.monotonic_ns()}"
    with Connection(redis_server) as connection:
        simple = connection.SimpleQueue(queue)
        try:
            simple.put({"n": 1})
            simple.put({"n": 2}, priority=9)  # another list: kombu's priority steps
            assert _compat.redis_queue_size(simple.channel, queue) == 2
            before = time.time()
            message = simple.get(timeout=5)  # taken, not acknowledged
            delivered, capped = _compat.redis_unacked(simple.channel, queue, 1000)
            assert not capped
            assert len(delivered) == 1
            assert before - 1 <= delivered[0] <= time.time() + 1
            message.ack()
            assert _compat.redis_unacked(simple.channel, queue, 1000)[0] == []
        finally:
            simple.clear()
            simple.close()


def test_answers_when_every_shard_answers_a_ping(redis_server):
    from tests.helpers import free_port
    from turbo_tasks._compat import layers

    up = RedisChannelLayer(hosts=[redis_server])
    down = RedisChannelLayer(hosts=[redis_server, f"redis://127.0.0.1:{free_port()}/0"])
    try:
        assert _compat.answers(up)
        assert not _compat.answers(down)
    finally:
        for layer in (up, down):
            for pool in layers._sync_pools.pop(layer, {}).values():
                pool.disconnect()


# -- channels_redis: the second half of the core layer's group_send ----------------------------


def _channel_contents(layer: RedisChannelLayer, channels: list[str]) -> dict[str, list]:
    """What each channel's Redis key holds, deserialized (the random prefix aside)."""

    async def read() -> dict[str, list]:
        found = {}
        for channel in channels:
            key = layer.prefix + (layer.non_local_name(channel) if "!" in channel else channel)
            shard = layer.connection(layer.consistent_hash(key[len(layer.prefix) :]))
            raw = await shard.zrange(key, 0, -1)
            found[channel] = [layer.deserialize(m) for m in raw]
            await shard.delete(key)
        return found

    return async_to_sync(read)()


def test_send_to_members_writes_what_group_send_writes(redis_server):
    layer = _layer(CORE_LAYER, prefix=f"compat-send-{time.monotonic_ns()}")
    assert _compat.sends_directly(layer)
    group = "turbo_tasks.compat.send"
    # Two process-local channels of one process share a key; a plain channel has its own.
    channels = ["specific.proc1!a", "specific.proc1!b", "plain.channel"]
    message = {"type": "turbo.message", "group": group, "html": "<p>x</p>", "pushed": 1.5}

    async def both() -> None:
        for channel in channels:
            await layer.group_add(group, channel)
        await layer.group_send(group, message)

    async_to_sync(both)()
    by_group_send = _channel_contents(layer, channels)

    async def ours() -> None:
        members = await _compat.group_connection(layer, group).zrange(
            _compat.group_key(layer, group), 0, -1
        )
        await _compat.send_to_members(layer, group, members, message)

    async_to_sync(ours)()
    assert _channel_contents(layer, channels) == by_group_send
    assert by_group_send["specific.proc1!a"] == [
        {**message, "__asgi_channel__": ["specific.proc1!a", "specific.proc1!b"]}
    ]
    assert by_group_send["plain.channel"] == [{**message, "__asgi_channel__": ["plain.channel"]}]


def test_send_to_members_drops_for_full_channels_and_expired_members_as_group_send(redis_server):
    layer = _layer(CORE_LAYER, prefix=f"compat-full-{time.monotonic_ns()}", capacity=1)
    group = "turbo_tasks.compat.full"
    message = {"type": "turbo.message", "group": group, "html": "<p>x</p>"}

    async def send_twice() -> None:
        await layer.group_add(group, "full.channel")
        members = [b"full.channel"]
        await _compat.send_to_members(layer, group, members, message)
        await _compat.send_to_members(layer, group, members, {**message, "html": "2"})

    async_to_sync(send_twice)()
    assert [m["html"] for m in _channel_contents(layer, ["full.channel"])["full.channel"]] == [
        "<p>x</p>"
    ]

    # A member added longer than group_expiry ago is gone for group_send: for
    # history.send too, with catch-up on and off.
    async def send_past_an_expired_member(keep: bool) -> None:
        client = _compat.group_connection(layer, group)
        stale = time.time() - layer.group_expiry - 10
        await client.zadd(_compat.group_key(layer, group), {"stale.channel": stale})
        await history.send(layer, group, dict(message), keep)

    for keep in (True, False):
        async_to_sync(send_past_an_expired_member)(keep)
        assert _channel_contents(layer, ["stale.channel"]) == {"stale.channel": []}
    assert len(_channel_contents(layer, ["full.channel"])["full.channel"]) == 1


def test_sends_directly_only_for_the_core_layers_own_group_send():
    class Custom(RedisChannelLayer):
        async def group_send(self, group, message):  # type: ignore[no-untyped-def]
            raise AssertionError("not bypassed")

    assert _compat.sends_directly(RedisChannelLayer(hosts=SHARDS))
    assert not _compat.sends_directly(Custom(hosts=SHARDS))
    assert not _compat.sends_directly(RedisPubSubChannelLayer(hosts=SHARDS))


def test_queued_group_changes_write_what_group_add_and_group_discard_write(redis_server):
    # turbo_tasks.storm sends a storm's joins and leaves in one pipeline: the same keys,
    # members, scores (join times) and expiry as the layer's own calls.
    layer = _layer(CORE_LAYER)
    group, key = "turbo_tasks.compat.queued", _compat.group_key(layer, "turbo_tasks.compat.queued")

    async def state(client: redis.asyncio.Redis) -> tuple[list[bytes], int]:
        return await client.zrange(key, 0, -1), await client.ttl(key)

    async def run() -> None:
        client = _compat.group_connection(layer, group)
        await client.delete(key)
        await layer.group_add(group, "own.channel!a")
        own = await state(client)
        await layer.group_discard(group, "own.channel!a")
        pipe = client.pipeline(transaction=False)
        _compat.check_group_change(layer, group, "own.channel!a")
        _compat.queue_group_add(layer, pipe, group, ["own.channel!a"])
        await pipe.execute()
        assert await state(client) == own
        assert abs(await client.zscore(key, "own.channel!a") - time.time()) < 5
        pipe = client.pipeline(transaction=False)
        _compat.queue_group_discard(layer, pipe, group, ["own.channel!a"])
        await pipe.execute()
        assert await client.exists(key) == 0

    async_to_sync(run)()
    with pytest.raises(TypeError):  # as from group_add itself
        _compat.check_group_change(layer, "not a group name!", "own.channel!a")
