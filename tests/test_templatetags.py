"""``{% turbo_subscribe %}`` and ``{% turbo_tasks_script %}``, rendered by Django's template
engine."""

from __future__ import annotations

import re
from collections.abc import Iterator
from unittest.mock import patch

import pytest
from django.contrib.auth.models import User
from django.template import Context, Template, TemplateSyntaxError
from django.test import override_settings

import turbo_tasks as turbo
from tests.otherapp.streams import AnnouncementStream
from tests.testapp.models import Room, Unstreamed
from tests.testapp.streams import NotificationStream
from turbo_tasks import history
from turbo_tasks.registry import registry, resolve_signed_name

ELEMENT = re.compile(
    r'<turbo-channels-stream-source signed-stream-name="([^"]+)"(?: since="([^"]+)")?>'
    r"</turbo-channels-stream-source>"
)


def render(source: str, **context: object) -> str:
    return Template("{% load turbo_tasks %}" + source).render(Context(context))


class PagedStream(turbo.Stream):
    """Its only argument has a default: it can be subscribed to by name."""

    def __init__(self, page: int = 1, *more: int, **options: int) -> None:
        self.page = page


@pytest.fixture
def paged_stream() -> Iterator[type[PagedStream]]:
    registry.register(PagedStream, "testapp")
    yield PagedStream
    registry.unregister(PagedStream)


# -- turbo_subscribe ------------------------------------------------------------------------


@pytest.mark.usefixtures("redis_server")
def test_turbo_subscribe_renders_one_element_per_stream_with_its_offset():
    room, note = Room(pk=3), NotificationStream(5)
    html = Template("{% load turbo_tasks %}{% turbo_subscribe room note %}").render(
        Context({"room": room, "note": note})
    )
    elements = ELEMENT.findall(html)
    assert "".join(m[0] for m in ELEMENT.finditer(html)) == html
    # Signed names embed a timestamp; compare what they resolve to.
    assert [resolve_signed_name(name) for name, _ in elements] == [room.stream, note]
    assert all(history.parse(since) for _, since in elements)


@override_settings(TURBO_TASKS={"HISTORY_LENGTH": 0})
def test_turbo_subscribe_without_catch_up_renders_no_offset_and_needs_no_redis():
    html = Template("{% load turbo_tasks %}{% turbo_subscribe room %}").render(
        Context({"room": Room(pk=3)})
    )
    [(name, since)] = ELEMENT.findall(html)
    assert since == ""
    assert resolve_signed_name(name) == Room(pk=3).stream


@override_settings(TURBO_TASKS={"HISTORY_LENGTH": 0})
def test_turbo_subscribe_renders_the_element_unescaped() -> None:
    # One clock for both: a signed name embeds the second it was made.
    with patch("django.core.signing.time.time", return_value=1_800_000_000.0):
        html = render("{% turbo_subscribe room %}", room=Room(pk=3))
        signed_name = Room(pk=3).stream.signed_name
    assert html == (
        f'<turbo-channels-stream-source signed-stream-name="{signed_name}">'
        "</turbo-channels-stream-source>"
    )


@override_settings(TURBO_TASKS={"HISTORY_LENGTH": 0})
def test_turbo_subscribe_takes_instances_streams_and_names_in_order() -> None:
    html = render(
        '{% turbo_subscribe room note "otherapp.AnnouncementStream" %}',
        room=Room(pk=3),
        note=NotificationStream(5),
    )
    streams = [resolve_signed_name(name) for name, _ in ELEMENT.findall(html)]
    assert streams == [Room(pk=3).stream, NotificationStream(5), AnnouncementStream()]


def test_turbo_subscribe_needs_at_least_one_stream() -> None:
    with pytest.raises(TemplateSyntaxError, match=r"^turbo_subscribe needs at least one stream\.$"):
        render("{% turbo_subscribe %}")


def test_turbo_subscribe_rejects_other_values():
    with pytest.raises(
        TemplateSyntaxError, match="model instances with a ModelStream or the name of a stream"
    ):
        Template("{% load turbo_tasks %}{% turbo_subscribe 3 %}").render(Context())


@pytest.mark.parametrize(
    ("value", "type_name"),
    [(Unstreamed(pk=1), "Unstreamed"), (User(pk=1), "User"), (None, "NoneType")],
)
def test_turbo_subscribe_rejects_instances_without_a_model_stream_naming_their_type(
    value: object, type_name: str
) -> None:
    with pytest.raises(TemplateSyntaxError, match=rf"without arguments, not {type_name}\.$"):
        render("{% turbo_subscribe value %}", value=value)


@override_settings(TURBO_TASKS={"HISTORY_LENGTH": 0})
@pytest.mark.parametrize("name", ["otherapp.AnnouncementStream", "otherapp:AnnouncementStream"])
def test_turbo_subscribe_by_name_of_an_argument_less_stream(name):
    html = Template(f'{{% load turbo_tasks %}}{{% turbo_subscribe "{name}" %}}').render(Context())
    [(signed, _)] = ELEMENT.findall(html)
    assert resolve_signed_name(signed) == AnnouncementStream()


@override_settings(TURBO_TASKS={"HISTORY_LENGTH": 0})
def test_turbo_subscribe_by_name_of_a_stream_whose_arguments_have_defaults(
    paged_stream: type[PagedStream],
) -> None:
    html = render('{% turbo_subscribe "testapp.PagedStream" %}')
    [(signed, _)] = ELEMENT.findall(html)
    assert resolve_signed_name(signed) == paged_stream()


def test_turbo_subscribe_by_unknown_name_says_how_names_look():
    with pytest.raises(TemplateSyntaxError, match=r"no stream is registered as 'chat\.Nope'"):
        Template('{% load turbo_tasks %}{% turbo_subscribe "chat.Nope" %}').render(Context())


def test_turbo_subscribe_by_name_of_a_stream_with_arguments_names_them():
    with pytest.raises(
        TemplateSyntaxError, match=r"NotificationStream\(\) needs arguments \(user_id\)"
    ):
        Template('{% load turbo_tasks %}{% turbo_subscribe "testapp.NotificationStream" %}').render(
            Context()
        )


def test_turbo_subscribe_by_name_of_a_model_stream_asks_for_the_instance():
    with pytest.raises(TemplateSyntaxError, match="RoomStream is a ModelStream; pass the Room"):
        Template('{% load turbo_tasks %}{% turbo_subscribe "testapp.RoomStream" %}').render(
            Context()
        )


# -- turbo_tasks_script ---------------------------------------------------------------------


def test_turbo_tasks_script_tag():
    html = Template("{% load turbo_tasks %}{% turbo_tasks_script %}").render(Context())
    assert html == '<script type="module" src="/static/turbo_tasks/turbo-tasks.js"></script>'


@override_settings(STATIC_URL="https://cdn.example/assets/")
def test_turbo_tasks_script_tag_follows_static_url() -> None:
    assert render("{% turbo_tasks_script %}") == (
        '<script type="module" src="https://cdn.example/assets/turbo_tasks/turbo-tasks.js">'
        "</script>"
    )


def test_turbo_streams_is_turbo_djangos_name_for_the_library() -> None:
    room = Room(pk=3)
    with patch("django.core.signing.time.time", return_value=1_800_000_000.0):
        ours = Template("{% load turbo_tasks %}{% turbo_subscribe room %}")
        theirs = Template("{% load turbo_streams %}{% turbo_subscribe room %}")
        assert theirs.render(Context({"room": room})) == ours.render(Context({"room": room}))


def test_turbo_head_include_loads_turbo_and_the_element() -> None:
    html = Template('{% include "turbo/head.html" %}').render(Context({}))
    assert '<script type="module" src="/static/turbo.es2017-esm.js"></script>' in html
    assert '<script type="module" src="/static/turbo_tasks/turbo-tasks.js"></script>' in html
