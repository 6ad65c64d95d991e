"""The seed example through every real part: SQLite → Redis broker → Celery worker →
channels_redis → uvicorn → a websocket client."""

from __future__ import annotations

import pytest
from django.db import transaction

from tests.testapp.models import Message, Room
from tests.testapp.streams import NotificationStream

pytestmark = [
    pytest.mark.django_db(transaction=True),
    # pytest-celery's in-process worker: nothing here is about the worker process itself.
    pytest.mark.usefixtures("in_process_worker"),
]


def test_seed_example_create_update_delete(ws_client):
    room = Room.objects.create(name="lobby")
    client = ws_client()
    assert client.subscribe(room.stream.signed_name)["type"] == "subscribed"

    message = Message.objects.create(room=room, text="hello")
    assert client.messages() == (
        '<turbo-stream action="append" target="messages"><template>'
        f'<p id="message-{message.id}">hello</p></template></turbo-stream>'
    )

    message.text = "edited"
    message.save()
    assert client.messages() == (
        f'<turbo-stream action="replace" target="message-{message.id}"><template>'
        f'<p id="message-{message.id}">edited</p></template></turbo-stream>'
    )

    message_id = message.id
    message.delete()
    assert client.messages() == (
        f'<turbo-stream action="remove" target="message-{message_id}"></turbo-stream>'
    )


def test_message_frame_names_the_subscribed_stream(ws_client):
    room = Room.objects.create(name="lobby")
    client = ws_client()
    name = room.stream.signed_name
    client.subscribe(name)
    Message.objects.create(room=room, text="hi")
    frame = client.wait(lambda f: f["type"] == "message")
    assert frame["stream"] == name


def test_frames_reach_only_sockets_subscribed_to_that_stream(ws_client):
    lobby, other = Room.objects.create(name="lobby"), Room.objects.create(name="other")
    in_lobby, in_other = ws_client(), ws_client()
    in_lobby.subscribe(lobby.stream.signed_name)
    in_other.subscribe(other.stream.signed_name)

    Message.objects.create(room=lobby, text="for the lobby")
    Message.objects.create(room=other, text="for the other room")

    assert "for the other room" in in_other.messages()
    # Frames are pushed in commit order, so once the second room has its frame the first
    # room's frame has been sent too; the lobby socket must have exactly its own.
    assert "for the lobby" in in_lobby.messages()
    in_lobby.subscribe(other.stream.signed_name)  # a round trip: nothing else is queued
    assert [f for f in in_lobby.frames if f["type"] == "message"] == [in_lobby.frames[1]]


def test_action_called_in_a_view_is_rendered_by_the_worker(ws_client):
    room = Room.objects.create(name="lobby")
    client = ws_client()
    client.subscribe(room.stream.signed_name)
    with transaction.atomic():
        room.stream.update(
            "chat/message.html", {"message": {"id": 7, "text": "<b>x</b>"}}, id="banner"
        )
    assert client.messages() == (
        '<turbo-stream action="update" target="banner"><template>'
        '<p id="message-7">&lt;b&gt;x&lt;/b&gt;</p></template></turbo-stream>'
    )


def test_deferred_action_reloads_model_instances_in_context(ws_client):
    room = Room.objects.create(name="lobby")
    client = ws_client()
    client.subscribe(room.stream.signed_name)
    message = Message.objects.create(room=room, text="first")
    assert 'action="append"' in client.messages()
    with transaction.atomic():
        room.stream.prepend("chat/message.html", {"message": message}, id="messages")
        Message.objects.filter(pk=message.pk).update(text="changed before commit")
    assert client.messages() == (
        '<turbo-stream action="prepend" target="messages"><template>'
        f'<p id="message-{message.id}">changed before commit</p></template></turbo-stream>'
    )


def test_dates_decimals_uuids_and_querysets_travel_to_the_worker(ws_client):
    import datetime
    import decimal
    import uuid

    from django.utils import timezone

    room = Room.objects.create(name="lobby")
    client = ws_client()
    client.subscribe(room.stream.signed_name)
    Message.objects.create(room=room, text="one")
    Message.objects.create(room=room, text="two")
    assert 'action="append"' in client.messages()
    assert 'action="append"' in client.messages()
    context = {
        "at": datetime.datetime(2026, 12, 7, 10, 38, tzinfo=datetime.timezone.utc),
        "day": datetime.date(2026, 12, 24),
        "price": decimal.Decimal("9.9"),
        "token": uuid.UUID("6f1c5a2e-8b1d-4c3e-9a2f-1b2c3d4e5f60"),
        "messages": room.messages.order_by("-pk"),
    }
    room.stream.update("chat/values.html", context, id="values")
    # Shown in the current time zone, as the caller's template would have.
    local = timezone.localtime(context["at"]).strftime("%Y-%m-%d %H:%M")
    assert client.messages() == (
        '<turbo-stream action="update" target="values"><template><p id="values">'
        f"{local} 2026-12-24 9.90 6f1c5a2e-8b1d-4c3e-9a2f-1b2c3d4e5f60 two;one;</p>\n"
        "</template></turbo-stream>"
    )


def test_frames_rendered_by_the_caller_reach_the_socket_after_commit(ws_client):
    import turbo_tasks as turbo

    room = Room.objects.create(name="lobby")
    client = ws_client()
    client.subscribe(room.stream.signed_name)
    with transaction.atomic():
        frame = turbo.TurboRender("<b>rendered here</b>").update(id="banner")
        room.stream.stream(frame)
        room.stream.stream_raw('<turbo-stream action="remove" target="old"></turbo-stream>')
    assert client.messages() == (
        '<turbo-stream action="update" target="banner"><template><b>rendered here</b>'
        '</template></turbo-stream><turbo-stream action="remove" target="old"></turbo-stream>'
    )


def test_plain_stream_with_init_arguments(ws_client, django_user_model):
    user = django_user_model.objects.create(username="ann")
    stream = NotificationStream(user.pk)
    client = ws_client()
    # The socket is anonymous, so the per-user stream refuses it...
    assert client.subscribe(stream.signed_name)["reason"] == "forbidden"
    # ...and an allowed stream on the same socket still works.
    room = Room.objects.create(name="lobby")
    client.subscribe(room.stream.signed_name)
    room.stream.append(text="ping", id="log")
    assert client.messages() == (
        '<turbo-stream action="append" target="log"><template>ping</template></turbo-stream>'
    )


def test_cascade_delete_sends_each_message_removal(ws_client, celery_worker_process, settings):
    # The real worker process (the module's in-process worker has its own queue).
    settings.TURBO_TASKS = {"QUEUE": "turbo_tasks"}
    room = Room.objects.create(name="lobby")
    client = ws_client()
    assert client.subscribe(room.stream.signed_name)["type"] == "subscribed"
    messages = [Message.objects.create(room=room, text=t) for t in ("one", "two")]
    for _ in messages:
        assert 'action="append"' in client.messages()

    with transaction.atomic():
        room.delete()  # the messages go with it: their on_delete follows message.room
    # A task's frames for one stream may arrive as one message: collect until both came.
    wanted = {
        f'<turbo-stream action="remove" target="message-{m.id}"></turbo-stream>' for m in messages
    }
    html = ""
    while not all(frame in html for frame in wanted):
        html += client.messages(timeout=30)  # raises when nothing more comes in time
    assert html.count('action="remove"') == 2
