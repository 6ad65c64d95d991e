"""Pins the third-party behaviour turbo_tasks._compat relies on, against the installed
versions: an upgrade that changes one fails here, by name."""

from __future__ import annotations

import pytest
import redis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from channels_redis.core import RedisChannelLayer
from django.db import connection, transaction

from turbo_tasks import _compat


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


def test_group_key_and_connection_are_where_group_add_writes(redis_server):
    layer = get_channel_layer()
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
