"""A reconnect storm's group changes (turbo_tasks.storm.join and leave): on channels_redis'
core layer, the joins and leaves that the sockets of one event loop ask for together go to
Redis in one round trip per shard, each caller returning once Redis has answered; any other
layer (or a group_add replaced on the instance) gets its own calls, as before."""

from __future__ import annotations

import asyncio
from unittest import mock

import pytest
import redis.asyncio.client
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.test import override_settings

from turbo_tasks import _compat, history, storm

GROUP = "turbo_tasks.storm.test"


def _core_layer():  # type: ignore[no-untyped-def]
    config = settings.CHANNEL_LAYERS["default"]["CONFIG"]
    backend = "channels_redis.core.RedisChannelLayer"
    with override_settings(CHANNEL_LAYERS={"default": {"BACKEND": backend, "CONFIG": config}}):
        return get_channel_layer()


class CountedPipelines:
    """Counts the pipelines sent (and the commands in each)."""

    def __init__(self) -> None:
        self.sent: list[int] = []
        self.real = redis.asyncio.client.Pipeline.execute

    def __enter__(self) -> CountedPipelines:
        counter = self

        async def execute(pipe, *args, **kwargs):  # type: ignore[no-untyped-def]
            counter.sent.append(len(pipe.command_stack))
            return await counter.real(pipe, *args, **kwargs)

        self.patch = mock.patch.object(redis.asyncio.client.Pipeline, "execute", execute)
        self.patch.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.patch.stop()


def test_joins_and_leaves_asked_together_share_one_round_trip(redis_server):
    layer = _core_layer()
    channels = [f"specific.storm!{i}" for i in range(30)]
    meta, _ = history._keys(layer, GROUP)

    async def run() -> None:
        client = _compat.group_connection(layer, GROUP)
        key = _compat.group_key(layer, GROUP)
        await client.delete(key, meta)
        await client.hset(meta, "inc", "x")  # a stream with a history: leaving touches it
        with CountedPipelines() as counted:
            await asyncio.gather(*(storm.join(layer, GROUP, c) for c in channels))
            assert counted.sent == [2]  # one ZADD of all 30, one EXPIRE
            assert sorted(m.decode() for m in await client.zrange(key, 0, -1)) == sorted(channels)
            assert 0 < await client.ttl(key) <= layer.group_expiry
            await asyncio.gather(
                *(storm.leave(layer, GROUP, c, keep_watched=True) for c in channels[:20]),
                *(storm.leave(layer, GROUP, c) for c in channels[20:]),
            )
            assert counted.sent == [2, 3]  # ZREM of 20, the touch, ZREM of 10
        assert await client.zcard(key) == 0
        assert await client.hget(meta, "watched") is not None
        await client.delete(meta)

    async_to_sync(run)()


def test_a_join_cancelled_before_it_is_sent_adds_nothing(redis_server):
    layer = _core_layer()

    async def run() -> None:
        client = _compat.group_connection(layer, GROUP)
        key = _compat.group_key(layer, GROUP)
        await client.delete(key)
        gone = asyncio.ensure_future(storm.join(layer, GROUP, "specific.storm!gone"))
        stays = asyncio.ensure_future(storm.join(layer, GROUP, "specific.storm!stays"))
        await asyncio.sleep(0)  # both asked; the batch starts on the next turn
        gone.cancel()  # its socket closed
        await stays
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert [m.decode() for m in await client.zrange(key, 0, -1)] == ["specific.storm!stays"]
        await client.delete(key)

    async_to_sync(run)()


def test_every_caller_of_a_failed_batch_raises_its_error(redis_server):
    layer = _core_layer()

    async def run() -> None:
        async def down(pipe, *args, **kwargs):  # type: ignore[no-untyped-def]
            raise ConnectionError("Redis is down")

        with mock.patch.object(redis.asyncio.client.Pipeline, "execute", down):
            outcomes = await asyncio.gather(
                *(storm.join(layer, GROUP, f"specific.storm!{i}") for i in range(3)),
                return_exceptions=True,
            )
        assert all(isinstance(o, ConnectionError) for o in outcomes)
        # The next batch is sent as usual.
        await storm.join(layer, GROUP, "specific.storm!after")
        await storm.leave(layer, GROUP, "specific.storm!after")

    async_to_sync(run)()


def test_a_group_add_replaced_on_the_layer_is_called_as_before(redis_server):
    layer = _core_layer()
    calls: list[tuple[str, str]] = []

    async def group_add(group: str, channel: str) -> None:
        calls.append((group, channel))

    async def run() -> None:
        with mock.patch.object(layer, "group_add", group_add):
            assert not _compat.changes_groups_directly(layer)
            await storm.join(layer, GROUP, "specific.storm!x")
        assert _compat.changes_groups_directly(layer)

    async_to_sync(run)()
    assert calls == [(GROUP, "specific.storm!x")]
