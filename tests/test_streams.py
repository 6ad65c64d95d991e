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
