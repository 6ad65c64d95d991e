"""The write path, counted on the real broker: what is published, when, and how often.

Each test publishes to a queue of its own that no worker consumes, so the messages stay in
Redis to be counted and decoded.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from celery import Celery
from django.core.management import call_command
from django.db import transaction
from django.test import override_settings

from tests.helpers import celery_app, free_port
from tests.testapp.models import Member, Message, Room, Unstreamed

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "other"])


def test_nothing_is_published_before_commit(broker, room):
    with transaction.atomic():
        message = Message.objects.create(room=room, text="hi")
        assert broker.messages() == []
    assert broker.messages() == [
        {
            "task": "turbo_tasks.deliver",
            "jobs": [
                {"action": "save", "model": "testapp.message", "pk": message.pk, "created": True}
            ],
            "kwargs": {},
        }
    ]


def test_autocommit_write_is_published_at_once(broker, room):
    message = Message.objects.create(room=room, text="hi")
    assert broker.jobs() == [
        {"action": "save", "model": "testapp.message", "pk": message.pk, "created": True}
    ]


def test_rolled_back_transaction_publishes_nothing(broker, room):
    with pytest.raises(RuntimeError), transaction.atomic():
        Message.objects.create(room=room, text="hi")
        raise RuntimeError("rollback")
    assert broker.messages() == []


def test_next_transaction_after_a_rollback_publishes_only_its_own_rows(broker, room):
    with pytest.raises(RuntimeError), transaction.atomic():
        Message.objects.create(room=room, text="lost")
        raise RuntimeError("rollback")
    with transaction.atomic():
        kept = Message.objects.create(room=room, text="kept")
    assert [job["pk"] for job in broker.jobs()] == [kept.pk]


def test_rolled_back_savepoint_drops_exactly_its_rows(broker, room):
    with transaction.atomic():
        before = Message.objects.create(room=room, text="before")
        try:
            with transaction.atomic():
                Message.objects.create(room=room, text="in the savepoint")
                before.text = "edited in the savepoint"
                before.save()
                raise RuntimeError("rollback the savepoint")
        except RuntimeError:
            pass
        after = Message.objects.create(room=room, text="after")
    assert len(broker.messages()) == 1
    assert [(job["pk"], job["created"]) for job in broker.jobs()] == [
        (before.pk, True),
        (after.pk, True),
    ]


def test_savepoint_rolled_back_after_the_last_write_drops_its_rows(broker, room):
    with transaction.atomic():
        kept = Message.objects.create(room=room, text="kept")
        try:
            with transaction.atomic():
                Message.objects.create(room=room, text="dropped")
                raise RuntimeError("rollback the savepoint")
        except RuntimeError:
            pass
    assert [job["pk"] for job in broker.jobs()] == [kept.pk]


def test_released_savepoints_stay_in_few_messages(broker, room):
    with transaction.atomic():
        created = []
        for i in range(20):
            with transaction.atomic():
                created.append(Message.objects.create(room=room, text=str(i)).pk)
    # Every savepoint but the last was released before a later write, so they travel
    # together; the last one's fate is only known to Django at commit.
    assert len(broker.messages()) <= 2
    assert [job["pk"] for job in broker.jobs()] == created


def test_nested_rolled_back_savepoint_inside_released_one(broker, room):
    with transaction.atomic():
        with transaction.atomic():
            outer = Message.objects.create(room=room, text="released")
            try:
                with transaction.atomic():
                    Message.objects.create(room=room, text="rolled back")
                    raise RuntimeError
            except RuntimeError:
                pass
        last = Message.objects.create(room=room, text="outer level")
    assert [job["pk"] for job in broker.jobs()] == [outer.pk, last.pk]


def test_thousand_saves_in_one_transaction_publish_one_message(broker, room):
    with transaction.atomic():
        for i in range(1000):
            Message.objects.create(room=room, text=str(i))
    messages = broker.messages()
    assert len(messages) == 1
    assert len(messages[0]["jobs"]) == 1000


def test_very_large_transaction_is_chunked(broker, room):
    chunked = override_settings(TURBO_TASKS={"QUEUE": broker.queue, "MAX_JOBS_PER_MESSAGE": 300})
    with chunked, transaction.atomic():
        for i in range(1000):
            Message.objects.create(room=room, text=str(i))
    assert [len(m["jobs"]) for m in broker.messages()] == [300, 300, 300, 100]


def test_delete_job_carries_a_snapshot(broker, room):
    message = Message.objects.create(room=room, text="bye")
    pk = message.pk
    message.delete()
    delete_job = broker.jobs()[-1]
    assert delete_job == {
        "action": "delete",
        "model": "testapp.message",
        "pk": pk,
        "fields": {
            "id": pk,
            "room_id": room.pk,
            "text": "bye",
            "created_at": delete_job["fields"]["created_at"],
        },
    }
    assert delete_job["fields"]["created_at"].startswith(str(message.created_at.year))


def test_delete_job_snapshot_leaves_out_credentials(broker, room):
    member = Member.objects.create(room=room, name="ann", password="pbkdf2$x", api_token="t0k")
    pk = member.pk
    member.delete()
    assert broker.jobs()[-1]["fields"] == {"id": pk, "room_id": room.pk, "name": "ann"}


def test_models_without_hooks_publish_nothing(broker, room):
    # RoomStream defines no on_save/on_delete; Unstreamed has no stream at all.
    Room.objects.create(name="another")
    room.delete()
    Unstreamed.objects.create(name="x")
    assert broker.messages() == []


def test_fixture_loading_publishes_nothing(broker, room, tmp_path: Path):
    fixture = tmp_path / "messages.json"
    fixture.write_text(
        json.dumps(
            [
                {
                    "model": "testapp.message",
                    "pk": 900,
                    "fields": {
                        "room": room.pk,
                        "text": "fixture",
                        "created_at": "2026-01-01T00:00:00Z",
                    },
                },
            ]
        )
    )
    call_command("loaddata", str(fixture), verbosity=0)
    assert Message.objects.filter(pk=900).exists()
    assert broker.messages() == []


def test_job_follows_the_database_of_the_write(broker):
    room = Room.objects.using("other").create(name="elsewhere")
    with transaction.atomic(using="other"):
        message = Message.objects.using("other").create(room=room, text="hi")
        with transaction.atomic():  # a default-database transaction commits meanwhile
            pass
        assert broker.messages() == []
    assert broker.messages() == [
        {
            "task": "turbo_tasks.deliver",
            "jobs": [
                {"action": "save", "model": "testapp.message", "pk": message.pk, "created": True}
            ],
            "kwargs": {"using": "other"},
        }
    ]


def test_deferred_action_is_published_after_commit(broker, room):
    with transaction.atomic():
        room.stream.append(
            "chat/message.html", {"message": Message(pk=3, room=room)}, id="messages"
        )
        room.stream.remove(selector="#messages .old")
        assert broker.messages() == []
    assert broker.jobs() == [
        {
            "action": "broadcast",
            "stream": {"stream": "testapp.RoomStream", "args": [room.pk], "kwargs": {}},
            "turbo_action": "append",
            "target": "messages",
            "template": "chat/message.html",
            "context": {"message": {"__turbo_model__": "testapp.message", "pk": 3}},
        },
        {
            "action": "broadcast",
            "stream": {"stream": "testapp.RoomStream", "args": [room.pk], "kwargs": {}},
            "turbo_action": "remove",
            "targets": "#messages .old",
        },
    ]


def test_context_that_cannot_travel_is_a_type_error_naming_the_key(broker, room):
    with pytest.raises(TypeError, match=r"'extra.when' \(object\) cannot travel"):
        room.stream.append("chat/message.html", {"extra": {"when": object()}}, id="messages")
    assert broker.messages() == []


def test_publish_failure_never_breaks_the_write(room, caplog):
    dead_port = free_port()
    down = Celery(
        "broker-down",
        broker=f"redis://127.0.0.1:{dead_port}/0",
        broker_transport_options={"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        task_publish_retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.1},
        set_as_current=False,
    )
    down.set_current()
    try:
        with caplog.at_level(logging.ERROR, logger="turbo_tasks"), transaction.atomic():
            message = Message.objects.create(room=room, text="still saved")
    finally:
        celery_app.set_current()
    assert Message.objects.filter(pk=message.pk, text="still saved").exists()
    [record] = [r for r in caplog.records if r.name == "turbo_tasks.publish"]
    assert record.levelno == logging.ERROR
    payload = json.loads(record.getMessage().split("would keep them): ", 1)[1])
    assert payload == {
        "jobs": [{"action": "save", "model": "testapp.message", "pk": message.pk, "created": True}],
        "using": "default",
    }


def test_save_job_carries_update_fields_sorted(broker, room):
    message = Message.objects.create(room=room, text="hi")
    message.text = "edited"
    message.save(update_fields=["text", "room"])
    assert broker.jobs()[-1] == {
        "action": "save",
        "model": "testapp.message",
        "pk": message.pk,
        "created": False,
        "update_fields": ["room", "text"],
    }


def test_save_job_without_update_fields_has_no_such_key(broker, room):
    message = Message.objects.create(room=room, text="hi")
    message.save()
    assert "update_fields" not in broker.jobs()[-1]
