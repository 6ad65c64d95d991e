"""The fan-out: coalescing, reloading, snapshots, malformed jobs, and convergence through a
real worker when jobs arrive twice or out of order."""

from __future__ import annotations

import json
import logging
import re

import pytest
from django.db import OperationalError, connections, transaction
from django.test.utils import CaptureQueriesContext

from tests.testapp.models import Message, Room
from tests.testapp.streams import MessageStream
from turbo_tasks import codec, delivery, jobs, layers, tasks
from turbo_tasks.exceptions import DeliveryFailed, HookError, InvalidJob
from turbo_tasks.snapshots import snapshot
from turbo_tasks.tasks import deliver

pytestmark = pytest.mark.django_db(transaction=True)


def save(message, created=False, update_fields=None):
    job = {"action": "save", "model": "testapp.message", "pk": message.pk, "created": created}
    if update_fields is not None:
        job["update_fields"] = update_fields
    return job


def delete(message):
    return {
        "action": "delete",
        "model": "testapp.message",
        "pk": message.pk,
        "fields": snapshot(message, MessageStream.snapshot_attnames),
    }


def frames(jobs):
    return [b.html for b in delivery.run_hooks(jobs).broadcasts]


def test_created_then_edited_in_one_transaction_is_one_append_of_the_latest_state(room):
    message = Message.objects.create(room=room, text="draft")
    Message.objects.filter(pk=message.pk).update(text="final")
    assert frames([save(message, created=True), save(message)]) == [
        '<turbo-stream action="append" target="messages"><template>'
        f'<p id="message-{message.pk}">final</p></template></turbo-stream>'
    ]


def test_repeated_saves_coalesce_into_one_replace(room):
    message = Message.objects.create(room=room, text="v3")
    assert frames([save(message)] * 5) == [
        f'<turbo-stream action="replace" target="message-{message.pk}"><template>'
        f'<p id="message-{message.pk}">v3</p></template></turbo-stream>'
    ]


def test_delete_supersedes_earlier_saves(room):
    message = Message.objects.create(room=room, text="gone soon")
    jobs = [save(message, created=True), save(message), delete(message)]
    message.delete()
    assert frames(jobs) == [
        f'<turbo-stream action="remove" target="message-{jobs[0]["pk"]}"></turbo-stream>'
    ]


def test_order_of_first_appearance_is_kept(room):
    first = Message.objects.create(room=room, text="1")
    second = Message.objects.create(room=room, text="2")
    html = frames([save(first, True), save(second, True), save(first)])
    assert [re.search(r'id="message-(\d+)"', h)[1] for h in html] == [str(first.pk), str(second.pk)]


def test_rows_gone_since_the_write_are_skipped_with_a_debug_log(room, caplog):
    message = Message.objects.create(room=room, text="x")
    job = save(message, created=True)
    Message.objects.filter(pk=message.pk).delete()
    with caplog.at_level(logging.DEBUG, logger="turbo_tasks"):
        result = delivery.run_hooks([job])
    assert result.broadcasts == []
    assert result.errors == []
    assert f"pk={message.pk} is gone" in caplog.text


def test_delete_hook_sees_the_row_as_it_was(room):
    message = Message.objects.create(room=room, text="bye")
    job = delete(message)
    seen = {}

    class Spy:
        broadcasts_refreshes = False

        def __init__(self, instance):
            pass

        def on_delete(self, instance):
            seen.update(
                pk=instance.pk,
                room_id=instance.room_id,
                room=instance.room,
                text=instance.text,
                created_at=instance.created_at,
            )

    message.delete()
    steps = delivery._plan([job], "default")
    steps[0].stream_class = Spy
    delivery._run_step(steps[0], {}, "default", delivery.Delivery())
    assert seen["pk"] == job["pk"]
    assert seen["room_id"] == room.pk
    assert seen["room"] == room
    assert seen["text"] == "bye"
    assert seen["created_at"] == Message.created_at.field.to_python(job["fields"]["created_at"])


@pytest.mark.parametrize(
    ("jobs", "error"),
    [
        ("not a list", "jobs must be a list"),
        ([{}] * 100_001, "100001 jobs in one task; at most 100000"),
        ([42], "job 0: must be an object"),
        (
            [{"action": "explode"}],
            "job 0: 'action' must be save, delete, broadcast, recheck or raw",
        ),
        (
            [{"action": "save", "model": "nope.nothing", "pk": 1, "created": True}],
            "job 0: unknown model 'nope.nothing'",
        ),
        (
            [{"action": "save", "model": "testapp.unstreamed", "pk": 1, "created": True}],
            "job 0: model 'testapp.unstreamed' has no ModelStream",
        ),
        (
            [{"action": "save", "model": "testapp.message", "pk": [1], "created": True}],
            "job 0: 'pk' must be an integer or a string",
        ),
        (
            [{"action": "save", "model": "testapp.message", "pk": "abc", "created": True}],
            "job 0: 'pk': 'abc' does not fit testapp.Message.id",
        ),
        (
            [{"action": "save", "model": "testapp.message", "pk": 1, "created": "yes"}],
            "job 0: 'created' must be true or false",
        ),
        (
            [{"action": "delete", "model": "testapp.message", "pk": 1}],
            "job 0: 'fields' must be an object",
        ),
        (
            [{"action": "save", "model": "testapp.message", "pk": 2**64, "created": True}],
            f"job 0: 'pk': {2**64} is out of range for testapp.Message.id (BigAutoField)",
        ),
        (
            [{"action": "delete", "model": "testapp.message", "pk": 1, "fields": {"room_id": "x"}}],
            "job 0: 'fields.room_id': 'x' does not fit testapp.Room.id (BigAutoField): "
            "“x” value must be an integer.",
        ),
        (
            [{"action": "delete", "model": "testapp.message", "pk": 1, "fields": {"id": 2**70}}],
            f"job 0: 'fields.id': {2**70} is out of range for testapp.Message.id",
        ),
        ([{"action": "broadcast", "stream": "x"}], "job 0: 'stream' must be"),
        (
            [
                {
                    "action": "broadcast",
                    "stream": {"stream": "x.Nope", "args": [], "kwargs": {}},
                    "turbo_action": "remove",
                    "target": "x",
                }
            ],
            "job 0: 'stream' {'stream': 'x.Nope', 'args': [], 'kwargs': {}}: No stream named",
        ),
        (
            [
                {
                    "action": "broadcast",
                    "stream": {"stream": "testapp.RoomStream", "args": [1], "kwargs": {}},
                    "turbo_action": "append",
                    "target": "x",
                    "template": "chat/message.html",
                    "context": {"m": [{"__turbo_model__": "testapp.message", "pk": "one"}]},
                }
            ],
            "job 0: 'context.m[0].pk': 'one' does not fit testapp.Message.id",
        ),
        (
            [
                {
                    "action": "broadcast",
                    "stream": {"stream": "testapp.RoomStream", "args": [1], "kwargs": {}},
                    "turbo_action": "explode",
                    "target": "x",
                }
            ],
            "job 0: 'turbo_action': Unknown action 'explode'",
        ),
    ],
)
def test_malformed_jobs_fail_at_once_naming_the_field(jobs, error):
    with pytest.raises(InvalidJob) as excinfo:
        delivery.run_hooks(jobs)
    assert str(excinfo.value).startswith(error)


@pytest.mark.parametrize("jobs", [5, None, "jobs"])
def test_a_task_whose_jobs_are_not_a_list_fails_as_an_invalid_job(jobs):
    # A hand-edited re-run: the task fails at once, as InvalidJob, never with a TypeError.
    result = tasks.deliver.apply(args=(jobs,))
    assert isinstance(result.result, InvalidJob)


def test_context_dict_using_the_reserved_key_travels_as_a_plain_dict(room):
    lookalike = {"__turbo_model__": "auth.user", "pk": 1}
    encoded = codec.encode_context({"data": lookalike, "nested": [{"x": lookalike}]})
    decoded = codec.decode_context(json.loads(json.dumps(encoded)), "default")
    assert decoded == {"data": lookalike, "nested": [{"x": lookalike}]}


def test_context_model_instances_travel_as_references(room):
    encoded = codec.encode_context({"room": room, "rooms": [room]})
    assert encoded["room"] == {"__turbo_model__": "testapp.room", "pk": room.pk}
    assert codec.decode_context(json.loads(json.dumps(encoded)), "default") == {
        "room": room,
        "rooms": [room],
    }


def test_hook_error_still_delivers_the_other_rows(room, monkeypatch):
    good = Message.objects.create(room=room, text="good")
    bad = Message.objects.create(room=room, text="bad")
    from tests.testapp.streams import MessageStream

    original = MessageStream.on_save

    def on_save(self, message, created, *args, **kwargs):
        if message.text == "bad":
            raise RuntimeError("template blew up")
        original(self, message, created)

    monkeypatch.setattr(MessageStream, "on_save", on_save)
    result = delivery.run_hooks([save(bad), save(good)])
    assert [b.target for b in result.broadcasts] == [f"message-{good.pk}"]
    assert [(job["pk"], repr(exc)) for job, exc in result.errors] == [
        (bad.pk, "RuntimeError('template blew up')")
    ]


def test_database_error_inside_a_hook_is_retried_not_a_hook_error(room, monkeypatch):
    # E.g. message.room loaded lazily while the database restarts: retry the task.
    message = Message.objects.create(room=room, text="x")

    def on_save(self, message, created, *args, **kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(MessageStream, "on_save", on_save)
    with pytest.raises(OperationalError):
        delivery.run_hooks([save(message)])


def test_database_error_while_rendering_a_template_is_retried(room, monkeypatch):
    message = Message.objects.create(room=room, text="x")

    def render_frame(*args, **kwargs):
        raise OperationalError("the database went away mid-render")

    monkeypatch.setattr("turbo_tasks.rendering.render_frame", render_frame)
    result = delivery.run_hooks([save(message, created=True)])
    with pytest.raises(OperationalError):
        delivery.render_frames(result.broadcasts, result.errors)


# -- convergence through the real worker --------------------------------------------------


def apply(dom: dict[str, str], html: str) -> None:
    """Apply Turbo's append/replace/remove semantics for id targets to {element id: html},
    a stand-in for the #messages list (append de-duplicates by element id, as Turbo does)."""
    for action, target, content in re.findall(
        r'<turbo-stream action="(\w+)" target="([^"]+)">(?:<template>(.*?)</template>)?'
        r"</turbo-stream>",
        html,
    ):
        if action == "append":
            element_id = re.match(r'<p id="([^"]+)"', content)[1]
            dom.pop(element_id, None)
            dom[element_id] = content
        elif action == "replace" and target in dom:
            dom[target] = content
        elif action == "remove":
            dom.pop(target, None)


@pytest.fixture
def subscribed(celery_worker_process, ws_client, room):
    client = ws_client()
    client.subscribe(room.stream.signed_name)
    return client


def settle(client, room) -> dict[str, str]:
    """Apply every frame up to a sentinel sent last: the solo worker runs jobs in queue
    order, so when the sentinel arrives everything published before it has arrived."""
    room.stream.append(text="sentinel", id="log")
    dom: dict[str, str] = {}
    while "sentinel" not in (html := client.messages()):
        apply(dom, html)
    return dom


def test_jobs_delivered_twice_converge(subscribed, room):
    message = Message.objects.create(room=room, text="hello")
    message.text = "edited"
    message.save()
    jobs = [save(message, created=True)]
    for _ in range(2):
        deliver.apply_async((jobs,), queue="turbo_tasks")
    dom = settle(subscribed, room)
    assert dom == {f"message-{message.pk}": f'<p id="message-{message.pk}">edited</p>'}


def test_jobs_out_of_order_converge_to_the_deleted_state(subscribed, room):
    message = Message.objects.create(room=room, text="hello")
    stale_save = save(message, created=True)
    remove = delete(message)
    message.delete()
    # The delete arrives first, the stale create after it: the row is gone, so the create
    # renders nothing and the final page has no message.
    deliver.apply_async(([remove],), queue="turbo_tasks")
    deliver.apply_async(([stale_save],), queue="turbo_tasks")
    assert settle(subscribed, room) == {}


def test_stale_edit_arriving_late_renders_the_latest_state(subscribed, room):
    message = Message.objects.create(room=room, text="v1")
    old_edit = save(message)
    Message.objects.filter(pk=message.pk).update(text="v2")
    deliver.apply_async(([old_edit],), queue="turbo_tasks")
    dom = settle(subscribed, room)
    assert dom == {f"message-{message.pk}": f'<p id="message-{message.pk}">v2</p>'}


# -- channel layer ------------------------------------------------------------------------


@pytest.fixture
def layer(redis_server):
    layers.forget_subscribers()
    yield layers.get_layer()
    layers.forget_subscribers()


def test_only_groups_with_live_members_count_as_subscribed(layer):
    lobby, empty = Room(pk=10**6).stream.group_name, Room(pk=10**6 + 1).stream.group_name
    layers.run(layer.group_add(lobby, "specific.test!member"))
    try:
        assert layers.groups_with_subscribers(layer, {lobby, empty}) == {lobby}
    finally:
        layers.run(layer.group_discard(lobby, "specific.test!member"))
    # A group just seen with members is not asked again for MEMBERS_SEEN_SECONDS: the
    # worst case is one frame rendered for nobody.
    assert layers.groups_with_subscribers(layer, {lobby}) == {lobby}
    layers.forget_subscribers()
    assert layers.groups_with_subscribers(layer, {lobby}) == set()


def test_a_group_without_members_is_asked_again_every_time(layer):
    lobby = Room(pk=10**6 + 2).stream.group_name
    assert layers.groups_with_subscribers(layer, {lobby}) == set()
    layers.run(layer.group_add(lobby, "specific.test!late"))
    try:
        assert layers.groups_with_subscribers(layer, {lobby}) == {lobby}
    finally:
        layers.run(layer.group_discard(lobby, "specific.test!late"))


@pytest.mark.asyncio
async def test_the_layer_helpers_refuse_to_run_inside_an_event_loop(layer):
    with pytest.raises(RuntimeError, match="synchronous code"):
        layers.run(layer.group_add("g", "specific.test!x"))


def test_frames_for_streams_nobody_watches_are_not_rendered(layer, room):
    # A template that cannot render proves it: delivering to an unwatched stream succeeds.
    job = {
        "action": "broadcast",
        "stream": {"stream": "testapp.RoomStream", "args": [room.pk], "kwargs": {}},
        "turbo_action": "append",
        "target": "messages",
        "template": "does/not/exist.html",
    }
    assert delivery.deliver([job]) == 0
    with pytest.raises(HookError, match="TemplateDoesNotExist"):
        layers.run(layer.group_add(room.stream.group_name, "specific.test!watcher"))
        try:
            delivery.deliver([job])
        finally:
            layers.run(layer.group_discard(room.stream.group_name, "specific.test!watcher"))


def test_a_database_error_closes_the_connection_before_the_retry(monkeypatch, settings):
    # With CELERY_DB_REUSE_MAX the connection outlives a task: a broken one must not be
    # handed to the retry.
    settings.TURBO_TASKS = {"MAX_RETRIES": 1, "RETRY_BACKOFF": 0, "RETRY_BACKOFF_MAX": 0}
    closed: list[str] = []
    monkeypatch.setattr(connections["default"], "close", lambda: closed.append("default"))

    def broken(jobs, using):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(delivery, "deliver", broken)
    result = tasks.deliver.apply(args=([],))
    assert isinstance(result.result, DeliveryFailed)
    assert closed == ["default", "default"]  # the first attempt and its one retry


# -- update_fields ---------------------------------------------------------------------------


@pytest.fixture
def seen_update_fields(monkeypatch):
    """The update_fields each on_save call received."""
    seen = []
    original = MessageStream.on_save

    def on_save(self, message, created, *args, **kwargs):
        seen.append(kwargs["update_fields"])
        original(self, message, created, *args, **kwargs)

    monkeypatch.setattr(MessageStream, "on_save", on_save)
    return seen


def test_on_save_receives_update_fields_as_a_frozenset(room, seen_update_fields):
    message = Message.objects.create(room=room, text="x")
    delivery.run_hooks([save(message, update_fields=["text"])])
    assert seen_update_fields == [frozenset({"text"})]


def test_on_save_receives_none_for_a_save_without_update_fields(room, seen_update_fields):
    message = Message.objects.create(room=room, text="x")
    delivery.run_hooks([save(message)])
    assert seen_update_fields == [None]


def test_coalesced_saves_get_the_union_of_their_update_fields(room, seen_update_fields):
    message = Message.objects.create(room=room, text="x")
    delivery.run_hooks(
        [save(message, update_fields=["text"]), save(message, update_fields=["room"])]
    )
    assert seen_update_fields == [frozenset({"text", "room"})]


@pytest.mark.parametrize("which", [0, 1])
def test_coalesced_saves_get_none_when_any_save_named_no_fields(room, seen_update_fields, which):
    message = Message.objects.create(room=room, text="x")
    jobs = [save(message, update_fields=["text"]), save(message, update_fields=["text"])]
    del jobs[which]["update_fields"]
    delivery.run_hooks(jobs)
    assert seen_update_fields == [None]


def test_save_after_a_delete_keeps_only_its_own_update_fields(room, seen_update_fields):
    message = Message.objects.create(room=room, text="x")
    delivery.run_hooks([save(message), delete(message), save(message, update_fields=["text"])])
    assert seen_update_fields == [frozenset({"text"})]


@pytest.mark.parametrize("bad", ["text", [1], {"text": True}])
def test_malformed_update_fields_is_an_invalid_job(room, bad):
    message = Message.objects.create(room=room, text="x")
    with pytest.raises(InvalidJob, match="job 0: 'update_fields' must be a list of field names"):
        delivery.run_hooks([save(message, update_fields=bad)])


def test_on_save_without_kwargs_still_runs(room, monkeypatch):
    # update_fields= is passed only to hooks that take it.
    message, seen = Message.objects.create(room=room, text="x"), []

    def on_save(self, message, created):
        seen.append((message.pk, created))

    monkeypatch.setattr(MessageStream, "on_save", on_save)
    assert delivery.run_hooks([save(message, created=True)]).errors == []
    assert seen == [(message.pk, True)]


# -- deleted rows whose foreign key points at a deleted parent (issue 12) --------------------


def render_recording_rooms(jobs_, *, run_hook=False):
    """``delivery.run_hooks(jobs_)`` with MessageStream.on_delete recording ``(message.room,
    message.room_id)`` as each hook sees them (then running the real hook if ``run_hook``).
    Returns the result, the queries render made, and those pairs."""
    seen = []
    original = MessageStream.on_delete

    def spy(self, message, *args, **kwargs):
        seen.append((message.room, message.room_id))
        if run_hook:
            original(self, message, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch, CaptureQueriesContext(connections["default"]) as q:
        patch.setattr(MessageStream, "on_delete", spy)
        result = delivery.run_hooks(jobs_)
    return result, q.captured_queries, seen


def test_cascade_delete_runs_each_child_hook_with_the_parent_resolved(broker, room):
    messages = [Message.objects.create(room=room, text=t) for t in ("a", "b")]
    broker.client.delete(broker.queue)  # only the cascade's jobs
    room_pk, ids = room.pk, [m.pk for m in messages]
    with transaction.atomic():
        room.delete()
    # RoomStream has no on_delete, so the room itself records no job: the messages'
    # parent is gone and not in the task.
    [task] = broker.messages()
    assert sorted((j["model"], j["pk"]) for j in task["jobs"]) == [
        ("testapp.message", p) for p in sorted(ids)
    ]
    result, queries, seen = render_recording_rooms(task["jobs"], run_hook=True)
    assert result.errors == []
    assert len(queries) == 1  # one in_bulk for the (gone) room of both
    assert [(r.pk, room_id) for r, room_id in seen] == [(room_pk, room_pk)] * 2
    assert [b.html for b in result.broadcasts] == [
        f'<turbo-stream action="remove" target="message-{j["pk"]}"></turbo-stream>'
        for j in task["jobs"]
    ]
    assert {b.group for b in result.broadcasts} == {Room(pk=room_pk).stream.group_name}


def test_cascade_with_the_parent_delete_in_the_task_uses_its_snapshot_without_queries(room):
    messages = [Message.objects.create(room=room, text=t) for t in ("a", "b")]
    # Django's Collector sends post_delete for the children before their parent.
    task = [delete(m) for m in messages] + [jobs.delete_job(room, ("id", "name", "private"))]
    room_pk = room.pk
    room.delete()
    result, queries, seen = render_recording_rooms(task)
    rooms = [r for r, _ in seen]
    assert result.errors == []
    assert len(queries) == 0
    assert [(r.pk, r.name) for r in rooms] == [(room_pk, "lobby")] * 2
    assert rooms[0] is rooms[1]


def test_deleted_child_of_a_parent_gone_outside_the_task_gets_a_key_only_parent(room):
    messages = [Message.objects.create(room=room, text=t) for t in ("a", "b")]
    room_pk = room.pk
    room.delete()  # the room's own delete job is in another task
    result, queries, seen = render_recording_rooms([delete(m) for m in messages])
    rooms = [r for r, _ in seen]
    assert result.errors == []
    assert len(queries) == 1  # one in_bulk for both messages' room
    assert [(r.pk, r._state.db, r._state.adding) for r in rooms] == [
        (room_pk, "default", False)
    ] * 2
    assert rooms[0].stream.group_name == Room(pk=room_pk).stream.group_name
    with pytest.raises(Room.DoesNotExist):  # its other fields are unknown, not made up
        rooms[0].name  # noqa: B018


def test_deleted_child_of_a_surviving_parent_gets_the_real_parent(room):
    messages = [Message.objects.create(room=room, text=t) for t in ("a", "b", "c")]
    task = [delete(m) for m in messages]
    Message.objects.filter(room=room).delete()
    Room.objects.filter(pk=room.pk).update(name="renamed")
    _, queries, seen = render_recording_rooms(task)
    rooms = [r for r, _ in seen]
    assert len(queries) == 1  # one in_bulk, not one query per message
    assert [(r.pk, r.name) for r in rooms] == [(room.pk, "renamed")] * 3
    assert rooms[0] is rooms[1]


# -- the signal's other arguments (turbo-django passed them all) ------------------------------


class _SignalSpy:
    broadcasts_refreshes = False

    def __init__(self, instance):
        pass


def _run_with(stream_class, jobs, using="default"):
    steps = delivery._plan(jobs, using)
    rows = delivery._reload(steps, using)
    for step in steps:
        step.stream_class = stream_class
        delivery._run_step(step, rows, using, delivery.Delivery())


def test_hooks_with_kwargs_get_update_fields_raw_and_using(room):
    seen = []

    class Spy(_SignalSpy):
        def on_save(self, instance, created, *args, **kwargs):
            seen.append(("save", kwargs))

        def on_delete(self, instance, *args, **kwargs):
            seen.append(("delete", kwargs))

    message = Message.objects.create(room=room, text="hi")
    gone = delete(message)
    message.delete()
    kept = Message.objects.create(room=room, text="still here")
    _run_with(Spy, [save(kept, update_fields=["text"]), gone])
    assert seen == [
        ("save", {"update_fields": frozenset({"text"}), "raw": False, "using": "default"}),
        ("delete", {"using": "default"}),
    ]


def test_hooks_get_only_the_signal_arguments_they_name(room):
    seen = []

    class Spy(_SignalSpy):
        def on_save(self, instance, created, using=None):
            seen.append(using)

    _run_with(Spy, [save(Message.objects.create(room=room, text="hi"))])
    assert seen == ["default"]


def test_a_hook_can_send_markup_it_rendered_itself(room):
    class Spy(_SignalSpy):
        def on_save(self, instance, created, **kwargs):
            instance.room.stream.stream_raw('<turbo-stream action="refresh"></turbo-stream>')

    steps = delivery._plan([save(Message.objects.create(room=room, text="hi"))], "default")
    rows = delivery._reload(steps, "default")
    steps[0].stream_class = Spy
    result = delivery.Delivery()
    token = delivery.collector.set(result.broadcasts)
    try:
        delivery._run_step(steps[0], rows, "default", result)
    finally:
        delivery.collector.reset(token)
    assert [(b.action, b.html, b.group) for b in result.broadcasts] == [
        ("raw", '<turbo-stream action="refresh"></turbo-stream>', room.stream.group_name)
    ]
