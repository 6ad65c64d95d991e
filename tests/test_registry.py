"""The registry: ``<app>/streams.py`` discovery, ``instance.stream``, abstract bases, and
signed names resolved back to their streams."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

import turbo_tasks as turbo
from tests.otherapp.streams import AnnouncementStream, AuditedModelStream, TeamStream, TenantStream
from tests.testapp.models import Message, Room
from tests.testapp.streams import MessageStream, NotificationStream, RoomStream
from turbo_tasks.registry import Registry, is_abstract, registry, resolve_signed_name

# -- instance.stream ----------------------------------------------------------------------


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


# -- signed names back to streams ---------------------------------------------------------


def test_signed_name_resolves_back_to_the_stream():
    stream = resolve_signed_name(Room(pk=9).stream.signed_name)
    assert isinstance(stream, RoomStream)
    assert stream.pk == 9


def test_plain_stream_with_arguments_round_trips():
    stream = resolve_signed_name(NotificationStream(7).signed_name)
    assert isinstance(stream, NotificationStream)
    assert stream.user_id == 7
    assert stream == NotificationStream(7)


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
        "tests.test_registry.test_second_model_stream_for_a_model_is_improperly_configured."
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


def test_a_stream_imported_into_streams_py_is_registered_under_that_app():
    from tests.testapp.components import BannerComponent

    assert BannerComponent.stream_name() == "testapp.BannerComponent"
    assert registry.get("testapp.BannerComponent") is BannerComponent


def test_a_base_imported_from_another_apps_streams_py_stays_registered_there():
    from tests.otherapp.streams import AnnouncementStream

    assert AnnouncementStream.stream_name() == "otherapp.AnnouncementStream"
