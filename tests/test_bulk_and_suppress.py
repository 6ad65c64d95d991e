"""``turbo.suppress()`` and ``turbo.saved()``/``turbo.deleted()``, counted on the real broker
(a queue of the test's own that no worker consumes), and one bulk update through a real
worker to a websocket."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection, connections, transaction

import turbo_tasks as turbo
from tests.testapp.models import Member, Message, Room, Unstreamed
from turbo_tasks import streams
from turbo_tasks.snapshots import json_value

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "other"])

TIMEOUT = 30


def save_job(message, created=False):
    return {"action": "save", "model": "testapp.message", "pk": message.pk, "created": created}


def delete_job(message):
    return {
        "action": "delete",
        "model": "testapp.message",
        "pk": message.pk,
        "fields": {
            "id": message.pk,
            "room_id": message.room_id,
            "text": message.text,
            "created_at": json_value(message.created_at),
        },
    }


def in_thread(func):
    """Run ``func`` in a thread of its own (closing its connections) and return its result."""

    def run():
        try:
            return func()
        finally:
            connections.close_all()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result(timeout=TIMEOUT)


# -- suppress() --------------------------------------------------------------------------


def test_suppress_records_no_save_job(broker, room):
    with turbo.suppress():
        message = Message.objects.create(room=room, text="quiet")
        message.text = "still quiet"
        message.save()
    assert broker.messages() == []


def test_suppress_records_no_delete_job(broker, room):
    message = Message.objects.create(room=room, text="bye")
    created = save_job(message, created=True)
    with turbo.suppress():
        message.delete()
    assert broker.jobs() == [created]


def test_suppress_drops_stream_actions_called_in_a_view(broker, room):
    with transaction.atomic(), turbo.suppress():
        room.stream.append(text="hidden", id="log")
        room.stream.remove(id="message-1")
    assert broker.messages() == []


def test_suppress_still_checks_action_arguments(broker, room):
    with turbo.suppress(), pytest.raises(ValueError, match="cannot broadcast"):
        Room(name="unsaved").stream.append(text="x", id="log")


def test_suppress_drops_actions_in_hooks_run_by_a_worker(room):
    collected: list = []
    token = streams.collector.set(collected)
    try:
        with turbo.suppress():
            room.stream.append(text="hidden", id="log")
        room.stream.append(text="shown", id="log")
    finally:
        streams.collector.reset(token)
    assert [broadcast.html for broadcast in collected] == [
        '<turbo-stream action="append" target="log"><template>shown</template></turbo-stream>'
    ]


def test_suppress_keeps_jobs_recorded_before_it(broker, room):
    with transaction.atomic():
        before = Message.objects.create(room=room, text="before")
        with turbo.suppress():
            Message.objects.create(room=room, text="during")
    assert broker.jobs() == [save_job(before, created=True)]


def test_suppress_nests(broker, room):
    with turbo.suppress():
        with turbo.suppress():
            Message.objects.create(room=room, text="inner")
        Message.objects.create(room=room, text="outer, after the inner block")
    after = Message.objects.create(room=room, text="after")
    assert broker.jobs() == [save_job(after, created=True)]


def test_suppress_is_per_thread(broker, room):
    with turbo.suppress():
        other = in_thread(lambda: Message.objects.create(room=room, text="from another thread"))
        Message.objects.create(room=room, text="from the suppressing thread")
    assert broker.jobs() == [save_job(other, created=True)]


def test_suppress_in_another_thread_leaves_this_one_broadcasting(broker, room):
    entered, release = threading.Event(), threading.Event()

    def suppressing():
        with turbo.suppress():
            entered.set()
            assert release.wait(TIMEOUT)
            Message.objects.create(room=room, text="suppressed")

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(lambda: in_thread(suppressing))
        assert entered.wait(TIMEOUT)
        mine = Message.objects.create(room=room, text="while the other thread suppresses")
        release.set()
        future.result(timeout=TIMEOUT)
    assert broker.jobs() == [save_job(mine, created=True)]


@pytest.mark.asyncio
async def test_suppress_is_per_asyncio_task(broker, room):
    entered, written = asyncio.Event(), asyncio.Event()

    async def suppressing():
        with turbo.suppress():
            entered.set()
            await asyncio.wait_for(written.wait(), TIMEOUT)
            await Message.objects.acreate(room=room, text="suppressed")

    async def broadcasting():
        await asyncio.wait_for(entered.wait(), TIMEOUT)
        message = await Message.objects.acreate(room=room, text="shown")
        written.set()
        return message

    _, shown = await asyncio.wait_for(asyncio.gather(suppressing(), broadcasting()), TIMEOUT)
    assert broker.jobs() == [save_job(shown, created=True)]


def test_suppress_as_a_decorator(broker, room):
    @turbo.suppress()
    def import_messages():
        Message.objects.create(room=room, text="imported")
        room.stream.append(text="imported", id="log")

    import_messages()
    after = Message.objects.create(room=room, text="after")
    assert broker.jobs() == [save_job(after, created=True)]


@pytest.mark.asyncio
async def test_suppress_as_a_decorator_of_a_coroutine_function(broker, room):
    @turbo.suppress()
    async def import_messages():
        await asyncio.sleep(0)  # suppressed while it runs, not only while it is created
        await Message.objects.acreate(room=room, text="imported")
        await room.stream.aappend(text="imported", id="log")

    await import_messages()
    assert broker.messages() == []


# -- saved() -----------------------------------------------------------------------------


def test_saved_instances_join_the_transaction_message(broker, room):
    with transaction.atomic():
        single = Message.objects.create(room=room, text="one by one")
        created = Message.objects.bulk_create(
            [Message(room=room, text="a"), Message(room=room, text="b")]
        )
        turbo.saved(created, created=True)
        assert broker.messages() == []
    assert broker.messages() == [
        {
            "task": "turbo_tasks.deliver",
            "jobs": [
                save_job(single, True),
                save_job(created[0], True),
                save_job(created[1], True),
            ],
            "kwargs": {},
        }
    ]


def test_saved_after_bulk_update_is_not_created(broker, room):
    with turbo.suppress():
        messages = [Message.objects.create(room=room, text=t) for t in "ab"]
    for message in messages:
        message.text += " (edited)"
    with transaction.atomic():
        Message.objects.bulk_update(messages, ["text"])
        turbo.saved(messages)
    assert broker.messages()[0]["jobs"] == [save_job(m) for m in messages]


def test_saved_queryset_reads_only_pks_in_one_query(broker, room, django_assert_num_queries):
    with turbo.suppress():
        messages = [Message.objects.create(room=room, text=t) for t in "ab"]
    Message.objects.create(room=Room.objects.create(name="other room"), text="not this one")
    broker.client.delete(broker.queue)
    rows = Message.objects.filter(room=room).select_related("room").order_by("pk")
    rows.update(text="bulk edited")
    with django_assert_num_queries(1) as captured:
        turbo.saved(rows)
    [query] = captured.captured_queries
    assert '"text"' not in query["sql"]
    assert broker.messages() == [
        {"task": "turbo_tasks.deliver", "jobs": [save_job(m) for m in messages], "kwargs": {}}
    ]


def test_saved_publishes_nothing_on_rollback(broker, room):
    with pytest.raises(RuntimeError), transaction.atomic():
        created = Message.objects.bulk_create([Message(room=room, text="lost")])
        turbo.saved(created, created=True)
        raise RuntimeError("rollback")
    assert broker.messages() == []


def test_saved_follows_the_queryset_alias(broker):
    room = Room.objects.using("other").create(name="elsewhere")
    with turbo.suppress():
        message = Message.objects.using("other").create(room=room, text="hi")
    with transaction.atomic(using="other"):
        rows = Message.objects.using("other").filter(pk=message.pk)
        rows.update(text="edited")
        turbo.saved(rows)
    assert broker.messages() == [
        {"task": "turbo_tasks.deliver", "jobs": [save_job(message)], "kwargs": {"using": "other"}}
    ]


def test_saved_follows_the_instances_alias(broker):
    room = Room.objects.using("other").create(name="elsewhere")
    with transaction.atomic(using="other"):
        created = Message.objects.using("other").bulk_create([Message(room=room, text="hi")])
        turbo.saved(created, created=True)
    assert broker.messages() == [
        {
            "task": "turbo_tasks.deliver",
            "jobs": [save_job(created[0], True)],
            "kwargs": {"using": "other"},
        }
    ]


def test_saved_skips_models_without_an_on_save_hook(broker, room, django_assert_num_queries):
    member = Member.objects.create(room=room, name="ann", password="x", api_token="t")
    unstreamed = Unstreamed.objects.create(name="x")
    with django_assert_num_queries(0):
        turbo.saved(Member.objects.all())  # MemberStream has on_delete only
        turbo.saved(Room.objects.all())  # RoomStream has no hook
        turbo.saved(Unstreamed.objects.all())  # no stream
        turbo.saved([member, room, unstreamed])
    assert broker.messages() == []


def test_saved_is_suppressed(broker, room, django_assert_num_queries):
    message = Message.objects.create(room=room, text="hi")
    broker.client.delete(broker.queue)
    with turbo.suppress(), django_assert_num_queries(0):
        turbo.saved(Message.objects.all())
        turbo.saved([message])
    assert broker.messages() == []


def test_saved_rejects_instances_without_a_pk(broker, room):
    with pytest.raises(ValueError, match="has no pk; bulk_create"):
        turbo.saved([Message(room=room, text="unsaved")])


def test_saved_rejects_a_single_instance(broker, room):
    with pytest.raises(TypeError, match=r"write turbo.saved\(\[obj\]\)"):
        turbo.saved(room)  # type: ignore[arg-type]


# -- deleted() ---------------------------------------------------------------------------


def test_deleted_queryset_snapshots_the_rows_before_a_raw_delete(broker, room):
    with turbo.suppress():
        messages = [Message.objects.create(room=room, text=t) for t in "ab"]
    with transaction.atomic():
        turbo.deleted(Message.objects.filter(room=room).order_by("pk"))
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM testapp_message WHERE room_id = %s", [room.pk])
    assert broker.messages() == [
        {"task": "turbo_tasks.deliver", "jobs": [delete_job(m) for m in messages], "kwargs": {}}
    ]


def test_deleted_queryset_is_evaluated_once(broker, room, django_assert_num_queries):
    with turbo.suppress():
        Message.objects.create(room=room, text="a")
        Message.objects.create(room=room, text="b")
    with django_assert_num_queries(1):
        turbo.deleted(Message.objects.filter(room=room).select_related("room"))
    assert len(broker.jobs()) == 2


def test_deleted_instances_snapshot_the_stream_fields(broker, room):
    member = Member.objects.create(room=room, name="ann", password="pbkdf2$x", api_token="t0k")
    with transaction.atomic():
        turbo.deleted([member])
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM testapp_member WHERE id = %s", [member.pk])
    assert broker.jobs() == [
        {
            "action": "delete",
            "model": "testapp.member",
            "pk": member.pk,
            "fields": {"id": member.pk, "room_id": room.pk, "name": "ann"},
        }
    ]


def test_deleted_publishes_nothing_on_rollback(broker, room):
    with turbo.suppress():
        message = Message.objects.create(room=room, text="kept")
    with pytest.raises(RuntimeError), transaction.atomic():
        turbo.deleted(Message.objects.filter(pk=message.pk))
        raise RuntimeError("rollback")
    assert broker.messages() == []


def test_deleted_follows_the_alias(broker):
    room = Room.objects.using("other").create(name="elsewhere")
    with turbo.suppress():
        message = Message.objects.using("other").create(room=room, text="hi")
    with transaction.atomic(using="other"):
        turbo.deleted(Message.objects.using("other").all())
    assert broker.messages() == [
        {"task": "turbo_tasks.deliver", "jobs": [delete_job(message)], "kwargs": {"using": "other"}}
    ]


def test_deleted_is_suppressed(broker, room):
    with turbo.suppress():
        message = Message.objects.create(room=room, text="hi")
        turbo.deleted(Message.objects.all())
        turbo.deleted([message])
    assert broker.messages() == []


def test_deleted_after_the_delete_is_an_error(broker, room):
    message = Message.objects.create(room=room, text="hi")
    message.delete()
    with pytest.raises(ValueError, match=r"call turbo.deleted\(\) before the delete"):
        turbo.deleted([message])


def test_queryset_delete_needs_no_deleted_call(broker, room):
    # Django sends post_delete for each row QuerySet.delete() removes (docs/topics/bulk.md).
    with turbo.suppress():
        message = Message.objects.create(room=room, text="hi")
    Message.objects.filter(room=room).delete()
    assert broker.jobs() == [delete_job(message)]


# -- through a real worker ---------------------------------------------------------------


@pytest.mark.usefixtures("in_process_worker")
def test_queryset_update_and_saved_reach_a_socket(ws_client):
    room = Room.objects.create(name="lobby")
    with turbo.suppress():
        message = Message.objects.create(room=room, text="before")
    client = ws_client()
    assert client.subscribe(room.stream.signed_name)["type"] == "subscribed"

    with transaction.atomic():
        rows = Message.objects.filter(room=room)
        rows.update(text="bulk edited")
        turbo.saved(rows)

    assert client.messages(timeout=TIMEOUT) == (
        f'<turbo-stream action="replace" target="message-{message.id}"><template>'
        f'<p id="message-{message.id}">bulk edited</p></template></turbo-stream>'
    )


def test_the_old_signals_path_of_suppress_works_and_warns():
    from turbo_tasks import signals

    with pytest.deprecated_call(match="turbo.suppress"):
        old = signals.suppress
    assert old is turbo.suppress
