"""Django 6 template partials: ``"chat/room.html#message"`` renders the partial ``message``
of ``chat/room.html``; before Django 6.0 the action call itself says partials need 6.0."""

from __future__ import annotations

import django
import pytest

from tests.testapp.models import Message
from turbo_tasks.rendering import render_frame
from turbo_tasks.testing import capture_broadcasts

pytestmark = pytest.mark.django_db(transaction=True)

needs_django_6 = pytest.mark.skipif(
    django.VERSION < (6, 0), reason="Django loads template_name#partial itself from 6.0 on"
)
before_django_6 = pytest.mark.skipif(
    django.VERSION >= (6, 0), reason="the error is for Django < 6.0, which has no partials"
)
PARTIAL = "chat/room.html#message"


@needs_django_6
def test_partial_renders_alone_and_autoescaped():
    message = Message(pk=7, text="<b>hi</b>")
    assert render_frame(
        "append", target="messages", targets=None, template=PARTIAL, context={"message": message}
    ) == (
        '<turbo-stream action="append" target="messages"><template>'
        '<p id="message-7" class="partial">&lt;b&gt;hi&lt;/b&gt;</p></template></turbo-stream>'
    )


@needs_django_6
def test_partial_action_outside_a_hook_is_rendered(room):
    message = Message.objects.create(room=room, text="hi")
    with capture_broadcasts() as sent:
        room.stream.replace(PARTIAL, {"message": message}, id=f"message-{message.pk}")
    [frame] = sent.assert_sent(room, action="replace")
    assert f'<p id="message-{message.pk}" class="partial">hi</p>' in frame.html


@needs_django_6
@pytest.mark.usefixtures("celery_worker_process")
def test_partial_action_reaches_a_socket_rendered_by_the_worker(room, ws_client):
    client = ws_client()
    client.subscribe(room.stream.signed_name)
    message = Message.objects.create(room=room, text="hi")
    client.messages()  # the seed stream's own append
    room.stream.replace(PARTIAL, {"message": message}, id=f"message-{message.pk}")
    assert client.messages() == (
        f'<turbo-stream action="replace" target="message-{message.pk}"><template>'
        f'<p id="message-{message.pk}" class="partial">hi</p></template></turbo-stream>'
    )


@before_django_6
def test_partial_before_django_6_fails_in_the_action_call(broker, room):
    with pytest.raises(ValueError, match=r"'chat/room\.html'.*partials need Django 6\.0") as info:
        room.stream.append(PARTIAL, {}, id="messages")
    assert "'message'" in str(info.value)
    assert broker.messages() == []


@before_django_6
@pytest.mark.asyncio
async def test_partial_before_django_6_fails_in_the_awaitable_action_call(broker, room):
    with pytest.raises(ValueError, match=r"partials need Django 6\.0"):
        await room.stream.aappend(PARTIAL, {}, id="messages")
    assert broker.messages() == []
