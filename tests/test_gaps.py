"""No silent gap on an open socket (docs/ref/protocol.md, "Catch-up", point 5): a frame dropped
anywhere between the worker and the socket still reaches the page, in order and once.

Real uvicorn servers (one per channels_redis layer) with a short ``GAP_CHECK_SECONDS``, on a
channel-layer Redis of this module's own: the faults below (killed connections, deleted
keys) must not reach other tests' servers and workers. Frames are written as the worker
writes them (``history.append`` then ``group_send``, through
``turbo_tasks.layers``); a *dropped* frame is one appended to the history whose group_send
never happens, which is what every loss looks like from the socket.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections.abc import Iterator

import pytest
import redis
from channels.layers import get_channel_layer
from django.conf import settings
from django.test import override_settings

from tests.helpers import (
    Process,
    WsClient,
    open_websocket,
    start_asgi,
    start_redis,
    test_env,
    wait_for,
)
from tests.testapp.models import Room
from turbo_tasks import history, layers

pytestmark = pytest.mark.django_db(transaction=True)

GAP_CHECK_SECONDS = 1


CORE = "channels_redis.core.RedisChannelLayer"
PUBSUB = "channels_redis.pubsub.RedisPubSubChannelLayer"


@pytest.fixture(scope="module")
def gap_redis() -> Iterator[str]:
    server, url = start_redis("gaps")
    yield url
    server.stop()


def _start_gap_asgi(gap_redis: str, kind: str) -> tuple[Process, int]:
    env = {
        **test_env(),
        "TURBO_TEST_CHANNEL_REDIS_URL": gap_redis,
        "TURBO_TEST_CHANNEL_LAYER": kind,
        "TURBO_TEST_TURBO_TASKS": json.dumps({"GAP_CHECK_SECONDS": GAP_CHECK_SECONDS}),
    }
    return start_asgi(f"gaps-{kind}", env=env)


@pytest.fixture(scope="module")
def gap_asgi(gap_redis: str, django_db_setup: None) -> Iterator[tuple[str, Process]]:
    server, port = _start_gap_asgi(gap_redis, "core")
    yield f"ws://127.0.0.1:{port}/ws/turbo/", server
    server.stop()


@pytest.fixture(scope="module")
def pubsub_gap_server(gap_redis: str, django_db_setup: None) -> Iterator[str]:
    server, port = _start_gap_asgi(gap_redis, "pubsub")
    yield f"ws://127.0.0.1:{port}/ws/turbo/"
    server.stop()


def _layers(backend: str, url: str) -> dict:
    return {
        "default": {
            "BACKEND": backend,
            "CONFIG": {"hosts": [{"address": url, "socket_timeout": 15}]},
        }
    }


@pytest.fixture(autouse=True)
def on_gap_redis(gap_redis: str) -> Iterator[None]:
    """This process pushes (as a worker would) to the servers' channel layer."""
    with override_settings(CHANNEL_LAYERS=_layers(CORE, gap_redis)):
        yield


@pytest.fixture
def redis_client(gap_redis: str) -> redis.Redis:
    return redis.Redis.from_url(gap_redis)


@pytest.fixture
def gap_server(gap_asgi: tuple[str, Process]) -> str:
    return gap_asgi[0]


@pytest.fixture
def client(gap_server: str) -> Iterator[WsClient]:
    with open_websocket(gap_server) as conn:
        yield WsClient(conn)


def _layer():
    return get_channel_layer()


def drop(group: str, html: str) -> str:
    """A frame the worker recorded and whose push was lost: its offset."""
    return layers.run(history.append(_layer(), group, html))


def push(group: str, html: str) -> None:
    layers.push(_layer(), [(group, html, None)])


def send_only(group: str, html: str, offset: str) -> None:
    """Push a frame already in the history (a worker whose push is merely late)."""
    event = {"type": "turbo.message", "group": group, "html": html, "offset": offset}
    layers.run(_layer().group_send(group, event))


def messages_until(client: WsClient, html: str, timeout: float = 30) -> list[dict]:
    """Every ``message`` frame up to and including the one whose html ends with ``html``."""
    start = len(client.frames)
    client.wait(lambda f: f["type"] == "message" and f["html"].endswith(html), timeout)
    return [f for f in client.frames[start:] if f["type"] == "message"]


def seqs(frames: list[dict]) -> list[int]:
    return [history.parse(f["offset"])[1] for f in frames]


@pytest.fixture
def subscribed(client: WsClient, room: Room) -> tuple[WsClient, str, str]:
    name = room.stream.signed_name
    answer = client.subscribe(name)
    assert answer["type"] == "subscribed", answer
    return client, room.stream.group_name, answer["offset"]


def test_a_frame_that_skips_ahead_brings_the_missing_ones_first(subscribed):
    client, group, _ = subscribed
    drop(group, "<one/>")
    drop(group, "<two/>")
    push(group, "<three/>")
    frames = messages_until(client, "<three/>", timeout=GAP_CHECK_SECONDS / 2 + 5)
    assert [f["html"] for f in frames] == ["<one/>", "<two/>", "<three/>"]
    assert seqs(frames) == [1, 2, 3]


def test_a_frame_that_never_arrives_is_replayed_by_the_gap_check(subscribed):
    client, group, _ = subscribed
    drop(group, "<lost/>")
    frames = messages_until(client, "<lost/>")
    assert seqs(frames) == [1]
    push(group, "<next/>")
    assert seqs(messages_until(client, "<next/>")) == [2]


def test_frames_merely_late_are_sent_once_in_order(subscribed):
    # Two workers: the second frame's push overtakes the first's.
    client, group, _ = subscribed
    first, second = drop(group, "<first/>"), drop(group, "<second/>")
    send_only(group, "<second/>", second)
    send_only(group, "<first/>", first)
    push(group, "<marker/>")
    frames = messages_until(client, "<marker/>")
    # A frame only a gap check can bring: one ran since, and replayed nothing twice.
    drop(group, "<probe/>")
    frames += messages_until(client, "<probe/>")
    assert seqs(frames) == [1, 2, 3, 4]


def test_a_lost_group_membership_is_restored(subscribed, redis_client: redis.Redis):
    # A Redis restart without persistence, or an expired member: group_send reaches no one.
    client, group, _ = subscribed
    layer = _layer()
    redis_client.delete(layer._group_key(group))
    push(group, "<unheard/>")
    assert seqs(messages_until(client, "<unheard/>")) == [1]
    wait_for(lambda: redis_client.zcard(layer._group_key(group)) == 1, 10, "the re-join")
    push(group, "<heard/>")
    assert seqs(messages_until(client, "<heard/>", timeout=GAP_CHECK_SECONDS / 2 + 5)) == [2]


def test_killed_channel_layer_connections_under_an_open_socket_converge(
    subscribed, redis_client: redis.Redis
):
    client, group, _ = subscribed
    for number in range(5):
        _kill_blocked_receives(redis_client)
        push(group, f"<f{number}/>")
    frames = messages_until(client, "<f4/>")
    push(group, "<end/>")
    frames += messages_until(client, "<end/>")
    assert seqs(frames) == [1, 2, 3, 4, 5, 6]


def _kill_blocked_receives(client: redis.Redis) -> None:
    for entry in client.client_list():
        if entry.get("cmd") == "bzpopmin":
            client.client_kill_filter(_id=entry["id"])


def test_an_epoch_change_under_an_open_socket_resets_the_page(subscribed, redis_client):
    # The channel layer's Redis lost the stream's history: the page cannot know what it
    # missed, so it is told to reload.
    client, group, _ = subscribed
    layer = _layer()
    redis_client.delete(*history._keys(layer, group))
    push(group, "<new-epoch/>")
    client.wait(lambda f: f == {"type": "reset", "stream": f.get("stream")}, 10)


def test_gap_check_setting_is_validated():
    from turbo_tasks.checks import check_settings

    with override_settings(TURBO_TASKS={"GAP_CHECK_SECONDS": 0}):
        assert [m.id for m in check_settings()] == ["turbo_tasks.E006"]


@pytest.mark.asyncio
async def test_a_deaf_socket_gets_its_frames_by_repair_then_is_closed_to_reconnect(
    room, monkeypatch
):
    # CPython #86296 on 3.10/3.11: a cancelled redis-py call can leave a consumer that
    # receives nothing from the channel layer, its socket open. Here its receive never returns.
    from channels.testing import WebsocketCommunicator

    from turbo_tasks import consumers
    from turbo_tasks.consumers import TurboStreamsConsumer

    layer = _layer()

    async def deaf(channel: str) -> dict:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    monkeypatch.setattr(layer, "receive", deaf)
    group = room.stream.group_name
    with override_settings(TURBO_TASKS={"GAP_CHECK_SECONDS": 0.2}):
        ws = WebsocketCommunicator(TurboStreamsConsumer.as_asgi(), "/ws/turbo/")
        assert (await ws.connect(timeout=10))[0]
        assert (await ws.receive_json_from(timeout=10))["type"] == "hello"
        await ws.send_json_to({"type": "subscribe", "stream": room.stream.signed_name})
        assert (await ws.receive_json_from(timeout=10))["type"] == "subscribed"
        replayed = []
        deadline = asyncio.get_running_loop().time() + 20
        while True:
            assert asyncio.get_running_loop().time() < deadline, replayed
            await history.append(layer, group, f"<f{len(replayed)}/>")
            try:
                frame = await ws.receive_output(timeout=5)
            except asyncio.TimeoutError:
                continue
            if frame["type"] == "websocket.close":
                break
            replayed.append(json.loads(frame["text"])["offset"])
        assert frame["code"] == 1011
        # Repaired while it could be, each frame once and in order, before giving up.
        numbers = [history.parse(offset)[1] for offset in replayed]
        assert numbers == sorted(set(numbers))
        assert len(numbers) >= consumers.DEAF_REPAIRS
        await ws.disconnect(timeout=10)


def test_frames_dropped_over_capacity_reach_the_page_once_each(gap_asgi, room, caplog):
    # channels_redis drops a group_send for a channel already holding `capacity` messages
    # (the sender checks, and logs at INFO only): here the ASGI process stalls (SIGSTOP,
    # as a busy or swapping process would) while a burst is sent with a capacity of 3.
    url, server = gap_asgi
    group = room.stream.group_name
    config = {**settings.CHANNEL_LAYERS["default"]["CONFIG"], "capacity": 3}
    small = {"default": {**settings.CHANNEL_LAYERS["default"], "CONFIG": config}}
    with open_websocket(url) as conn:
        client = WsClient(conn)
        assert client.subscribe(room.stream.signed_name)["type"] == "subscribed"
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            with (
                caplog.at_level(logging.INFO, "channels_redis"),
                override_settings(CHANNEL_LAYERS=small),
            ):
                for number in range(1, 21):
                    push(group, f"<p>{number}</p>")
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        assert caplog.text.count("over capacity") >= 10  # 16 or 17: one pop was in flight
        frames = messages_until(client, "<p>20</p>")
    assert seqs(frames) == list(range(1, 21))


def test_frames_published_while_the_pubsub_subscriber_reconnects_reach_the_page(
    pubsub_gap_server, gap_redis, room, redis_client
):
    # channels_redis' pub/sub layer loses what is published while its subscriber connection
    # is down (channels_redis#256); the gap check replays it, in order, each frame once.
    with (
        open_websocket(pubsub_gap_server) as conn,
        override_settings(CHANNEL_LAYERS=_layers(PUBSUB, gap_redis)),
    ):
        client = WsClient(conn)
        assert client.subscribe(room.stream.signed_name)["type"] == "subscribed"
        group = room.stream.group_name
        channel = f"asgi__group__{group}"
        wait_for(lambda: redis_client.pubsub_numsub(channel)[0][1] == 1, 5, "the subscribe")
        redis_client.client_kill_filter(_type="pubsub")  # only that server subscribes here
        for number in range(1, 6):
            push(group, f"<p>{number}</p>")
        frames = messages_until(client, "<p>5</p>")
    assert [f["html"] for f in frames] == [f"<p>{n}</p>" for n in range(1, 6)]
    assert seqs(frames) == [1, 2, 3, 4, 5]
