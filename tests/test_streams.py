"""Streams: identity (refs, signed names, pks), arguments of the action helpers, and
turbo-django's names."""

from __future__ import annotations

from unittest.mock import patch

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.template import Context, Template

import turbo_tasks as turbo
from tests.testapp.models import Room
from tests.testapp.streams import NotificationStream, RoomStream
from turbo_tasks.registry import resolve_signed_name

# -- action arguments ---------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{}, {"id": "a", "selector": ".b"}])
def test_target_needs_exactly_one_of_id_or_selector(kwargs):
    stream = Room(pk=1).stream
    with pytest.raises(ValueError, match=r"Pass exactly one of id= .* or selector="):
        stream.append(text="x", **kwargs)


def test_content_needs_exactly_one_of_template_or_text():
    stream = Room(pk=1).stream
    with pytest.raises(
        ValueError,
        match=r"append\(\) needs a template name .* or text=, "
        r"not neither",
    ):
        stream.append(id="x")
    with pytest.raises(ValueError, match="not both"):
        stream.append("chat/message.html", text="x", id="x")


# -- identity and pks ---------------------------------------------------------------------


def test_broadcasting_through_a_pk_less_instance_is_a_value_error():
    with pytest.raises(
        ValueError,
        match=r"RoomStream: cannot broadcast to or subscribe to an "
        r"unsaved Room \(its pk is None\); save it first\.",
    ):
        Room().stream.append(text="x", id="y")


def test_subscribing_to_a_pk_less_instance_is_a_value_error():
    with pytest.raises(ValueError, match="unsaved Room"):
        Room().stream.signed_name  # noqa: B018
    with pytest.raises(ValueError, match="unsaved Room"):
        Template("{% load turbo_tasks %}{% turbo_subscribe room %}").render(
            Context({"room": Room()})
        )


def test_plain_stream_arguments_must_be_json():
    with pytest.raises(TypeError, match="NotificationStream arguments must be JSON-serialisable"):
        NotificationStream(object()).signed_name  # noqa: B018


def test_unregistered_stream_says_where_to_declare_it():
    class Stray(turbo.Stream):
        pass

    with pytest.raises(
        ImproperlyConfigured,
        match=r"Stray is not a registered stream: "
        r"declare it in the streams\.py",
    ):
        Stray().signed_name  # noqa: B018


# -- turbo-django's names ------------------------------------------------------------------


def test_signed_stream_name_is_the_signed_name():
    note = NotificationStream(5)
    assert resolve_signed_name(note.signed_stream_name) == note
    # Compared within one second: a signed name embeds the second it was made.
    with patch("django.core.signing.time.time", return_value=1_800_000_000.0):
        assert note.signed_stream_name == note.signed_name


def test_stream_name_stays_a_classmethod_and_renders_in_templates():
    assert NotificationStream.stream_name() == "testapp.NotificationStream"
    assert NotificationStream(5).stream_name() == "testapp.NotificationStream"
    html = Template("{{ note.stream_name }}").render(Context({"note": NotificationStream(5)}))
    assert html == "testapp.NotificationStream"


@pytest.mark.django_db
def test_model_stream_from_pk_is_the_rows_stream():
    room = Room.objects.create(name="r")
    stream = RoomStream.from_pk(room.pk)
    assert isinstance(stream, RoomStream)
    assert stream == room.stream
    assert stream.instance == room


# -- turbo-django's call shapes ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_actions_take_turbo_djangos_positional_order(broker):
    room = Room.objects.create(name="r")
    room.stream.append("chat/message.html", {"n": 1}, None, None, "messages")
    room.stream.update(None, None, "hi", ".notes")
    room.stream.remove(None, "message-5")
    room.stream.remove(".gone")
    shapes = [
        (j["turbo_action"], j.get("target"), j.get("targets"), j.get("text")) for j in broker.jobs()
    ]
    assert shapes == [
        ("append", "messages", None, None),
        ("update", None, ".notes", "hi"),
        ("remove", "message-5", None, None),
        ("remove", None, ".gone", None),
    ]


@pytest.mark.django_db(transaction=True)
def test_awaitable_actions_take_the_same_arguments(broker):
    from asgiref.sync import async_to_sync

    room = Room.objects.create(name="r")
    async_to_sync(room.stream.aappend)("chat/message.html", {"n": 1}, id="messages")
    async_to_sync(room.stream.aremove)(None, "message-5")
    assert [(j["turbo_action"], j["target"]) for j in broker.jobs()] == [
        ("append", "messages"),
        ("remove", "message-5"),
    ]


def test_model_stream_takes_a_pk_positionally():
    from tests.testapp.streams import RoomStream

    assert RoomStream(7) == RoomStream.from_pk(7) == Room(pk=7).stream
    assert RoomStream(7).pk == 7


def test_init_args_and_broadcastable_name_are_turbo_djangos_names():
    note = NotificationStream(5)
    assert Room(pk=3).stream.get_init_args() == [3]
    assert note.get_init_args() == [5]
    assert note.get_init_kwargs() == {}
    assert note.broadcastable_stream_name == note.group_name


@pytest.mark.django_db(transaction=True)
def test_stream_raw_and_turbo_render_defer_the_markup_as_it_is(broker):
    room = Room.objects.create(name="r")
    frame = turbo.TurboRender.init_from_template("chat/notice.html", {"notice": None})
    room.stream.stream(frame.update(id="notice"))
    room.stream.stream_raw('<turbo-stream action="remove" target="x"></turbo-stream>')
    assert [(j["action"], j["html"]) for j in broker.jobs()] == [
        ("raw", frame.rendered_template),
        ("raw", '<turbo-stream action="remove" target="x"></turbo-stream>'),
    ]
    assert frame.rendered_template.startswith('<turbo-stream action="update" target="notice">')


def test_turbo_render_needs_an_action_and_one_target():
    frame = turbo.TurboRender("<b>hi</b>")
    with pytest.raises(ValueError, match="no action yet"):
        frame.rendered_template  # noqa: B018
    with pytest.raises(ValueError, match="Pass exactly one of id="):
        frame.append()
    assert frame.append(selector=".log").rendered_template == (
        '<turbo-stream action="append" targets=".log"><template><b>hi</b></template></turbo-stream>'
    )
    assert frame.response["Content-Type"] == "text/vnd.turbo-stream.html; charset=utf-8"
    assert frame.response.content.decode() == frame.rendered_template


def test_from_instance_is_the_instances_stream():
    from tests.testapp.streams import RoomStream

    room = Room(pk=4)
    assert RoomStream.from_instance(room) == room.stream
