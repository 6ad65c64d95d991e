"""Catch-up (docs/ref/protocol.md): offsets, replay after a reconnect or a late subscribe, and
``reset`` when the history cannot serve a page, through the real ASGI server, a real
Celery worker and Redis."""

from __future__ import annotations

import logging
import re
import threading

import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from django.template import Context, Template
from django.test import override_settings

from tests.helpers import WsClient, free_port, wait_for
from tests.testapp.models import Message, Room
from turbo_tasks import history, layers

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("celery_worker_process"),
]

TIMEOUT = 30
FRAME_ID = re.compile(r'<p id="(message-\d+)">')


def replayed(client: WsClient, start: int) -> list[dict]:
    """The message frames the socket got since ``client.frames[start]``."""
    return [f for f in client.frames[start:] if f["type"] == "message"]


def subscribe(client: WsClient, name: str, since: str | None = None) -> tuple[dict, list[dict]]:
    start = len(client.frames)
    answer = client.subscribe(name, since=since)
    assert answer["type"] == "subscribed", answer
    return answer, replayed(client, start)


def rendered_since(room: Room) -> tuple[str, str]:
    """What ``{% turbo_subscribe room %}`` renders: the signed name and its ``since``."""
    html = Template("{% load turbo_tasks %}{% turbo_subscribe room %}").render(
        Context({"room": room})
    )
    match = re.search(r'signed-stream-name="([^"]+)" since="([^"]+)"', html)
    assert match, html
    return match[1], match[2]


def message_ids(frames: list[dict]) -> list[str]:
    return [m for frame in frames for m in FRAME_ID.findall(frame["html"])]


def test_frames_carry_increasing_offsets(ws_client, room):
    client = ws_client()
    answer, _ = subscribe(client, room.stream.signed_name)
    Message.objects.create(room=room, text="one")
    Message.objects.create(room=room, text="two")
    first, second = client.wait(_is_message), client.wait(_is_message)
    start = history.parse(answer["offset"])
    offsets = [history.parse(first["offset"]), history.parse(second["offset"])]
    assert start is not None
    assert offsets == [(start[0], start[1] + 1), (start[0], start[1] + 2)]


def test_reconnect_with_since_replays_exactly_the_missed_frames_then_goes_live(ws_client, room):
    name = room.stream.signed_name
    client = ws_client()
    answer, _ = subscribe(client, name)
    client.conn.close()
    missed = [Message.objects.create(room=room, text=f"missed {i}") for i in range(3)]
    wait_for(lambda: _history_offset(room) == _plus(answer["offset"], 3), TIMEOUT, "3 frames")

    again = ws_client()
    answer, frames = subscribe(again, name, since=answer["offset"])
    assert message_ids(frames) == [f"message-{m.pk}" for m in missed]
    assert answer["offset"] == frames[-1]["offset"]
    live = Message.objects.create(room=room, text="live")
    assert message_ids([again.wait(_is_message)]) == [f"message-{live.pk}"]


def test_page_rendered_before_a_commit_and_subscribed_after_it_gets_the_change(ws_client, room):
    name, since = rendered_since(room)
    # No socket is subscribed yet: the render marked the stream as watched, so the worker
    # still renders the frame into the history.
    message = Message.objects.create(room=room, text="between render and subscribe")
    wait_for(lambda: _history_offset(room) == _plus(since, 1), TIMEOUT, "the frame")

    _, frames = subscribe(ws_client(), name, since=since)
    assert message_ids(frames) == [f"message-{message.pk}"]


def test_subscribe_at_the_current_offset_replays_nothing(ws_client, room):
    name, since = rendered_since(room)
    answer, frames = subscribe(ws_client(), name, since=since)
    assert frames == []
    assert answer["offset"] == since


@pytest.mark.parametrize(
    "since",
    ["not-an-offset", "0123456789abcdef.0", "", "1.2.3", "ffffffffffffffff.99999999999999999"],
)
def test_unusable_since_gets_reset_and_the_socket_keeps_working(ws_client, room, since):
    name = room.stream.signed_name
    client = ws_client()
    start = len(client.frames)
    answer = client.subscribe(name, since=since)
    assert [f["type"] for f in client.frames[start:]] == ["reset", "subscribed"]
    assert client.frames[start] == {"type": "reset", "stream": name}
    message = Message.objects.create(room=room, text="live after reset")
    assert message_ids([client.wait(_is_message)]) == [f"message-{message.pk}"]
    assert history.parse(answer["offset"]) is not None


def test_since_from_the_future_of_this_stream_gets_reset(ws_client, room):
    _, since = rendered_since(room)
    inc, seq = history.parse(since) or ("", 0)
    client = ws_client()
    start = len(client.frames)
    client.subscribe(room.stream.signed_name, since=history.offset(inc, seq + 5))
    assert client.frames[start]["type"] == "reset"


def test_since_of_another_stream_cannot_read_this_streams_history(ws_client, room):
    other = Room.objects.create(name="other")
    _, other_since = rendered_since(other)
    Message.objects.create(room=room, text="private to lobby")
    client = ws_client()
    start = len(client.frames)
    client.subscribe(room.stream.signed_name, since=other_since)
    assert [f["type"] for f in client.frames[start:]] == ["reset", "subscribed"]


def test_history_trimmed_past_its_length_gets_reset(ws_client, room):
    name, since = rendered_since(room)
    layer = layers.get_layer()
    with override_settings(TURBO_TASKS={"HISTORY_LENGTH": 3}):
        layers.push(layer, [(room.stream.group_name, f"<p>{i}</p>", None) for i in range(5)])
    # 5 frames in one push travel as one message: push 4 more, one per message.
    with override_settings(TURBO_TASKS={"HISTORY_LENGTH": 3}):
        for i in range(4):
            layers.push(layer, [(room.stream.group_name, f"<p>{i}</p>", None)])
    client = ws_client()
    start = len(client.frames)
    client.subscribe(name, since=since)
    assert client.frames[start]["type"] == "reset"
    # A since still inside the window replays only what follows it.
    _, frames = subscribe(ws_client(), name, since=_plus(since, 3))
    assert [(f["html"], f["offset"]) for f in frames] == [("<p>2</p><p>3</p>", _plus(since, 5))]


def test_client_dropping_four_times_during_40_commits_ends_with_all_40(ws_client, room):
    name = room.stream.signed_name
    created: list[int] = []
    done = threading.Event()

    def commit_40() -> None:
        try:
            for i in range(40):
                created.append(Message.objects.create(room=room, text=f"m{i}").pk)
        finally:
            connection.close()  # this thread's own
            done.set()

    seen: set[str] = set()
    client = ws_client()
    answer, _ = subscribe(client, name)
    offset = answer["offset"]
    writer = threading.Thread(target=commit_40)
    writer.start()
    for drop in range(5):
        # Read a few live frames, then drop the socket and come back with since.
        for _ in range(drop + 2):
            if done.is_set() and _history_offset(room) == offset:
                break
            frame = client.wait(_is_message, TIMEOUT)
            seen.update(FRAME_ID.findall(frame["html"]))
            offset = frame["offset"]
        if drop < 4:
            client.conn.close()
            client = ws_client()
            _, frames = subscribe(client, name, since=offset)
            for frame in frames:
                seen.update(FRAME_ID.findall(frame["html"]))
                offset = frame["offset"]
    writer.join(TIMEOUT)
    assert len(created) == 40
    while len(seen) < 40:
        frame = client.wait(_is_message, TIMEOUT)
        seen.update(FRAME_ID.findall(frame["html"]))
    assert seen == {f"message-{pk}" for pk in created}


def _is_message(frame: dict) -> bool:
    return frame["type"] == "message"


def _plus(offset: str, n: int) -> str:
    inc, seq = history.parse(offset) or ("", 0)
    return history.offset(inc, seq + n)


def _history_offset(room: Room) -> str:
    return history.current_offsets(layers.get_layer(), [room.stream.group_name])[
        room.stream.group_name
    ]


def test_frame_for_an_unwatched_stream_leaves_a_hole_that_resets_older_pages(room):
    layer, group = layers.get_layer(), room.stream.group_name
    with override_settings(TURBO_TASKS={"HISTORY_SECONDS": 0.05}):
        _, since = rendered_since(room)  # watched for 50 ms
        # The worker's check: once nobody watches, the frame is not rendered; the
        # stream's seq still moves on.
        layers.forget_subscribers()
        wait_for(lambda: not layers.groups_with_subscribers(layer, {group}), 5, "unwatched")
    status, current, entries = async_to_sync(history.read)(layer, group, history.parse(since))
    assert (status, entries) == ("reset", [])
    assert (history.parse(current) or ("", 0))[1] > (history.parse(since) or ("", 0))[1]


def test_rendering_many_streams_costs_one_redis_round_trip(monkeypatch):
    rooms = [Room.objects.create(name=f"r{i}") for i in range(5)]
    real, calls = history._compat.sync_client, []

    def counting_client(layer, index):
        client = real(layer, index)
        original = client.execute_command

        def execute_command(*args, **kwargs):
            calls.append(args[0])
            return original(*args, **kwargs)

        client.execute_command = execute_command
        return client

    monkeypatch.setattr(history._compat, "sync_client", counting_client)
    html = Template("{% load turbo_tasks %}{% turbo_subscribe a b c d e %}").render(
        Context(dict(zip("abcde", rooms, strict=True)))
    )
    assert html.count(" since=") == 5
    assert calls == ["EVAL"]


@pytest.mark.parametrize(
    "backend",
    ["channels_redis.core.RedisChannelLayer", "channels_redis.pubsub.RedisPubSubChannelLayer"],
)
def test_page_renders_without_since_when_the_channel_layer_redis_is_down(caplog, backend):
    dead = {"BACKEND": backend, "CONFIG": {"hosts": [f"redis://127.0.0.1:{free_port()}/0"]}}
    with (
        override_settings(CHANNEL_LAYERS={"default": dead}),
        caplog.at_level(logging.WARNING, logger="turbo_tasks"),
    ):
        html = Template("{% load turbo_tasks %}{% turbo_subscribe room %}").render(
            Context({"room": Room(pk=7)})
        )
    assert "signed-stream-name=" in html
    assert "since=" not in html
    assert "rendering 1 stream(s) without since" in caplog.text
