"""turbo_tasks.testing, used as a user would in their own tests."""

from __future__ import annotations

import pytest
from django.db import transaction
from django.test import TestCase

from tests.testapp.models import Message, Room
from turbo_tasks.testing import assert_broadcasts, assert_no_broadcasts, capture_broadcasts


@pytest.mark.django_db
def test_capture_runs_hooks_and_renders_in_a_test_transaction():
    room = Room.objects.create(name="r")
    with capture_broadcasts() as sent:
        message = Message.objects.create(room=room, text="hi")
    [frame] = sent.assert_sent(room, action="append", target="messages", count=1)
    assert frame.html == (
        '<turbo-stream action="append" target="messages"><template>'
        f'<p id="message-{message.pk}">hi</p></template></turbo-stream>'
    )


@pytest.mark.django_db(transaction=True)
def test_capture_with_real_commits():
    room = Room.objects.create(name="r")
    with capture_broadcasts() as sent:
        with transaction.atomic():
            message = Message.objects.create(room=room, text="a")
            message.text = "b"
            message.save()
        message.delete()
    assert [b.action for b in sent.on(room)] == ["append", "remove"]
    assert "<p id" in sent[0].html
    assert ">b</p>" in sent[0].html


@pytest.mark.django_db(transaction=True)
def test_capture_sees_nothing_for_a_rollback():
    room = Room.objects.create(name="r")
    with assert_no_broadcasts(), pytest.raises(RuntimeError), transaction.atomic():
        Message.objects.create(room=room, text="a")
        raise RuntimeError


@pytest.mark.django_db
def test_assert_broadcasts_passes_and_fails_with_a_useful_message():
    room, other = Room.objects.create(name="r"), Room.objects.create(name="o")
    with assert_broadcasts(room, action="append", contains="hello", count=1):
        Message.objects.create(room=room, text="hello")
    with pytest.raises(AssertionError) as excinfo, assert_broadcasts(other, action="append"):
        Message.objects.create(room=room, text="wrong room")
    assert "Expected at least one broadcast(s) to <RoomStream(" in str(excinfo.value)
    assert "found 0" in str(excinfo.value)
    assert "(nothing)" in str(excinfo.value)


@pytest.mark.django_db
def test_hook_errors_surface_in_the_test(monkeypatch):
    from tests.testapp.streams import MessageStream

    def broken(self, message, created, *args, **kwargs):
        raise RuntimeError("hook bug")

    monkeypatch.setattr(MessageStream, "on_save", broken)
    room = Room.objects.create(name="r")
    with pytest.raises(RuntimeError, match="hook bug"), capture_broadcasts():
        Message.objects.create(room=room, text="x")


@pytest.mark.django_db
def test_pytest_fixture(turbo_broadcasts):
    room = Room.objects.create(name="r")
    with turbo_broadcasts() as sent:
        room.stream.update(text="fixture", id="banner")
    sent.assert_sent(room, action="update", target="banner", contains="fixture")


@pytest.mark.django_db
def test_nothing_reaches_the_broker_while_capturing(redis_client):
    room = Room.objects.create(name="r")
    before = redis_client.llen("turbo_tasks")
    with capture_broadcasts():
        Message.objects.create(room=room, text="x")
    assert redis_client.llen("turbo_tasks") == before


class CaptureInTestCase(TestCase):
    def test_assert_broadcasts_in_a_django_testcase(self):
        room = Room.objects.create(name="r")
        with assert_broadcasts(room, action="remove", count=1):
            message = Message.objects.create(room=room, text="x")
            message.delete()


@pytest.fixture
def message_saved_before():
    """The usual fixture: a saved row whose hook's job is still pending at test start."""
    room = Room.objects.create(name="r")
    return Message.objects.create(room=room, text="from the fixture")


@pytest.mark.django_db
def test_capture_after_a_fixture_saved_a_hooked_row(message_saved_before):
    room = message_saved_before.room
    with capture_broadcasts() as sent:
        Message.objects.create(room=room, text="inside")
    [frame] = sent.assert_sent(room, action="append", count=1)
    assert "inside" in frame.html
    sent.assert_sent(room, contains="from the fixture", count=0)


@pytest.mark.django_db
def test_capture_after_a_fixture_catches_a_direct_action(message_saved_before):
    room = message_saved_before.room
    with capture_broadcasts() as sent:
        room.stream.update(text="banner", id="banner")
    sent.assert_sent(room, action="update", target="banner", count=1)


class CaptureAfterSetUpInTestCase(TestCase):
    def setUp(self):
        self.room = Room.objects.create(name="r")
        Message.objects.create(room=self.room, text="from setUp")

    def test_capture_after_setup_saved_a_hooked_row(self):
        with assert_broadcasts(self.room, action="append", contains="inside", count=1):
            Message.objects.create(room=self.room, text="inside")
