"""Streams, markup, registration, the template tag and the system checks."""

from __future__ import annotations

import re
from unittest.mock import patch

import pytest
from channels.layers import BaseChannelLayer
from channels_redis.core import RedisChannelLayer
from django.core.exceptions import ImproperlyConfigured
from django.template import Context, Template, TemplateSyntaxError
from django.test import override_settings

import turbo_tasks as turbo
from tests.otherapp.streams import AnnouncementStream, AuditedModelStream, TeamStream, TenantStream
from tests.testapp.models import Member, Message, Room
from tests.testapp.streams import MemberStream, MessageStream, NotificationStream, RoomStream
from turbo_tasks import checks, history
from turbo_tasks.jobs import is_secret, snapshot_attnames
from turbo_tasks.registry import Registry, is_abstract, registry, resolve_signed_name
from turbo_tasks.rendering import turbo_stream
from turbo_tasks.testing import capture_broadcasts

# -- markup ------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["append", "prepend", "replace", "update", "before", "after"])
def test_markup_with_template_content(action):
    assert turbo_stream(action, target="messages", content="<p>hi</p>") == (
        f'<turbo-stream action="{action}" target="messages"><template><p>hi</p></template>'
        "</turbo-stream>"
    )


def test_markup_remove_has_no_template():
    assert turbo_stream("remove", target="message-5") == (
        '<turbo-stream action="remove" target="message-5"></turbo-stream>'
    )


def test_markup_selector_becomes_targets_and_is_attribute_escaped():
    assert turbo_stream("remove", targets='.msg[data-x="1"]') == (
        '<turbo-stream action="remove" targets=".msg[data-x=&quot;1&quot;]"></turbo-stream>'
    )


def test_unknown_action_is_a_value_error_listing_the_actions():
    with pytest.raises(
        ValueError,
        match=r"Unknown action 'explode', must be one of: append, "
        r"prepend, replace, update, before, after, remove, refresh\.",
    ):
        turbo_stream("explode", target="x")


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


def test_public_names():
    assert turbo.ACTIONS == (
        "append", "prepend", "replace", "update", "before", "after", "remove", "refresh"
    )  # fmt: skip
    assert turbo.REFRESH == "refresh"
    assert turbo.APPEND == "append"
    assert turbo.REMOVE == "remove"


# -- streams and pks ----------------------------------------------------------------------


def test_instance_stream_is_the_bound_model_stream():
    room = Room(pk=4)
    assert isinstance(room.stream, RoomStream)
    assert room.stream == RoomStream(pk=4)
    assert Room.stream is RoomStream


@pytest.mark.django_db
def test_stream_of_a_created_instance_uses_its_new_pk():
    room = Room(name="new")
    stream = room.stream
    room.save()
    assert stream.ref()["args"] == [room.pk]
    assert Room.objects.create(name="x").stream.ref()["args"] != [None]


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


def test_signed_name_resolves_back_to_the_stream():
    stream = resolve_signed_name(Room(pk=9).stream.signed_name)
    assert isinstance(stream, RoomStream)
    assert stream.pk == 9


def test_group_names_are_valid_channels_group_names():
    for stream in (Room(pk=1).stream, NotificationStream(10**30), AnnouncementStream()):
        assert stream.group_name.replace(".", "").replace("_", "").replace("-", "").isalnum()
        assert len(stream.group_name) < 100
    assert Room(pk=1).stream.group_name != Room(pk=2).stream.group_name
    assert Room(pk=1).stream.group_name != Message(pk=1).stream.group_name


def test_plain_stream_with_arguments_round_trips():
    stream = resolve_signed_name(NotificationStream(7).signed_name)
    assert isinstance(stream, NotificationStream)
    assert stream.user_id == 7
    assert stream == NotificationStream(7)


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


# -- registration -------------------------------------------------------------------------


def test_streams_py_classes_are_registered_under_their_app():
    assert registry.get("testapp.RoomStream") is RoomStream
    assert registry.get("testapp.MessageStream") is MessageStream
    assert registry.get("testapp.NotificationStream") is NotificationStream


def test_imported_classes_are_registered_only_where_defined():
    # tests.testapp.streams imports both of these from tests.otherapp.streams.
    assert registry.get("otherapp.AnnouncementStream") is AnnouncementStream
    assert registry.get("testapp.AnnouncementStream") is None
    assert registry.get("otherapp.AuditedModelStream") is None  # abstract
    assert registry.get("testapp.AuditedModelStream") is None


def test_second_model_stream_for_a_model_is_improperly_configured():
    fresh = Registry()
    fresh.register(RoomStream, "testapp")

    class SecondRoomStream(turbo.ModelStream):
        class Meta:
            model = Room

    with pytest.raises(ImproperlyConfigured) as excinfo:
        fresh.register(SecondRoomStream, "testapp")
    assert str(excinfo.value) == (
        "testapp.Room has two ModelStreams, tests.testapp.streams.RoomStream and "
        "tests.test_streams.test_second_model_stream_for_a_model_is_improperly_configured."
        "<locals>.SecondRoomStream; a model can have only one (it becomes instance.stream)."
    )


def test_model_stream_without_a_model_is_improperly_configured():
    class NoModel(turbo.ModelStream):
        pass

    with pytest.raises(ImproperlyConfigured, match="must name its model: class Meta: model ="):
        Registry().register(NoModel, "testapp")


def test_abstract_base_in_streams_py_is_not_registered_but_subclasses_work():
    assert issubclass(MessageStream, AuditedModelStream)
    assert registry.for_model(Message) is MessageStream


def test_subclass_inheriting_an_abstract_meta_is_registered():
    # Like Django models, abstract = True belongs to the class that says it.
    assert registry.get("otherapp.TenantStream") is None
    assert registry.get("otherapp.TeamStream") is TeamStream
    assert resolve_signed_name(TeamStream(4).signed_name) == TeamStream(4)


def test_abstract_stream_used_directly_says_it_is_abstract():
    with pytest.raises(ImproperlyConfigured, match="is not a registered stream: it is abstract"):
        TenantStream(4).signed_name  # noqa: B018


def test_model_stream_inheriting_an_abstract_meta_must_name_its_model():
    class NoOwnMeta(AuditedModelStream):
        pass

    assert not is_abstract(NoOwnMeta)
    with pytest.raises(ImproperlyConfigured, match="must name its model"):
        Registry().register(NoOwnMeta, "testapp")


# -- delete snapshots ---------------------------------------------------------------------


def test_snapshot_leaves_out_secret_looking_fields_by_default():
    assert MemberStream.snapshot_attnames == ("id", "room_id", "name")


@pytest.mark.parametrize(
    ("fields", "exclude", "attnames"),
    [
        ("__all__", None, ("id", "room_id", "name", "password", "api_token")),
        (["room", "name"], None, ("id", "room_id", "name")),  # the pk is always kept
        (None, ["name"], ("id", "room_id")),
        ("__all__", ["password"], ("id", "room_id", "name", "api_token")),
    ],
)
def test_snapshot_meta_options_choose_the_fields(fields, exclude, attnames):
    assert snapshot_attnames(Member, fields, exclude) == attnames


def test_snapshot_meta_option_naming_an_unknown_field_is_improperly_configured():
    class MemberStream(turbo.ModelStream):
        class Meta:
            model = Member
            snapshot_fields = ["name", "nickname"]

    with pytest.raises(ImproperlyConfigured) as excinfo:
        Registry().register(MemberStream, "testapp")
    assert "Meta.snapshot_fields names unknown field(s) of testapp.Member: nickname" in str(
        excinfo.value
    )


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("password", True),
        ("api_token", True),
        ("apikey", True),
        ("client_secret", True),
        ("tokens", True),
        ("author", False),  # "auth" is not a secret
        ("author_id", False),
        ("keyword", False),
        ("tokenizer", False),
    ],
)
def test_secret_field_names(name, secret):
    assert is_secret(name) is secret


# -- template tag -------------------------------------------------------------------------


ELEMENT = re.compile(
    r'<turbo-channels-stream-source signed-stream-name="([^"]+)"(?: since="([^"]+)")?>'
    r"</turbo-channels-stream-source>"
)


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


def test_turbo_subscribe_rejects_other_values():
    with pytest.raises(
        TemplateSyntaxError, match="model instances with a ModelStream or the name of a stream"
    ):
        Template("{% load turbo_tasks %}{% turbo_subscribe 3 %}").render(Context())


@override_settings(TURBO_TASKS={"HISTORY_LENGTH": 0})
@pytest.mark.parametrize("name", ["otherapp.AnnouncementStream", "otherapp:AnnouncementStream"])
def test_turbo_subscribe_by_name_of_an_argument_less_stream(name):
    html = Template(f'{{% load turbo_tasks %}}{{% turbo_subscribe "{name}" %}}').render(Context())
    [(signed, _)] = ELEMENT.findall(html)
    assert resolve_signed_name(signed) == AnnouncementStream()


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


def test_turbo_tasks_script_tag():
    html = Template("{% load turbo_tasks %}{% turbo_tasks_script %}").render(Context())
    assert html == '<script type="module" src="/static/turbo_tasks/turbo-tasks.js"></script>'


# -- system checks ------------------------------------------------------------------------


def ids(messages):
    return [m.id for m in messages]


def test_checks_pass_with_the_test_settings():
    assert checks.check_settings() + checks.check_channel_layer() + checks.check_catch_up() == []


@override_settings(CHANNEL_LAYERS={})
def test_check_no_channel_layer():
    assert ids(checks.check_channel_layer()) == ["turbo_tasks.E002"]


@override_settings(TURBO_TASKS={"CHANNEL_LAYER": "missing"})
def test_check_turbo_tasks_layer_alias_missing():
    assert ids(checks.check_channel_layer()) == ["turbo_tasks.E002"]


@override_settings(CHANNEL_LAYERS={"default": {"BACKEND": checks.IN_MEMORY_LAYER}})
def test_check_in_memory_layer_with_out_of_process_workers():
    assert ids(checks.check_channel_layer()) == ["turbo_tasks.E003"]


@override_settings(
    CHANNEL_LAYERS={"default": {"BACKEND": checks.IN_MEMORY_LAYER}},
    CELERY_TASK_ALWAYS_EAGER=True,
)
def test_check_in_memory_layer_is_fine_with_eager_tasks():
    assert checks.check_channel_layer() == []


@pytest.mark.parametrize(
    ("hosts", "expected"),
    [
        (["redis://localhost:6379/0"], ["turbo_tasks.W005"]),
        ([{"address": "redis://localhost:6379/0", "socket_timeout": 5}], ["turbo_tasks.W005"]),
        ([{"address": "redis://localhost:6379/0", "socket_timeout": 15}], []),
        ([{"address": "redis://localhost:6379/0", "socket_timeout": None}], []),
    ],
)
def test_check_redis_socket_timeout_shorter_than_blocking_receive(hosts, expected):
    layers = {"default": {"BACKEND": checks.REDIS_CORE_LAYER, "CONFIG": {"hosts": hosts}}}
    with override_settings(CHANNEL_LAYERS=layers):
        assert ids(checks.check_channel_layer()) == expected


@override_settings(TURBO_TASKS={"HISTORY_LENGTH": 0})
def test_check_catch_up_turned_off_says_what_pages_lose():
    [warning] = checks.check_catch_up()
    assert warning.id == "turbo_tasks.W007"
    assert "misses every change committed while its socket reconnects" in warning.msg
    assert warning.hint


class ThirdPartyLayer(BaseChannelLayer):
    """A channel layer that is not one of channels_redis'."""


class OwnRedisLayer(RedisChannelLayer):
    """A project's subclass of a channels_redis layer."""


@pytest.mark.parametrize(
    ("backend", "eager", "expected"),
    [
        ("tests.test_streams.ThirdPartyLayer", False, ["turbo_tasks.W008"]),
        (checks.IN_MEMORY_LAYER, True, ["turbo_tasks.W008"]),
        (checks.IN_MEMORY_LAYER, False, []),  # turbo_tasks.E003 says it all
        ("channels_redis.core.RedisChannelLayer", False, []),
        ("channels_redis.pubsub.RedisPubSubChannelLayer", False, []),
        ("tests.test_streams.OwnRedisLayer", False, []),
        ("no.such.Layer", False, []),  # channels says so at its first use
    ],
)
def test_check_catch_up_needs_a_channels_redis_layer(backend, eager, expected):
    layers = {"default": {"BACKEND": backend}}
    with override_settings(CHANNEL_LAYERS=layers, CELERY_TASK_ALWAYS_EAGER=eager):
        messages = checks.check_catch_up()
    assert ids(messages) == expected
    if messages:
        assert backend in messages[0].msg
        assert "catch-up cannot work" in messages[0].msg
        assert "RedisPubSubChannelLayer" in (messages[0].hint or "")


@pytest.mark.parametrize(
    "mistake",
    [{"CHANNEL_LAYERS": {}}, {"TURBO_TASKS": ["QUEUE"]}, {"TURBO_TASKS": {"HISTORY_LENGTH": "0"}}],
    ids=["E002", "E001", "E006"],
)
def test_check_catch_up_leaves_other_mistakes_to_their_own_checks(mistake):
    with override_settings(**mistake):
        assert checks.check_catch_up() == []


@override_settings(TURBO_TASKS={"QUEUEE": "x", "MAX_FRAME_SIZE": 0})
def test_check_unknown_and_invalid_turbo_tasks_keys():
    messages = checks.check_settings()
    # Each problem has an id of its own, so one can be silenced without the others.
    assert ids(messages) == ["turbo_tasks.E005", "turbo_tasks.E006"]
    assert messages[0].msg == "Unknown TURBO_TASKS key(s): QUEUEE."
    assert "MAX_FRAME_SIZE" in messages[1].msg


@override_settings(TURBO_TASKS=["QUEUE"])
def test_check_turbo_tasks_must_be_a_dict():
    assert ids(checks.check_settings()) == ["turbo_tasks.E001"]


@override_settings(TURBO_TASKS={"OUTBOX_DATABASES": ["default", "replica"]})
def test_check_outbox_databases_must_name_configured_databases():
    [message] = checks.check_settings()
    assert message.id == "turbo_tasks.E006"
    assert "OUTBOX_DATABASES" in message.msg


def test_check_celery_app_is_loaded():
    # conftest loads the project's app (worker.app), as a project's __init__.py does.
    assert checks.check_celery_app() == []


def test_check_exclude_sender_needs_the_middleware():
    assert checks.check_sender_middleware() == []  # tests.settings has it
    with override_settings(MIDDLEWARE=[]):
        (warning,) = checks.check_sender_middleware()
    assert warning.id == "turbo_tasks.W006"
    assert "testapp.NoticeStream" in warning.msg


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
