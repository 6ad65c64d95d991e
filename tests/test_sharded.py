"""Catch-up on a sharded channel layer: two Redis hosts in CHANNEL_LAYERS, two ASGI
servers and two workers. A stream's history lives on the shard of its group, so replay
works for streams on either shard, whichever server the page reconnects to."""

from __future__ import annotations

import json
import os
import re

import pytest
from django.test import override_settings

from tests.helpers import (
    WsClient,
    open_websocket,
    start_asgi,
    start_redis,
    start_worker,
    test_env,
    wait_for,
)
from tests.testapp.models import Message, Room
from turbo_tasks import history, layers

pytestmark = pytest.mark.django_db(transaction=True)

QUEUE = "sharded"


@pytest.fixture(scope="module")
def sharded(redis_server):
    shards = [start_redis("shard-a"), start_redis("shard-b")]
    urls = ",".join(url for _, url in shards)
    env = test_env()
    env["TURBO_TEST_CHANNEL_REDIS_URL"] = urls
    env["TURBO_TEST_TURBO_TASKS"] = json.dumps({"QUEUE": QUEUE})
    processes = [server for server, _ in shards]
    try:
        servers = []
        for name in ("sharded-asgi-1", "sharded-asgi-2"):
            server, port = start_asgi(name, env)
            processes.append(server)
            servers.append(f"ws://127.0.0.1:{port}/ws/turbo/")
        for name in ("sharded-1", "sharded-2"):
            processes.append(start_worker(f"{name}-{os.getpid()}", QUEUE, env))
        layer = {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": url, "socket_timeout": 15} for _, url in shards]},
        }
        with override_settings(CHANNEL_LAYERS={"default": layer}, TURBO_TASKS={"QUEUE": QUEUE}):
            yield servers
    finally:
        for process in reversed(processes):
            process.stop()


def _client(url: str) -> WsClient:
    return WsClient(open_websocket(url))


def _rooms_on_both_shards() -> list[Room]:
    layer = layers.get_layer()
    by_shard: dict[int, Room] = {}
    while len(by_shard) < 2:
        room = Room.objects.create(name="sharded")
        by_shard.setdefault(layer.consistent_hash(room.stream.group_name), room)
    return [by_shard[0], by_shard[1]]


def test_replay_works_for_streams_on_either_shard(sharded):
    first, second = sharded
    for room in _rooms_on_both_shards():
        name = room.stream.signed_name
        client = _client(first)
        answer = client.subscribe(name)
        assert answer["type"] == "subscribed"
        client.conn.close()
        missed = [Message.objects.create(room=room, text=f"missed {i}") for i in range(3)]
        inc, seq = history.parse(answer["offset"]) or ("", 0)
        group = room.stream.group_name
        wait_for(
            lambda group=group, inc=inc, seq=seq: (
                history.current_offsets(layers.get_layer(), [group])[group]
                == history.offset(inc, seq + 3)
            ),
            30,
            "the frames in the history",
        )
        # Back on the other server: the shard of the stream's group serves the history.
        again = _client(second)
        start = len(again.frames)
        assert again.subscribe(name, since=answer["offset"])["type"] == "subscribed"
        replayed = [f["html"] for f in again.frames[start:] if f["type"] == "message"]
        # Two workers: the frames are in the order they were pushed, not always created.
        assert sorted(re.findall(r'id="(message-\d+)"', "".join(replayed))) == sorted(
            f"message-{m.pk}" for m in missed
        )
