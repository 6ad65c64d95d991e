"""Rendering frames: text is escaped and template output autoescaped in what actions send."""

from __future__ import annotations

import pytest

from tests.testapp.models import Message, Room
from turbo_tasks.testing import capture_broadcasts


@pytest.mark.django_db
def test_text_is_html_escaped():
    room = Room.objects.create(name="r")
    with capture_broadcasts() as sent:
        room.stream.append(text='<script>alert("x")</script>', id="log")
    assert [b.html for b in sent] == [
        '<turbo-stream action="append" target="log"><template>'
        "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;</template></turbo-stream>"
    ]


@pytest.mark.django_db
def test_template_output_is_autoescaped():
    room = Room.objects.create(name="r")
    with capture_broadcasts() as sent:
        Message.objects.create(room=room, text='<img src=x onerror="alert(1)">')
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in sent[0].html
    assert "<img" not in sent[0].html
