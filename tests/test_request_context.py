"""Request context: language, time zone, sender and Turbo request id travel with jobs;
exclude_sender; refresh and morph markup."""

from __future__ import annotations

import datetime
import urllib.request

import pytest
from django.conf import settings
from django.db import transaction
from django.test import Client
from django.utils import timezone, translation

from tests.testapp.models import Notice, Room
from tests.testapp.streams import NoticeStream, RoomStream
from turbo_tasks import delivery, request_context, signing
from turbo_tasks.exceptions import InvalidJob
from turbo_tasks.markup import turbo_stream

MIDNIGHT_UTC = datetime.datetime(2026, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)
SOCKET = signing.new_socket_id(None)  # an anonymous user's socket
REQUEST_ID = "6f1c2d9e-0b7a-4c1e-9a55-3e8f0d2b7c41"


def default_time() -> str:
    """MIDNIGHT_UTC in settings.TIME_ZONE, as the templates show it without a request's."""
    return timezone.localtime(MIDNIGHT_UTC, timezone.get_default_timezone()).strftime("%H:%M")


# -- capture at enqueue ----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_jobs_carry_the_language_and_time_zone_they_were_recorded_in(broker):
    room = Room.objects.create(name="r")
    with translation.override("fr"), timezone.override("Asia/Tokyo"):
        Notice.objects.create(room=room, at=MIDNIGHT_UTC)
        room.stream.append(text="hi", id="x")
    Notice.objects.create(room=room, at=MIDNIGHT_UTC)
    jobs = broker.jobs()
    assert [job.get("request") for job in jobs] == [
        {"language": "fr", "time_zone": "Asia/Tokyo"},
        {"language": "fr", "time_zone": "Asia/Tokyo"},
        None,  # the defaults (LANGUAGE_CODE, TIME_ZONE) are the worker's own: not carried
    ]


@pytest.mark.django_db(transaction=True)
def test_middleware_makes_the_headers_the_requests_sender_and_request_id(broker):
    room = Room.objects.create(name="r")
    client = Client()
    client.post(
        f"/rooms/{room.pk}/notices/",
        {"at": "2026-01-01T00:00:00Z"},
        headers={"X-Turbo-Tasks-Socket": SOCKET, "X-Turbo-Request-Id": REQUEST_ID},
    )
    # Junk is not carried: it would travel in every job and could match nothing anyway.
    client.post(
        f"/rooms/{room.pk}/notices/",
        {"at": "2026-01-01T00:00:00Z"},
        headers={"X-Turbo-Tasks-Socket": "a b<c>", "X-Turbo-Request-Id": "x" * 65},
    )
    first, second = broker.jobs()
    assert first["request"] == {"sender": SOCKET, "request_id": REQUEST_ID}
    assert "request" not in second
    assert request_context.capture() == {}  # nothing leaks past the request


@pytest.mark.django_db(transaction=True)
def test_a_request_may_name_only_a_socket_of_its_own_user(broker):
    from django.contrib.auth.models import User

    room = Room.objects.create(name="r")
    ann, bob = User.objects.create_user("ann"), User.objects.create_user("bob")
    client = Client()
    client.force_login(ann)
    sockets = [signing.new_socket_id(ann.pk), signing.new_socket_id(bob.pk)]
    for socket in [*sockets, SOCKET]:
        client.post(
            f"/rooms/{room.pk}/notices/",
            {"at": "2026-01-01T00:00:00Z"},
            headers={"X-Turbo-Tasks-Socket": socket},
        )
    # Ann's own socket counts; Bob's (stolen) and an anonymous one are ignored.
    assert [job.get("request") for job in broker.jobs()] == [{"sender": sockets[0]}, None, None]
    assert signing.socket_of(sockets[1], bob.pk) == sockets[1]
    forged = sockets[1][:-1] + ("1" if sockets[1].endswith("0") else "0")
    assert signing.socket_of(forged, bob.pk) is None


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("request_object", "error"),
    [
        ("fr", "job 0: 'request': must be an object"),
        ({"language": 5}, "job 0: 'request': 'language' must be a string"),
        ({"language": "fr; rm -rf"}, "job 0: 'request': 'language' 'fr; rm -rf' is not a"),
        ({"time_zone": "Mars/Olympus"}, "job 0: 'request': 'time_zone' 'Mars/Olympus' is not"),
        ({"sender": "a b"}, "job 0: 'request': 'sender' 'a b' is not a valid id"),
        ({"colour": "red"}, "job 0: 'request': unknown key 'colour'"),
    ],
)
def test_a_malformed_request_object_fails_the_job_naming_it(request_object, error):
    job = {"action": "save", "model": "testapp.room", "pk": 1, "created": True}
    with pytest.raises(InvalidJob) as excinfo:
        delivery.run_hooks([{**job, "request": request_object}])
    assert str(excinfo.value).startswith(error)


# -- restored in the worker ------------------------------------------------------------------


@pytest.mark.django_db
def test_hooks_and_templates_run_in_the_jobs_language_and_time_zone():
    room = Room.objects.create(name="r")
    notice = Notice.objects.create(room=room, at=MIDNIGHT_UTC)
    job = {"action": "save", "model": "testapp.notice", "pk": notice.pk, "created": True}
    french = {"language": "fr", "time_zone": "Asia/Tokyo"}
    result = delivery.run_hooks([{**job, "request": french}, {**job, "pk": notice.pk}])
    frames = delivery.render_frames(result.broadcasts, result.errors)
    assert result.errors == []
    # One row, two jobs: coalesced, the last job's context wins (it has none: defaults).
    assert [html for _, html, _ in frames] == [
        '<turbo-stream action="append" target="notices"><template>'
        f'<p id="notice-{notice.pk}">Yes {default_time()}</p></template></turbo-stream>',
        '<turbo-stream action="update" target="notice"><template>'
        f'<p id="notice-{notice.pk}">Yes {default_time()}</p></template></turbo-stream>',
    ]
    result = delivery.run_hooks([{**job, "request": french}])
    frames = delivery.render_frames(result.broadcasts, result.errors)
    assert f'<p id="notice-{notice.pk}">Oui 09:00</p>' in frames[0][1]
    # Nothing stays activated in the worker's thread.
    assert translation.get_language() == settings.LANGUAGE_CODE
    assert timezone.get_current_timezone_name() == settings.TIME_ZONE


@pytest.mark.django_db
def test_exclude_sender_per_action_and_by_the_streams_meta():
    room = Room.objects.create(name="r")
    notice = Notice.objects.create(room=room, at=MIDNIGHT_UTC)
    job = {"action": "save", "model": "testapp.notice", "pk": notice.pk, "created": True}
    result = delivery.run_hooks([{**job, "request": {"sender": SOCKET}}])
    # The room's append asks (exclude_sender=True), the notice's update follows its Meta.
    assert [b.exclude for b in result.broadcasts] == [SOCKET, SOCKET]
    assert RoomStream.exclude_sender is False
    assert NoticeStream.exclude_sender is True
    with request_context.origin(SOCKET, None):
        deferred = [
            {
                "action": "broadcast",
                "stream": notice.stream.ref(),
                "turbo_action": "update",
                "target": "n",
                "text": "t",
                "request": request_context.capture(),
                **extra,
            }
            for extra in ({"exclude_sender": True}, {})
        ]
    excluded = delivery.run_hooks(deferred).broadcasts
    assert [b.exclude for b in excluded] == [SOCKET, None]
    # Without a sender there is nobody to exclude.
    assert [b.exclude for b in delivery.run_hooks([job]).broadcasts] == [None, None]


@pytest.mark.django_db(transaction=True)
def test_a_view_action_records_exclude_sender_and_meta_default(broker):
    room = Room.objects.create(name="r")
    notice = Notice.objects.create(room=room, at=MIDNIGHT_UTC)
    start = len(broker.jobs())
    with request_context.origin(SOCKET, None):
        room.stream.append(text="a", id="x", exclude_sender=True)
        room.stream.append(text="b", id="x")
        notice.stream.update(text="c", id="x")  # Meta.exclude_sender = True
        notice.stream.update(text="d", id="x", exclude_sender=False)
    sent = broker.jobs()[start:]
    assert [job.get("exclude_sender", False) for job in sent] == [True, False, True, False]
    assert all(job["request"] == {"sender": SOCKET} for job in sent)


# -- markup ----------------------------------------------------------------------------------


def test_refresh_and_morph_markup():
    assert turbo_stream("refresh") == '<turbo-stream action="refresh"></turbo-stream>'
    assert turbo_stream("refresh", request_id='a"b') == (
        '<turbo-stream action="refresh" request-id="a&quot;b"></turbo-stream>'
    )
    assert turbo_stream("replace", target="room", content="<h1>x</h1>", method="morph") == (
        '<turbo-stream action="replace" method="morph" target="room">'
        "<template><h1>x</h1></template></turbo-stream>"
    )
    assert turbo_stream("update", targets=".n", content="", method="morph").startswith(
        '<turbo-stream action="update" method="morph" targets=".n">'
    )
    with pytest.raises(ValueError, match="only method='morph' is supported, on replace and"):
        turbo_stream("append", target="x", method="morph")
    with pytest.raises(ValueError, match="only method='morph'"):
        turbo_stream("replace", target="x", method="swap")


@pytest.mark.django_db(transaction=True)
def test_refresh_frames_carry_the_turbo_request_id(broker):
    room = Room.objects.create(name="r")
    with request_context.origin(None, REQUEST_ID):
        room.stream.refresh()
        room.stream.replace(text="t", id="room", method="morph")
    refresh, morph = broker.jobs()
    assert refresh["turbo_action"] == "refresh"
    assert "target" not in refresh
    assert morph["method"] == "morph"
    frames = delivery.render_frames(*_render([refresh, morph]))
    assert [html for _, html, _ in frames] == [
        f'<turbo-stream action="refresh" request-id="{REQUEST_ID}"></turbo-stream>',
        '<turbo-stream action="replace" method="morph" target="room"><template>t'
        "</template></turbo-stream>",
    ]
    with pytest.raises(TypeError, match="method"):  # append cannot morph: no such argument
        room.stream.append(text="t", id="x", method="morph")  # type: ignore[call-arg]


def _render(jobs):  # type: ignore[no-untyped-def]
    result = delivery.run_hooks(jobs)
    return result.broadcasts, result.errors


# -- end to end: a worker and a websocket --------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("in_process_worker")
def test_language_and_time_zone_end_to_end(ws_client):
    room = Room.objects.create(name="lobby")
    client = ws_client()
    client.subscribe(room.stream.signed_name)
    with translation.override("fr"), timezone.override("Asia/Tokyo"):
        notice = Notice.objects.create(room=room, at=MIDNIGHT_UTC)  # the hook path
    assert f'<p id="notice-{notice.pk}">Oui 09:00</p>' in client.messages()
    with translation.override("de"), timezone.override("America/New_York"), transaction.atomic():
        room.stream.append("chat/notice.html", {"notice": notice}, id="n")  # a view's action
    assert f'<p id="notice-{notice.pk}">Ja 19:00</p>' in client.messages()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("celery_worker_process")  # the ASGI server publishes to it
def test_the_senders_socket_is_spared_end_to_end(ws_client, asgi_server):
    room = Room.objects.create(name="lobby")
    author, other = ws_client(), ws_client()
    assert author.socket_id != other.socket_id
    name = room.stream.signed_name  # once: a signed name embeds the current second
    for client in (author, other):
        client.subscribe(name)
    # A real request through the ASGI server, as the element sends it after `hello`.
    request = urllib.request.Request(
        asgi_server.replace("ws://", "http://") + f"/rooms/{room.pk}/notices/",
        data=b"at=2026-01-01T00:00:00Z",
        headers={"X-Turbo-Tasks-Socket": author.socket_id},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        notice_pk = int(response.read())
    seen = other.wait(lambda f: f["type"] == "message")
    spared = author.wait(lambda f: f["type"] == "message")
    assert f'<p id="notice-{notice_pk}">Yes {default_time()}</p>' in seen["html"]
    # The author's socket gets the offset, so its resume point moves past the frame.
    assert spared == {**seen, "html": ""}
    # The next frame, from nobody's request, reaches both.
    Notice.objects.create(room=room, at=MIDNIGHT_UTC)
    assert "notice-" in author.messages()
    assert "notice-" in other.messages()


def test_a_hooks_own_writes_keep_the_locale_but_not_the_sender():
    # In a worker, a write a hook makes is not the sender's: its page must get it.
    job_request = {"language": "fr", "sender": SOCKET, "request_id": REQUEST_ID}
    with request_context.activated(job_request):
        assert request_context.capture(for_job=True) == {"language": "fr"}
        assert request_context.capture() == job_request  # what the hook's actions carry
    with request_context.origin(SOCKET, REQUEST_ID):  # a request: its writes are its own
        assert request_context.capture(for_job=True) == {
            "sender": SOCKET,
            "request_id": REQUEST_ID,
        }


def test_merged_rows_keep_a_sender_only_when_every_job_had_it():
    a = {"language": "fr", "sender": SOCKET, "request_id": REQUEST_ID}
    assert request_context.merged(a, a) == a
    assert request_context.merged(a, {"language": "de", "sender": SOCKET}) == {
        "language": "de",
        "sender": SOCKET,
    }
    assert request_context.merged(a, None) == {}
    assert request_context.merged(None, a) == {"language": "fr"}


@pytest.mark.parametrize(
    "request_object",
    [{"time_zone": "A/" * 500 + "b"}, {"time_zone": "../etc/passwd"}, {"language": "a" * 40}],
)
def test_odd_values_are_invalid_jobs_not_crashes(request_object):
    from turbo_tasks.jobs import validate

    job = {"action": "save", "model": "testapp.message", "pk": 1, "created": True}
    with pytest.raises(InvalidJob, match="job 0: 'request': "):
        validate([{**job, "request": request_object}])


def test_an_unsupported_language_falls_back_to_the_default():
    with request_context.activated({"language": "xx-yy"}):
        assert translation.get_language() == settings.LANGUAGE_CODE
    with request_context.activated({"language": "fr-ca"}):
        assert translation.get_language() in ("fr-ca", "fr")


def test_a_batch_of_jobs_runs_each_in_its_own_context():
    # Inside batch() a job whose request matches the active one skips activating it again;
    # every job must still start in its own language, time zone and origin.
    def current():
        return (
            translation.get_language(),
            timezone.get_current_timezone_name(),
            request_context.capture().get("sender"),
        )

    default = (settings.LANGUAGE_CODE, settings.TIME_ZONE, None)
    french = {"language": "fr", "time_zone": "Asia/Tokyo", "sender": SOCKET}
    with request_context.batch():
        for request, expected in [
            ({}, default),
            (french, ("fr", "Asia/Tokyo", SOCKET)),
            ({}, default),
            (french, ("fr", "Asia/Tokyo", SOCKET)),
            (french, ("fr", "Asia/Tokyo", SOCKET)),
        ]:
            with request_context.activated(request):
                assert current() == expected
    assert current() == default
    # Hooks that activate another language or time zone and leave it active.
    for hook in (lambda: translation.activate("fr"), lambda: timezone.activate("Asia/Tokyo")):
        with request_context.batch():
            with request_context.activated({}):  # the same request: nothing activated
                hook()
            with request_context.activated({}):
                assert current() == default
        assert current() == default


@pytest.mark.django_db(transaction=True)
def test_a_task_of_jobs_in_different_languages_renders_each_in_its_own():
    # What delivery.deliver does: the hooks and the rendering inside one batch().
    room = Room.objects.create(name="r")
    notices = [Notice.objects.create(room=room, at=MIDNIGHT_UTC) for _ in range(4)]
    french = {"language": "fr", "time_zone": "Asia/Tokyo"}
    jobs = [
        {"action": "save", "model": "testapp.notice", "pk": n.pk, "created": True}
        | ({"request": french} if i % 2 else {})
        for i, n in enumerate(notices)
    ]
    with request_context.batch():
        result = delivery.run_hooks(jobs)
        frames = delivery.render_frames(result.broadcasts, result.errors)
    appended = [html for _, html, _ in frames if 'target="notices"' in html]
    assert [("Oui 09:00" in html, f"Yes {default_time()}" in html) for html in appended] == [
        (False, True),
        (True, False),
        (False, True),
        (True, False),
    ]
