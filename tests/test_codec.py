"""The template context of a deferred action: what travels to the worker, and how."""

from __future__ import annotations

import datetime
import decimal
import json
import uuid

import pytest
from django.utils import timezone

from tests.testapp.models import Message, Room
from turbo_tasks import codec
from turbo_tasks.exceptions import InvalidJob

pytestmark = pytest.mark.django_db


def travel(context):
    """Encode, send as JSON, decode: what a worker's template gets."""
    return codec.decode_context(json.loads(json.dumps(codec.encode_context(context))), "default")


@pytest.mark.parametrize(
    "value",
    [
        datetime.datetime(2026, 12, 7, 10, 38, 25, 112233, tzinfo=datetime.timezone.utc),
        datetime.datetime(2026, 12, 7, 10, 38, 25, 112233),  # naive
        datetime.date(2026, 12, 7),
        datetime.time(10, 38, 25, 500),
        datetime.timedelta(days=1, seconds=5, microseconds=7),
        decimal.Decimal("9.90"),
        uuid.UUID("6f1c5a2e-8b1d-4c3e-9a2f-1b2c3d4e5f60"),
    ],
)
def test_dates_times_durations_decimals_and_uuids_come_back_as_their_type(value):
    back = travel({"v": value, "nested": [{"v": value}]})
    assert back == {"v": value, "nested": [{"v": value}]}
    assert type(back["v"]) is type(value)


def test_an_aware_datetime_keeps_its_instant_and_offset():
    at = timezone.now()
    back = travel({"at": at})["at"]
    assert back == at
    assert back.utcoffset() == at.utcoffset()


def test_a_datetime_is_tagged_readably_in_the_job():
    at = datetime.datetime(2026, 12, 7, 10, 38, tzinfo=datetime.timezone.utc)
    assert codec.encode_context({"at": at}) == {
        "at": {"__turbo_value__": "datetime", "value": "2026-12-07T10:38:00+00:00"}
    }


def test_a_queryset_travels_as_its_rows_and_the_worker_sees_them_reloaded_in_order():
    room = Room.objects.create(name="lobby")
    first, second, third = (Message.objects.create(room=room, text=t) for t in "abc")
    encoded = codec.encode_context({"messages": Message.objects.order_by("-pk")})
    assert encoded == {
        "messages": {"__turbo_rows__": "testapp.message", "pks": [third.pk, second.pk, first.pk]}
    }
    Message.objects.filter(pk=second.pk).update(text="edited before delivery")
    first.delete()
    back = codec.decode_context(json.loads(json.dumps(encoded)), "default")["messages"]
    assert [(m.pk, m.text) for m in back] == [
        (third.pk, "c"),
        (second.pk, "edited before delivery"),
    ]


def test_a_queryset_too_large_to_travel_is_refused_naming_the_key(monkeypatch):
    monkeypatch.setattr(codec, "MAX_QUERYSET_ROWS", 2)
    room = Room.objects.create(name="lobby")
    for text in "abc":
        Message.objects.create(room=room, text=text)
    with pytest.raises(TypeError, match=r"'messages' is a queryset of more than 2 rows"):
        codec.encode_context({"messages": Message.objects.all()})


def test_a_users_dict_with_a_reserved_key_travels_unchanged():
    data = {"__turbo_value__": "decimal", "value": "1"}
    assert travel({"data": data}) == {"data": data}


def test_what_still_cannot_travel_is_a_type_error_naming_the_key():
    with pytest.raises(TypeError, match=r"'extra.form' \(object\) cannot travel to a worker"):
        codec.encode_context({"extra": {"form": object()}})


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ({"__turbo_value__": "datetime", "value": "yesterday"}, "not a valid datetime value"),
        ({"__turbo_value__": "decimal", "value": "1.2.3"}, "not a valid decimal value"),
        ({"__turbo_value__": "uuid", "value": 5}, "not a valid uuid value"),
        ({"__turbo_value__": "pickle", "value": "x"}, "not a valid pickle value"),
        ({"__turbo_rows__": "testapp.message", "pks": "1,2"}, "must be a list of at most"),
        ({"__turbo_rows__": "nope.model", "pks": [1]}, "is not a valid row reference"),
    ],
)
def test_a_hand_edited_value_that_does_not_decode_is_an_invalid_job(value, error):
    with pytest.raises(InvalidJob, match=error):
        codec.check_context({"v": value}, "job 0", "default")
