"""Catch-up on channels_redis' RedisPubSubChannelLayer, as on its core layer: the catch-up
tests of tests/test_catch_up.py run here again, through an ASGI server and a worker of
this module's own started with ``TURBO_TEST_CHANNEL_LAYER=pubsub`` (and a queue of their
own, so the session's core-layer worker takes none of their jobs), this process rendering
and reading history on the same layer. Then what is particular to the pub/sub layer: where
its history lives on a sharded layer, who counts as a member, Sentinel hosts."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import redis
from asgiref.sync import async_to_sync
from django.conf import settings
from django.test import override_settings

from tests.helpers import (
    Process,
    WsClient,
    free_port,
    open_websocket,
    ping,
    start_asgi,
    start_redis,
    start_worker,
    test_env,
    wait_for,
)

# The catch-up behaviours, collected here again with this module's fixtures (ws_client,
# celery_worker_process and the settings below): one test, two layers.
from tests.test_catch_up import (  # noqa: F401
    test_client_dropping_four_times_during_40_commits_ends_with_all_40,
    test_frame_for_an_unwatched_stream_leaves_a_hole_that_resets_older_pages,
    test_frames_carry_increasing_offsets,
    test_history_trimmed_past_its_length_gets_reset,
    test_page_rendered_before_a_commit_and_subscribed_after_it_gets_the_change,
    test_reconnect_with_since_replays_exactly_the_missed_frames_then_goes_live,
    test_rendering_many_streams_costs_one_redis_round_trip,
    test_since_from_the_future_of_this_stream_gets_reset,
    test_since_of_another_stream_cannot_read_this_streams_history,
    test_subscribe_at_the_current_offset_replays_nothing,
    test_unusable_since_gets_reset_and_the_socket_keeps_working,
)
from tests.testapp.models import Room
from turbo_tasks import _compat, history, layers, refreshes

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("celery_worker_process"),
]

QUEUE = "pubsub"
CORE = "channels_redis.core.RedisChannelLayer"
PUBSUB = settings.PUBSUB_LAYER


def _layers(backend: str, hosts: list | None = None) -> dict:
    config = settings.CHANNEL_LAYERS["default"]["CONFIG"]
    if hosts is not None:
        config = {"hosts": [{"address": url, "socket_timeout": 15} for url in hosts]}
    return {"default": {"BACKEND": backend, "CONFIG": config}}


@pytest.fixture(scope="module")
def pubsub_stack(redis_server: str, django_db_setup: None) -> Iterator[tuple[str, Process]]:
    """An ASGI server and a worker (on QUEUE) on the pub/sub layer; yields the ws:// URL."""
    env = test_env()
    env["TURBO_TEST_CHANNEL_LAYER"] = "pubsub"
    env["TURBO_TEST_TURBO_TASKS"] = json.dumps({"QUEUE": QUEUE})
    with ExitStack() as stack:
        server, port = start_asgi("pubsub-asgi", env)
        stack.callback(server.stop)
        worker = start_worker(f"pubsub-{os.getpid()}", QUEUE, env)
        stack.callback(worker.stop)
        yield f"ws://127.0.0.1:{port}/ws/turbo/", worker


@pytest.fixture
def celery_worker_process(pubsub_stack: tuple[str, Process]) -> Process:
    return pubsub_stack[1]


@pytest.fixture
def ws_client(pubsub_stack: tuple[str, Process]) -> Iterator[Callable[..., WsClient]]:
    with ExitStack() as stack:

        def open_client(origin: str = "http://127.0.0.1", cookie: str | None = None) -> WsClient:
            conn = stack.enter_context(open_websocket(pubsub_stack[0], origin, cookie=cookie))
            return WsClient(conn)

        yield open_client


@pytest.fixture(autouse=True)
def on_pubsub() -> Iterator[None]:
    """This process renders, publishes to QUEUE and reads history on the pub/sub layer."""
    with override_settings(CHANNEL_LAYERS=_layers(PUBSUB), TURBO_TASKS={"QUEUE": QUEUE}):
        assert _compat.is_redis_pubsub_layer(layers.get_layer())
        yield


def test_this_modules_server_and_worker_run_on_the_pubsub_layer(ws_client, room, redis_client):
    """The server subscribes the group's pub/sub channel, and the worker's frames reach it
    (a worker on the core layer would write to the group's sorted set instead)."""
    client = ws_client()
    assert client.subscribe(room.stream.signed_name)["type"] == "subscribed"
    channel = _compat.group_channel(layers.get_layer(), room.stream.group_name)
    wait_for(lambda: redis_client.pubsub_numsub(channel)[0][1] == 1, 5, "the server to subscribe")
    room.stream.append(text="over pub/sub", id="log")
    assert "over pub/sub" in client.messages()


# -- both layers ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", [CORE, PUBSUB])
def test_history_current_agrees_with_current_offsets(backend):
    rooms = [Room.objects.create(name=f"agree {i}") for i in range(3)]
    groups = [room.stream.group_name for room in rooms]
    with override_settings(CHANNEL_LAYERS=_layers(backend)):
        layer = layers.get_layer()
        assert async_to_sync(history.current)(layer, groups) == {}  # no offsets yet
        rendered = history.current_offsets(layer, groups)
        assert async_to_sync(history.current)(layer, groups) == {
            group: history.parse(offset) for group, offset in rendered.items()
        }
        layers.push(layer, [(groups[0], "<p>1</p>", None), (groups[1], "<p>2</p>", None)])
        layers.push(layer, [(groups[0], "<p>3</p>", None)])
        now = async_to_sync(history.current)(layer, groups)
        assert now == {
            g: history.parse(o) for g, o in history.current_offsets(layer, groups).items()
        }
        assert [now[g][1] - (history.parse(rendered[g]) or ("", 0))[1] for g in groups] == [2, 1, 0]


# -- the pub/sub layer ---------------------------------------------------------------------


def test_history_sits_on_the_shard_the_pubsub_layer_publishes_the_group_on(redis_server):
    shards = [start_redis("pubsub-shard-a"), start_redis("pubsub-shard-b")]
    clients = [redis.Redis.from_url(url) for _, url in shards]
    try:
        with override_settings(CHANNEL_LAYERS=_layers(PUBSUB, [url for _, url in shards])):
            layer = layers.get_layer()
            by_shard: dict[int, str] = {}
            while len(by_shard) < 2:
                room = Room.objects.create(name="sharded")
                group = room.stream.group_name
                by_shard.setdefault(_compat.shard_index(layer, group), group)
            for index, group in sorted(by_shard.items()):
                channel = _compat.group_channel(layer, group)
                listeners = [client.pubsub(ignore_subscribe_messages=True) for client in clients]
                for listener in listeners:
                    listener.subscribe(channel)
                layers.push(layer, [(group, "<p>sharded</p>", None)])
                meta, log = (f"asgi:turbo_tasks:{kind}:{group}" for kind in ("meta", "history"))
                for other, (client, listener) in enumerate(zip(clients, listeners, strict=True)):
                    here = other == index
                    assert bool(_next_message(listener, 2 if here else 0.3)) is here
                    assert client.exists(meta, log) == (2 if here else 0)
                    listener.close()
                assert async_to_sync(history.current)(layer, [group])[group][1] == 1
            layers.run(layer.flush())  # before its Redis servers stop
    finally:
        for client in clients:
            client.close()
        for server, _ in shards:
            server.stop()


def _next_message(listener: redis.client.PubSub, timeout: float) -> dict | None:
    deadline = time.monotonic() + timeout
    while True:
        message = listener.get_message(timeout=max(deadline - time.monotonic(), 0))
        if message is not None or time.monotonic() >= deadline:
            return message


@pytest.mark.parametrize("catch_up", [{}, {"HISTORY_LENGTH": 0}], ids=["catch-up", "no-catch-up"])
def test_a_group_has_members_while_a_process_subscribes_to_its_channel(catch_up):
    """Unwatched (no page rendered it), so only the subscription counts; it is dropped
    with the last member of this process."""
    layer, group = layers.get_layer(), Room.objects.create(name="members").stream.group_name

    def has_members() -> bool:
        layers.forget_subscribers()
        return bool(layers.groups_with_subscribers(layer, {group}))

    with override_settings(TURBO_TASKS={"QUEUE": QUEUE, **catch_up}):
        assert not has_members()
        channel = layers.run(layer.new_channel())
        try:
            layers.run(layer.group_add(group, channel))
            wait_for(has_members, 5, "the subscription to count")
            layers.run(layer.group_discard(group, channel))
            wait_for(lambda: not has_members(), 5, "the unsubscribe to count")
        finally:
            layers.run(layer.flush())  # stops its receive task, closes its connections


def test_refresh_debounce_window_works_on_the_pubsub_layer():
    layer, group = layers.get_layer(), Room.objects.create(name="debounce").stream.group_name
    assert layers.can_debounce(layer)
    token = layers.run(refreshes.open_window(layer, group, "rid", None))
    assert token
    assert layers.run(refreshes.open_window(layer, group, "rid", None)) == ""
    assert layers.run(refreshes.close_window(layer, group, token)) == ("rid", None)


@pytest.fixture
def sentinel(redis_server: str, tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A Redis Sentinel (``redis-server --sentinel``) watching the suite's Redis."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed"
    port = free_port()
    config = tmp_path / "sentinel.conf"  # Sentinel rewrites it: keep it writable
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor turbo 127.0.0.1 {settings.REDIS_PORT} 1\n"
    )
    server = Process(f"sentinel-{port}", [binary, str(config), "--sentinel"])
    try:
        client = redis.Redis(port=port)
        wait_for(lambda: ping(client), 20, f"sentinel on {port}")
        client.close()
        yield ("127.0.0.1", port), "turbo"
    finally:
        server.stop()


@pytest.mark.parametrize("backend", [CORE, PUBSUB])
def test_sentinel_hosts_work_for_catch_up(sentinel, backend):
    address, master = sentinel
    hosts = [{"sentinels": [address], "master_name": master, "db": 0, "socket_timeout": 15}]
    group = Room.objects.create(name="sentinel").stream.group_name
    config = {"hosts": hosts, "prefix": "turbo_sentinel"}
    with override_settings(CHANNEL_LAYERS={"default": {"BACKEND": backend, "CONFIG": config}}):
        layer = layers.get_layer()
        try:
            rendered = history.current_offsets(layer, [group])  # the sync client
            layers.push(layer, [(group, "<p>through sentinel</p>", None)])  # the async one
            inc, seq = history.parse(rendered[group]) or ("", 0)
            assert layers.run(history.current(layer, [group])) == {group: (inc, seq + 1)}
        finally:
            layers.run(_close_with_sentinels(layer))
    # The suite's Redis, found through Sentinel, holds it.
    direct = {"hosts": [settings.CHANNEL_REDIS_URL], "prefix": "turbo_sentinel"}
    with override_settings(CHANNEL_LAYERS={"default": {"BACKEND": backend, "CONFIG": direct}}):
        offsets = history.current_offsets(layers.get_layer(), [group])
    assert offsets == {group: history.offset(inc, seq + 1)}


async def _close_with_sentinels(layer) -> None:
    # channels_redis' flush closes the master's pool but not the Sentinel's own clients,
    # which would warn (ResourceWarning) whenever they are collected.
    sentinels = _compat.shard_connection(layer, 0).connection_pool.sentinel_manager.sentinels
    if _compat.is_redis_core_layer(layer):
        await layer.close_pools()  # (its flush would delete the keys)
    else:
        await layer.flush()
    for client in sentinels:
        await client.aclose()
