"""Async code: ``asave``/``adelete``, ``sync_to_async(transaction.atomic)`` and the awaitable
actions publish exactly as their sync forms do, counted on the real broker; async signal
receivers of a project keep running next to ours."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.db import transaction
from django.db.models.signals import post_save

from tests.testapp.models import Message, Room

pytestmark = pytest.mark.django_db(transaction=True)

ACTIONS = ["append", "prepend", "replace", "update", "before", "after"]


def save_job(message, created):
    return {"action": "save", "model": "testapp.message", "pk": message.pk, "created": created}


# -- writes from async code ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_asave_outside_a_transaction_is_published_at_once(broker, room):
    message = Message(room=room, text="hi")
    await message.asave()
    assert broker.messages() == [
        {"task": "turbo_tasks.deliver", "jobs": [save_job(message, True)], "kwargs": {}}
    ]


@pytest.mark.asyncio
async def test_acreate_then_asave_publish_a_create_and_an_edit(broker, room):
    message = await Message.objects.acreate(room=room, text="hi")
    message.text = "edited"
    await message.asave()
    assert broker.jobs() == [save_job(message, True), save_job(message, False)]


@pytest.mark.asyncio
async def test_adelete_publishes_a_delete_with_the_pk_captured_at_delete_time(broker, room):
    message = await Message.objects.acreate(room=room, text="bye")
    pk = message.pk
    await message.adelete()
    [_, deleted] = broker.jobs()
    assert (deleted["action"], deleted["model"], deleted["pk"]) == ("delete", "testapp.message", pk)


@pytest.mark.asyncio
async def test_sync_to_async_atomic_publishes_once_after_commit(broker, room):
    seen_inside = []

    @sync_to_async
    @transaction.atomic
    def post():
        message = Message.objects.create(room=room, text="hi")
        message.text = "edited"
        message.save()
        seen_inside.append(broker.messages())
        return message

    message = await post()
    assert seen_inside == [[]]
    assert broker.messages() == [
        {
            "task": "turbo_tasks.deliver",
            "jobs": [save_job(message, True), save_job(message, False)],
            "kwargs": {},
        }
    ]


@pytest.mark.asyncio
async def test_sync_to_async_atomic_rolled_back_publishes_nothing(broker, room):
    @sync_to_async
    @transaction.atomic
    def post():
        Message.objects.create(room=room, text="lost")
        raise RuntimeError("rollback")

    with pytest.raises(RuntimeError):
        await post()
    assert broker.messages() == []


# -- awaitable actions -----------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("action", ACTIONS)
async def test_awaitable_action_publishes_the_same_job_as_the_sync_one(broker, room, action):
    await sync_to_async(getattr(room.stream, action))("chat/message.html", {"n": 1}, id="ms")
    await getattr(room.stream, f"a{action}")("chat/message.html", {"n": 1}, id="ms")
    sync_job, async_job = broker.jobs()
    assert async_job == sync_job
    assert async_job["turbo_action"] == action


@pytest.mark.asyncio
async def test_aremove_publishes_a_remove(broker, room):
    await room.stream.aremove(selector=".message")
    [job] = broker.jobs()
    assert (job["turbo_action"], job["targets"]) == ("remove", ".message")


@pytest.mark.asyncio
async def test_awaitable_action_text_is_sent_as_given_to_be_escaped_by_the_worker(broker, room):
    await room.stream.aupdate(text="<b>3</b> online", id="count")
    [job] = broker.jobs()
    assert (job["turbo_action"], job["target"]) == ("update", "count")
    assert job["text"] == "<b>3</b> online"


@pytest.mark.asyncio
async def test_awaitable_action_bad_arguments_raise_in_the_caller(broker, room):
    with pytest.raises(ValueError, match="exactly one of id="):
        await room.stream.aappend("chat/message.html")
    with pytest.raises(ValueError, match="its pk is None"):
        await Room(name="unsaved").stream.aremove(id="x")
    assert broker.messages() == []


def test_awaitable_action_run_from_atomic_sync_code_waits_for_the_commit(broker, room):
    # async_to_sync inside the atomic block: the action runs back in this thread, where
    # the transaction is open, so it is deferred to the commit like a sync action.
    with transaction.atomic():
        async_to_sync(room.stream.aappend)(text="hi", id="messages")
        assert broker.messages() == []
    [job] = broker.jobs()
    assert job["turbo_action"] == "append"


def test_awaitable_action_rolled_back_with_the_sync_transaction_publishes_nothing(broker, room):
    with pytest.raises(RuntimeError), transaction.atomic():
        async_to_sync(room.stream.aappend)(text="hi", id="messages")
        raise RuntimeError("rollback")
    assert broker.messages() == []


# -- async signal receivers of a project -----------------------------------------------------


@pytest.fixture
def async_receiver():
    calls = []

    async def receiver(sender, instance, created, **kwargs):
        calls.append((instance.pk, created))

    post_save.connect(receiver, sender=Message, weak=False, dispatch_uid="test_async.receiver")
    yield calls
    post_save.disconnect(sender=Message, dispatch_uid="test_async.receiver")


@pytest.mark.asyncio
async def test_async_receiver_runs_next_to_ours_on_asave(broker, room, async_receiver):
    message = await Message.objects.acreate(room=room, text="hi")
    assert async_receiver == [(message.pk, True)]
    assert broker.jobs() == [save_job(message, True)]


def test_async_receiver_runs_next_to_ours_on_a_sync_save(broker, room, async_receiver):
    with transaction.atomic():
        message = Message.objects.create(room=room, text="hi")
    assert async_receiver == [(message.pk, True)]
    assert broker.jobs() == [save_job(message, True)]


# -- end to end: an async view's writes and actions reach a socket ---------------------------


@pytest.mark.usefixtures("celery_worker_process")
def test_async_view_writes_and_actions_reach_a_subscribed_socket(ws_client):
    room = Room.objects.create(name="lobby")
    client = ws_client()
    assert client.subscribe(room.stream.signed_name)["type"] == "subscribed"

    async def view():
        message = await Message.objects.acreate(room=room, text="hello")
        await room.stream.aupdate(text="1 <message>", id="count")
        return message

    message = async_to_sync(view)()
    frames = sorted([client.messages(), client.messages()])
    assert frames == [
        '<turbo-stream action="append" target="messages"><template>'
        f'<p id="message-{message.id}">hello</p></template></turbo-stream>',
        '<turbo-stream action="update" target="count"><template>'
        "1 &lt;message&gt;</template></turbo-stream>",
    ]

    async def delete():
        await message.adelete()

    message_id = message.id
    async_to_sync(delete)()
    assert client.messages() == (
        f'<turbo-stream action="remove" target="message-{message_id}"></turbo-stream>'
    )
